"""The operator's state machine: pure transitions from what it read to what it should write.

Two transitions, one per way work arrives:

- ``reconcile_step``: the spec, the status, what the registry answered (a version, or why not), the
  Helm release's current state and the clock → the new status, the Events to post, the Helm upgrade
  to run, and how kopf should retry.
- ``check_step``: the spec, the status, the release's Deployments and the clock → the same, for a
  rollout under way (complete it, step a canary, promote it, or give up and roll back).

A Helm action's result is one more input: called without it, a step that needs Helm returns the
action (and, for an upgrade, the status to record before Helm runs, so that a crash in between
re-plans the same values); called again with the revision Helm made, or the error it gave, it
returns the final status.  The reconciler (``reconciler.py``) only reads, calls these, runs Helm
and writes, so every phase change and failure reason is unit-tested without an API server
(``tests/test_operator_transitions.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from modelyard.operator import conditions as cond
from modelyard.operator.analysis import Reading, advance, begin, summary
from modelyard.operator.resolve import RegistryUnreachable, ResolveFailure
from modelyard.operator.rollout import (PodFailure, ReleasePlan, Track, VerdictAction, judge, pinned, plan_release,
                                        remembered, replica_counts)
from modelyard.operator.spec import DeploymentSpec, SpecError
from modelyard.operator.status import (
    AnalysisRecord,
    ConditionType,
    DeploymentStatus,
    HelmStatus,
    HistoryEntry,
    IntervalResult,
    ModelStatus,
    Phase,
    Reason,
    RolloutRecord,
    RolloutState,
    to_time,
)
from modelyard.operator.values import OperatorDefaults, ResolvedVersion, model_server_values
from modelyard.registry.kernel.defaults import FAILURE_RETRY_SECONDS, FALLBACK_RESOLVE_SECONDS

C = ConditionType


class Outcome(StrEnum):
    """How a reconcile ended (the ``modelyard_operator_reconciles_total`` label)."""

    UPGRADED = "upgraded"
    UNCHANGED = "unchanged"
    HELD_BACK = "held-back"
    FAILED = "failed"
    UNREACHABLE = "unreachable"
    HELM_ERROR = "helm-error"
    GONE = "gone"
    ERROR = "error"


class HelmVerb(StrEnum):
    UPGRADE = "upgrade"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class HelmAction:
    verb: HelmVerb
    description: str
    values: dict[str, Any] | None = None
    """The release's values (an upgrade)."""
    revision: int | None = None
    """The revision to return to (a rollback)."""


@dataclass(frozen=True)
class HelmFailure:
    """What Helm said when an action failed."""

    message: str


@dataclass(frozen=True)
class Event:
    type: str
    """Normal | Warning"""
    reason: str
    message: str


@dataclass(frozen=True)
class Retry:
    """Ask kopf to run the handler again: after ``delay`` seconds, or never (``delay`` None)."""

    message: str
    delay: float | None


@dataclass(frozen=True)
class Step:
    status: DeploymentStatus
    events: tuple[Event, ...] = ()
    helm: HelmAction | None = None
    """Run this, then call the transition again with its result."""
    outcome: Outcome = Outcome.UNCHANGED
    retry: Retry | None = None
    failure: str | None = None
    """A failure reason to count (``modelyard_operator_failures_total``)."""
    rollout: str | None = None
    """started | succeeded | failed: a rollout to count."""
    recheck_at: float | None = None
    """Check the rollout again at this wall-clock time (a deadline or a canary step)."""
    check_now: bool = False
    """Check the rollout again as soon as possible (a promotion just started)."""


@dataclass(frozen=True)
class FeedHealth:
    """The registry event feed the resource is subscribed to."""

    healthy: bool
    error: str = ""
    fallback_seconds: float = FALLBACK_RESOLVE_SECONDS


@dataclass(frozen=True)
class Release:
    """The Helm release as it stands (None in the inputs: not installed)."""

    revision: int
    chart: str
    values: dict[str, Any]


Resolution = ResolvedVersion | ResolveFailure | RegistryUnreachable | SpecError


