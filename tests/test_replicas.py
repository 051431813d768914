"""Several registry replicas on one PostgreSQL agree (store.read_cache, db.change_listener).

Each replica answers hot reads (an alias, a version, a token) from its cache; every write
transaction, whichever replica or admin command commits it, tells every replica what it changed.
These tests run real registry processes on the suite's PostgreSQL and wait for conditions: they
check *that* a change reaches the other replica, and that the writer reads its own write at once;
how fast it gets there is measured by benchmarks/registry_bench.py (``coherence``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from modelyard.registry.db.change_listener import CHANNEL
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.processes.children import RegistryProcess
from modelyard.registry.store import RegistryStore
from tests.helpers import eventually
from tests.support.postgres import PostgresCluster

pytestmark = pytest.mark.postgres

ADMIN = "replica-test-admin-token-0123456789"
API = "/api/v1"


def make_ready(store: RegistryStore, name: str, n: int) -> int:
    version = store.create_version(name)
    return store.mark_ready(name, version.version, f"sha256:{n:064x}", 10).version


def cache_hits(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return next(float(line.split()[-1]) for line in text.splitlines()
                if line.startswith("modelyard_registry_read_cache_hits"))


@pytest.fixture
def db_url(pg_cluster: PostgresCluster) -> str:
    return pg_cluster.create_database()


@pytest.fixture
def writer(db_url: str) -> Iterator[RegistryStore]:
    """The admin commands' way in: a store in this process, no server, no listener."""
    store = RegistryStore.open(db_url, migrate_on_start=True)
    yield store
    store.engine.dispose()


@pytest.fixture
def replicas(db_url: str, writer: RegistryStore, tmp_path: Path) -> Iterator[tuple[str, str]]:
    env = {Env.ADMIN_TOKEN: ADMIN, Env.MIGRATE_ON_START: "true"}
    with RegistryProcess.on(db_url, tmp_path / "artifacts", env) as a, \
            RegistryProcess.on(db_url, tmp_path / "artifacts", env) as b:
        for url in (a.url, b.url):
            eventually(lambda url=url: "modelyard_registry_read_cache_live 1.0" in httpx.get(f"{url}/metrics").text)
        yield a.url, b.url


def test_an_alias_moved_on_one_replica_is_read_on_the_other_and_the_writer_reads_its_own_move(
        replicas: tuple[str, str], writer: RegistryStore) -> None:
    a, b = replicas
    headers = {"Authorization": f"Bearer {ADMIN}"}
    writer.create_model("digits")
    one, two = make_ready(writer, "digits", 1), make_ready(writer, "digits", 2)
    with httpx.Client(headers=headers, timeout=10) as client:
        assert client.put(f"{a}{API}/models/digits/aliases/production", json={"version": one}).status_code == 200
        alias = f"{API}/models/digits/aliases/production"
        eventually(lambda: client.get(f"{b}{alias}").json()["version"] == one)
        hits = cache_hits(b)
        for _ in range(3):
            assert client.get(f"{b}{alias}").json()["version"] == one
            assert client.get(f"{b}{API}/models/digits/versions/{one}").json()["aliases"] == ["production"]
        assert cache_hits(b) >= hits + 5  # B answers from its cache, not from the database

        moved = client.put(f"{a}{alias}", json={"version": two})
        assert moved.status_code == 200
        assert client.get(f"{a}{alias}").json()["version"] == two  # the writer, at once
        eventually(lambda: client.get(f"{b}{alias}").json()["version"] == two)
        eventually(lambda: client.get(f"{b}{API}/models/digits/versions/{one}").json()["aliases"] == [])

        # A version deleted on A is gone on B, even though B held its answer.
        assert client.delete(f"{a}{API}/models/digits/versions/{one}").status_code == 204
        eventually(lambda: client.get(f"{b}{API}/models/digits/versions/{one}").status_code == 404)
        # An admin command's write (no server involved) reaches both, and wakes a long-poll on B.
        after = client.get(f"{b}{API}/events").json()["next"]
        with httpx.Client(headers=headers, timeout=60) as poller, ThreadPoolExecutor(1) as pool:
            polled = pool.submit(lambda: poller.get(f"{b}{API}/events", params={"after": after, "timeout": 30}))
            writer.set_alias("digits", "staging", two)
            assert [(e["type"], e["alias"]) for e in polled.result().json()["events"]] == [("alias.set", "staging")]
        for url in (a, b):
            eventually(lambda url=url: client.get(f"{url}{API}/models/digits/aliases/staging").status_code == 200)


def test_a_revoked_token_stops_working_on_every_replica(replicas: tuple[str, str], writer: RegistryStore) -> None:
    token, info = writer.create_token("reader", "read")
    writer.create_model("digits")
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=10) as client:
        for url in replicas:
            for _ in range(2):  # the second is answered from the cache
                assert client.get(f"{url}{API}/models/digits").status_code == 200
        writer.revoke_token(info.id)
        for url in replicas:
            eventually(lambda url=url: client.get(f"{url}{API}/models/digits").status_code == 401)


def test_a_replica_that_lost_its_listening_session_serves_nothing_it_held_before(writer: RegistryStore,
                                                                                  db_url: str) -> None:
    """Changes committed while a listener is disconnected go unheard: so nothing cached before the
    loss may be served after it, and the cache serves again only once it listens again."""
    writer.create_model("digits")
    make_ready(writer, "digits", 1)
    writer.set_alias("digits", "production", 1)
    store = RegistryStore.open(db_url)
    try:
        store.listen_for_changes(ping_seconds=0.2)  # after the writes: no notification is still on its way
        eventually(lambda: store.cache.live)
        held = store.get_alias("digits", "production")
        assert store.get_alias("digits", "production") is held  # answered from the cache
        with writer.engine.connect() as connection:
            killed = connection.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE %s",
                (f"%LISTEN {CHANNEL}%",)).scalars().all()
        assert killed == [True]
        # Whether or not it has reconnected yet, the answer it held is gone.
        eventually(lambda: store.get_alias("digits", "production") is not held)
        eventually(lambda: store.cache.live)
        again = store.get_alias("digits", "production")
        assert again is not held  # listening again: what it held before the loss was dropped
        assert store.get_alias("digits", "production") is again  # serving from the cache once more
    finally:
        store.stop_listening()
        store.engine.dispose()
    assert not store.cache.live
