"""A version's packaged Bento: recorded digest-checked, streamed back, and cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from modelyard.registry.kernel import schemas
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import Conflict, DigestMismatch, Invalid, NotFound
from modelyard.registry.store import RegistryStore
from tests.helpers import content_digest, sha256
from tests.support.artifacts import model_bento, program_bytes, tar_bytes
from tests.support.servers import ThreadedRegistry


def test_store_records_one_bento_per_version(store: RegistryStore) -> None:
    store.create_model("m")
    store.create_version("m")
    with pytest.raises(Conflict, match="pending"):
        store.mark_packaged("m", 1, "m:v1", "sha256:" + "b" * 64, 5)
    store.mark_ready("m", 1, "sha256:" + "a" * 64, 5)
    packaged = store.mark_packaged("m", 1, "m:v1", "sha256:" + "b" * 64, 7)
    assert packaged.bento == schemas.Bento(tag="m:v1", digest="sha256:" + "b" * 64, size=7)
    assert store.get_version("m", 1).bento == packaged.bento
    assert store.list_versions("m").items[0].bento == packaged.bento
    events = len(store.events_after(0))
    store.mark_packaged("m", 1, "m:v1", "sha256:" + "b" * 64, 7)  # same Bento again: no-op
    assert len(store.events_after(0)) == events
    assert store.events_after(0)[-1].type == "version.packaged"
    with pytest.raises(Conflict, match="already packaged"):
        store.mark_packaged("m", 1, "m:v2", "sha256:" + "c" * 64, 7)
    assert store.clear_bento("m", 1) == ["sha256:" + "b" * 64]
    assert store.get_version("m", 1).bento is None
    with pytest.raises(NotFound):
        store.clear_bento("m", 1)
    store.mark_packaged("m", 1, "m:v2", "sha256:" + "c" * 64, 7)
    assert sorted(store.remove_version("m", 1)) == ["sha256:" + "a" * 64, "sha256:" + "c" * 64]


def test_bento_upload_download_and_delete_over_http(sqlite_registry: ThreadedRegistry, tmp_path: Path) -> None:
    program = program_bytes(os.urandom(50_000))
    model, bento = tmp_path / "m.pt2", tmp_path / "m.bento"
    model.write_bytes(program)
    bento.write_bytes(model_bento("m", 1, program, extra={"src/pad": os.urandom(150_000)}))
    artifacts_dir = Path(sqlite_registry.settings.artifacts_url)
    with RegistryClient(sqlite_registry.url) as client:
        client.create_model("m")
        client.create_version("m")
        with pytest.raises(Conflict, match="upload its artifact first"):
            client.upload_bento("m", 1, bento, "m:abc")
        client.upload_artifact("m", 1, model)
        with pytest.raises(NotFound, match="not packaged"):
            client.download_bento("m", 1, tmp_path / "out.bento")
        with pytest.raises(Invalid, match="tag"):
            client.upload_bento("m", 1, bento, "Not A Tag")
        with pytest.raises(DigestMismatch):
            client.upload_bento("m", 1, bento, "m:abc", sha256=sha256(b"other"))
        assert client.get_version("m", 1).bento is None
        version = client.upload_bento("m", 1, bento, "m:abc")
        assert version.bento == schemas.Bento(tag="m:abc", digest=sha256(bento.read_bytes()),
                                              size=bento.stat().st_size)
        client.download_bento("m", 1, tmp_path / "out.bento")
        assert (tmp_path / "out.bento").read_bytes() == bento.read_bytes()
        part = httpx.get(f"{sqlite_registry.url}/api/v1/models/m/versions/1/bento", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == bento.read_bytes()[:10]
        other = tmp_path / "other.bento"
        other.write_bytes(model_bento("m", 1, program, extra={"src/README.md": b"another build"}))
        with pytest.raises(Conflict, match="already packaged"):
            client.upload_bento("m", 1, other, "m:def")
        blob = artifacts_dir / "sha256" / version.bento.digest[7:9] / version.bento.digest[7:]
        assert blob.exists()
        assert httpx.delete(f"{sqlite_registry.url}/api/v1/models/m/versions/1/bento").status_code == 204
        assert not blob.exists()  # nothing else referred to it
        assert client.upload_bento("m", 1, other, "m:def").bento.tag == "m:def"


def test_a_version_only_takes_a_bento_built_from_itself(sqlite_registry: ThreadedRegistry, tmp_path: Path) -> None:
    """A write token must not make an aliased version serve another program by swapping its Bento."""
    production, candidate = program_bytes(b"production" * 100), program_bytes(b"candidate" * 100)
    metadata = {"input": {"shape": [-1, 4], "dtype": "float32"}}
    with RegistryClient(sqlite_registry.url) as client:
        client.create_model("m")
        for program in (production, candidate):
            path = tmp_path / "program.pt2"
            path.write_bytes(program)
            number = client.create_version("m", metadata=metadata).version
            client.upload_artifact("m", number, path)
        client.set_alias("m", "production", 1)

        def upload(data: bytes) -> None:
            path = tmp_path / "upload.bento"
            path.write_bytes(data)
            client.upload_bento("m", 1, path, "m:v1")

        with pytest.raises(Invalid, match="built from m:2"):  # version 2's own Bento, under version 1
            upload(model_bento("m", 2, candidate, metadata=metadata))
        with pytest.raises(Invalid, match="built from m:2"):  # another version's program, recorded as it is
            upload(model_bento("m", 1, candidate, metadata=metadata, recorded=("m", 2)))
        with pytest.raises(Invalid, match="does not carry the program"):  # the right record, the wrong program
            upload(_with_program(production, candidate, metadata))
        with pytest.raises(Invalid, match="format or metadata"):
            upload(model_bento("m", 1, production, metadata={"input": {"shape": [-1, 8], "dtype": "float32"}}))
        with pytest.raises(Invalid, match="no src/modelyard-model.json"):
            upload(tar_bytes({"bento.yaml": b"service: x:Y\n", "src/service.py": b"import os\n"}))
        with pytest.raises(Invalid, match="not a readable Bento"):
            upload(os.urandom(2000))
        assert client.get_version("m", 1).bento is None
        upload(model_bento("m", 1, production, metadata=metadata))
        assert client.get_version("m", 1).bento is not None
    assert not [path for path in Path(sqlite_registry.settings.artifacts_url, "sha256").rglob("*")
                if path.is_file() and path.name not in {sha256(production)[7:], sha256(candidate)[7:],
                                                        sha256(model_bento("m", 1, production,
                                                                           metadata=metadata))[7:]}]


def _with_program(recorded: bytes, carried: bytes, metadata: dict) -> bytes:
    """A Bento whose record names ``recorded``'s digest but whose program file is ``carried``."""
    import json

    spec = {"model": "m", "version": 1, "digest": sha256(recorded), "format": "torch-export",
            "file": "model/model.pt2", "metadata": metadata}
    return tar_bytes({"bento.yaml": b"service: service:ModelService\n",
                      "src/modelyard-model.json": json.dumps(spec).encode(), "src/model/model.pt2": carried})


