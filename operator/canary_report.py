"""What the operator tells the registry once a canary analysis has a verdict, pure: the ``canary``
evaluation to record on the version, and the alias move that closes the loop (``onFailure:
revertAlias`` back to the version that keeps serving; ``promote: {alias}`` forward to the version
that passed).  The registry decides whether the move is allowed (an operator's token moves an alias
only on its cluster's evidence); the reconciler does the calls and tells the outcome as Events.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from modelyard.operator import conditions as cond
from modelyard.operator.analysis import evidence_metrics, numbers
from modelyard.operator.spec import DeploymentSpec, FailureAction
from modelyard.operator.status import AnalysisState, ConditionType, DeploymentStatus, Reason, to_time
from modelyard.registry.kernel import schemas


@dataclass(frozen=True)
class AliasMove:
    alias: str
    version: int
    kind: str
    """revert | promote"""


@dataclass(frozen=True)
class CanaryReport:
    model: str
    version: int
    evaluation: schemas.EvaluationCreate
    move: AliasMove | None


def canary_report(spec: DeploymentSpec, status: DeploymentStatus, cluster: str, namespace: str,
                  name: str) -> CanaryReport | None:
    """The report owed for the resource's analysis, or None (none finished, or already told)."""
    record = status.rollout.analysis
    if record is None or record.version is None or record.state == AnalysisState.RUNNING or record.reported:
        return None
    passed = record.state == AnalysisState.PASSED
    canary = numbers(record.canary_total)
    window = None
    if record.started_at and record.last_at:
        window = schemas.EvaluationWindow(start=datetime.fromisoformat(record.started_at),
                                          end=datetime.fromisoformat(record.last_at))
    evaluation = schemas.EvaluationCreate(
        kind="canary", source=f"{cluster}/{namespace}/{name}", metrics=evidence_metrics(record),
        verdict="pass" if passed else "fail", window=window, requests=canary.requests,
        details={"message": record.message, "intervals": [i.model_dump(mode="json", by_alias=True, exclude_none=True)
                                                          for i in record.intervals],
                 "settings": spec.rollout.canary.analysis.model_dump(by_alias=True, exclude_none=True)})
    move = None
    canary_settings = spec.rollout.canary
    if passed and canary_settings.promote is not None:
        move = AliasMove(canary_settings.promote.alias, record.version, "promote")
    serving = status.rollout.version
    if (not passed and canary_settings.on_failure == FailureAction.REVERT_ALIAS and spec.model.alias
            and serving is not None and serving != record.version):
        move = AliasMove(spec.model.alias, serving, "revert")
    return CanaryReport(spec.model.name, record.version, evaluation, move)


def told(status: DeploymentStatus, now: float, evidence_id: int | None, reason: str, message: str, *,
         reported: bool = True) -> DeploymentStatus:
    """The status once the registry heard the verdict (``reported``; False: the evidence is recorded and
    the alias move is still owed), with the ``Evidence`` condition saying what happened."""
    record = status.rollout.analysis
    assert record is not None
    new = status.model_copy(deep=True)
    new.rollout.analysis = record.model_copy(update={"reported": reported, "evidence_id": evidence_id})
    new.conditions = cond.set_condition(new.conditions, ConditionType.EVIDENCE, reason == Reason.EVIDENCE_RECORDED,
                                        reason, message, to_time(now))
    return new
