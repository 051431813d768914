"""The store's shared machinery: the engine, read and write transactions, the event append, and
the rows every concern looks up (a model, a version, their aliases).

Write transactions are marked so SQLite starts them with ``BEGIN IMMEDIATE`` (see ``db.engine``);
on PostgreSQL, events are appended under a transaction-scoped advisory lock so that they commit
in id order and a reader following ``/events?after=N`` can never skip one that committed late.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Self, cast

from sqlalchemy import Connection, Engine, Integer, Row, String, Table, bindparam, insert, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from modelyard.registry.db import models as db
from modelyard.registry.db.change_listener import CHANNEL, ChangeListener
from modelyard.registry.db.engine import WRITE_OPTION
from modelyard.registry.db.fast_reads import SqliteFastReader
from modelyard.registry.db.file_guard import DatabaseFileGuard, sqlite_file
from modelyard.registry.db.prepare import prepare_database
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.errors import NotFound, Unavailable
from modelyard.registry.store.read_cache import (EVERYTHING, NOTHING_CACHED, ReadCache, model_scope, payload,
                                                 scopes_of)

EVENT_LOCK_KEY = 0x6D6F64656C  # "model": any constant shared by all registry replicas


METRICS_IMMUTABLE_RULE = "metrics-immutable-once-ready"
"""Named in the 409 that refuses changing a ready version's metrics."""


# Hot-path statements are built once: constructing a select costs more than running it on SQLite.
_VERSION_COLUMNS = (
    db.ModelVersion.id, db.ModelVersion.version, db.ModelVersion.status, db.ModelVersion.digest,
    db.ModelVersion.size, db.ModelVersion.format, db.ModelVersion.description,
    db.ModelVersion.meta.label("meta"),  # the column is "metadata"; both row kinds then read .meta
    db.ModelVersion.metrics, db.ModelVersion.tags, db.ModelVersion.source, db.ModelVersion.created_by,
    db.ModelVersion.created_at, db.ModelVersion.updated_at, db.ModelVersion.bento_tag,
    db.ModelVersion.bento_digest, db.ModelVersion.bento_size,
)
_SELECT_ALIAS = (
    select(db.ModelVersion.version, db.ModelVersion.digest)
    .select_from(db.Alias)
    .join(db.RegisteredModel, db.Alias.model_id == db.RegisteredModel.id)
    .join(db.ModelVersion, db.Alias.version_id == db.ModelVersion.id)
    .where(db.RegisteredModel.name == bindparam("model_name"), db.Alias.alias == bindparam("alias_name"))
)
_SELECT_MODEL_ID = select(db.RegisteredModel.id).where(db.RegisteredModel.name == bindparam("model_name"))
_SELECT_VERSION = (
    select(*_VERSION_COLUMNS)
    .join(db.RegisteredModel, db.ModelVersion.model_id == db.RegisteredModel.id)
    .where(db.RegisteredModel.name == bindparam("model_name"), db.ModelVersion.version == bindparam("number"))
)
_SELECT_VERSION_ALIASES = (
    select(db.Alias.alias).where(db.Alias.version_id == bindparam("version_id")).order_by(db.Alias.alias)
)
_SELECT_ALIASES_OF_VERSIONS = (
    select(db.Alias.version_id, db.Alias.alias)
    .where(db.Alias.version_id.in_(bindparam("version_ids", expanding=True))).order_by(db.Alias.alias)
)
_ALLOCATE_VERSION = (
    update(db.RegisteredModel)
    .where(db.RegisteredModel.name == bindparam("model_name"))
    .values(last_version=db.RegisteredModel.last_version + 1, updated_at=bindparam("now"))
    .returning(db.RegisteredModel.id, db.RegisteredModel.last_version)
)
# Inserts get their values as execution parameters, so the statement is compiled once.
_INSERT_MODEL = insert(cast(Table, db.RegisteredModel.__table__))
_INSERT_VERSION = insert(cast(Table, db.ModelVersion.__table__))
_INSERT_EVENT = insert(cast(Table, db.Event.__table__))
_NOTIFY_CHANGES = text(f"SELECT pg_notify('{CHANNEL}', :scopes)")
# A transaction's last statement before COMMIT when it appended events (PostgreSQL): it takes the
# event lock, announces the change and appends the event in one round trip.  The lock then serializes
# only this statement and the COMMIT of every writer, not their whole work; the row the INSERT
# numbers comes out of the CTEs, so the lock is held before its id is drawn.
_FINISH_WITH_EVENT = text(
    "WITH locked AS (SELECT pg_advisory_xact_lock(:key)), "
    f"announced AS (SELECT pg_notify('{CHANNEL}', :scopes)) "
    "INSERT INTO events (type, model, version, alias, time) "
    "SELECT :type, :model, :version, :alias, :time FROM locked, announced"
).bindparams(bindparam("scopes", type_=String()), bindparam("type", type_=String()),
             bindparam("model", type_=String()), bindparam("version", type_=Integer()),
             bindparam("alias", type_=String()), bindparam("time", type_=db.UTCDateTime()))


