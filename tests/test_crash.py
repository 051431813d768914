"""A process killed mid-upload leaves no partial artifact and no ready version."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests.helpers import content_digest, eventually
from tests.support.artifacts import program_bytes
from tests.support.servers import ProcessRegistry

pytestmark = pytest.mark.slow
MiB = 1 << 20


def part_files(artifacts: Path) -> list[Path]:
    return [p for p in (artifacts / "tmp").glob("*.part") if p.stat().st_size > 0]


def blobs(artifacts: Path) -> list[Path]:
    return [p for p in (artifacts / "sha256").rglob("*") if p.is_file()]


def prepare(url: str) -> None:
    httpx.post(f"{url}/api/v1/models", json={"name": "big"}).raise_for_status()
    httpx.post(f"{url}/api/v1/models/big/versions").raise_for_status()


def test_server_killed_mid_upload(tmp_path: Path) -> None:
    db, artifacts = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts"
    payload = program_bytes(os.urandom(4 * MiB))
    release = threading.Event()

    def slow_body():  # noqa: ANN202
        yield payload[: 3 * MiB]
        release.wait(30)  # hold the rest back until the server is dead
        yield payload[3 * MiB:]

    server = ProcessRegistry(db, artifacts).start()
    try:
        prepare(server.url)
        errors: list[Exception] = []

        def upload() -> None:
            try:
                httpx.put(f"{server.url}/api/v1/models/big/versions/1/artifact", content=slow_body(),
                          headers={"Content-Digest": content_digest(payload)}, timeout=30)
            except httpx.HTTPError as exc:
                errors.append(exc)

        uploader = threading.Thread(target=upload)
        uploader.start()
        eventually(lambda: part_files(artifacts), timeout=20, interval=0.05, what="the upload to reach the server's disk")
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait()
        release.set()
        uploader.join(30)
        assert errors, "the client must see the upload fail"
    finally:
        server.stop()

    assert blobs(artifacts) == []  # nothing published under a digest
    with ProcessRegistry(db, artifacts) as restarted:
        version = httpx.get(f"{restarted.url}/api/v1/models/big/versions/1").json()
        assert version["status"] == "pending" and version["digest"] is None
        assert httpx.get(f"{restarted.url}/api/v1/models/big/versions/1/artifact").status_code == 409
        retry = httpx.put(f"{restarted.url}/api/v1/models/big/versions/1/artifact", content=payload,
                          headers={"Content-Digest": content_digest(payload)})
        assert retry.status_code == 200 and retry.json()["status"] == "ready"
        assert httpx.get(f"{restarted.url}/api/v1/models/big/versions/1/artifact").content == payload


UPLOADER = """
import sys, time, httpx
url, digest = sys.argv[1], sys.argv[2]
def body():
    yield b"x" * (2 << 20)
    time.sleep(60)
    yield b"y"
httpx.put(url, content=body(), headers={"Content-Digest": digest}, timeout=120)
"""


def test_client_killed_mid_upload(tmp_path: Path) -> None:
    db, artifacts = f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "artifacts"
    with ProcessRegistry(db, artifacts) as server:
        prepare(server.url)
        client = subprocess.Popen([sys.executable, "-c", UPLOADER,
                                   f"{server.url}/api/v1/models/big/versions/1/artifact",
                                   content_digest(b"x" * (2 << 20) + b"y")])
        try:
            eventually(lambda: part_files(artifacts), timeout=20, interval=0.05, what="the upload to reach the server's disk")
        finally:
            client.kill()
            client.wait()
        eventually(lambda: not list((artifacts / "tmp").glob("*.part")), timeout=20, interval=0.05, what="the server to drop the partial upload")
        assert blobs(artifacts) == []
        assert httpx.get(f"{server.url}/api/v1/models/big/versions/1").json()["status"] == "pending"