@dataclass(frozen=True)
class ReconcileInputs:
    name: str
    namespace: str
    generation: int
    spec: DeploymentSpec | None
    """None when the spec did not parse (then ``resolution`` is the SpecError)."""
    status: DeploymentStatus
    resolution: Resolution
    now: float
    feed: FeedHealth | None = None
    release: Release | None = None
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    chart: str = "model-server"
    retry: int = 0
    """kopf's retry count for this handler (backoff)."""
    failure_retry_seconds: float = FAILURE_RETRY_SECONDS


def reconcile_step(inputs: ReconcileInputs, helm_result: int | HelmFailure | None = None) -> Step:
    """Resolve → plan → upgrade, as a transition (see the module's docstring)."""
    i = inputs
    status = i.status.model_copy(deep=True)
    now = to_time(i.now)
    if isinstance(i.resolution, SpecError):
        return _failed(i, status, i.resolution.reason, str(i.resolution), now, permanent=True)
    assert i.spec is not None
    spec = i.spec
    if not status.phase:
        status.phase = Phase.RESOLVING
    if i.feed is not None:
        status.conditions = cond.set_condition(
            status.conditions, C.REGISTRY_WATCH, i.feed.healthy,
            Reason.FOLLOWING if i.feed.healthy else Reason.EVENT_FEED_UNREACHABLE,
            "following the registry's event feed" if i.feed.healthy else
            f"event feed unreachable ({i.feed.error}); re-resolving every {i.feed.fallback_seconds:.0f} s", now)

    if isinstance(i.resolution, RegistryUnreachable):
        message = str(i.resolution)
        was = i.status.condition(C.REGISTRY_REACHABLE)
        status.conditions = cond.set_condition(status.conditions, C.REGISTRY_REACHABLE, False,
                                               Reason.REGISTRY_UNREACHABLE, message, now)
        events = () if was is not None and was.status == "False" else (
            Event("Warning", Reason.REGISTRY_UNREACHABLE, message),)
        return Step(status, events, outcome=Outcome.UNREACHABLE, failure=Reason.REGISTRY_UNREACHABLE,
                    retry=Retry(f"registry unreachable: {message}", min(2 ** i.retry, 60)))
    if isinstance(i.resolution, ResolveFailure):
        return _failed(i, status, i.resolution.reason, str(i.resolution), now, permanent=False)

    resolved = i.resolution
    status.conditions = cond.set_condition(status.conditions, C.REGISTRY_REACHABLE, True, Reason.REACHABLE,
                                           f"resolved {spec.model.ref} → version {resolved.version}", now)
    rollout = status.rollout
    try:
        plan = plan_release(spec, resolved, rollout, i.generation, i.release.values if i.release else None,
                            i.defaults)
    except SpecError as error:
        return _failed(i, status, error.reason, str(error), now, permanent=True)

    if plan.held_back:
        status.observed_generation = i.generation
        status.conditions = cond.set_condition(status.conditions, C.DEGRADED, True, Reason.ROLLOUT_FAILED,
                                               plan.held_back, now)
        return Step(status, outcome=Outcome.HELD_BACK)

    if not plan.upgrade:
        assert i.release is not None  # values equal to the release's: there is one
        status.observed_generation = i.generation
        if rollout.revision != i.release.revision and rollout.state not in (RolloutState.ROLLED_BACK,
                                                                             RolloutState.FAILED):
            # The release moved without us recording it (an operator killed right after Helm
            # answered): adopt its revision and judge it like any rollout.
            status.rollout = rollout.model_copy(update={
                "state": RolloutState.CANARY if plan.canary else RolloutState.PROGRESSING,
                "revision": i.release.revision, "version": resolved.version, "digest": resolved.digest,
                "started_at": now, "ready_since": None})
            status.rollout.facts = remembered(status.rollout, resolved, plan.stable)
            status.phase = Phase.ROLLING_OUT
            status.helm = HelmStatus(release=i.name, revision=i.release.revision, chart=i.release.chart)
            status.model = _model_status(resolved)
        elif (rollout.state in (RolloutState.ROLLED_BACK, RolloutState.FAILED) and rollout.version == resolved.version
              and rollout.failed_version not in (None, resolved.version) and rollout.revision == i.release.revision):
            # The spec points at the version that kept serving again (its alias was moved back, by a
            # person or by the operator after a failed canary): the failure is behind it.
            status.rollout = rollout.model_copy(update={"state": RolloutState.COMPLETE})
            status.phase = Phase.READY
            message = f"version {resolved.version} serves, as {spec.model.ref} says again"
            status.conditions = cond.set_condition(status.conditions, C.PROGRESSING, False, Reason.ROLLOUT_COMPLETE,
                                                   message, now)
            status.conditions = cond.set_condition(status.conditions, C.DEGRADED, False, Reason.NONE, "", now)
        if status.phase in (Phase.RESOLVING, Phase.FAILED, Phase.PENDING):
            status.phase = Phase.ROLLING_OUT if status.rollout.in_flight else Phase.READY
        return Step(status, outcome=Outcome.UNCHANGED)

    # A new revision: recorded as started before Helm runs.
    what = f"{resolved.name}:{resolved.version}" + (
        f" as a canary beside {plan.stable.version}" if plan.canary and plan.stable else "")
    status.phase = Phase.ROLLING_OUT
    status.observed_generation = i.generation
    status.conditions = cond.set_condition(status.conditions, C.PROGRESSING, True, Reason.UPGRADING,
                                           f"rolling out {what}", now)
    status.upgrade_started_at = now
    if helm_result is None:
        return Step(status, outcome=Outcome.UPGRADED,
                    helm=HelmAction(HelmVerb.UPGRADE, f"modelyard: {what}", values=plan.values))
    if isinstance(helm_result, HelmFailure):
        message = f"helm upgrade failed: {helm_result.message}"
        status.phase = Phase.DEGRADED
        status.conditions = cond.set_condition(status.conditions, C.DEGRADED, True, Reason.HELM_ERROR, message, now)
        return Step(status, (Event("Warning", Reason.HELM_ERROR, message),), outcome=Outcome.HELM_ERROR,
                    failure=Reason.HELM_ERROR, retry=Retry(message, min(5 * 2 ** i.retry, 120)))
    return _upgraded(i, status, resolved, plan, helm_result, what, now)


