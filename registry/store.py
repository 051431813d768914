"""The registry store: every registry operation as one database transaction.

No HTTP here (that is ``server``) and no bytes (that is ``artifacts``): the
store answers with the API's shapes from ``schemas`` and raises the typed errors
from ``errors``.  Write transactions are marked so SQLite starts them with
``BEGIN IMMEDIATE`` (see ``db.engine``); on PostgreSQL, events are appended
under a transaction-scoped advisory lock so that they commit in id order and a
reader following ``/events?after=N`` can never skip one that committed late.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (Connection, Engine, Row, and_, bindparam, delete, exists, func, insert, or_, select, text,
                        update)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.cursors import decode_cursor, encode_cursor
from modelyard.registry.db import models as db
from modelyard.registry.db.engine import WRITE_OPTION
from modelyard.registry.db.fast_reads import SqliteFastReader
from modelyard.registry.db.file_guard import DatabaseFileGuard, sqlite_file
from modelyard.registry.db.prepare import prepare_database
from modelyard.registry.alias_rules import failures, read_by
from modelyard.registry.deployment_records import DeploymentRecords
from modelyard.registry.kernel.errors import BadRequest, Conflict, Forbidden, NotFound, Unavailable

SCOPES = ("read", "report", "write", "admin")
"""Each scope includes the ones before it; ``report`` is an operator's: read, and report deployments."""

EVENT_LOCK_KEY = 0x6D6F64656C  # "model": any constant shared by all registry replicas
BLOB_LOCK_KEY = 0x626C6F62  # "blob": serializes garbage collection against uploads being registered

PENDING_UPLOAD_TTL = timedelta(hours=24)
"""How long an upload in flight protects its blob; a crashed upload's claim lapses after this."""

METRICS_IMMUTABLE_RULE = "metrics-immutable-once-ready"
"""Named in the 409 that refuses changing a ready version's metrics."""

AUTH_KEY = "auth"
EVENTS_PRUNED_KEY = "events_pruned_through"
AUTH_ON, AUTH_OPEN = "on", "open"


def scope_allows(granted: str, needed: str) -> bool:
    return SCOPES.index(granted) >= SCOPES.index(needed)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
_ALLOCATE_VERSION = (
    update(db.RegisteredModel)
    .where(db.RegisteredModel.name == bindparam("model_name"))
    .values(last_version=db.RegisteredModel.last_version + 1, updated_at=bindparam("now"))
    .returning(db.RegisteredModel.id, db.RegisteredModel.last_version)
)
# Inserts get their values as execution parameters, so the statement is compiled once.
_INSERT_MODEL = insert(db.RegisteredModel.__table__)
_INSERT_VERSION = insert(db.ModelVersion.__table__)
_INSERT_EVENT = insert(db.Event.__table__)
_INSERT_CLAIM = insert(db.PendingBlob.__table__).returning(db.PendingBlob.id)
_SELECT_TOKEN = select(db.ApiToken.name, db.ApiToken.scope, db.ApiToken.cluster).where(
    db.ApiToken.token_hash == bindparam("token_hash"), db.ApiToken.revoked_at.is_(None))
_SELECT_AUTH_STATE = select(db.RegistryState.value).where(db.RegistryState.key == AUTH_KEY)
# One statement, so one snapshot: a blob is in use while a version (as artifact or Bento) or an
# unexpired upload claims it.  Two separate reads could straddle the commit that swaps the claim.
_BLOB_IN_USE = select(or_(
    exists().where(db.ModelVersion.digest == bindparam("digest")),
    exists().where(db.ModelVersion.bento_digest == bindparam("digest")),
    exists().where(db.PendingBlob.digest == bindparam("digest"), db.PendingBlob.started_at > bindparam("since")),
))
_SELECT_EVENTS = (select(db.Event.id, db.Event.type, db.Event.model, db.Event.version, db.Event.alias, db.Event.time)
                  .where(db.Event.id > bindparam("after")).order_by(db.Event.id).limit(bindparam("limit")))


TagFilter = Mapping[str, str] | Sequence[tuple[str, str]] | None
"""Tags a listed item must all carry: a mapping, or (key, value) pairs as the query string repeats them."""
def _tag_pairs(tags: TagFilter) -> Iterable[tuple[str, str]]:
    return tags.items() if isinstance(tags, Mapping) else (tags or ())


def _bento(row: Any) -> schemas.Bento | None:
    if row.bento_digest is None:
        return None
    return schemas.Bento(tag=row.bento_tag, digest=row.bento_digest, size=row.bento_size)


def version_from_row(model_name: str, row: Row[Any] | db.ModelVersion, aliases: list[str],
                     deployments: list[dict[str, Any]] | None = None) -> schemas.Version:
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
    )


@dataclass(frozen=True)
class TokenInfo:
    id: int
    name: str
    scope: str
    created_at: datetime
    revoked: bool
    cluster: str | None = None


@dataclass(frozen=True)
class TokenIdentity:
    """What a valid token is: its name (unique among live tokens), scope, and for a ``report``
    token the cluster it may report for."""

    name: str
    scope: str
    cluster: str | None = None


