"""Rollout decisions: pure functions of the spec, the status the operator keeps, the Helm
release and the Deployments' reported state.  Handlers and the reconciler only do I/O.

``status.rollout`` is the operator's bookkeeping, kept in the resource so a restarted
operator picks up a rollout where the old one left it:

    state: Progressing | Canary | Complete | RolledBack | Failed
    revision, version, digest          what this rollout deploys (the Helm revision that made it)
    startedAt, readySince              RFC 3339; readySince: when a canary became ready
    stableVersion, stableDigest        what served before (a canary runs beside it)
    lastReadyRevision, lastReadyVersion, lastReadyDigest   the newest release that became ready
    failedVersion, failedGeneration    a version that failed for this spec: not retried until either changes
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelyard.operator.values import OperatorDefaults, ResolvedVersion, model_server_values

PROGRESSING, CANARY, COMPLETE, ROLLED_BACK, FAILED = "Progressing", "Canary", "Complete", "RolledBack", "Failed"
IN_FLIGHT = (PROGRESSING, CANARY)


def to_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


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


def plan_release(spec: Mapping[str, Any], resolved: ResolvedVersion, rollout: Mapping[str, Any],
                 generation: int, current_values: Mapping[str, Any] | None,
                 defaults: OperatorDefaults) -> ReleasePlan:
    """Desired values for ``resolved``; raises values.SpecError for specs it cannot render."""
    if rollout.get("failedVersion") == resolved.version and rollout.get("failedGeneration") == generation:
        values = dict(current_values or {})
        return ReleasePlan(values, upgrade=False, held_back=(
            f"version {resolved.version} failed its rollout ({rollout.get('state')}); it is not retried "
            f"until the spec changes or {spec['model'].get('alias') or 'the version'} moves"))
    stable = _stable_for_canary(spec, resolved, rollout, current_values)
    values = model_server_values(spec, resolved, defaults, stable=stable)
    return ReleasePlan(values, upgrade=not same_values(values, current_values), canary=stable is not None,
                       stable=stable)


def _stable_of(rollout: Mapping[str, Any], resolved: ResolvedVersion) -> ResolvedVersion | None:
    if rollout.get("stableVersion") is None:
        return None
    return ResolvedVersion(resolved.name, int(rollout["stableVersion"]), rollout.get("stableDigest") or "",
                           resolved.alias)


def _stable_for_canary(spec: Mapping[str, Any], resolved: ResolvedVersion, rollout: Mapping[str, Any],
                       current_values: Mapping[str, Any] | None) -> ResolvedVersion | None:
    """During a Canary rollout the version that became ready last keeps serving as the primary."""
    if (spec.get("rollout") or {}).get("strategy") != "Canary" or not current_values:
        return None
    if rollout.get("state") == CANARY and rollout.get("version") == resolved.version:
        # A canary of this very version is on its way: keep it; promotion is a separate step.
        return _stable_of(rollout, resolved)
    version = rollout.get("lastReadyVersion")
    if version is None or int(version) == resolved.version:
        return None
    return ResolvedVersion(resolved.name, int(version), rollout.get("lastReadyDigest") or "", resolved.alias)


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
class Verdict:
    """What check_rollout should do now."""

    action: str
    """wait | complete | promote | canary-ready | deadline"""
    recheck_at: float | None = None
    message: str = ""


def judge(rollout: Mapping[str, Any], tracks: list[Track], spec: Mapping[str, Any], now: float) -> Verdict:
    """The rollout's next step from its Deployments' status.

    The deadline is Kubernetes' own: a rollout fails when the Deployment controller reports
    no progress for ``progressDeadlineSeconds`` (the chart gives the Deployments the spec's
    value), so a large rollout that keeps making progress is never cut short.  The
    operator's clock (``startedAt`` + the same seconds) decides only while there is no
    Deployment to judge by, or the controller has not picked up the new spec.
    """
    state = rollout.get("state")
    if state not in IN_FLIGHT:
        return Verdict("wait")
    settings = spec.get("rollout") or {}
    limit = int(settings.get("progressDeadlineSeconds", 600))
    deadline = (from_time(rollout.get("startedAt")) or now) + limit
    stable = [t for t in tracks if t.track == "stable"]
    canary = [t for t in tracks if t.track == "canary"]
    if state == CANARY:
        if canary and all(t.rolled_out for t in canary):
            since = from_time(rollout.get("readySince"))
            step = int((settings.get("canary") or {}).get("stepSeconds", 60))
            if since is None:
                return Verdict("canary-ready", recheck_at=now + step)
            if now >= since + step:
                return Verdict("promote")
            return Verdict("wait", recheck_at=since + step)
    elif stable and all(t.rolled_out for t in stable):
        return Verdict("complete")
    watched = canary if state == CANARY else stable
    waiting = [t for t in watched if not t.rolled_out]
    stalled = [t for t in waiting if t.current and t.stalled]
    unseen = not watched or any(not t.current for t in waiting)
    if stalled or (unseen and now >= deadline):
        shown = stalled or waiting
        detail = ", ".join(f"{t.name}: {t.ready}/{t.desired} ready, {t.updated} updated" for t in shown)
        why = (f"made no progress for {limit} s" if stalled
               else f"not taken up by the Deployment controller within {limit} s")
        return Verdict("deadline", message=f"{why} ({detail or 'no Deployment found'})")
    return Verdict("wait", recheck_at=deadline if unseen else None)


def replica_counts(tracks: list[Track]) -> tuple[int, int]:
    """(desired, ready) summed over the release's Deployments."""
    return sum(t.desired for t in tracks), sum(min(t.ready, t.desired) for t in tracks)