TagFilter = Mapping[str, str] | Sequence[tuple[str, str]] | None
"""Tags a listed item must all carry: a mapping, or (key, value) pairs as the query string repeats them."""


def _tag_pairs(tags: TagFilter) -> Iterable[tuple[str, str]]:
    return tags.items() if isinstance(tags, Mapping) else (tags or ())


def _bento(row: Any) -> schemas.Bento | None:
    if row.bento_digest is None:
        return None
    return schemas.Bento(tag=row.bento_tag, digest=row.bento_digest, size=row.bento_size)


def version_from_row(model_name: str, row: Row[Any] | db.ModelVersion, aliases: list[str],
                     deployments: list[dict[str, Any]] | None = None,
                     evaluations: list[dict[str, Any]] | None = None, *,
                     signatures: list[dict[str, Any]] | None = None) -> schemas.Version:
    """The API's Version from a row of ``_VERSION_COLUMNS`` or an ORM ModelVersion: one converter, so
    a new column is added in one place."""
    total = getattr(deployments, "total", len(deployments or ()))
    return schemas.Version(
        model=model_name, version=row.version, status=row.status, digest=row.digest, size=row.size,
        format=row.format, description=row.description, metadata=row.meta, metrics=row.metrics,
        tags=row.tags, aliases=aliases, source=row.source, bento=_bento(row), created_by=row.created_by,
        created_at=row.created_at, updated_at=row.updated_at, deployments=deployments or [],
        deployments_total=total, deployments_link=(
            f"/api/v1/deployments?model={model_name}&version={row.version}" if total > len(deployments or ()) else None),
        evaluations=evaluations or [], signatures=signatures or [],
    )


