"""Artifact blobs under races: nothing a ready version uses is ever deleted, nothing refused is kept.

The races are made deterministic with an artifact store that reports when an
upload starts and when it has published its blob, and that can hold a delete
until an upload of the same bytes has published them (the interleaving that lost
a ready version's bytes when deletes unlinked blobs after their transaction).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from modelyard.registry import garbage
from modelyard.registry.artifacts.base import StoredArtifact
from modelyard.registry.artifacts.local import LocalArtifactStore
from modelyard.registry.store import PENDING_UPLOAD_TTL, RegistryStore
from tests.helpers import content_digest
from tests.support.artifacts import program_bytes, sha256
from tests.support.servers import ThreadedRegistry

WAIT = 10.0


class InstrumentedStore(LocalArtifactStore):
    def __init__(self, root: Path, *, hold_deletes: bool = False) -> None:
        super().__init__(root)
        self.receiving = threading.Event()
        self.published = threading.Event()
        self.hold_deletes = hold_deletes

    async def put(self, expected_hex: str, chunks: AsyncIterator[bytes]) -> StoredArtifact:
        self.receiving.set()
        stored = await super().put(expected_hex, chunks)
        self.published.set()
        return stored

    def delete(self, hex_digest: str) -> None:
        if self.hold_deletes:
            self.published.wait(WAIT)
        super().delete(hex_digest)


@pytest.fixture
def instrumented(registry: ThreadedRegistry) -> Iterator[tuple[ThreadedRegistry, httpx.Client]]:
    with httpx.Client(base_url=registry.url + "/api/v1", timeout=60) as http:
        yield registry, http


def use_store(registry: ThreadedRegistry, store: InstrumentedStore) -> InstrumentedStore:
    registry.app.state.artifacts = store
    return store


def blob_path(registry: ThreadedRegistry, data: bytes) -> Path:
    hex_digest = sha256(data)[7:]
    return Path(registry.settings.artifacts_url) / "sha256" / hex_digest[:2] / hex_digest


def paused_body(data: bytes, resume: threading.Event, delay: float = 0.0) -> Iterator[bytes]:
    """The first half, then (once ``resume`` is set, after ``delay``) the rest."""
    half = len(data) // 2
    yield data[:half]
    assert resume.wait(WAIT), "the test never resumed the upload"
    time.sleep(delay)
    yield data[half:]


def upload(http: httpx.Client, name: str, version: int, data: bytes, body: object = None) -> httpx.Response:
    return http.put(f"/models/{name}/versions/{version}/artifact", content=body if body is not None else data,
                    headers={"Content-Digest": content_digest(data)})


def push(http: httpx.Client, name: str, data: bytes) -> int:
    http.post("/models", json={"name": name})
    version = http.post(f"/models/{name}/versions").json()["version"]
    assert upload(http, name, version, data).status_code == 200
    return version


def test_deleting_a_version_while_its_bytes_are_uploaded_again_keeps_them(instrumented, tmp_path: Path) -> None:
    """The delete decides the blob is orphaned, the upload publishes the same bytes, then the delete
    removes them: the new version was ready with nothing behind it.  Now the upload's claim keeps them."""
    registry, http = instrumented
    data = program_bytes(os.urandom(300_000))
    old = push(http, "m", data)
    new = http.post("/models/m/versions").json()["version"]
    store = use_store(registry, InstrumentedStore(Path(registry.settings.artifacts_url), hold_deletes=True))
    delete_sent = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        uploading = pool.submit(upload, http, "m", new, data, paused_body(data, delete_sent, delay=0.3))
        assert store.receiving.wait(WAIT)
        delete_sent.set()
        deleting = pool.submit(http.delete, f"/models/m/versions/{old}")
        assert uploading.result().status_code == 200 and deleting.result().status_code == 204
    assert http.get(f"/models/m/versions/{new}").json()["status"] == "ready"
    assert http.head(f"/models/m/versions/{new}/artifact").status_code == 200
    assert http.get(f"/models/m/versions/{new}/artifact").content == data


def test_a_delete_that_wins_the_race_does_not_hurt_a_later_upload(instrumented) -> None:
    registry, http = instrumented
    data = program_bytes(os.urandom(1000))
    old = push(http, "m", data)
    new = http.post("/models/m/versions").json()["version"]
    assert http.delete(f"/models/m/versions/{old}").status_code == 204
    assert not blob_path(registry, data).exists()  # nothing used it: collected at once
    assert upload(http, "m", new, data).status_code == 200
    assert http.get(f"/models/m/versions/{new}/artifact").content == data