def _check_binding(scope: str, cluster: str | None) -> str | None:
    """A ``report`` token must name the one cluster it reports for; no other scope takes one."""
    if scope not in SCOPES:
        raise BadRequest(f"unknown scope {scope!r}: use one of {', '.join(SCOPES)}")
    if scope == "report":
        if not cluster:
            raise BadRequest("a report token is bound to the cluster it reports for: pass its cluster name "
                             "(the operator's clusterName)")
        return schemas.validated(_Cluster, cluster=cluster).cluster
    if cluster:
        raise BadRequest(f"only a report token is bound to a cluster, not a {scope} token")
    return None


class _Cluster(schemas._Strict):
    cluster: schemas.ClusterName


class RegistryStore(DeploymentRecords):
    """Registry operations over a SQLAlchemy engine (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, *,
                 deployment_stale_seconds: float = defaults.DEPLOYMENT_STALE_SECONDS) -> None:
        self.engine = engine
        self.stale_after = timedelta(seconds=deployment_stale_seconds)
        """A deployment not reported for this long is stale (``deployment_records``)."""
        self.event_listeners: list[Callable[[], None]] = []
        """Called (from the writing thread) after a transaction that appended events commits."""
        self._write_engine = engine.execution_options(**{WRITE_OPTION: True})
        self._reader = sessionmaker(engine, expire_on_commit=False)
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

    @classmethod
    def open(cls, db_url: str, migrate_on_start: bool | None = None, *,
             deployment_stale_seconds: float = defaults.DEPLOYMENT_STALE_SECONDS) -> RegistryStore:
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
        if session.info.get("emitted"):
            self._notify()

    @contextmanager
    def _write_core(self) -> Iterator[Connection]:
        """A Core write transaction, for the frequent writes (no unit-of-work overhead)."""
        self._check_writable()
        emitted = False
        with self._write_lock, self._write_engine.connect() as connection:
            connection.info.pop("emitted", None)
            with connection.begin():
                yield connection
            emitted = bool(connection.info.pop("emitted", False))
        if emitted:
            self._notify()

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
        """Append an event inside the caller's write transaction (ORM session or Core connection)."""
        if self._ordered_events:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": EVENT_LOCK_KEY})
        session.info["emitted"] = True
        session.execute(_INSERT_EVENT, {"type": type_, "model": model, "version": version, "alias": alias,
                                        "time": db.utcnow()})

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
    def _aliases_by_version(session: Session, version_ids: Sequence[int]) -> dict[int, list[str]]:
        result: dict[int, list[str]] = {vid: [] for vid in version_ids}
        if version_ids:
            rows = session.execute(
                select(db.Alias.version_id, db.Alias.alias)
                .where(db.Alias.version_id.in_(version_ids))
                .order_by(db.Alias.alias)
            )
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

    # -- models ---------------------------------------------------------------------

    def create_model(self, name: str, description: str = "", tags: Mapping[str, str] | None = None) -> schemas.Model:
        """See ``RegistryOperations.create_model``."""
        body = schemas.validated(schemas.ModelCreate, name=name, description=description, tags=dict(tags or {}))
        now = db.utcnow()
        try:
            with self._write_core() as connection:
                connection.execute(_INSERT_MODEL, {
                    "name": body.name, "description": body.description, "tags": dict(body.tags), "last_version": 0,
                    "created_at": now, "updated_at": now})
                self._emit(connection, "model.created", body.name)
        except IntegrityError as exc:
            raise Conflict(f"model {body.name!r} already exists") from exc
        return schemas.Model(name=body.name, description=body.description, tags=dict(body.tags), latest_version=None,
                             aliases={}, created_at=now, updated_at=now)

    def get_model(self, name: str) -> schemas.Model:
        with self._read() as session:
            row = self._model_row(session, name)
            return self._to_model(row, self._aliases_of_model(session, row.id))

    def list_models(self, *, prefix: str | None = None, tags: TagFilter = None,
                    alias: str | None = None, limit: int = 100,
                    cursor: str | None = None) -> schemas.Page[schemas.Model]:
        """See ``RegistryOperations.list_models``; ``tags`` may also be (key, value) pairs."""
        query = select(db.RegisteredModel).order_by(db.RegisteredModel.name).limit(limit + 1)
        if prefix:
            escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(db.RegisteredModel.name.like(escaped + "%", escape="\\"))
        for key, value in _tag_pairs(tags):
            query = query.where(db.RegisteredModel.tags[key].as_string() == value)
        if alias:
            query = query.where(
                select(db.Alias.id)
                .where(and_(db.Alias.model_id == db.RegisteredModel.id, db.Alias.alias == alias))
                .exists()
            )
        if cursor:
            query = query.where(db.RegisteredModel.name > decode_cursor(cursor))
        with self._read() as session:
            rows = list(session.scalars(query))
            more = len(rows) > limit
            rows = rows[:limit]
            alias_map: dict[int, dict[str, int]] = {row.id: {} for row in rows}
            if rows:
                for model_id, alias_name, version in session.execute(
                    select(db.Alias.model_id, db.Alias.alias, db.ModelVersion.version)
                    .join(db.ModelVersion, db.Alias.version_id == db.ModelVersion.id)
                    .where(db.Alias.model_id.in_(alias_map))
                    .order_by(db.Alias.alias)
                ):
                    alias_map[model_id][alias_name] = version
            items = [self._to_model(row, alias_map[row.id]) for row in rows]
        return schemas.ModelPage(
            items=items, next_cursor=encode_cursor(rows[-1].name) if more else None
        )

    def update_model(self, name: str, *, description: str | None = None,
                     tags: Mapping[str, str] | None = None) -> schemas.Model:
        """See ``RegistryOperations.update_model``."""
        body = schemas.validated(schemas.ModelUpdate, description=description,
                                 tags=None if tags is None else dict(tags))
        with self._write() as session:
            row = self._model_row(session, name, lock=True)
            if body.description is not None:
                row.description = body.description
            if body.tags is not None:
                row.tags = dict(body.tags)
            row.updated_at = db.utcnow()
            return self._to_model(row, self._aliases_of_model(session, row.id))

    def delete_model(self, name: str, *, force: bool = False) -> None:
        """See ``RegistryOperations.delete_model``.  The blobs it frees wait for the periodic sweep;
        the server uses :meth:`remove_model` to delete them at once."""
        self.remove_model(name, force=force)

    def remove_model(self, name: str, *, force: bool = False) -> list[str]:
        """Delete a model and its versions; refused while any alias exists.

        Returns the artifact digests no remaining version refers to, for
        :meth:`collect_blobs` once the rows are gone.
        """
        with self._write() as session:
            row = self._model_row(session, name, lock=True)
            if not force:
                self._refuse_while_served(session, name, None, f"model {name!r}")
            aliases = self._aliases_of_model(session, row.id)
            if aliases:
                listed = ", ".join(f"{a} → {v}" for a, v in aliases.items())
                raise Conflict(f"model {name!r} still has aliases ({listed}); delete them first",
                               extra={"aliases": aliases})
            digests = {digest for pair in session.execute(
                select(db.ModelVersion.digest, db.ModelVersion.bento_digest).where(db.ModelVersion.model_id == row.id)
            ) for digest in pair if digest}
            session.execute(delete(db.ModelVersion).where(db.ModelVersion.model_id == row.id))
            # Reports were made for this model's bytes: a model re-created under the name starts clean.
            session.execute(delete(db.Deployment).where(db.Deployment.model == name))
            session.delete(row)
            self._emit(session, "model.deleted", name)
            session.flush()
            return self._orphaned(session, digests)

    @staticmethod
    def _orphaned(session: Session, digests: set[str]) -> list[str]:
        """Those of ``digests`` that no version refers to any more, as artifact or as Bento."""
        if not digests:
            return []
        still_used = set(session.scalars(
            select(db.ModelVersion.digest).where(db.ModelVersion.digest.in_(digests))
        )) | set(session.scalars(
            select(db.ModelVersion.bento_digest).where(db.ModelVersion.bento_digest.in_(digests))
        ))
        return sorted(digests - still_used)

    # -- versions ---------------------------------------------------------------------

    def create_version(self, name: str, *, format: str | None = None, description: str = "",
                       metadata: Mapping[str, Any] | None = None, metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None, source: str | None = None,
                       created_by: str | None = None) -> schemas.Version:
        """See ``RegistryOperations.create_version``; ``created_by`` names the caller (the server's)."""
        body = schemas.validated(schemas.VersionCreate, format=format, description=description,
                          metadata=dict(metadata or {}), metrics=dict(metrics or {}), tags=dict(tags or {}),
                          source=source)
        now = db.utcnow()
        values = {
            "status": schemas.VersionStatus.pending.value, "digest": None, "size": None,
            "format": body.format.value if body.format else None, "description": body.description,
            "metadata": dict(body.metadata), "metrics": dict(body.metrics), "tags": dict(body.tags),
            "source": body.source, "created_by": created_by, "created_at": now, "updated_at": now,
        }
        with self._write_core() as connection:
            allocated = connection.execute(_ALLOCATE_VERSION, {"model_name": name, "now": now}).first()
            if allocated is None:
                raise NotFound(f"model {name!r} does not exist")
            model_id, number = allocated
            connection.execute(_INSERT_VERSION, {"model_id": model_id, "version": number, **values})
            self._emit(connection, "version.created", name, number)
        return schemas.Version(model=name, version=number, aliases=[], **values)

    def get_version(self, name: str, version: int) -> schemas.Version:
        with self.engine.connect() as connection:
            row = connection.execute(_SELECT_VERSION, {"model_name": name, "number": version}).first()
            if row is None:
                if connection.execute(_SELECT_MODEL_ID, {"model_name": name}).first() is None:
                    raise NotFound(f"model {name!r} does not exist")
                raise NotFound(f"version {version} of model {name!r} does not exist")
            aliases = list(connection.scalars(_SELECT_VERSION_ALIASES, {"version_id": row.id}))
            deployments = self._deployments_of(connection, name, [version])[version]
        return version_from_row(name, row, aliases, deployments)

    def list_versions(self, name: str, *, order: str = "asc", status: str | None = None,
                      tags: TagFilter = None, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.Version]:
        """See ``RegistryOperations.list_versions``; ``tags`` may also be (key, value) pairs."""
        descending = order == "desc"
        number = db.ModelVersion.version
        with self._read() as session:
            model = self._model_row(session, name)
            # The same columns as a single version's answer (one converter), without ORM entity loading.
            query = (select(*_VERSION_COLUMNS).where(db.ModelVersion.model_id == model.id)
                     .order_by(number.desc() if descending else number.asc()).limit(limit + 1))
            if status:
                query = query.where(db.ModelVersion.status == status)
            for key, value in _tag_pairs(tags):
                query = query.where(db.ModelVersion.tags[key].as_string() == value)
            if cursor:
                raw = decode_cursor(cursor)
                if not raw.isdigit() or len(raw) > 10 or int(raw) > schemas.MAX_VERSION:
                    raise BadRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
                query = query.where(number < int(raw) if descending else number > int(raw))
            rows = list(session.execute(query))
            more = len(rows) > limit
            rows = rows[:limit]
            aliases = self._aliases_by_version(session, [row.id for row in rows])
            served = self._deployments_of(session, name, [row.version for row in rows])
            items = [version_from_row(name, row, aliases[row.id], served[row.version]) for row in rows]
        return schemas.VersionPage(
            items=items, next_cursor=encode_cursor(rows[-1].version) if more else None
        )

    def update_version(self, name: str, version: int, *, description: str | None = None,
                       metrics: Mapping[str, float] | None = None,
                       tags: Mapping[str, str] | None = None) -> schemas.Version:
        """See ``RegistryOperations.update_version``."""
        body = schemas.validated(schemas.VersionUpdate, description=description,
                          metrics=None if metrics is None else dict(metrics), tags=None if tags is None else dict(tags))
        with self._write() as session:
            row = self._version_row(session, self._model_row(session, name, lock=True), version)
            if body.description is not None:
                row.description = body.description
            if body.metrics is not None and dict(body.metrics) != row.metrics:
                if row.status == schemas.VersionStatus.ready.value:
                    raise Conflict(
                        f"version {version} of model {name!r} is ready: its metrics are immutable (the numbers a "
                        "protected alias judges a version on must not change once it can be aliased); record new "
                        "measurements on a new version", extra={"rule": METRICS_IMMUTABLE_RULE})
                row.metrics = dict(body.metrics)
            if body.tags is not None:
                row.tags = dict(body.tags)
            row.updated_at = db.utcnow()
            return version_from_row(name, row, self._aliases_by_version(session, [row.id])[row.id])

    def delete_version(self, name: str, version: int, *, force: bool = False) -> None:
        """See ``RegistryOperations.delete_version`` (and ``delete_model`` on the blobs it frees)."""
        self.remove_version(name, version, force=force)

    def remove_version(self, name: str, version: int, *, force: bool = False) -> list[str]:
        """Delete one version; refused (409) while an alias points at it.

        Returns its artifact and Bento digests that no other version shares, for
        :meth:`collect_blobs`.
        """
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            row = self._version_row(session, model, version)
            if not force:
                self._refuse_while_served(session, name, version, f"version {version} of model {name!r}")
            aliases = self._aliases_by_version(session, [row.id])[row.id]
            if aliases:
                raise Conflict(
                    f"version {version} of model {name!r} is the target of alias(es) {', '.join(aliases)}; "
                    "move or delete the alias first", extra={"aliases": aliases},
                )
            digests = {d for d in (row.digest, row.bento_digest) if d}
            session.delete(row)
            self._emit(session, "version.deleted", name, version)
            session.flush()
            return self._orphaned(session, digests)

    def check_uploadable(self, name: str, version: int) -> schemas.Version:
        """The version an upload targets; 409 when its artifact is already in place."""
        current = self.get_version(name, version)
        if current.status == schemas.VersionStatus.ready:
            raise Conflict(f"version {version} of model {name!r} already has its artifact ({current.digest}); "
                           "artifacts are immutable: create a new version")
        return current

    def mark_ready(self, name: str, version: int, digest: str, size: int, *, format: str | None = None,
                   claim: int | None = None, facts: Mapping[str, Any] | None = None) -> schemas.Version:
        """Record a verified artifact and make the version ``ready`` (emits ``version.ready``).

        ``format`` is the kind read from the stored file (it fills in an undeclared one);
        ``claim`` (from :meth:`begin_upload`) is consumed in the same transaction, so the
        blob passes from the upload's protection to the version's without a gap.  ``facts``
        are what the registry read from the stored bytes; they replace the same keys of the
        version's metadata, so a client cannot claim other facts than its file has.
        """
        with self._write() as session:
            self._consume_claim(session, claim)
            row = self._version_row(session, self._model_row(session, name, lock=True), version)
            if row.status == schemas.VersionStatus.ready.value:
                if row.digest != digest:
                    raise Conflict(f"version {version} of model {name!r} became ready with another artifact "
                                   f"({row.digest}) during this upload")
            else:
                row.status, row.digest, row.size = schemas.VersionStatus.ready.value, digest, size
                row.format = row.format or format
                if facts:
                    row.meta = {**row.meta, **facts}
                row.updated_at = db.utcnow()
                self._emit(session, "version.ready", name, version)
            return version_from_row(name, row, self._aliases_by_version(session, [row.id])[row.id])

    def mark_packaged(self, name: str, version: int, tag: str, digest: str, size: int, *,
                      claim: int | None = None) -> schemas.Version:
        """Record the version's verified Bento (emits ``version.packaged``).

        Packaging is deterministic per version, so a second identical upload is a
        no-op; a different Bento is refused until the recorded one is removed.
        """
        with self._write() as session:
            self._consume_claim(session, claim)
            row = self._version_row(session, self._model_row(session, name, lock=True), version)
            if row.status != schemas.VersionStatus.ready.value:
                raise Conflict(f"version {version} of model {name!r} is {row.status}: package it once its "
                               "artifact is uploaded")
            if row.bento_digest is not None and row.bento_digest != digest:
                raise Conflict(f"{name}:{version} is already packaged as {row.bento_tag} ({row.bento_digest}); "
                               "delete that Bento first to replace it")
            if row.bento_digest is None:
                row.bento_tag, row.bento_digest, row.bento_size = tag, digest, size
                row.updated_at = db.utcnow()
                self._emit(session, "version.packaged", name, version)
            return version_from_row(name, row, self._aliases_by_version(session, [row.id])[row.id])

    def clear_bento(self, name: str, version: int) -> list[str]:
        """Forget the version's Bento (emits ``version.unpackaged``); returns its digest when nothing
        else refers to it, for :meth:`collect_blobs`."""
        with self._write() as session:
            row = self._version_row(session, self._model_row(session, name, lock=True), version)
            if row.bento_digest is None:
                raise NotFound(f"{name}:{version} has no Bento")
            digest = row.bento_digest
            row.bento_tag = row.bento_digest = row.bento_size = None
            row.updated_at = db.utcnow()
            self._emit(session, "version.unpackaged", name, version)
            session.flush()
            return self._orphaned(session, {digest})

    # -- blobs: uploads in flight and garbage -------------------------------------------
    #
    # Deletes never unlink blobs themselves: content-addressed bytes may be claimed again by
    # an upload of the same content at any moment.  Uploads claim their digest before the
    # first byte is stored; the collector deletes a blob only while holding the blob lock and
    # after one consistent check that no version and no live claim refers to it.

    def _lock_blobs(self, session: Session | Connection) -> None:
        """The blob lock, inside a write transaction.  SQLite's write transactions exclude each
        other already (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock."""
        if self._ordered_events:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BLOB_LOCK_KEY})

    @staticmethod
    def _consume_claim(session: Session, claim: int | None) -> None:
        if claim is not None:
            session.execute(delete(db.PendingBlob).where(db.PendingBlob.id == claim))

    def begin_upload(self, digest: str) -> int:
        """Claim ``digest`` for an upload about to store it; returns the claim.

        While the claim lives (until :meth:`mark_ready`/:meth:`mark_packaged` consume it,
        :meth:`end_upload` releases it, or ``PENDING_UPLOAD_TTL`` passes) the collector
        leaves the blob alone, even when no version refers to it yet.
        """
        with self._write_core() as connection:
            self._lock_blobs(connection)
            return int(connection.execute(_INSERT_CLAIM, {"digest": digest, "started_at": db.utcnow()}).scalar_one())

    def end_upload(self, claim: int) -> None:
        """Release an upload's claim (a no-op once it was consumed)."""
        with self._write_core() as connection:
            connection.execute(delete(db.PendingBlob).where(db.PendingBlob.id == claim))

    def collect_blobs(self, digests: Iterable[str], delete_blob: Callable[[str], None]) -> list[str]:
        """Delete, through ``delete_blob(hex)``, those of ``digests`` that nothing uses; returns them.

        Each check and its delete run in one write transaction under the blob lock, so an
        upload claiming the same digest waits for the delete to finish (and then stores
        the bytes anew) or is seen by the check (and the blob is kept).
        """
        deleted = []
        for digest in sorted(set(digests)):
            with self._write_core() as connection:
                self._lock_blobs(connection)
                in_use = connection.scalar(_BLOB_IN_USE, {"digest": digest,
                                                          "since": db.utcnow() - PENDING_UPLOAD_TTL})
                if not in_use:
                    delete_blob(digest.removeprefix("sha256:"))
                    deleted.append(digest)
        return deleted

    def unused_blobs(self, digests: Sequence[str]) -> list[str]:
        """Those of ``digests`` that nothing used at the moment of reading: candidates for
        :meth:`collect_blobs`, which checks each again under the lock."""
        since = db.utcnow() - PENDING_UPLOAD_TTL
        used: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(digests), 500):
                chunk = list(digests[start:start + 500])
                used.update(connection.scalars(select(db.ModelVersion.digest).where(db.ModelVersion.digest.in_(chunk))))
                used.update(connection.scalars(
                    select(db.ModelVersion.bento_digest).where(db.ModelVersion.bento_digest.in_(chunk))))
                used.update(connection.scalars(select(db.PendingBlob.digest).where(
                    db.PendingBlob.digest.in_(chunk), db.PendingBlob.started_at > since)))
        return [digest for digest in digests if digest not in used]

    def prune_claims(self) -> int:
        """Forget claims older than ``PENDING_UPLOAD_TTL`` (uploads that died with their server)."""
        with self._write_core() as connection:
            return connection.execute(delete(db.PendingBlob).where(
                db.PendingBlob.started_at <= db.utcnow() - PENDING_UPLOAD_TTL)).rowcount or 0

    # -- aliases ------------------------------------------------------------------------

    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "anonymous",
                  admin: bool = True) -> schemas.Alias:
        """Point ``alias`` at a ready version; a no-op (no event) when it already does.  A protected
        alias moves for ``admin`` callers, or to a version whose metrics meet its rules (``Forbidden``
        naming the rule that failed).  Every move is recorded with ``actor`` (the audit trail)."""
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            target = self._version_row(session, model, version)
            if target.status != schemas.VersionStatus.ready.value:
                raise Conflict(f"version {version} of model {name!r} is {target.status}: "
                               "only a version whose artifact is uploaded can be aliased")
            row = session.scalars(
                select(db.Alias).where(db.Alias.model_id == model.id, db.Alias.alias == alias)
            ).one_or_none()
            if row is not None and row.version_id == target.id:
                return schemas.Alias(model=name, alias=alias, version=version, digest=target.digest)
            judged = self._check_protection(session, model, alias, target, admin)
            if row is None:
                session.add(db.Alias(model_id=model.id, alias=alias, version_id=target.id))
                previous = None
            else:
                previous = session.scalar(select(db.ModelVersion.version).where(db.ModelVersion.id == row.version_id))
                row.version_id, row.updated_at = target.id, db.utcnow()
            session.add(db.AliasMove(model_id=model.id, model=name, alias=alias, from_version=previous,
                                     to_version=version, actor=actor, judged=judged))
            self._emit(session, "alias.set", name, version, alias)
            return schemas.Alias(model=name, alias=alias, version=version, digest=target.digest)

    def _check_protection(self, session: Session, model: db.RegisteredModel, alias: str,
                          target: db.ModelVersion | None, admin: bool) -> dict[str, Any] | None:
        """Raise ``Forbidden`` unless the caller may move ``alias`` to ``target`` (None: delete it).
        Returns what the move was judged on, for the audit trail: the rules and the values read
        (None when nothing was judged: not protected, or an admin)."""
        if admin:
            return None
        rule = session.scalars(select(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                          db.AliasRule.alias == alias)).one_or_none()
        if rule is None:
            return None
        required = list(rule.rules.get("require") or [])
        if target is None or not required:
            raise Forbidden(f"alias {alias!r} of model {model.name!r} is protected: only an admin token may "
                            + ("delete it" if target is None else "move it"))
        broken = failures(required, target.metrics)
        if broken:
            raise Forbidden(f"alias {alias!r} of model {model.name!r} is protected: version {target.version} "
                            f"does not meet {'; '.join(broken)}", extra={"failed": broken})
        return {"require": required, "metrics": {name: target.metrics[name] for name in sorted(read_by(required))}}

    def protect_alias(self, name: str, alias: str, protection: schemas.AliasProtection) -> schemas.AliasProtection:
        """Protect ``alias`` (it need not exist yet): see :meth:`set_alias`.  Replaces earlier rules."""
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            row = session.scalars(select(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                             db.AliasRule.alias == alias)).one_or_none()
            rules = {"require": list(protection.require)}
            if row is None:
                session.add(db.AliasRule(model_id=model.id, alias=alias, rules=rules))
            else:
                row.rules, row.updated_at = rules, db.utcnow()
        return protection

    def unprotect_alias(self, name: str, alias: str) -> None:
        """Anyone with write scope may move it again.  Raises ``NotFound`` when it is not protected."""
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            deleted = session.execute(delete(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                                 db.AliasRule.alias == alias)).rowcount
            if not deleted:
                raise NotFound(f"alias {alias!r} of model {name!r} is not protected")

    def alias_protection(self, name: str, alias: str) -> schemas.AliasProtection | None:
        with self._read() as session:
            model = self._model_row(session, name)
            rules = session.scalar(select(db.AliasRule.rules).where(db.AliasRule.model_id == model.id,
                                                                    db.AliasRule.alias == alias))
        return None if rules is None else schemas.AliasProtection(require=rules.get("require") or [])

    def alias_history(self, name: str, alias: str, *, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.AliasMove]:
        """Who moved ``alias``, from which version to which, when: newest first.  The moves of a
        deleted model of the same name are kept and marked ``deleted_model``; a name that never had
        a model nor moves is ``NotFound``."""
        with self._read() as session:
            model_id = session.scalar(_SELECT_MODEL_ID, {"model_name": name})
            query = (select(db.AliasMove).where(db.AliasMove.model == name, db.AliasMove.alias == alias)
                     .order_by(db.AliasMove.id.desc()).limit(limit + 1))
            if cursor:
                raw = decode_cursor(cursor)
                if not raw.isdigit() or len(raw) > 18:
                    raise BadRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
                query = query.where(db.AliasMove.id < int(raw))
            rows = list(session.scalars(query))
            if model_id is None and not rows and not cursor:
                raise NotFound(f"model {name!r} does not exist")
        more = len(rows) > limit
        rows = rows[:limit]
        return schemas.AliasMovePage(
            items=[schemas.AliasMove(from_version=r.from_version, to_version=r.to_version, actor=r.actor, time=r.time,
                                     judged=r.judged, deleted_model=r.model_id is None or r.model_id != model_id)
                   for r in rows],
            next_cursor=encode_cursor(rows[-1].id) if more else None)

    def get_alias(self, name: str, alias: str) -> schemas.Alias:
        """The operator's hot path: one prepared, indexed join."""
        params = {"model_name": name, "alias_name": alias}
        if self._fast is not None:
            found = self._fast.one(_SELECT_ALIAS, params)
        else:
            with self.engine.connect() as connection:
                found = connection.execute(_SELECT_ALIAS, params).first()
        if found is None:
            self._raise_missing_alias(name, alias)
        version, digest = found
        return schemas.Alias(model=name, alias=alias, version=version, digest=digest)

    def _raise_missing_alias(self, name: str, alias: str) -> None:
        with self.engine.connect() as connection:
            if connection.execute(_SELECT_MODEL_ID, {"model_name": name}).first() is None:
                raise NotFound(f"model {name!r} does not exist")
        raise NotFound(f"model {name!r} has no alias {alias!r}")

    def delete_alias(self, name: str, alias: str, *, actor: str = "anonymous", admin: bool = True) -> None:
        """See ``RegistryOperations.delete_alias``; a protected alias is deleted by ``admin`` callers only."""
        with self._write() as session:
            model = self._model_row(session, name, lock=True)
            row = session.scalars(
                select(db.Alias).where(db.Alias.model_id == model.id, db.Alias.alias == alias)
            ).one_or_none()
            if row is None:
                raise NotFound(f"model {name!r} has no alias {alias!r}")
            self._check_protection(session, model, alias, None, admin)
            version = session.scalar(select(db.ModelVersion.version).where(db.ModelVersion.id == row.version_id))
            session.delete(row)
            session.add(db.AliasMove(model_id=model.id, model=name, alias=alias, from_version=version,
                                     to_version=None, actor=actor))
            self._emit(session, "alias.deleted", name, version, alias)

    # -- events -----------------------------------------------------------------------

    def events_after(self, after: int, limit: int = 1000) -> list[schemas.Event]:
        with self.engine.connect() as connection:
            rows = connection.execute(_SELECT_EVENTS, {"after": after, "limit": limit})
            return [schemas.Event(id=r.id, type=r.type, model=r.model, version=r.version, alias=r.alias,
                                  time=r.time) for r in rows]

    def prune_events(self, *, older_than: timedelta, keep: int) -> int:
        """Apply the event feed's retention: drop events older than ``older_than`` and all but the
        newest ``keep``.  Records the last id dropped, so a follower asking for events after an
        older id is told it fell behind (``events_truncated``) and re-lists.  Returns how many went."""
        with self._write() as session:
            newest = session.scalar(select(func.coalesce(func.max(db.Event.id), 0))) or 0
            by_age = session.scalar(select(func.max(db.Event.id)).where(db.Event.time < db.utcnow() - older_than)) or 0
            through = max(by_age, newest - keep)
            if through <= 0:
                return 0
            dropped = session.execute(delete(db.Event).where(db.Event.id <= through)).rowcount or 0
            row = session.get(db.RegistryState, EVENTS_PRUNED_KEY)
            if row is None:
                session.add(db.RegistryState(key=EVENTS_PRUNED_KEY, value=str(through), updated_at=db.utcnow()))
            elif int(row.value) < through:
                row.value, row.updated_at = str(through), db.utcnow()
            return dropped

    def events_truncated(self, after: int) -> bool:
        """Whether events after ``after`` were dropped by the retention (the caller fell behind)."""
        with self.engine.connect() as connection:
            through = connection.scalar(select(db.RegistryState.value).where(
                db.RegistryState.key == EVENTS_PRUNED_KEY))
        return through is not None and after < int(through)

    def last_event_id(self) -> int:
        with self._reader() as session:
            return session.scalar(select(func.coalesce(func.max(db.Event.id), 0))) or 0

    # -- tokens -----------------------------------------------------------------------

    def create_token(self, name: str, scope: str, *, cluster: str | None = None) -> tuple[str, TokenInfo]:
        """Create a token; the plain text is returned once and never stored.  ``name`` must not be
        held by another live token (the audit trail records actors by name); a ``report`` token
        names the ``cluster`` it may report for.

        Turns authentication on (for good: see :meth:`open_registry`)."""
        cluster = _check_binding(scope, cluster)
        if not name or len(name) > 128:
            raise BadRequest("a token's name is 1 to 128 characters")
        token = "my_" + secrets.token_urlsafe(32)
        with self._write() as session:
            self._refuse_live_name(session, name)
            row = db.ApiToken(name=name, token_hash=hash_token(token), scope=scope, cluster=cluster)
            session.add(row)
            self._set_auth(session, AUTH_ON)
            session.flush()
            return token, TokenInfo(row.id, row.name, row.scope, row.created_at, False, row.cluster)

    @staticmethod
    def _refuse_live_name(session: Session, name: str) -> None:
        held = session.scalar(select(db.ApiToken.id).where(db.ApiToken.name == name,
                                                           db.ApiToken.revoked_at.is_(None)).limit(1))
        if held is not None:
            raise Conflict(f"token {held} is already named {name!r}: names of live tokens are unique, so that the "
                           "audit trail can tell their holders apart (revoke it, or choose another name)")

    def ensure_token(self, name: str, scope: str, token: str, *, cluster: str | None = None) -> bool:
        """Register a token chosen outside the registry (a Helm-generated Secret); True if added.

        Idempotent, also when several replicas start at once: the hash is unique.  The
        deployment's scope wins over a stored one (an upgrade may narrow it); a token that
        was revoked stays revoked.  Turns authentication on.
        """
        cluster = _check_binding(scope, cluster)
        if len(token) < 16:
            raise BadRequest(f"the {name} token is too short: use at least 16 random characters")
        try:
            with self._write() as session:
                self._set_auth(session, AUTH_ON)
                row = session.scalars(select(db.ApiToken).where(db.ApiToken.token_hash == hash_token(token))).first()
                if row is None:
                    self._refuse_live_name(session, name)
                    session.add(db.ApiToken(name=name, token_hash=hash_token(token), scope=scope, cluster=cluster))
                    return True
                if row.revoked_at is None and (row.scope, row.cluster) != (scope, cluster):
                    row.scope, row.cluster = scope, cluster
                return False
        except IntegrityError:
            return False  # another replica added it first

    def token_identity(self, token: str) -> TokenIdentity | None:
        """What a valid, unrevoked token is, else None."""
        with self.engine.connect() as connection:
            found = connection.execute(_SELECT_TOKEN, {"token_hash": hash_token(token)}).first()
        return None if found is None else TokenIdentity(found.name, found.scope, found.cluster)

    # -- authentication mode ---------------------------------------------------------------

    def auth_enabled(self) -> bool:
        """Whether clients need a token.  Off only on a registry that never had a token, or
        that an administrator opened explicitly: revoking tokens never turns it off."""
        with self.engine.connect() as connection:
            return connection.scalar(_SELECT_AUTH_STATE) == AUTH_ON

    def _set_auth(self, session: Session, value: str) -> None:
        row = session.get(db.RegistryState, AUTH_KEY)
        if row is not None and row.value == value:
            return
        if row is None:
            session.add(db.RegistryState(key=AUTH_KEY, value=value, updated_at=db.utcnow()))
        else:
            row.value, row.updated_at = value, db.utcnow()
        self._emit(session, "auth.enabled" if value == AUTH_ON else "auth.opened", "")

    def open_registry(self) -> bool:
        """Turn authentication off (emits ``auth.opened``): anonymous clients get every scope
        until a token is created again.  Live tokens keep working.  True if it was on."""
        with self._write() as session:
            was_on = session.scalar(_SELECT_AUTH_STATE) == AUTH_ON
            self._set_auth(session, AUTH_OPEN)
            return was_on

    def list_tokens(self) -> list[TokenInfo]:
        with self._reader() as session:
            return [TokenInfo(r.id, r.name, r.scope, r.created_at, r.revoked_at is not None, r.cluster)
                    for r in session.scalars(select(db.ApiToken).order_by(db.ApiToken.id))]

    def revoke_token(self, token_id: int, *, last_admin: bool = False) -> None:
        """Revoke a token.  Revoking the last live admin token of a registry with
        authentication on leaves nobody able to administer it over the API: that needs
        ``last_admin=True`` (authentication stays on either way)."""
        with self._write() as session:
            row = session.get(db.ApiToken, token_id)
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            if row.revoked_at is not None:
                return
            if row.scope == "admin" and not last_admin and session.scalar(_SELECT_AUTH_STATE) == AUTH_ON:
                others = session.scalar(select(func.count()).select_from(db.ApiToken).where(
                    db.ApiToken.scope == "admin", db.ApiToken.revoked_at.is_(None), db.ApiToken.id != token_id))
                if not others:
                    raise Conflict(f"token {token_id} ({row.name}) is the last live admin token: without it nobody "
                                   "can administer the registry over the API (authentication stays on). Create "
                                   "another admin token first, or confirm that this is intended")
            row.revoked_at = datetime.now(timezone.utc)
