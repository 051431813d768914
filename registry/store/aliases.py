"""Aliases: moving and deleting them, their protection (who and which evidence may move one) and
the audit trail of every move.
"""

from __future__ import annotations

from typing import Any, NoReturn, cast

from sqlalchemy import CursorResult, Table, and_, bindparam, delete, insert, select, update
from sqlalchemy.orm import Session, aliased

from modelyard.registry.alias_rules import evidence_read_by, failures, parse, read_by, signers_read_by
from modelyard.registry.db import models as db
from modelyard.registry.kernel import schemas
from modelyard.registry.kernel.cursors import decode_number_cursor, encode_cursor
from modelyard.registry.kernel.errors import Conflict, Forbidden, Invalid, NotFound
from modelyard.registry.store.base import _SELECT_ALIAS, _SELECT_MODEL_ID
from modelyard.registry.store.evaluations import EvaluationRecords
from modelyard.registry.store.signatures import SignatureRecords
from modelyard.registry.store.read_cache import model_scope

_CURRENT = aliased(db.ModelVersion)
_SELECT_MOVE = (
    select(db.RegisteredModel.id.label("model_id"), db.ModelVersion.id.label("target_id"), db.ModelVersion.status,
           db.ModelVersion.digest, db.Alias.id.label("alias_id"), db.Alias.version_id.label("current_id"),
           _CURRENT.version.label("current_version"), db.AliasRule.id.label("rule_id"))
    .select_from(db.RegisteredModel)
    .outerjoin(db.ModelVersion, and_(db.ModelVersion.model_id == db.RegisteredModel.id,
                                     db.ModelVersion.version == bindparam("number")))
    .outerjoin(db.Alias, and_(db.Alias.model_id == db.RegisteredModel.id, db.Alias.alias == bindparam("alias_name")))
    .outerjoin(_CURRENT, _CURRENT.id == db.Alias.version_id)
    .outerjoin(db.AliasRule, and_(db.AliasRule.model_id == db.RegisteredModel.id,
                                  db.AliasRule.alias == bindparam("alias_name")))
    .where(db.RegisteredModel.id == bindparam("model_id"))
)
_LOCK_MODEL = _SELECT_MODEL_ID.with_for_update()
_INSERT_ALIAS = insert(cast(Table, db.Alias.__table__))
_MOVE_ALIAS = (update(cast(Table, db.Alias.__table__)).where(db.Alias.__table__.c.id == bindparam("alias_id"))
               .values(version_id=bindparam("version_id"), updated_at=bindparam("updated_at")))
_INSERT_MOVE = insert(cast(Table, db.AliasMove.__table__))