def test_a_bento_format_version_is_packaged_as_its_own_artifact(sqlite_registry: ThreadedRegistry,
                                                                 tmp_path: Path) -> None:
    service = tar_bytes({"bento.yaml": b"service: svc:Svc\n", "src/svc.py": b"class Svc: ...\n"})
    other = tar_bytes({"bento.yaml": b"service: svc:Svc\n", "src/svc.py": b"import os\n"})
    with RegistryClient(sqlite_registry.url) as client:
        client.create_model("svc")
        client.create_version("svc")
        (tmp_path / "a.bento").write_bytes(service)
        (tmp_path / "b.bento").write_bytes(other)
        assert client.upload_artifact("svc", 1, tmp_path / "a.bento").format == schemas.ArtifactFormat.bento
        with pytest.raises(Invalid, match="is its artifact itself"):
            client.upload_bento("svc", 1, tmp_path / "b.bento", "svc:v1")
        assert client.upload_bento("svc", 1, tmp_path / "a.bento", "svc:v1").bento.digest == sha256(service)


def test_bento_upload_requires_its_digest_header(sqlite_registry: ThreadedRegistry) -> None:
    api = f"{sqlite_registry.url}/api/v1"
    httpx.post(f"{api}/models", json={"name": "m"})
    httpx.post(f"{api}/models/m/versions")
    program = program_bytes(b"x")
    httpx.put(f"{api}/models/m/versions/1/artifact", content=program,
              headers={"Content-Digest": content_digest(program)})
    answer = httpx.put(f"{api}/models/m/versions/1/bento", params={"tag": "m:1"}, content=b"bento")
    assert answer.status_code == 422 and "Content-Digest" in answer.json()["detail"]
