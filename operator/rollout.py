"""Rollout decisions: pure functions of the spec, the rollout record the operator keeps in the
status (``status.RolloutRecord``), the Helm release and the Deployments' reported state."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from modelyard.operator.spec import DeploymentSpec, Strategy
from modelyard.operator.status import AnalysisState, RolloutRecord, RolloutState, VersionFacts, from_time
from modelyard.operator.values import OperatorDefaults, ResolvedVersion, memory_warnings, model_server_values
from modelyard.registry.kernel import defaults


def same_values(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """Helm hands values back as JSON: compare canonical JSON, not Python types."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@dataclass(frozen=True)
class ReleasePlan:
    """What reconcile should do with the Helm release."""

    values: dict[str, Any]
    upgrade: bool
    """False: the release already has exactly these values (no new revision)."""
    canary: bool = False
    stable: ResolvedVersion | None = None
    held_back: str = ""
    """Non-empty: the resolved version failed for this spec before; nothing is rolled out."""
    warnings: tuple[str, ...] = ()
    """Told as Warning events when the rollout starts (a replica's memory below the model's weights)."""


def plan_release(spec: DeploymentSpec, resolved: ResolvedVersion, rollout: RolloutRecord,
                 generation: int, current_values: Mapping[str, Any] | None,
                 defaults: OperatorDefaults) -> ReleasePlan:
    """Desired values for ``resolved``; raises spec.SpecError for specs it cannot render."""
    if rollout.failed_version == resolved.version and rollout.failed_generation == generation:
        values = dict(current_values or {})
        return ReleasePlan(values, upgrade=False, held_back=(
            f"version {resolved.version} failed its rollout ({rollout.state}); it is not retried "
            f"until the spec changes or {spec.model.alias or 'the version'} moves"))
    stable = _stable_for_canary(spec, resolved, rollout, current_values)
    values = model_server_values(spec, resolved, defaults, stable=stable)
    return ReleasePlan(values, upgrade=not same_values(values, current_values), canary=stable is not None,
                       stable=stable, warnings=tuple(memory_warnings(spec, resolved)))


def pinned(spec: DeploymentSpec, version: int, digest: str | None, rollout: RolloutRecord) -> ResolvedVersion:
    """A version the operator recorded earlier (stable, last ready, canary target) of ``spec.model``, with
    the facts it was rendered from (``RolloutRecord.facts``)."""
    known = rollout.facts.get(str(version)) or VersionFacts()
    facts = {key: value for key, value in (("context_length", known.context_length), ("load_bytes", known.load_bytes))
             if value is not None}
    return ResolvedVersion(spec.model.name, int(version), digest or "", spec.model.alias or "",
                           format=known.format or "", facts=facts)


def remembered(rollout: RolloutRecord, *versions: ResolvedVersion | None) -> dict[str, VersionFacts]:
    """``rollout.facts`` with ``versions`` added, keeping only the versions the record names."""
    facts = dict(rollout.facts)
    for version in versions:
        if version is not None:
            facts[str(version.version)] = VersionFacts(
                format=version.format or None, context_length=version.facts.get("context_length"),
                load_bytes=version.facts.get("load_bytes"))
    named = {str(v.version) for v in versions if v is not None} | {
        str(n) for n in (rollout.version, rollout.stable_version, rollout.last_ready_version) if n is not None}
    return {key: value for key, value in facts.items() if key in named}


def _stable_for_canary(spec: DeploymentSpec, resolved: ResolvedVersion, rollout: RolloutRecord,
                       current_values: Mapping[str, Any] | None) -> ResolvedVersion | None:
    """During a Canary rollout the version that became ready last keeps serving as the primary."""
    if spec.rollout.strategy != Strategy.CANARY or not current_values:
        return None
    if rollout.state == RolloutState.CANARY and rollout.version == resolved.version:
        # A canary of this very version is on its way: keep it; promotion is a separate step.
        if rollout.stable_version is None:
            return None
        return pinned(spec, rollout.stable_version, rollout.stable_digest, rollout)
    version = rollout.last_ready_version
    if version is None or version == resolved.version:
        return None
    return pinned(spec, version, rollout.last_ready_digest, rollout)


