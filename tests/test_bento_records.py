"""A version's packaged Bento: recorded digest-checked, streamed back, and cleaned up."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from modelyard.registry import schemas
from modelyard.registry.client import RegistryClient
from modelyard.registry.errors import Conflict, DigestMismatch, Invalid, NotFound
from modelyard.registry.store import RegistryStore
from tests.helpers import content_digest, sha256
from tests.support.servers import ThreadedRegistry


def test_store_records_one_bento_per_version(store: RegistryStore) -> None:
    store.create_model(schemas.ModelCreate(name="m"))
    store.create_version("m", schemas.VersionCreate())
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
    assert sorted(store.delete_version("m", 1)) == ["sha256:" + "a" * 64, "sha256:" + "c" * 64]


def test_bento_upload_download_and_delete_over_http(sqlite_registry: ThreadedRegistry, tmp_path: Path) -> None:
    model, bento = tmp_path / "m.pt2", tmp_path / "m.bento"
    model.write_bytes(os.urandom(50_000))
    bento.write_bytes(os.urandom(200_000))
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
        assert version.bento == schemas.Bento(tag="m:abc", digest=sha256(bento.read_bytes()), size=200_000)
        client.download_bento("m", 1, tmp_path / "out.bento")
        assert (tmp_path / "out.bento").read_bytes() == bento.read_bytes()
        part = httpx.get(f"{sqlite_registry.url}/api/v1/models/m/versions/1/bento", headers={"Range": "bytes=0-9"})
        assert part.status_code == 206 and part.content == bento.read_bytes()[:10]
        other = tmp_path / "other.bento"
        other.write_bytes(b"another build")
        with pytest.raises(Conflict, match="already packaged"):
            client.upload_bento("m", 1, other, "m:def")
        blob = artifacts_dir / "sha256" / version.bento.digest[7:9] / version.bento.digest[7:]
        assert blob.exists()
        assert httpx.delete(f"{sqlite_registry.url}/api/v1/models/m/versions/1/bento").status_code == 204
        assert not blob.exists()  # nothing else referred to it
        assert client.upload_bento("m", 1, other, "m:def").bento.tag == "m:def"


def test_bento_upload_requires_its_digest_header(sqlite_registry: ThreadedRegistry) -> None:
    api = f"{sqlite_registry.url}/api/v1"
    httpx.post(f"{api}/models", json={"name": "m"})
    httpx.post(f"{api}/models/m/versions")
    httpx.put(f"{api}/models/m/versions/1/artifact", content=b"x", headers={"Content-Digest": content_digest(b"x")})
    answer = httpx.put(f"{api}/models/m/versions/1/bento", params={"tag": "m:1"}, content=b"bento")
    assert answer.status_code == 422 and "Content-Digest" in answer.json()["detail"]
