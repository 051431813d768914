"""The S3 artifact store against a real S3-compatible HTTP server (moto's server mode) on 127.0.0.1."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from modelyard.registry.artifacts.s3 import PART_SIZE, S3ArtifactStore
from modelyard.registry.kernel.errors import DigestMismatch
from modelyard.registry.settings import RegistrySettings
from tests.helpers import content_digest, sha256
from tests.support.artifacts import program_bytes
from tests.support.servers import ThreadedRegistry, free_port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update({"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"})
    yield f"http://127.0.0.1:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def bucket(s3_endpoint: str, request: pytest.FixtureRequest) -> str:
    import boto3

    name = "t-" + re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower().replace("_", "-"))[:50].strip("-")
    boto3.client("s3").create_bucket(Bucket=name)
    return name


async def chunks_of(data: bytes, size: int = 300_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def test_multipart_put_range_and_delete(bucket: str) -> None:
    store = S3ArtifactStore.from_url(f"s3://{bucket}/models")
    data = os.urandom(PART_SIZE * 2 + 12345)  # three parts
    hex_digest = sha256(data).removeprefix("sha256:")
    stored = anyio.run(store.put, hex_digest, chunks_of(data))
    assert (stored.digest, stored.size) == (hex_digest, len(data))
    assert store.size(hex_digest) == len(data)
    assert b"".join(store.open_range(hex_digest, 0, len(data) - 1)) == data
    assert b"".join(store.open_range(hex_digest, 100, 199)) == data[100:200]
    store.delete(hex_digest)
    assert store.size(hex_digest) is None


def test_mismatch_publishes_nothing_and_aborts_the_upload(bucket: str) -> None:
    store = S3ArtifactStore.from_url(f"s3://{bucket}")
    wrong = "0" * 64
    with pytest.raises(DigestMismatch):
        anyio.run(store.put, wrong, chunks_of(b"hello" * 1000))
    assert store.size(wrong) is None
    assert store.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_registry_on_s3_end_to_end(bucket: str, tmp_path: Path) -> None:
    settings = RegistrySettings(db_url=f"sqlite:///{tmp_path / 'r.db'}", artifacts_url=f"s3://{bucket}/reg",
                                migrate_on_start=True)
    data = program_bytes(os.urandom(3 << 20))
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        httpx.post(f"{api}/models", json={"name": "m"}).raise_for_status()
        httpx.post(f"{api}/models/m/versions").raise_for_status()
        answer = httpx.put(f"{api}/models/m/versions/1/artifact", content=data,
                           headers={"Content-Digest": content_digest(data)})
        assert answer.status_code == 200 and answer.json()["digest"] == sha256(data)
        assert httpx.get(f"{api}/models/m/versions/1/artifact").content == data
        part = httpx.get(f"{api}/models/m/versions/1/artifact", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206 and part.content == data[10:20]
        assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_garbage_collection_on_s3(bucket: str, store) -> None:  # noqa: ANN001 - the SQL store fixture
    """The same collector serves S3: it lists the bucket's blobs and deletes only what nothing uses."""
    from modelyard.registry import garbage

    artifacts = S3ArtifactStore.from_url(f"s3://{bucket}/reg")
    kept, orphan = program_bytes(b"kept"), program_bytes(b"orphan")
    for data in (kept, orphan):
        anyio.run(artifacts.put, sha256(data)[7:], chunks_of(data))
    store.create_model("m")
    store.create_version("m")
    store.mark_ready("m", 1, sha256(kept), len(kept))
    assert {f"sha256:{h}" for h, _ in artifacts.list_blobs()} == {sha256(kept), sha256(orphan)}
    with artifacts.open(sha256(kept)[7:]) as file:  # ranged reads behind a seekable file
        file.seek(10)
        assert file.read(20) == kept[10:30]
    assert garbage.sweep(store, artifacts, min_age_seconds=0).deleted == [sha256(orphan)]
    assert [f"sha256:{h}" for h, _ in artifacts.list_blobs()] == [sha256(kept)]
    assert artifacts.size(sha256(kept)[7:]) == len(kept)