@dataclass(frozen=True)
class Track:
    """One Deployment of the release, as its status reports it."""

    name: str
    track: str
    desired: int
    ready: int
    updated: int
    current: bool
    """The controller has seen the newest spec (observedGeneration ≥ generation)."""
    total: int = 0
    """Pods of every revision (status.replicas): old ones count until they are gone."""
    available: int = 0
    """Updated or not: status.availableReplicas."""
    stalled: bool = False
    """The controller reports no progress for the Deployment's progressDeadlineSeconds
    (condition Progressing=False, reason ProgressDeadlineExceeded)."""

    @property
    def rolled_out(self) -> bool:
        """As `kubectl rollout status` decides: every replica updated, no pod of an older revision
        left, and as many available as updated.  Ready counts alone mislead during a surge: the
        old pod is ready while the new one is not."""
        return (self.current and self.updated >= self.desired and self.total <= self.updated
                and self.available >= self.updated)


def track_of(deployment: Mapping[str, Any]) -> Track:
    """A Deployment as the Kubernetes API returns it (the parsing edge for Deployments)."""
    meta, spec, status = deployment.get("metadata") or {}, deployment.get("spec") or {}, deployment.get("status") or {}
    desired = spec.get("replicas")
    desired = 1 if desired is None else int(desired)
    return Track(
        name=meta.get("name", ""), track=(meta.get("labels") or {}).get("modelyard.io/track", "stable"),
        desired=desired, ready=int(status.get("readyReplicas") or 0), updated=int(status.get("updatedReplicas") or 0),
        current=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 1),
        total=int(status.get("replicas") or 0), available=int(status.get("availableReplicas") or 0),
        stalled=any(c.get("type") == "Progressing" and c.get("status") == "False"
                    and c.get("reason") == "ProgressDeadlineExceeded" for c in status.get("conditions") or []),
    )


@dataclass(frozen=True)
class PodFailure:
    """A pod of the release whose server said it cannot serve its version (its termination message, which
    starts with ``defaults.SERVER_FAILURE_PREFIX``)."""

    pod: str
    track: str
    version: int | None
    reason: str
    """The message without the prefix: "NAME:VERSION: why"."""

    @property
    def kind(self) -> str:
        """The condition reason it stands for: the pod's own (``SignatureRequired``, ``SignatureInvalid``) when
        its reason starts with one, else ``ModelServerFailed``."""
        why = self.reason.partition(": ")[2]
        head = why.partition(":")[0]
        return head if head in (defaults.SIGNATURE_REQUIRED, defaults.SIGNATURE_INVALID) else "ModelServerFailed"


def pod_failure(pod: str, labels: Mapping[str, str], message: str | None) -> PodFailure | None:
    """A terminated model-server container's message → a ``PodFailure``, or None when it is not ours."""
    if not message or not message.startswith(defaults.SERVER_FAILURE_PREFIX):
        return None
    version = labels.get("modelyard.io/version", "")
    return PodFailure(pod=pod, track=labels.get("modelyard.io/track", "stable"),
                      version=int(version) if version.isdigit() else None,
                      reason=message.removeprefix(defaults.SERVER_FAILURE_PREFIX).strip())


class VerdictAction(StrEnum):
    WAIT = "wait"
    COMPLETE = "complete"
    PROMOTE = "promote"
    CANARY_READY = "canary-ready"
    ANALYZE = "analyze"
    """Read the pods' counters and judge the interval that just ended."""
    ANALYSIS_FAILED = "analysis-failed"
    DEADLINE = "deadline"
    SERVER_FAILED = "server-failed"
    """A pod of the new version said its server cannot serve it: give up now, with its reason."""


@dataclass(frozen=True)
class Verdict:
    """What the rollout check should do now."""

    action: VerdictAction
    recheck_at: float | None = None
    message: str = ""
    failure: str = ""
    """SERVER_FAILED: the condition reason the pod's failure stands for (``PodFailure.kind``)."""


