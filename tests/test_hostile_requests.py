"""Requests that used to get a 500 from the registry: each is a clear 4xx (or a 507) problem now."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from modelyard.registry.kernel.processes.children import free_port, stop_process, wait_ready
from tests.helpers import content_digest
from tests.support.artifacts import program_bytes
from tests.support.servers import ThreadedRegistry


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_a_cursor_beyond_any_version_number_is_a_400(sqlite_registry: ThreadedRegistry) -> None:
    api = sqlite_registry.url + "/api/v1"
    httpx.post(f"{api}/models", json={"name": "m"})
    for raw in ("99999999999999999999999", "2147483648", "-1", "1e9"):
        answer = httpx.get(f"{api}/models/m/versions", params={"cursor": cursor_of(raw)})
        assert answer.status_code == 400 and "cursor" in answer.json()["detail"], (raw, answer.text)
    assert httpx.get(f"{api}/models/m/versions").status_code == 200  # the connection survived


def test_nul_characters_are_refused_everywhere(registry: ThreadedRegistry) -> None:
    """PostgreSQL cannot store or compare text with NUL in it: every place a client's text reaches
    the database refuses it up front, on both backends alike (some need only a read token)."""
    api = registry.url + "/api/v1"
    assert httpx.post(f"{api}/models", json={"name": "m"}).status_code == 201
    bodies = [
        ("POST", "/models", {"name": "n", "description": "a\x00b"}),
        ("POST", "/models", {"name": "n", "tags": {"team": "a\x00"}}),
        ("PATCH", "/models/m", {"description": "\x00"}),
        ("POST", "/models/m/versions", {"source": "s3://x\x00y"}),
        ("POST", "/models/m/versions", {"description": "\x00"}),
        ("POST", "/models/m/versions", {"metadata": {"nested": ["ok", {"deep\x00key": 1}]}}),
        ("POST", "/models/m/versions", {"metadata": {"x": "\x00"}}),
    ]
    for method, path, body in bodies:
        answer = httpx.request(method, f"{api}{path}", json=body)
        assert answer.status_code == 422 and "NUL" in answer.text, (path, body, answer.text)
    queries = [
        ("/models", {"prefix": "a\x00"}),
        ("/models", {"tag": "team=a\x00"}),
        ("/models", {"cursor": "\x00"}),
        ("/models/m/versions", {"tag": "k=\x00"}),
        ("/models/m/versions", {"cursor": "ab\x00"}),
    ]
    for path, params in queries:
        answer = httpx.get(f"{api}{path}", params=params)
        assert answer.status_code == 400 and "NUL" in answer.json()["detail"], (path, params, answer.text)
    assert httpx.get(f"{api}/models").status_code == 200
    assert registry.store.get_model("m").description == ""


def test_a_full_artifact_disk_is_a_507_and_reported_on_readyz(tmp_path: Path) -> None:
    """The registry in a private mount namespace whose artifact directory is a 4 MiB tmpfs."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test needs root and util-linux's unshare (the README's test command runs as root)")
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    script = ('mount -t tmpfs -o size=4m tmpfs "$MODELYARD_ARTIFACTS" && exec "$0" -m modelyard.cli '
              'registry serve --port "$1" --log-level warning')
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, sys.executable, str(port)],
        env={**os.environ, "MODELYARD_DB_URL": f"sqlite:///{tmp_path / 'r.db'}",
             "MODELYARD_ARTIFACTS": str(artifacts)})
    try:
        wait_ready(url, process, 30, probe="/healthz")
        api = url + "/api/v1"
        httpx.post(f"{api}/models", json={"name": "m"})
        httpx.post(f"{api}/models/m/versions")
        ready = httpx.get(f"{url}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "degraded", ready.text
        assert ready.json()["artifact_free_bytes"] <= 4 << 20
        big = program_bytes(os.urandom(6 << 20))
        full = httpx.put(f"{api}/models/m/versions/1/artifact", content=big,
                         headers={"Content-Digest": content_digest(big)}, timeout=60)
        assert full.status_code == 507, full.text
        assert full.headers["content-type"] == "application/problem+json"
        assert "full" in full.json()["detail"] and full.json()["code"] == "insufficient-storage"
        assert httpx.get(f"{api}/models/m/versions/1").json()["status"] == "pending"
        small = program_bytes(os.urandom(1 << 20))  # the failed upload left nothing behind: this one fits
        fits = httpx.put(f"{api}/models/m/versions/1/artifact", content=small,
                         headers={"Content-Digest": content_digest(small)}, timeout=60)
        assert fits.status_code == 200, fits.text
    finally:
        stop_process(process)