def _upgraded(i: ReconcileInputs, status: DeploymentStatus, resolved: ResolvedVersion, plan: ReleasePlan,
              revision: int, what: str, now: str) -> Step:
    stable = plan.stable if plan.canary else None
    status.rollout = status.rollout.model_copy(update={
        "state": RolloutState.CANARY if plan.canary else RolloutState.PROGRESSING, "revision": revision,
        "version": resolved.version, "digest": resolved.digest, "started_at": now, "ready_since": None,
        "stable_version": stable.version if stable else None, "stable_digest": stable.digest if stable else None,
        "failed_version": None, "failed_generation": None, "analysis": None})
    status.rollout.facts = remembered(status.rollout, resolved, stable)
    status.model = _model_status(resolved)
    status.helm = HelmStatus(release=i.name, revision=revision, chart=i.chart)
    status.url = f"http://{i.name}.{i.namespace}.svc.cluster.local:{int(plan.values['service']['port'])}"
    status.selector = f"app.kubernetes.io/name=model-server,app.kubernetes.io/instance={i.name}"
    status.history = cond.add_history(status.history, HistoryEntry(
        version=resolved.version, revision=revision, result="Progressing",
        reason="Canary" if plan.canary else "Upgrade", time=now))
    status.conditions = cond.set_condition(status.conditions, C.DEGRADED, False, Reason.NONE, "", now)
    warnings = tuple(Event("Warning", Reason.MEMORY_BELOW_MODEL, warning) for warning in plan.warnings)
    return Step(status, (Event("Normal", "RolloutStarted", f"rolling out {what} (Helm revision {revision})"),
                         *warnings), outcome=Outcome.UPGRADED, rollout="started")