def judge(rollout: RolloutRecord, tracks: list[Track], spec: DeploymentSpec, now: float,
          failures: Sequence[PodFailure] = ()) -> Verdict:
    """The rollout's next step from its Deployments' status (and its pods' failures, when read).

    A pod of the version being rolled out whose server said it cannot serve it (``failures``) ends the
    rollout at once with that reason: the model cannot load, or vLLM refused it, and waiting for the
    deadline would only restart it.  Until the new version is ready the check comes back every
    ``POD_FAILURE_CHECK_SECONDS`` to look.

    The deadline is Kubernetes' own: a rollout fails when the Deployment controller reports
    no progress for ``progressDeadlineSeconds`` (the chart gives the Deployments the spec's
    value), so a large rollout that keeps making progress is never cut short.  The
    operator's clock (``startedAt`` + the same seconds) decides only while there is no
    Deployment to judge by, or the controller has not picked up the new spec.
    """
    if not rollout.in_flight:
        return Verdict(VerdictAction.WAIT)
    limit = spec.rollout.progress_deadline_seconds
    deadline = (from_time(rollout.started_at) or now) + limit
    stable = [t for t in tracks if t.track == "stable"]
    canary = [t for t in tracks if t.track == "canary"]
    if rollout.state == RolloutState.CANARY:
        if canary and all(t.rolled_out for t in canary):
            since = from_time(rollout.ready_since)
            if spec.rollout.canary.analysis.enabled:
                return _judge_analysis(rollout, since, now, spec.rollout.canary.analysis.interval)
            step = spec.rollout.canary.step_seconds
            if since is None:
                return Verdict(VerdictAction.CANARY_READY, recheck_at=now + step)
            if now >= since + step:
                return Verdict(VerdictAction.PROMOTE)
            return Verdict(VerdictAction.WAIT, recheck_at=since + step)
    elif stable and all(t.rolled_out for t in stable):
        return Verdict(VerdictAction.COMPLETE)
    watched = canary if rollout.state == RolloutState.CANARY else stable
    waiting = [t for t in watched if not t.rolled_out]
    failed = [f for f in failures if f.version == rollout.version
              and f.track == ("canary" if rollout.state == RolloutState.CANARY else "stable")]
    if failed:
        return Verdict(VerdictAction.SERVER_FAILED, message=f"could not be served: {failed[0].reason}",
                       failure=failed[0].kind)
    stalled = [t for t in waiting if t.current and t.stalled]
    unseen = not watched or any(not t.current for t in waiting)
    if stalled or (unseen and now >= deadline):
        shown = stalled or waiting
        detail = ", ".join(f"{t.name}: {t.ready}/{t.desired} ready, {t.updated} updated" for t in shown)
        why = (f"made no progress for {limit} s" if stalled
               else f"not taken up by the Deployment controller within {limit} s")
        return Verdict(VerdictAction.DEADLINE, message=f"{why} ({detail or 'no Deployment found'})")
    look = now + defaults.POD_FAILURE_CHECK_SECONDS  # for pods that say they cannot serve (Deployments do not)
    return Verdict(VerdictAction.WAIT, recheck_at=min(deadline, look) if unseen else look)


def _judge_analysis(rollout: RolloutRecord, ready_since: float | None, now: float, interval: int) -> Verdict:
    """A ready canary under analysis: its first reading, the next interval, or the analysis' verdict."""
    record = rollout.analysis
    if ready_since is None or record is None or record.version != rollout.version:
        return Verdict(VerdictAction.CANARY_READY, recheck_at=now + interval)
    if record.state == AnalysisState.PASSED:
        return Verdict(VerdictAction.PROMOTE)
    if record.state == AnalysisState.FAILED:
        return Verdict(VerdictAction.ANALYSIS_FAILED, message=record.message)
    due = from_time(record.next_at) or now
    if now >= due:
        return Verdict(VerdictAction.ANALYZE)
    return Verdict(VerdictAction.WAIT, recheck_at=due)


def replica_counts(tracks: list[Track]) -> tuple[int, int]:
    """(desired, ready) summed over the release's Deployments."""
    return sum(t.desired for t in tracks), sum(min(t.ready, t.desired) for t in tracks)
