"""PostgreSQL going away: 503s with problem bodies, then recovery without a restart."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from modelyard.registry.settings import RegistrySettings
from tests.support.postgres import PostgresCluster
from tests.support.servers import ThreadedRegistry

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_database_outage_and_recovery(pg_cluster: PostgresCluster, tmp_path: Path) -> None:
    settings = RegistrySettings(db_url=pg_cluster.create_database(), artifacts_url=str(tmp_path / "a"),
                                migrate_on_start=True)
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        httpx.post(f"{api}/models", json={"name": "kept"}).raise_for_status()
        pg_cluster.stop()
        try:
            ready = httpx.get(f"{server.url}/readyz", timeout=30)
            assert ready.status_code == 503 and ready.headers["content-type"] == "application/problem+json"
            assert "database" in ready.json()["detail"]
            failed = httpx.get(f"{api}/models/kept", timeout=30)
            assert failed.status_code == 503, failed.text
            assert failed.headers["content-type"] == "application/problem+json"
            refused = httpx.post(f"{api}/models", json={"name": "lost"}, timeout=30)
            assert refused.status_code == 503
            assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
        finally:
            pg_cluster.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"{server.url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "registry did not recover"
            time.sleep(0.2)
        assert httpx.get(f"{api}/models/kept").status_code == 200
        assert httpx.post(f"{api}/models", json={"name": "after"}).status_code == 201
        assert [m["name"] for m in httpx.get(f"{api}/models").json()["items"]] == ["after", "kept"]
