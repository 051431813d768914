"""Evidence on versions: evaluations as their measurers record them, and the latest passing one a
protected alias's rules read.

An evaluation is immutable.  Each (version, kind, source) keeps its newest
``defaults.EVALUATIONS_PER_SOURCE``; recording one emits ``version.evaluated``.  Who may record
which kind is the server's to check (a cluster's report token for its canaries, an ``evaluate``
token for offline evaluations); the store records who did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select
from sqlalchemy.orm import Session

from modelyard.registry.db import models as db
from modelyard.registry.kernel import defaults, schemas
from modelyard.registry.kernel.cursors import decode_number_cursor, encode_cursor
from modelyard.registry.store.base import StoreBase

EVALUATIONS_PER_ANSWER = 10
"""A version's answer lists the newest evaluation of each kind and source, at most this many."""
_NEWEST = select(
    db.Evaluation.version_id, db.Evaluation.id, db.Evaluation.kind, db.Evaluation.source, db.Evaluation.verdict,
    db.Evaluation.metrics, db.Evaluation.requests, db.Evaluation.created_at,
    func.row_number().over(partition_by=(db.Evaluation.version_id, db.Evaluation.kind, db.Evaluation.source),
                           order_by=db.Evaluation.id.desc()).label("rank"),
).where(db.Evaluation.version_id.in_(bindparam("versions", expanding=True))).subquery()
_SELECT_NEWEST = select(_NEWEST).where(_NEWEST.c.rank == 1).order_by(_NEWEST.c.version_id, _NEWEST.c.id.desc())
_ANY_EVALUATION = select(db.Evaluation.id).where(db.Evaluation.version_id == bindparam("version_id"))


def evaluation_from_row(model: str, version: int, row: db.Evaluation) -> schemas.Evaluation:
    window = (schemas.EvaluationWindow(start=row.window_start, end=row.window_end)
              if row.window_start is not None and row.window_end is not None else None)
    return schemas.Evaluation(id=row.id, model=model, version=version, kind=row.kind, source=row.source,
                              metrics=row.metrics, verdict=row.verdict, window=window, requests=row.requests,
                              details=row.details, recorded_by=row.recorded_by, time=row.created_at)


class EvaluationRecords(StoreBase):
    """See the module's docstring; its contract is ``contracts.EvidenceKeeping``."""

    def record_evaluation(self, name: str, version: int, evaluation: schemas.EvaluationCreate, *,
                          recorded_by: str) -> schemas.Evaluation:
        """Record ``evaluation`` on a version (``version.evaluated``) and prune that source's oldest."""
        with self._write() as session:
            row = self._version_row(session, self._model_row(session, name, lock=True), version)
            window = evaluation.window
            record = db.Evaluation(
                version_id=row.id, kind=evaluation.kind, source=evaluation.source, metrics=dict(evaluation.metrics),
                verdict=evaluation.verdict, window_start=window.start if window else None,
                window_end=window.end if window else None, requests=evaluation.requests,
                details=dict(evaluation.details), recorded_by=recorded_by, created_at=db.utcnow())
            session.add(record)
            session.flush()
            kept = select(db.Evaluation.id).where(
                db.Evaluation.version_id == row.id, db.Evaluation.kind == evaluation.kind,
                db.Evaluation.source == evaluation.source,
            ).order_by(db.Evaluation.id.desc()).limit(defaults.EVALUATIONS_PER_SOURCE).scalar_subquery()
            session.execute(delete(db.Evaluation).where(
                db.Evaluation.version_id == row.id, db.Evaluation.kind == evaluation.kind,
                db.Evaluation.source == evaluation.source, db.Evaluation.id.not_in(kept)))
            self._emit(session, "version.evaluated", name, version)
            return evaluation_from_row(name, version, record)

    def list_evaluations(self, name: str, version: int, *, kind: str | None = None, source: str | None = None,
                         verdict: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Evaluation]:
        """A version's evaluations, newest first, filtered by kind, source and verdict."""
        with self._read() as session:
            row = self._version_row(session, self._model_row(session, name), version)
            query = (select(db.Evaluation).where(db.Evaluation.version_id == row.id)
                     .order_by(db.Evaluation.id.desc()).limit(limit + 1))
            for column, value in ((db.Evaluation.kind, kind), (db.Evaluation.source, source),
                                  (db.Evaluation.verdict, verdict)):
                if value is not None:
                    query = query.where(column == value)
            if cursor:
                query = query.where(db.Evaluation.id < decode_number_cursor(cursor, digits=19))
            rows = list(session.scalars(query))
            more = len(rows) > limit
            rows = rows[:limit]
            return schemas.Page[schemas.Evaluation](
                items=[evaluation_from_row(name, version, r) for r in rows],
                next_cursor=encode_cursor(rows[-1].id) if more else None)

    def _evaluations_of(self, connection: Connection | Session,
                        version_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """For a version's answer: the newest evaluation of each kind and source of each version."""
        found: dict[int, list[dict[str, Any]]] = {vid: [] for vid in version_ids}
        if not found:
            return found
        if len(found) == 1 and self._fast is not None:  # hot: most versions carry no evidence
            if self._fast.one(_ANY_EVALUATION, {"version_id": version_ids[0]}) is None:
                return found
        for row in connection.execute(_SELECT_NEWEST, {"versions": list(found)}):
            listed = found[row.version_id]
            if len(listed) < EVALUATIONS_PER_ANSWER:
                listed.append({"id": row.id, "kind": row.kind, "source": row.source, "verdict": row.verdict,
                               "metrics": row.metrics, "requests": row.requests, "time": row.created_at})
        for listed in found.values():
            listed.sort(key=lambda item: -item["id"])
        return found

    @staticmethod
    def _latest_passing(session: Session, version_id: int, kind: str,
                        cluster: str | None = None) -> db.Evaluation | None:
        """The newest passing evaluation of ``kind`` on a version (a canary: of ``cluster``, when named)."""
        query = select(db.Evaluation).where(db.Evaluation.version_id == version_id, db.Evaluation.kind == kind,
                                            db.Evaluation.verdict == "pass")
        if cluster is not None:
            query = query.where(db.Evaluation.source.startswith(f"{cluster}/", autoescape=True))
        return session.scalars(query.order_by(db.Evaluation.id.desc()).limit(1)).first()

    def _evidence(self, session: Session, version_id: int, sources: set[tuple[str, str | None]]) -> dict[str, Any]:
        """For each evidence source a rule names (``offline``, ``canary``, ``canary@CLUSTER``): the latest
        passing evaluation's metrics (with ``requests``) and id, or None when there is none."""
        found: dict[str, Any] = {}
        for kind, cluster in sources:
            label = kind if cluster is None else f"{kind}@{cluster}"
            row = self._latest_passing(session, version_id, kind, cluster)
            found[label] = None if row is None else {
                "id": row.id, "metrics": {**row.metrics, **({"requests": row.requests} if row.requests is not None
                                                             else {})}}
        return found