class StoreBase:
    """The engine and its transactions, shared by every concern of the store."""

    def __init__(self, engine: Engine, *,
                 deployment_stale_seconds: float = defaults.DEPLOYMENT_STALE_SECONDS) -> None:
        # Reads on PostgreSQL run in autocommit: under READ COMMITTED every statement takes its own
        # snapshot inside a transaction too, so BEGIN and the ROLLBACK on return were two round trips
        # per read that bought nothing (a read is 3 round trips instead of 1 otherwise).  Writes keep
        # their transactions (``_write_engine``).
        self.engine = (engine.execution_options(isolation_level="AUTOCOMMIT")
                       if engine.dialect.name == "postgresql" else engine)
        self.stale_after = timedelta(seconds=deployment_stale_seconds)
        """A deployment not reported for this long is stale (``store.deployments``)."""
        self.event_listeners: list[Callable[[], None]] = []
        """Called (from the writing thread) after a transaction that appended events commits."""
        self.change_listeners: list[Callable[[], None]] = []
        """Called (from the change listener's thread) when a change committed by any process, this
        one included, is heard (PostgreSQL, ``listen_for_changes``)."""
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False)
        self._ordered_events = engine.dialect.name == "postgresql"
        # SQLite has one writer at a time.  Queueing writers on a lock in this process is
        # far faster than letting them collide in SQLite, whose busy handler sleeps in
        # steps of up to 100 ms; other processes are still handled by the busy timeout.
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext())
        self.inline_reads = engine.dialect.name == "sqlite"
        """Reads are local-file lookups of microseconds: cheaper run in place than handed to a thread."""
        self.inline_writes = False
        """Set by a server that is the database's only writer process (see ``server.calls``)."""
        self._fast = SqliteFastReader(engine) if engine.dialect.name == "sqlite" else None
        path = sqlite_file(engine)
        self._file_guard = DatabaseFileGuard(path) if path is not None and path.exists() else None
        self.damage: str | None = None
        """What the start-up integrity check found wrong with the database, if anything."""
        self.cache = ReadCache(defaults.READ_CACHE_ENTRIES,
                               unannounced=self._fast.data_changed if self._fast is not None else None)
        """Hot answers: on SQLite while nothing was committed since (asked before each lookup); on
        PostgreSQL while every replica's changes are heard (``listen_for_changes``)."""
        self.cache.live = self._fast is not None
        self._listener: ChangeListener | None = None

    def listen_for_changes(self, ping_seconds: float = defaults.CHANGE_PING_SECONDS) -> None:
        """Start serving hot reads from ``cache`` on PostgreSQL (SQLite's serves from the start): a
        thread hears every replica's committed changes and drops what they touched."""
        if self._ordered_events and self._listener is None:
            self._listener = ChangeListener(self._write_engine.engine.url, self._heard, self.cache.set_live,
                                            ping_seconds=ping_seconds)
            self._listener.start()

    def stop_listening(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    def _heard(self, changed: str) -> None:
        self.cache.invalidate(scopes_of(changed))
        for listener in self.change_listeners:
            listener()

    @classmethod
    def open(cls, db_url: str, migrate_on_start: bool | None = None, *,
             deployment_stale_seconds: float = defaults.DEPLOYMENT_STALE_SECONDS) -> Self:
        """A store on ``db_url`` with its schema at head (``db.prepare``); the server and the admin
        commands open it this way."""
        prepared = prepare_database(db_url, migrate_on_start)
        store = cls(prepared.engine, deployment_stale_seconds=deployment_stale_seconds)
        store.damage = prepared.damage
        return store

    def problem(self) -> str | None:
        """Why the database must not be written to (deleted, replaced or damaged), or None."""
        if self._file_guard is not None and (moved := self._file_guard.problem()):
            return moved
        if self.damage:
            return f"the database failed its integrity check at start-up ({self.damage}): writes are refused"
        return None

    def _check_writable(self) -> None:
        if (self._file_guard is not None or self.damage) and (problem := self.problem()):
            raise Unavailable(problem)

    # -- sessions -----------------------------------------------------------------

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._reader() as session, session.begin():
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        """An ORM write transaction (for the less frequent, multi-row operations)."""
        self._check_writable()
        with self._write_lock, self._writer() as session:
            with session.begin():
                yield session
                session.flush()  # the rows first, so that the event lock is held for the append only
                changed, emitted = self._finish(session)
        self._committed(changed, emitted)

    @contextmanager
    def _write_core(self) -> Iterator[Connection]:
        """A Core write transaction, for the frequent writes (no unit-of-work overhead)."""
        self._check_writable()
        with self._write_lock, self._write_engine.connect() as connection:
            connection.info.pop("events", None)
            connection.info.pop("changed", None)
            with connection.begin():
                yield connection
                changed, emitted = self._finish(connection)
        self._committed(changed, emitted)

    def _finish(self, session: Session | Connection) -> tuple[list[str], bool]:
        """The end of a write transaction, before its COMMIT: tell every replica what it changed
        (``store.read_cache``: the scopes it declared with ``_changes``, everything when it declared
        none), and append its events, on PostgreSQL under the event lock so that events commit in id
        order (see the module's docstring).  Returns the scopes, and whether events were appended."""
        declared = session.info.pop("changed", None) or {EVERYTHING}
        changed = sorted(declared - {NOTHING_CACHED})
        events = session.info.pop("events", None) or []
        rest = events
        if self._ordered_events:
            if events:
                session.execute(_FINISH_WITH_EVENT, {"key": EVENT_LOCK_KEY, "scopes": payload(changed), **events[0]})
                rest = events[1:]
            elif changed:
                session.execute(_NOTIFY_CHANGES, {"scopes": payload(changed)})
        for event in rest:
            session.execute(_INSERT_EVENT, event)
        return changed, bool(events)

    def _committed(self, changed: list[str], emitted: bool) -> None:
        # Dropped here too, before the write returns: a client reads its own write on this replica
        # whatever the notification's delay.
        self.cache.invalidate(changed)
        if emitted:
            self._notify()

    @staticmethod
    def _changes(session: Session | Connection, model: str | None) -> None:
        """Declare that this write transaction changes what is read about ``model`` (and nothing
        outside it, unless declared too); "" is anything, None nothing a cached read answers."""
        scope = NOTHING_CACHED if model is None else model_scope(model) if model else EVERYTHING
        session.info.setdefault("changed", set()).add(scope)

    def _notify(self) -> None:
        for listener in self.event_listeners:
            listener()

    def ping(self) -> None:
        """Raise if the database cannot answer (``/readyz``)."""
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # -- helpers --------------------------------------------------------------------

    def _emit(self, session: Session | Connection, type_: str, model: str, version: int | None = None,
              alias: str | None = None) -> None:
        """Append an event to the caller's write transaction (ORM session or Core connection), as its
        last statement (``_finish``)."""
        session.info.setdefault("events", []).append(
            {"type": type_, "model": model, "version": version, "alias": alias, "time": db.utcnow()})
        self._changes(session, model)

    @staticmethod
    def _model_row(session: Session, name: str, *, lock: bool = False) -> db.RegisteredModel:
        """The model's row; ``lock`` (in write transactions) takes its row lock on PostgreSQL,
        so concurrent writes to one model's versions and aliases run one after another
        (a version cannot be deleted while an alias is being pointed at it).  SQLite
        writers are serialized anyway."""
        query = select(db.RegisteredModel).where(db.RegisteredModel.name == name)
        if lock:
            query = query.with_for_update()
        row = session.scalars(query).one_or_none()
        if row is None:
            raise NotFound(f"model {name!r} does not exist")
        return row

    @staticmethod
    def _version_row(session: Session, model: db.RegisteredModel, version: int) -> db.ModelVersion:
        row = session.scalars(
            select(db.ModelVersion).where(db.ModelVersion.model_id == model.id, db.ModelVersion.version == version)
        ).one_or_none()
        if row is None:
            raise NotFound(f"version {version} of model {model.name!r} does not exist")
        return row

    @staticmethod
    def _aliases_of_model(session: Session, model_id: int) -> dict[str, int]:
        rows = session.execute(
            select(db.Alias.alias, db.ModelVersion.version)
            .join(db.ModelVersion, db.Alias.version_id == db.ModelVersion.id)
            .where(db.Alias.model_id == model_id)
            .order_by(db.Alias.alias)
        )
        return {alias: version for alias, version in rows}

    @staticmethod
    def _aliases_by_version(session: Session | Connection, version_ids: Sequence[int]) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {vid: [] for vid in version_ids}
        if version_ids:
            rows = session.execute(_SELECT_ALIASES_OF_VERSIONS, {"version_ids": list(version_ids)})
            for version_id, alias in rows:
                result[version_id].append(alias)
        return result

    @staticmethod
    def _to_model(row: db.RegisteredModel, aliases: dict[str, int]) -> schemas.Model:
        return schemas.Model(
            name=row.name, description=row.description, tags=row.tags,
            latest_version=row.last_version or None, aliases=aliases,
            created_at=row.created_at, updated_at=row.updated_at,
        )