def _failed(i: ReconcileInputs, status: DeploymentStatus, reason: str, message: str, now: str, *,
            permanent: bool) -> Step:
    """The spec cannot be acted on, or the registry answered that its model is not there (yet)."""
    status.conditions = cond.set_condition(status.conditions, C.REGISTRY_REACHABLE, True, Reason.REACHABLE, "", now)
    status.conditions = cond.set_condition(status.conditions, C.READY, False, reason, message, now)
    status.conditions = cond.set_condition(status.conditions, C.DEGRADED, True, reason, message, now)
    status.phase = Phase.FAILED
    status.observed_generation = i.generation
    ready = i.status.condition(C.READY)
    new = i.status.phase != Phase.FAILED or ready is None or ready.reason != reason
    return Step(status, (Event("Warning", reason, message),) if new else (), outcome=Outcome.FAILED,
                failure=reason, retry=Retry(message, None if permanent else i.failure_retry_seconds))


@dataclass(frozen=True)
class CheckInputs:
    spec: DeploymentSpec
    status: DeploymentStatus
    tracks: list[Track]
    """The release's Deployments (``rollout.track_of``)."""
    generation: int
    now: float
    defaults: OperatorDefaults = field(default_factory=OperatorDefaults)
    reading: Reading | None = None
    """The release's pods' request counters, read now (``reading_needed``): a canary under analysis."""
    failures: tuple[PodFailure, ...] = ()
    """The release's pods whose server said it cannot serve (read while a rollout is in flight)."""


def reading_needed(inputs: CheckInputs) -> bool:
    """Whether this check judges a canary by its numbers, so the reconciler must read the pods first."""
    if not inputs.spec.rollout.canary.analysis.enabled:
        return False
    action = judge(inputs.status.rollout, inputs.tracks, inputs.spec, inputs.now, inputs.failures).action
    return action in (VerdictAction.CANARY_READY, VerdictAction.ANALYZE)


