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
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Select, and_, bindparam, func, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelyard.registry.db import models as db
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.cursors import decode_cursor, encode_cursor
from modelyard.registry.kernel.errors import BadRequest, Conflict, Invalid, NotFound
from modelyard.registry.store.base import StoreBase

# The fields whose change is news (a heartbeat changes none of them).
_REPORTED = ("model", "version", "digest", "phase", "ready_replicas", "desired_replicas", "helm_revision", "url",
             "last_transition_time", "rollout_result", "rollout_reason")
_ORDER = (db.Deployment.cluster, db.Deployment.namespace, db.Deployment.name)


def _of_its_version(query: Select[Any]) -> Select[Any]:
    """``query`` on deployments, keeping those whose report was made for the bytes of the version it
    names (the digests match): a re-created model's version 1 is not served by what served the
    deleted model's, and a report of a version without an artifact holds nothing."""
    return (query.join(db.RegisteredModel, db.RegisteredModel.name == db.Deployment.model)
            .join(db.ModelVersion, and_(db.ModelVersion.model_id == db.RegisteredModel.id,
                                        db.ModelVersion.version == db.Deployment.version,
                                        db.ModelVersion.digest == db.Deployment.digest)))


# Built once: on the hot path of a version's answer, building a select costs more than running it.
# Each version lists at most DEPLOYMENTS_PER_VERSION deployments, with the total beside them.
_MATCHED = _of_its_version(
    select(db.Deployment.version, db.Deployment.cluster, db.Deployment.namespace, db.Deployment.name,
           db.Deployment.phase, db.Deployment.ready_replicas, db.Deployment.desired_replicas,
           (db.Deployment.reported_at < bindparam("stale_before", type_=db.UTCDateTime())).label("stale"),
           db.Deployment.reported_at,
           func.row_number().over(partition_by=db.Deployment.version, order_by=_ORDER).label("rank"),
           func.count().over(partition_by=db.Deployment.version).label("total"))
).where(db.Deployment.model == bindparam("model"),
        db.Deployment.version.in_(bindparam("versions", expanding=True))).subquery()
_SELECT_REFS = (select(_MATCHED).where(_MATCHED.c.rank <= defaults.DEPLOYMENTS_PER_VERSION)
                .order_by(_MATCHED.c.version, _MATCHED.c.rank))
_ANY_DEPLOYMENT = select(db.Deployment.id).where(
    db.Deployment.model == bindparam("model"), db.Deployment.version == bindparam("version"))


class DeploymentRecords(StoreBase):
    """What serves where (see the module's docstring)."""

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
                    values["digest"] = self._reported_digest(session, report)
                    row = session.scalars(select(db.Deployment).where(*_is(where)).with_for_update()).one_or_none()
                    # Even a heartbeat changes what the versions' answers say (it keeps them from going stale).
                    self._changes(session, report.model)
                    if row is not None:
                        self._changes(session, row.model)
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

    @staticmethod
    def _reported_digest(session: Session, report: schemas.DeploymentReport) -> str | None:
        """The digest a report is recorded with: that of the version it names, which must exist.

        Reports are tied to the bytes they were made for, so a deleted and re-created model's new
        version is never "served by" a deployment of the old one (``_deployments_of`` matches on it)."""
        model_id = session.scalar(select(db.RegisteredModel.id).where(db.RegisteredModel.name == report.model))
        if model_id is None:
            raise NotFound(f"model {report.model!r} does not exist: report deployments of registered models only")
        if report.version is None:
            if report.digest is not None:
                raise Invalid("a report with a digest names its version too")
            return None
        found = session.execute(select(db.ModelVersion.digest).where(
            db.ModelVersion.model_id == model_id, db.ModelVersion.version == report.version)).first()
        if found is None:
            raise NotFound(f"version {report.version} of model {report.model!r} does not exist")
        digest = found.digest  # None while its artifact is not uploaded: such a report holds no version
        if report.digest is not None and report.digest != digest:
            raise Invalid(f"the reported digest {report.digest} is not that of version {report.version} of model "
                          f"{report.model!r} ({digest}): the deployment serves other bytes")
        return digest

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
                        versions: Iterable[int]) -> dict[int, DeploymentRefs]:
        """Where each of ``versions`` runs: ``DeploymentRef`` fields, for Version answers (at most
        ``DEPLOYMENTS_PER_VERSION`` each; ``DeploymentRefs.total`` counts them all)."""
        found: dict[int, DeploymentRefs] = {v: DeploymentRefs() for v in versions}
        if not found:
            return found
        if len(found) == 1 and self._fast is not None:  # a version's answer, hot: most versions run nowhere
            (version,) = found
            if self._fast.one(_ANY_DEPLOYMENT, {"model": model, "version": version}) is None:
                return found
        rows = connection.execute(_SELECT_REFS, {"model": model, "versions": list(found),
                                                  "stale_before": self._now() - self.stale_after})
        for row in rows:
            refs = found[row.version]
            refs.total = row.total
            if not row.stale:
                turns_stale = row.reported_at + self.stale_after
                refs.fresh_until = turns_stale if refs.fresh_until is None else min(refs.fresh_until, turns_stale)
            refs.append({  # plain: the Version answer builds them (in pydantic's core, fast)
                "cluster": row.cluster, "namespace": row.namespace, "name": row.name, "phase": row.phase,
                "ready_replicas": row.ready_replicas, "desired_replicas": row.desired_replicas,
                "stale": bool(row.stale)})
        return found

    def _refuse_while_served(self, session: Session, model: str, version: int | None, what: str) -> None:
        """``Conflict`` naming the live deployments that serve ``model`` (``version``: that one)."""
        query = _of_its_version(select(db.Deployment)).where(
            db.Deployment.model == model, db.Deployment.reported_at >= self._now() - self.stale_after)
        if version is not None:
            query = query.where(db.Deployment.version == version)
        live = list(session.scalars(query.order_by(*_ORDER).limit(10)))
        if live:
            where = ", ".join(f"{d.cluster}/{d.namespace}/{d.name} ({d.phase})" for d in live)
            raise Conflict(f"{what} is served by {where}; delete or move those ModelDeployments first, "
                           "or force it (admin)",
                           extra={"deployments": [f"{d.cluster}/{d.namespace}/{d.name}" for d in live]})


class DeploymentRefs(list[dict[str, Any]]):
    """The deployments listed in a version's answer, and how many there are in all."""

    total: int = 0
    fresh_until: datetime | None = None
    """When the first of them turns stale: until then the answer listing them holds (a read cache's limit)."""


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

