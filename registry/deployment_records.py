"""What serves where: deployments as operators report them, part of ``RegistryStore``.

An operator reports each ModelDeployment on every status change and again periodically (a
heartbeat); the registry stamps each report with its own clock.  A deployment whose reports
stopped for longer than ``stale_after`` is shown as stale (not known healthy) and no longer
holds its version against deletion.  Only a change that is more than a heartbeat emits
``deployment.updated``, so the event feed does not tick with every heartbeat.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.registry import schemas
from modelyard.registry.cursors import decode_cursor, encode_cursor
from modelyard.registry.db import models as db
from modelyard.registry.errors import BadRequest, Conflict, NotFound

# The fields whose change is news (a heartbeat changes none of them).
_REPORTED = ("model", "version", "digest", "phase", "ready_replicas", "desired_replicas", "helm_revision", "url",
             "last_transition_time", "rollout_result", "rollout_reason")
_ORDER = (db.Deployment.cluster, db.Deployment.namespace, db.Deployment.name)


# Built once: on the hot path of a version's answer, building a select costs more than running it.
_SELECT_REFS = (
    select(db.Deployment.version, db.Deployment.cluster, db.Deployment.namespace, db.Deployment.name,
           db.Deployment.phase, db.Deployment.ready_replicas, db.Deployment.desired_replicas,
           (db.Deployment.reported_at < bindparam("stale_before", type_=db.UTCDateTime())).label("stale"))
    .where(db.Deployment.model == bindparam("model"), db.Deployment.version.in_(bindparam("versions", expanding=True)))
    .order_by(*_ORDER))
_ANY_DEPLOYMENT = select(db.Deployment.id).where(
    db.Deployment.model == bindparam("model"), db.Deployment.version == bindparam("version"))


class DeploymentRecords:
    """Mixed into ``RegistryStore``: uses its transactions and its event log."""

    stale_after: timedelta
    _fast: Any
    """The store's SQLite fast reader (None on PostgreSQL)."""
    _read: Any
    _write: Any
    _emit: Any

    def _now(self) -> datetime:
        return db.utcnow()

    def report_deployment(self, cluster: str, namespace: str, name: str,
                          report: schemas.DeploymentReport, *, reporter: str = "anonymous") -> schemas.Deployment:
        """Record what ``cluster/namespace/name`` serves now (an upsert); see the module's docstring."""
        where = schemas.validated(_Where, cluster=cluster, namespace=namespace, name=name)
        values = report.model_dump()
        for attempt in range(2):  # a first report racing another inserts once; the loser updates
            try:
                with self._write() as session:
                    row = session.scalars(select(db.Deployment).where(*_is(where)).with_for_update()).one_or_none()
                    news = row is None or any(getattr(row, f) != values[f] for f in _REPORTED)
                    if row is None:
                        row = db.Deployment(cluster=where.cluster, namespace=where.namespace, name=where.name)
                        session.add(row)
                    for field, value in values.items():
                        setattr(row, field, value)
                    row.reporter, row.reported_at = reporter, self._now()
                    if news:
                        self._emit(session, "deployment.updated", report.model, report.version)
                    session.flush()
                    return self._deployment(row, self._now() - self.stale_after)
            except IntegrityError:
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def remove_deployment(self, cluster: str, namespace: str, name: str) -> None:
        """Forget a deployment (its ModelDeployment was deleted).  Raises ``NotFound``."""
        where = schemas.validated(_Where, cluster=cluster, namespace=namespace, name=name)
        with self._write() as session:
            row = session.scalars(select(db.Deployment).where(*_is(where))).one_or_none()
            if row is None:
                raise NotFound(f"no deployment {where.cluster}/{where.namespace}/{where.name} is reported")
            session.delete(row)
            self._emit(session, "deployment.removed", row.model, row.version)

    def list_deployments(self, *, model: str | None = None, version: int | None = None, cluster: str | None = None,
                         namespace: str | None = None, phase: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Deployment]:
        """One page of deployments ordered by cluster, namespace and name, filtered by each given field.
        ``phase="Stale"`` lists the stale ones.  Raises ``BadRequest`` (a cursor not handed out)."""
        query = select(db.Deployment).order_by(*_ORDER).limit(limit + 1)
        stale_before = self._now() - self.stale_after
        for column, value in ((db.Deployment.model, model), (db.Deployment.version, version),
                              (db.Deployment.cluster, cluster), (db.Deployment.namespace, namespace)):
            if value is not None:
                query = query.where(column == value)
        if phase == "Stale":
            query = query.where(db.Deployment.reported_at < stale_before)
        elif phase is not None:
            query = query.where(db.Deployment.phase == phase, db.Deployment.reported_at >= stale_before)
        if cursor:
            query = query.where(tuple_(*_ORDER) > tuple(_decode(cursor)))
        with self._read() as session:
            rows = list(session.scalars(query))
            more = len(rows) > limit
            items = [self._deployment(row, stale_before) for row in rows[:limit]]
        last = items[-1] if more else None
        return schemas.DeploymentPage(
            items=items, next_cursor=_encode([last.cluster, last.namespace, last.name]) if last else None)

    @staticmethod
    def _deployment(row: db.Deployment, stale_before: datetime) -> schemas.Deployment:
        return schemas.Deployment(
            cluster=row.cluster, namespace=row.namespace, name=row.name, reporter=row.reporter,
            reported_at=row.reported_at, stale=row.reported_at < stale_before,
            **{field: getattr(row, field) for field in _REPORTED})

    def _deployments_of(self, connection: Connection | Session, model: str,
                        versions: Iterable[int]) -> dict[int, list[dict[str, Any]]]:
        """Where each of ``versions`` runs: ``DeploymentRef`` fields, for Version answers."""
        found: dict[int, list[dict[str, Any]]] = {v: [] for v in versions}
        if not found:
            return found
        if len(found) == 1 and self._fast is not None:  # a version's answer, hot: most versions run nowhere
            (version,) = found
            if self._fast.one(_ANY_DEPLOYMENT, {"model": model, "version": version}) is None:
                return found
        rows = connection.execute(_SELECT_REFS, {"model": model, "versions": list(found),
                                                  "stale_before": self._now() - self.stale_after})
        for row in rows:
            found[row.version].append({  # plain: the Version answer builds them (in pydantic's core, fast)
                "cluster": row.cluster, "namespace": row.namespace, "name": row.name, "phase": row.phase,
                "ready_replicas": row.ready_replicas, "desired_replicas": row.desired_replicas,
                "stale": bool(row.stale)})
        return found

    def _refuse_while_served(self, session: Session, model: str, version: int | None, what: str) -> None:
        """``Conflict`` naming the live deployments that serve ``model`` (``version``: that one)."""
        query = select(db.Deployment).where(db.Deployment.model == model,
                                            db.Deployment.reported_at >= self._now() - self.stale_after)
        if version is not None:
            query = query.where(db.Deployment.version == version)
        live = list(session.scalars(query.order_by(*_ORDER).limit(10)))
        if live:
            where = ", ".join(f"{d.cluster}/{d.namespace}/{d.name} ({d.phase})" for d in live)
            raise Conflict(f"{what} is served by {where}; delete or move those ModelDeployments first, "
                           "or force it (admin)",
                           extra={"deployments": [f"{d.cluster}/{d.namespace}/{d.name}" for d in live]})


class _Where(schemas._Strict):
    cluster: schemas.ClusterName
    namespace: schemas.NamespaceName
    name: schemas.ResourceName


def _is(where: _Where) -> tuple[Any, ...]:
    return (db.Deployment.cluster == where.cluster, db.Deployment.namespace == where.namespace,
            db.Deployment.name == where.name)


def _encode(key: list[str]) -> str:
    return encode_cursor(json.dumps(key))


def _decode(cursor: str) -> list[str]:
    try:
        key = json.loads(decode_cursor(cursor))
    except ValueError:
        key = None
    if not (isinstance(key, list) and len(key) == 3 and all(isinstance(k, str) for k in key)):
        raise BadRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
    return key