def check_step(inputs: CheckInputs, helm_result: int | None = None) -> Step:
    """Judge a rollout by its Deployments (see the module's docstring).  A Helm failure here is not
    a result: the reconciler lets it raise, and the check runs again later."""
    i = inputs
    status = i.status.model_copy(deep=True)
    rollout = status.rollout
    now = to_time(i.now)
    verdict = judge(rollout, i.tracks, i.spec, i.now, i.failures)
    events: list[Event] = []
    counted: dict[str, Any] = {}
    settings = i.spec.rollout.canary.analysis
    if verdict.action == VerdictAction.ANALYZE:
        if i.reading is None:  # not read (cannot happen through the reconciler): judged on the next check
            return Step(status, recheck_at=i.now + 1)
        assert rollout.analysis is not None
        moved = advance(rollout.analysis, i.reading, i.now, settings, i.spec.rollout.progress_deadline_seconds)
        rollout = status.rollout = rollout.model_copy(update={"analysis": moved.record})
        events.append(_interval_event(moved.record, moved.interval))
        verdict = judge(rollout, i.tracks, i.spec, i.now, i.failures)  # promote, fail, or wait for the next interval

    if verdict.action == VerdictAction.COMPLETE:
        status.rollout = rollout.model_copy(update={
            "state": RolloutState.COMPLETE, "last_ready_revision": rollout.revision,
            "last_ready_version": rollout.version, "last_ready_digest": rollout.digest, "ready_since": None,
            "stable_version": None, "stable_digest": None})
        status.history = cond.finish_history(status.history, rollout.revision, "Ready", "", now)
        status.conditions = cond.set_condition(status.conditions, C.PROGRESSING, False, Reason.ROLLOUT_COMPLETE,
                                               f"version {rollout.version} is ready", now)
        status.conditions = cond.set_condition(status.conditions, C.DEGRADED, False, Reason.NONE, "", now)
        events.append(Event("Normal", "RolloutSucceeded",
                            f"version {rollout.version} ready (Helm revision {rollout.revision})"))
        counted["rollout"] = "succeeded"
    elif verdict.action == VerdictAction.CANARY_READY:
        assert rollout.version is not None
        if settings.enabled:
            status.rollout = rollout.model_copy(update={
                "ready_since": now, "analysis": begin(rollout.version, i.reading or {}, i.now, settings)})
            events.append(Event("Normal", "CanaryReady", (
                f"canary of version {rollout.version} is ready; analysing its traffic every {settings.interval} s "
                f"until {settings.needed} intervals pass in a row")))
        else:
            status.rollout = rollout.model_copy(update={"ready_since": now})
            events.append(Event("Normal", "CanaryReady", f"canary of version {rollout.version} is ready; "
                                                         f"promoting after the canary step"))
    elif verdict.action == VerdictAction.PROMOTE:
        assert rollout.version is not None
        target = pinned(i.spec, rollout.version, rollout.digest, rollout)
        if helm_result is None:
            return Step(status, helm=HelmAction(
                HelmVerb.UPGRADE, f"modelyard: promote canary {target.name}:{target.version}",
                values=model_server_values(i.spec, target, i.defaults)))
        status.rollout = rollout.model_copy(update={
            "state": RolloutState.PROGRESSING, "revision": helm_result, "started_at": now, "ready_since": None,
            "stable_version": None, "stable_digest": None})
        status.helm = (status.helm or HelmStatus()).model_copy(update={"revision": helm_result})
        status.history = cond.add_history(
            cond.finish_history(status.history, rollout.revision, "Promoted", "", now),
            HistoryEntry(version=rollout.version, revision=helm_result, result="Progressing",
                         reason="CanaryPromoted", time=now))
        judged = f": {rollout.analysis.message}" if rollout.analysis is not None and settings.enabled else ""
        events.append(Event("Normal", "CanaryPromoted",
                            f"version {rollout.version} promoted (Helm revision {helm_result}){judged}"))
    elif verdict.action in (VerdictAction.DEADLINE, VerdictAction.ANALYSIS_FAILED, VerdictAction.SERVER_FAILED):
        action = _give_up_action(i, rollout)
        if action is not None and helm_result is None:
            return Step(status, tuple(events), helm=action)
        why = (f"failed its analysis: {verdict.message}" if verdict.action == VerdictAction.ANALYSIS_FAILED
               else verdict.message)
        event, counted = _give_up(i, rollout, status, action, why, helm_result, now,
                                  failure=verdict.failure if verdict.action == VerdictAction.SERVER_FAILED else None)
        events.append(event)

    desired, ready = replica_counts(i.tracks)
    state = status.rollout.state
    ready_now = bool(i.tracks) and all(t.rolled_out for t in i.tracks if t.track == "stable") and ready >= desired
    if (i.tracks or state) and status.phase != Phase.FAILED:  # a Failed phase's Ready condition says why
        status.conditions = cond.set_condition(
            status.conditions, C.READY, ready_now,
            Reason.MINIMUM_REPLICAS_AVAILABLE if ready_now else (
                Reason.ROLLING_OUT if status.rollout.in_flight else Reason.REPLICAS_UNAVAILABLE),
            f"{ready}/{desired} replicas ready", now)
    if state == RolloutState.COMPLETE:
        status.phase = Phase.READY if ready_now else Phase.DEGRADED
        status.conditions = cond.set_condition(
            status.conditions, C.DEGRADED, not ready_now,
            Reason.NONE if ready_now else Reason.REPLICAS_UNAVAILABLE,
            "" if ready_now else f"{ready}/{desired} replicas ready", now)
    elif status.rollout.in_flight:
        status.phase = Phase.ROLLING_OUT
    status.replicas, status.ready_replicas, status.ready = desired, ready, f"{ready}/{desired}"
    in_flight = status.rollout.in_flight
    return Step(status, tuple(events), **counted,
                recheck_at=verdict.recheck_at if in_flight else None,
                check_now=in_flight and verdict.recheck_at is None and verdict.action == VerdictAction.PROMOTE)


def _interval_event(record: AnalysisRecord, interval: IntervalResult) -> Event:
    """One line per interval (``CanaryAnalysis``); a Warning for the interval that failed the canary."""
    stable = f"; stable {summary(interval.stable)}" if interval.stable.requests else ""
    return Event("Warning" if interval.verdict == "fail" else "Normal", "CanaryAnalysis",
                 f"version {record.version}, interval {record.intervals_done}: {interval.verdict} "
                 f"({interval.message}); canary {summary(interval.canary)}{stable}")


