"""The store on SQLite and on PostgreSQL: the same behaviour on both."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.errors import BadRequest, Conflict, NotFound
from modelyard.registry.db.engine import create_db_engine
from modelyard.registry.db.migrate import upgrade
from modelyard.registry.store import RegistryStore, TokenIdentity

HEX = "ab" * 32


def make_ready(store: RegistryStore, name: str, digest_hex: str = HEX) -> schemas.Version:
    version = store.create_version(name)
    return store.mark_ready(name, version.version, f"sha256:{digest_hex}", 10)


def test_model_crud(store: RegistryStore) -> None:
    created = store.create_model("digits", description="d", tags={"team": "vision"})
    assert created.latest_version is None and created.aliases == {}
    with pytest.raises(Conflict):
        store.create_model("digits")
    updated = store.update_model("digits", description="new")
    assert updated.description == "new" and updated.tags == {"team": "vision"}
    assert updated.created_at.tzinfo is not None
    store.delete_model("digits")
    with pytest.raises(NotFound):
        store.get_model("digits")


def test_version_numbers_are_consecutive_and_never_reused(store: RegistryStore) -> None:
    store.create_model("m")
    numbers = [store.create_version("m").version for _ in range(3)]
    assert numbers == [1, 2, 3]
    store.delete_version("m", 3)
    assert store.create_version("m").version == 4
    assert store.get_model("m").latest_version == 4
    with pytest.raises(NotFound):
        store.create_version("missing")


def test_64_concurrent_version_creations_yield_1_to_64(store: RegistryStore) -> None:
    store.create_model("race")
    with ThreadPoolExecutor(max_workers=64) as pool:
        numbers = list(pool.map(lambda _: store.create_version("race").version, range(64)))
    assert sorted(numbers) == list(range(1, 65))
    listed = [v.version for v in store.list_versions("race", limit=1000).items]
    assert listed == list(range(1, 65))
    assert [e.version for e in store.events_after(0) if e.type == "version.created"] == sorted(numbers)


def test_alias_rules(store: RegistryStore) -> None:
    store.create_model("m")
    pending = store.create_version("m")
    with pytest.raises(Conflict, match="pending"):
        store.set_alias("m", "production", pending.version)
    ready = store.mark_ready("m", pending.version, f"sha256:{HEX}", 10)
    alias = store.set_alias("m", "production", ready.version)
    assert (alias.version, alias.digest) == (1, f"sha256:{HEX}")
    assert store.get_alias("m", "production") == alias
    assert store.get_version("m", 1).aliases == ["production"]
    with pytest.raises(Conflict, match="production"):
        store.delete_version("m", 1)
    with pytest.raises(Conflict, match="production"):
        store.delete_model("m")
    with pytest.raises(NotFound, match="no alias 'staging'"):
        store.get_alias("m", "staging")
    with pytest.raises(NotFound, match="model 'nope'"):
        store.get_alias("nope", "production")
    store.delete_alias("m", "production")
    store.delete_version("m", 1)


def test_setting_an_alias_to_its_current_version_emits_no_event(store: RegistryStore) -> None:
    store.create_model("m")
    make_ready(store, "m")
    store.set_alias("m", "production", 1)
    count = len(store.events_after(0))
    store.set_alias("m", "production", 1)
    assert len(store.events_after(0)) == count
    make_ready(store, "m")
    store.set_alias("m", "production", 2)
    last = store.events_after(0)[-1]
    assert (last.type, last.version, last.alias) == ("alias.set", 2, "production")


def test_event_feed_is_ordered_and_complete(store: RegistryStore) -> None:
    store.create_model("m")
    make_ready(store, "m")
    store.set_alias("m", "prod", 1)
    store.delete_alias("m", "prod")
    store.delete_version("m", 1)
    store.delete_model("m")
    events = store.events_after(0)
    assert [e.type for e in events] == ["model.created", "version.created", "version.ready", "alias.set",
                                        "alias.deleted", "version.deleted", "model.deleted"]
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert store.events_after(events[2].id)[0].type == "alias.set"
    assert store.last_event_id() == events[-1].id


def test_listing_models_paginates_and_filters(store: RegistryStore) -> None:
    for i in range(7):
        store.create_model(f"m{i}", tags={"team": "a" if i % 2 else "b"})
    store.create_model("other")
    make_ready(store, "m3")
    store.set_alias("m3", "production", 1)
    names, cursor = [], None
    while True:
        page = store.list_models(prefix="m", limit=3, cursor=cursor)
        names += [m.name for m in page.items]
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert names == [f"m{i}" for i in range(7)]
    assert [m.name for m in store.list_models(tags=[("team", "a")]).items] == ["m1", "m3", "m5"]
    assert [m.name for m in store.list_models(alias="production").items] == ["m3"]
    assert store.list_models(alias="production").items[0].aliases == {"production": 1}
    assert store.list_models(prefix="m_").items == []  # '_' is literal, not a LIKE wildcard
    with pytest.raises(BadRequest):
        store.list_models(cursor="%%%")


def test_listing_versions_orders_and_filters(store: RegistryStore) -> None:
    store.create_model("m")
    for i in range(5):
        store.create_version("m", tags={"stage": "x" if i < 2 else "y"})
    store.mark_ready("m", 4, f"sha256:{HEX}", 1)
    assert store.list_versions("m", order="desc", limit=1).items[0].version == 5
    page = store.list_versions("m", order="desc", limit=2)
    assert [v.version for v in page.items] == [5, 4]
    assert [v.version for v in store.list_versions("m", order="desc", cursor=page.next_cursor).items] == [3, 2, 1]
    assert [v.version for v in store.list_versions("m", status="ready").items] == [4]
    assert [v.version for v in store.list_versions("m", tags=[("stage", "x")]).items] == [1, 2]


def test_mark_ready_is_idempotent_but_refuses_another_artifact(store: RegistryStore) -> None:
    store.create_model("m")
    make_ready(store, "m")
    events = len(store.events_after(0))
    assert store.mark_ready("m", 1, f"sha256:{HEX}", 10).status == "ready"
    assert len(store.events_after(0)) == events
    with pytest.raises(Conflict):
        store.mark_ready("m", 1, "sha256:" + "cd" * 32, 10)
    with pytest.raises(Conflict, match="immutable"):
        store.check_uploadable("m", 1)


def test_deleting_returns_only_unshared_digests(store: RegistryStore) -> None:
    store.create_model("a")
    store.create_model("b")
    make_ready(store, "a")
    make_ready(store, "b")
    assert store.remove_version("a", 1) == []  # b:1 still uses it
    assert store.remove_version("b", 1) == [f"sha256:{HEX}"]


def test_tokens_are_hashed_scoped_and_revocable(store: RegistryStore) -> None:
    assert not store.auth_enabled()
    token, info = store.create_token("ci", "write")
    assert store.auth_enabled()
    assert store.token_identity(token) == TokenIdentity("ci", "write")
    assert store.token_identity(token + "x") is None
    assert token not in repr(store.list_tokens())
    store.revoke_token(info.id)
    assert store.token_identity(token) is None
    with pytest.raises(BadRequest):
        store.create_token("x", "root")


def test_authentication_stays_on_until_an_administrator_opens_the_registry(store: RegistryStore) -> None:
    """Revoking a leaked token, the last live one included, must never open the registry."""
    _, writer = store.create_token("ci", "write")
    _, admin = store.create_token("admin", "admin")
    store.revoke_token(writer.id)
    with pytest.raises(Conflict, match="last live admin token"):
        store.revoke_token(admin.id)
    assert store.token_identity("x") is None and not store.list_tokens()[1].revoked
    store.revoke_token(admin.id, last_admin=True)
    assert all(token.revoked for token in store.list_tokens())
    assert store.auth_enabled()  # no live token, and still closed
    assert store.open_registry() is True
    assert not store.auth_enabled()
    assert store.open_registry() is False  # already open: no second event
    store.create_token("new", "read")
    assert store.auth_enabled()
    assert [e.type for e in store.events_after(0)] == ["auth.enabled", "auth.opened", "auth.enabled"]


def test_seeded_tokens_take_the_deployment_scope_and_stay_revoked(store: RegistryStore) -> None:
    seeded = "my_" + "s" * 40
    assert store.ensure_token("operator", "write", seeded) is True
    assert store.auth_enabled() and store.token_identity(seeded) == TokenIdentity("operator", "write")
    assert store.ensure_token("operator", "read", seeded) is False  # an upgrade narrowed its scope
    assert store.token_identity(seeded) == TokenIdentity("operator", "read")
    store.revoke_token(store.list_tokens()[0].id)
    assert store.ensure_token("operator", "read", seeded) is False and store.token_identity(seeded) is None


def test_racing_alias_set_and_version_delete_stay_consistent(store: RegistryStore) -> None:
    """Either the alias lands (and the delete is refused) or the version goes (and the alias is refused)."""
    store.create_model("m")
    for _ in range(15):
        version = make_ready(store, "m").version
        outcomes: list[str] = []

        def set_alias(number: int = version, outcomes: list[str] = outcomes) -> None:
            try:
                store.set_alias("m", "prod", number)
                outcomes.append("aliased")
            except (Conflict, NotFound) as exc:
                outcomes.append(type(exc).__name__)

        def delete(number: int = version, outcomes: list[str] = outcomes) -> None:
            try:
                store.delete_version("m", number)
                outcomes.append("deleted")
            except (Conflict, NotFound) as exc:
                outcomes.append(type(exc).__name__)

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda f: f(), [set_alias, delete]))
        assert sorted(outcomes) in (["Conflict", "aliased"], ["NotFound", "deleted"]), outcomes
        alias = store.get_alias("m", "prod") if "aliased" in outcomes else None
        if alias is not None:
            assert store.get_version("m", alias.version).version == version


@pytest.mark.postgres
def test_reads_on_postgresql_open_no_transaction_and_writes_still_do(pg_cluster) -> None:  # noqa: ANN001
    """Under READ COMMITTED each statement has its own snapshot even inside a transaction, so a read's
    BEGIN and the ROLLBACK on its return were two round trips for nothing: reads run in autocommit."""
    import psycopg
    from sqlalchemy import text

    engine = create_db_engine(pg_cluster.create_database())
    try:
        upgrade(engine)
        store = RegistryStore(engine)
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            status = connection.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            assert status == psycopg.pq.TransactionStatus.IDLE
        with store._write_engine.connect() as connection, connection.begin():
            connection.execute(text("SELECT 1"))
            status = connection.connection.dbapi_connection.info.transaction_status  # type: ignore[union-attr]
            assert status == psycopg.pq.TransactionStatus.INTRANS
        store.create_model("m")  # and a write after a read on the same pooled connection commits
        assert store.get_model("m").name == "m"
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_follower_of_the_event_feed_skips_no_event_while_writers_race(pg_cluster) -> None:  # noqa: ANN001
    """Ids are drawn in one order and transactions commit in another; a follower reading
    ``events_after(last seen)`` would then pass over an event that commits late.  The event lock
    (taken by the statement that appends the event) makes events commit in id order."""
    store = RegistryStore.open(pg_cluster.create_database(), migrate_on_start=True)
    try:
        for n in range(8):
            store.create_model(f"m{n}")
        seen: list[int] = []
        done = threading.Event()

        def follow() -> None:
            while True:
                finished = done.is_set()  # read before the last poll: it must see everything
                events = store.events_after(seen[-1] if seen else 0, 1000)
                seen.extend(e.id for e in events)
                if finished and not events:
                    return

        def write(n: int) -> None:
            for _ in range(30):
                store.create_version(f"m{n}")

        follower = threading.Thread(target=follow)
        follower.start()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(write, range(8)))
        done.set()
        follower.join(timeout=60)
        assert seen == [e.id for e in store.events_after(0, 1000)]
    finally:
        store.engine.dispose()
