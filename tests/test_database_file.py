"""The embedded SQLite file deleted, replaced or damaged under a registry: said, never silently lost."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import httpx
import pytest

from modelyard.registry.settings import RegistrySettings
from tests.support.servers import ThreadedRegistry


@pytest.fixture
def settings(tmp_path: Path) -> RegistrySettings:
    return RegistrySettings(db_url=f"sqlite:///{tmp_path / 'registry.db'}", artifacts_url=str(tmp_path / "a"),
                            migrate_on_start=True)


def db_file(settings: RegistrySettings) -> Path:
    return Path(settings.db_url.removeprefix("sqlite:///"))


def test_a_deleted_database_file_stops_writes_and_readiness(settings: RegistrySettings) -> None:
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        assert httpx.post(f"{api}/models", json={"name": "before"}).status_code == 201
        db_file(settings).unlink()
        refused = httpx.post(f"{api}/models", json={"name": "lost"})
        assert refused.status_code == 503 and "deleted" in refused.json()["detail"], refused.text
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "deleted" in ready.json()["detail"]


def test_a_replaced_database_file_stops_writes_and_readiness(settings: RegistrySettings, tmp_path: Path) -> None:
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        assert httpx.post(f"{api}/models", json={"name": "before"}).status_code == 201
        shutil.copyfile(db_file(settings), tmp_path / "copy.db")
        os.replace(tmp_path / "copy.db", db_file(settings))
        refused = httpx.post(f"{api}/models", json={"name": "lost"})
        assert refused.status_code == 503 and "replaced" in refused.json()["detail"], refused.text
        assert httpx.get(f"{server.url}/readyz").status_code == 503


def test_a_damaged_database_is_reported_at_start(settings: RegistrySettings, caplog: pytest.LogCaptureFixture) -> None:
    with ThreadedRegistry(settings) as server:
        api = server.url + "/api/v1"
        for number in range(400):
            httpx.post(f"{api}/models", json={"name": f"m-{number}", "description": "x" * 200})
    path = db_file(settings)
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = (connection.execute(f"PRAGMA {pragma}").fetchone()[0] for pragma in ("page_count", "page_size"))
    with open(path, "r+b") as handle:  # garbage over a data page in the middle, as a bad disk would leave
        handle.seek(size * (pages // 2))
        handle.write(os.urandom(size))
    with caplog.at_level(logging.ERROR, logger="modelyard.registry"), \
            ThreadedRegistry(settings, probe="/healthz") as server:
        assert any("integrity check" in record.getMessage() for record in caplog.records)
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 503 and "integrity check" in ready.json()["detail"], ready.text
        refused = httpx.post(f"{server.url}/api/v1/models", json={"name": "more"})
        assert refused.status_code == 503 and "integrity check" in refused.json()["detail"]