def _give_up_action(i: CheckInputs, rollout: RolloutRecord) -> HelmAction | None:
    """A rollout missed its deadline or its canary failed: remove the canary, or roll back, or
    (nothing to return to) neither."""
    if rollout.state == RolloutState.CANARY and rollout.stable_version is not None:
        stable = pinned(i.spec, rollout.stable_version, rollout.stable_digest, rollout)
        return HelmAction(HelmVerb.UPGRADE, f"modelyard: remove failed canary {rollout.version}",
                          values=model_server_values(i.spec, stable, i.defaults))
    if i.spec.rollout.auto_rollback and rollout.last_ready_revision:
        return HelmAction(HelmVerb.ROLLBACK, f"modelyard: roll back {rollout.version}",
                          revision=rollout.last_ready_revision)
    return None


SERVER_FAILURES = (Reason.MODEL_SERVER_FAILED, Reason.SIGNATURE_REQUIRED, Reason.SIGNATURE_INVALID)
"""Reasons a version's own pods gave for not serving it: waiting longer would not change them."""


def _give_up(i: CheckInputs, rollout: RolloutRecord, status: DeploymentStatus, action: HelmAction | None, why: str,
             revision: int | None, now: str, *, failure: str | None = None) -> tuple[Event, dict[str, Any]]:
    """The status after giving up on ``rollout`` with ``action`` (``revision``: what it made).  With nothing to
    return to, a version whose server said it cannot serve it (``failure``: the reason its pod gave,
    ModelServerFailed or a signature's) is ``Failed``: no pod of this spec will ever serve, unlike a rollout
    that was only slow."""
    failed_version, failed_revision = rollout.version, rollout.revision
    record = rollout.model_copy(update={"failed_version": failed_version, "failed_generation": i.generation,
                                        "ready_since": None})
    if action is not None and action.verb == HelmVerb.UPGRADE:
        assert rollout.stable_version is not None
        stable = pinned(i.spec, rollout.stable_version, rollout.stable_digest, rollout)
        reason, message = Reason.CANARY_FAILED, (f"canary of version {failed_version} {why}; removed, version "
                                                 f"{stable.version} keeps serving (Helm revision {revision})")
        record = record.model_copy(update={"state": RolloutState.FAILED, "revision": revision,
                                           "version": stable.version, "digest": stable.digest,
                                           "stable_version": None, "stable_digest": None})
        status.model = _model_status(stable)
        status.helm = (status.helm or HelmStatus()).model_copy(update={"revision": revision})
    elif action is not None:
        assert rollout.last_ready_version is not None
        reason, message = Reason.ROLLED_BACK, (f"version {failed_version} {why}; rolled back to Helm revision "
                                               f"{action.revision} (version {rollout.last_ready_version}) as "
                                               f"revision {revision}")
        record = record.model_copy(update={"state": RolloutState.ROLLED_BACK, "revision": revision,
                                           "version": rollout.last_ready_version,
                                           "digest": rollout.last_ready_digest})
        status.model = _model_status(pinned(i.spec, rollout.last_ready_version, rollout.last_ready_digest,
                                                  rollout))
        status.helm = (status.helm or HelmStatus()).model_copy(update={"revision": revision})
    else:
        reason = Reason(failure) if failure else Reason.PROGRESS_DEADLINE_EXCEEDED
        message = f"version {failed_version} {why}" + (
            "" if rollout.last_ready_revision else "; no earlier ready revision to roll back to")
        record = record.model_copy(update={"state": RolloutState.FAILED})
    status.rollout = record
    status.history = cond.finish_history(status.history, failed_revision, reason, why, now)
    status.phase = Phase.FAILED if reason in SERVER_FAILURES else Phase.DEGRADED
    if reason in SERVER_FAILURES:
        status.conditions = cond.set_condition(status.conditions, C.READY, False, reason, message, now)
    status.conditions = cond.set_condition(status.conditions, C.PROGRESSING, False, reason, message, now)
    status.conditions = cond.set_condition(status.conditions, C.DEGRADED, True, reason, message, now)
    return Event("Warning", reason, message), {"rollout": "failed", "failure": reason}


def _model_status(resolved: ResolvedVersion) -> ModelStatus:
    return ModelStatus(name=resolved.name, version=resolved.version, digest=resolved.digest or None,
                       alias=resolved.alias or None)