class AliasRecords(EvaluationRecords, SignatureRecords):
    """See the module's docstring; its contract is ``contracts.AliasGovernance``."""

    def set_alias(self, name: str, alias: str, version: int, *, actor: str = "anonymous",
                  admin: bool = True, operator_cluster: str | None = None) -> schemas.Alias:
        """Point ``alias`` at a ready version; a no-op (no event) when it already does.  A protected
        alias moves for ``admin`` callers, or to a version whose metrics meet its rules (``Forbidden``
        naming the rule that failed).  Every move is recorded with ``actor`` (the audit trail).

        ``operator_cluster``: the caller is that cluster's operator (a report token), which moves an
        alias on evidence only (``_operator_move``)."""
        with self._write() as session:
            self._changes(session, name)
            connection = session.connection()
            # The model's row lock first (moves and deletes of its versions queue behind it), then,
            # in a statement of its own, so that its snapshot is taken once the lock is held (a
            # locking join re-reads only the locked row after a wait): the target, the alias and
            # whether a rule protects it.
            model_id = connection.execute(_LOCK_MODEL, {"model_name": name}).scalar()
            if model_id is None:
                raise NotFound(f"model {name!r} does not exist")
            found = connection.execute(_SELECT_MOVE, {"model_id": model_id, "number": version,
                                                      "alias_name": alias}).one()
            if found.target_id is None:
                raise NotFound(f"version {version} of model {name!r} does not exist")
            if found.status != schemas.VersionStatus.ready.value:
                raise Conflict(f"version {version} of model {name!r} is {found.status}: "
                               "only a version whose artifact is uploaded can be aliased")
            answer = schemas.Alias(model=name, alias=alias, version=version, digest=found.digest)
            if found.alias_id is not None and found.current_id == found.target_id:
                return answer
            judged: dict[str, Any] | None = None
            if operator_cluster is not None or (not admin and found.rule_id is not None):
                judged = self._judge_move(session, found.model_id, found.target_id, found.alias_id, alias,
                                          operator_cluster, admin)
            now = db.utcnow()
            if found.alias_id is None:
                connection.execute(_INSERT_ALIAS, {"model_id": found.model_id, "alias": alias,
                                                   "version_id": found.target_id, "updated_at": now})
            else:
                connection.execute(_MOVE_ALIAS, {"alias_id": found.alias_id, "version_id": found.target_id,
                                                 "updated_at": now})
            connection.execute(_INSERT_MOVE, {"model_id": found.model_id, "model": name, "alias": alias,
                                              "from_version": found.current_version, "to_version": version,
                                              "actor": actor, "judged": judged, "time": now})
            self._emit(session, "alias.set", name, version, alias)
            return answer

    def _judge_move(self, session: Session, model_id: int, target_id: int, alias_id: int | None, alias: str,
                    operator_cluster: str | None, admin: bool) -> dict[str, Any] | None:
        """A governed move (an operator's, or of a protected alias by a non-admin): what it is judged
        on, or ``Forbidden``.  The model is already locked; the rules read more."""
        model = session.get_one(db.RegisteredModel, model_id)
        target = session.get_one(db.ModelVersion, target_id)
        if operator_cluster is not None:
            row = session.get(db.Alias, alias_id) if alias_id is not None else None
            return self._operator_move(session, model, alias, row, target, operator_cluster)
        return self._check_protection(session, model, alias, target, admin)

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
        evidence = self._evidence(session, target.id, evidence_read_by(required))
        wanted = signers_read_by(required)
        signers = self._trusted_signers(session, target.id) if wanted else {}
        broken = failures(required, target.metrics, evidence, signers)
        if broken:
            raise Forbidden(f"alias {alias!r} of model {model.name!r} is protected: version {target.version} "
                            f"does not meet {'; '.join(broken)}", extra={"failed": broken})
        judged: dict[str, Any] = {"require": required,
                                  "metrics": {name: target.metrics[name] for name in sorted(read_by(required))}}
        if evidence:
            judged["evidence"] = evidence
        if wanted:
            judged["signatures"] = {name: signers[name] for name in wanted}
        return judged

    def _operator_move(self, session: Session, model: db.RegisteredModel, alias: str, row: db.Alias | None,
                       target: db.ModelVersion, cluster: str) -> dict[str, Any]:
        """What an operator may do with an alias, and only this, each backed by its cluster's evidence:

        - revert: move the alias back to the version it held before the current one, when a failing
          canary evaluation of the current version from this cluster exists;
        - promote: move a protected alias whose rules read this cluster's canary evidence
          (``canary@CLUSTER.…``) to a version meeting every rule.

        Returns what the move was judged on (the evidence's id and numbers); ``Forbidden`` otherwise."""
        if row is not None:
            current = session.get(db.ModelVersion, row.version_id)
            assert current is not None
            before = session.scalar(select(db.AliasMove.from_version).where(
                db.AliasMove.model == model.name, db.AliasMove.alias == alias,
                db.AliasMove.to_version == current.version).order_by(db.AliasMove.id.desc()).limit(1))
            if before == target.version:
                failed = session.scalars(select(db.Evaluation).where(
                    db.Evaluation.version_id == current.id, db.Evaluation.kind == "canary",
                    db.Evaluation.verdict == "fail", db.Evaluation.source.startswith(f"{cluster}/", autoescape=True),
                ).order_by(db.Evaluation.id.desc()).limit(1)).first()
                if failed is not None:
                    return {"revert": {"from": current.version, "evidence": {
                        "id": failed.id, "source": failed.source, "metrics": failed.metrics,
                        "requests": failed.requests}}}
        rule = session.scalars(select(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                          db.AliasRule.alias == alias)).one_or_none()
        required = list(rule.rules.get("require") or []) if rule is not None else []
        if ("canary", cluster) in evidence_read_by(required):
            judged = self._check_protection(session, model, alias, target, admin=False)
            assert judged is not None
            return {**judged, "promoted_by": cluster}
        raise Forbidden(f"an operator (cluster {cluster!r}) moves alias {alias!r} of model {model.name!r} only to "
                        "revert a canary that failed in its cluster (back to the version the alias held before) "
                        f"or to promote a version whose protection rules read its cluster's canary evidence "
                        f"(canary@{cluster}.…); this move is neither")

    def protect_alias(self, name: str, alias: str, protection: schemas.AliasProtection) -> schemas.AliasProtection:
        """Protect ``alias`` (it need not exist yet): see :meth:`set_alias`.  Replaces earlier rules."""
        with self._write() as session:
            self._changes(session, name)
            model = self._model_row(session, name, lock=True)
            row = session.scalars(select(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                             db.AliasRule.alias == alias)).one_or_none()
            for text in protection.require:  # an unknown source of numbers is refused when the rule is set
                try:
                    parse(text)
                except ValueError as exc:
                    raise Invalid(str(exc)) from None
            rules = {"require": list(protection.require)}
            if row is None:
                session.add(db.AliasRule(model_id=model.id, alias=alias, rules=rules))
            else:
                row.rules, row.updated_at = rules, db.utcnow()
        return protection

    def unprotect_alias(self, name: str, alias: str) -> None:
        """Anyone with write scope may move it again.  Raises ``NotFound`` when it is not protected."""
        with self._write() as session:
            self._changes(session, name)
            model = self._model_row(session, name, lock=True)
            deleted = cast("CursorResult[Any]", session.execute(delete(db.AliasRule).where(db.AliasRule.model_id == model.id,
                                                                 db.AliasRule.alias == alias))).rowcount
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
                query = query.where(db.AliasMove.id < decode_number_cursor(cursor, digits=18))
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

    def cached_alias(self, name: str, alias: str) -> schemas.Alias | None:
        """The answer of ``get_alias`` if the read cache holds it (no I/O, for the event loop)."""
        return self.cache.get(model_scope(name), alias)

    def get_alias(self, name: str, alias: str) -> schemas.Alias:
        """The operator's hot path: one prepared, indexed join (or the read cache)."""
        scope = model_scope(name)
        if (cached := self.cache.get(scope, alias)) is not None:
            return cached
        ticket = self.cache.ticket(scope, alias)
        params = {"model_name": name, "alias_name": alias}
        if self._fast is not None:
            found = self._fast.one(_SELECT_ALIAS, params)
        else:
            with self.engine.connect() as connection:
                found = connection.execute(_SELECT_ALIAS, params).first()
        if found is None:
            self._raise_missing_alias(name, alias)
        version, digest = found
        return self.cache.put(ticket, schemas.Alias(model=name, alias=alias, version=version, digest=digest))

    def _raise_missing_alias(self, name: str, alias: str) -> NoReturn:
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