def test_the_loser_of_two_uploads_to_one_version_leaves_no_blob(instrumented) -> None:
    registry, http = instrumented
    http.post("/models", json={"name": "m"})
    http.post("/models/m/versions")
    first, second = program_bytes(b"first" * 1000), program_bytes(b"second" * 1000)
    store = use_store(registry, InstrumentedStore(Path(registry.settings.artifacts_url)))
    second_done = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(upload, http, "m", 1, first, paused_body(first, second_done))
        assert store.receiving.wait(WAIT)
        assert upload(http, "m", 1, second).status_code == 200
        second_done.set()
        lost = slow.result()
    assert lost.status_code == 409 and "another artifact" in lost.json()["detail"]
    assert blob_path(registry, second).exists()
    assert not blob_path(registry, first).exists()


def test_an_upload_whose_model_was_deleted_meanwhile_leaves_no_blob(instrumented) -> None:
    registry, http = instrumented
    http.post("/models", json={"name": "m"})
    http.post("/models/m/versions")
    data = program_bytes(b"orphan" * 1000)
    store = use_store(registry, InstrumentedStore(Path(registry.settings.artifacts_url)))
    deleted = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(upload, http, "m", 1, data, paused_body(data, deleted))
        assert store.receiving.wait(WAIT)
        assert http.delete("/models/m").status_code == 204
        deleted.set()
        assert slow.result().status_code == 404
    assert not blob_path(registry, data).exists()


def test_a_refused_upload_leaves_no_blob_and_the_version_pending(instrumented) -> None:
    registry, http = instrumented
    http.post("/models", json={"name": "m"})
    http.post("/models/m/versions")
    junk = os.urandom(5000)
    answer = upload(http, "m", 1, junk)
    assert answer.status_code == 422 and "not a supported model artifact" in answer.json()["detail"]
    assert not blob_path(registry, junk).exists()
    assert http.get("/models/m/versions/1").json()["status"] == "pending"


def test_the_sweep_removes_only_old_blobs_that_nothing_uses(store: RegistryStore, tmp_path: Path) -> None:
    artifacts = LocalArtifactStore(tmp_path / "artifacts")

    def blob(data: bytes, age: float) -> str:
        digest = sha256(data)
        path = artifacts.path_for(digest[7:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.utime(path, (time.time() - age, time.time() - age))
        return digest

    store.create_model("m")
    store.create_version("m")
    used = blob(b"used", 7200)
    store.mark_ready("m", 1, used, 4)
    orphan = blob(b"orphan", 7200)
    young = blob(b"young", 10)
    claimed = blob(b"claimed", 7200)
    claim = store.begin_upload(claimed)
    result = garbage.sweep(store, artifacts)
    assert result.deleted == [orphan] and result.examined == 3
    remaining = {f"sha256:{hex_digest}" for hex_digest, _ in artifacts.list_blobs()}
    assert remaining == {used, young, claimed}
    store.end_upload(claim)
    assert garbage.sweep(store, artifacts).deleted == [claimed]
    # A claim that outlived its server (a crash mid-upload) lapses.
    stale = store.begin_upload(used)
    assert garbage.collect(store, artifacts, [young]) == [young]
    with store.engine.begin() as connection:
        from sqlalchemy import update

        from modelyard.registry.db import models as db

        connection.execute(update(db.PendingBlob).where(db.PendingBlob.id == stale).values(
            started_at=db.utcnow() - PENDING_UPLOAD_TTL))
    assert store.prune_claims() == 1


def test_bento_deletion_is_an_event(store: RegistryStore) -> None:
    store.create_model("m")
    store.create_version("m")
    store.mark_ready("m", 1, "sha256:" + "a" * 64, 5)
    store.mark_packaged("m", 1, "m:v1", "sha256:" + "b" * 64, 7)
    assert store.clear_bento("m", 1) == ["sha256:" + "b" * 64]
    assert store.events_after(0)[-1].type == "version.unpackaged"


def test_delete_and_upload_races_between_two_worker_processes(tmp_path: Path) -> None:
    """The same race without instrumentation, as it happens: two server processes on one SQLite
    database, a delete and an upload of the same bytes sent together, many rounds."""
    from modelyard.registry.kernel.processes.children import RegistryProcess

    with RegistryProcess.on(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts", args=("--workers", "2")) \
            as server, httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http, ThreadPoolExecutor(2) as pool:
        http.post("/models", json={"name": "m"})
        for round_ in range(40):
            data = program_bytes(os.urandom(64_000) + bytes([round_]))
            old = http.post("/models/m/versions").json()["version"]
            assert upload(http, "m", old, data).status_code == 200
            new = http.post("/models/m/versions").json()["version"]
            uploading = pool.submit(upload, http, "m", new, data)
            deleting = pool.submit(http.delete, f"/models/m/versions/{old}")
            assert uploading.result().status_code == 200 and deleting.result().status_code == 204
            assert http.head(f"/models/m/versions/{new}/artifact").status_code == 200, f"round {round_}"
