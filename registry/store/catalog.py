"""Models and versions: create, read, list, update, delete, and the records of a version's
artifact (``mark_ready``) and Bento (``mark_packaged``, ``clear_bento``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Integer, and_, bindparam, delete, select
from sqlalchemy.exc import IntegrityError

from modelyard.registry.db import models as db
from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.cursors import decode_cursor, decode_number_cursor, encode_cursor
from modelyard.registry.kernel.errors import Conflict, NotFound
from modelyard.registry.store.base import (
    _ALLOCATE_VERSION,
    _INSERT_MODEL,
    _INSERT_VERSION,
    _SELECT_MODEL_ID,
    _SELECT_VERSION,
    _SELECT_VERSION_ALIASES,
    _VERSION_COLUMNS,
    METRICS_IMMUTABLE_RULE,
    TagFilter,
    _tag_pairs,
    version_from_row,
)
from modelyard.registry.store.blobs import BlobRecords
from modelyard.registry.store.deployments import DeploymentRecords
from modelyard.registry.store.evaluations import EvaluationRecords
from modelyard.registry.store.signatures import SignatureRecords
from modelyard.registry.store.read_cache import model_scope


_LIST_VERSIONS = {
    descending: select(*_VERSION_COLUMNS).where(db.ModelVersion.model_id == bindparam("model_id"))
    .order_by(db.ModelVersion.version.desc() if descending else db.ModelVersion.version.asc())
    .limit(bindparam("limit", type_=Integer()))
    for descending in (False, True)
}
"""A model's versions in either order, a page (``limit``) at a time: filters are added to a copy."""


class CatalogRecords(BlobRecords, DeploymentRecords, EvaluationRecords, SignatureRecords):
    """Models and versions; a deletion consults the deployments and frees blobs. Contracts:
    ``operations.RegistryOperations`` and ``contracts.CatalogAdmin``."""

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
            self._changes(session, name)
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

    def cached_version(self, name: str, version: int) -> schemas.Version | None:
        """The answer of ``get_version`` if the read cache holds it (no I/O, for the event loop)."""
        return self.cache.get(model_scope(name), version)

    def get_version(self, name: str, version: int) -> schemas.Version:
        scope = model_scope(name)
        if (cached := self.cache.get(scope, version)) is not None:
            return cached
        ticket = self.cache.ticket(scope, version)
        with self.engine.connect() as connection:
            row = connection.execute(_SELECT_VERSION, {"model_name": name, "number": version}).first()
            if row is None:
                if connection.execute(_SELECT_MODEL_ID, {"model_name": name}).first() is None:
                    raise NotFound(f"model {name!r} does not exist")
                raise NotFound(f"version {version} of model {name!r} does not exist")
            aliases = list(connection.scalars(_SELECT_VERSION_ALIASES, {"version_id": row.id}))
            deployments = self._deployments_of(connection, name, [version])[version]
            evaluations = self._evaluations_of(connection, [row.id])[row.id]
            signatures = self._signatures_of(connection, [row.id])[row.id]
        answer = version_from_row(name, row, aliases, deployments, evaluations, signatures=signatures)
        if deployments.fresh_until is None:
            return self.cache.put(ticket, answer)
        return self.cache.put(ticket, answer, expires_in=(deployments.fresh_until - self._now()).total_seconds())

    def list_versions(self, name: str, *, order: str = "asc", status: str | None = None,
                      tags: TagFilter = None, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.Version]:
        """See ``RegistryOperations.list_versions``; ``tags`` may also be (key, value) pairs."""
        descending = order == "desc"
        number = db.ModelVersion.version
        with self.engine.connect() as session:  # Core: the ORM's per-statement work was most of a page's time
            model_id = session.execute(_SELECT_MODEL_ID, {"model_name": name}).scalar()
            if model_id is None:
                raise NotFound(f"model {name!r} does not exist")
            # The same columns as a single version's answer (one converter), without ORM entity loading;
            # the plain listing's statement is built once (building one costs about as much as running it).
            query = _LIST_VERSIONS[descending]
            if status or tags or cursor:
                query = query.where()  # a copy to add to
            if status:
                query = query.where(db.ModelVersion.status == status)
            for key, value in _tag_pairs(tags):
                query = query.where(db.ModelVersion.tags[key].as_string() == value)
            if cursor:
                after = decode_number_cursor(cursor, digits=10, maximum=schemas.MAX_VERSION)
                query = query.where(number < after if descending else number > after)
            rows = list(session.execute(query, {"model_id": model_id, "limit": limit + 1}))
            more = len(rows) > limit
            rows = rows[:limit]
            aliases = self._aliases_by_version(session, [row.id for row in rows])
            served = self._deployments_of(session, name, [row.version for row in rows])
            measured = self._evaluations_of(session, [row.id for row in rows])
            signed = self._signatures_of(session, [row.id for row in rows])
            items = [version_from_row(name, row, aliases[row.id], served[row.version], measured[row.id],
                                      signatures=signed[row.id]) for row in rows]
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
            self._changes(session, name)
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

