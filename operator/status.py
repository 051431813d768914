"""A ModelDeployment's ``status``, typed, with the enums the operator decides in.

``status.rollout`` is the operator's bookkeeping, kept in the resource so that a restarted operator
picks a rollout up where the old one left it.  The status is read into ``DeploymentStatus`` once per
step and written back as a merge patch of what changed (``to_patch``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

log = logging.getLogger("modelyard.operator")


class Phase(StrEnum):
    PENDING = "Pending"
    RESOLVING = "Resolving"
    PACKAGING = "Packaging"
    """Allowed by the CRD for compatibility; the operator no longer sets it (pods fetch what serves)."""
    ROLLING_OUT = "RollingOut"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class RolloutState(StrEnum):
    PROGRESSING = "Progressing"
    CANARY = "Canary"
    COMPLETE = "Complete"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"

    @property
    def in_flight(self) -> bool:
        return self in (RolloutState.PROGRESSING, RolloutState.CANARY)


class ConditionType(StrEnum):
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    REGISTRY_REACHABLE = "RegistryReachable"
    REGISTRY_WATCH = "RegistryWatch"
    EVIDENCE = "Evidence"
    """The last canary verdict told to the registry: evidence recorded and the alias moved, or why not."""


class Reason(StrEnum):
    """Every condition reason the operator sets; README's troubleshooting table explains the
    failures (``tests/test_operator_transitions.py`` has a case for each one it lists)."""

    # resolving (resolve.py)
    MODEL_NOT_FOUND = "ModelNotFound"
    ALIAS_NOT_FOUND = "AliasNotFound"
    VERSION_NOT_FOUND = "VersionNotFound"
    VERSION_NOT_READY = "VersionNotReady"
    REGISTRY_UNREACHABLE = "RegistryUnreachable"
    REACHABLE = "Reachable"
    FOLLOWING = "Following"
    EVENT_FEED_UNREACHABLE = "EventFeedUnreachable"
    # specs that cannot be rendered (spec.py, values.py)
    INVALID_SPEC = "InvalidSpec"
    INVALID_RESOURCES = "InvalidResources"
    INVALID_AUTOSCALING = "InvalidAutoscaling"
    INVALID_IMAGE = "InvalidImage"
    REGISTRY_TOKEN_REQUIRED = "RegistryTokenRequired"
    INVALID_SERVING = "InvalidServing"
    MEMORY_BELOW_MODEL = "MemoryBelowModel"
    # rollouts
    UPGRADING = "Upgrading"
    HELM_ERROR = "HelmError"
    ROLLOUT_COMPLETE = "RolloutComplete"
    ROLLED_BACK = "RolledBack"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    MODEL_SERVER_FAILED = "ModelServerFailed"
    """The version's server said it cannot serve it (its pods' termination message), and nothing earlier was
    ready to return to."""
    SIGNATURE_REQUIRED = "SignatureRequired"  # defaults.SIGNATURE_REQUIRED, which the pod writes
    """``spec.verify`` asks for a signature the version does not carry (found when resolving, or by its pods)."""
    SIGNATURE_INVALID = "SignatureInvalid"  # defaults.SIGNATURE_INVALID
    """The version's signatures do not verify in its pods against the trust roots they were given."""
    CANARY_FAILED = "CanaryFailed"
    EVIDENCE_RECORDED = "EvidenceRecorded"
    EVIDENCE_NOT_RECORDED = "EvidenceNotRecorded"
    ALIAS_NOT_MOVED = "AliasNotMoved"
    ROLLOUT_FAILED = "RolloutFailed"
    # replicas
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    ROLLING_OUT = "RollingOut"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    NONE = "None"


def to_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def from_time(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


class _Part(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore",
                              validate_assignment=False)


class Condition(_Part):
    """Kubernetes convention: ``last_transition_time`` changes only when ``status`` flips."""

    type: str
    status: str
    """"True" | "False" | "Unknown" (strings, as Kubernetes spells them)."""
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None


class HistoryEntry(_Part):
    """One rollout: what it deployed and how it ended."""

    version: int | None = None
    revision: int | None = None
    result: str = ""
    """Progressing while under way; then Ready, Promoted or the failure's reason."""
    reason: str = ""
    time: str | None = None


class Counts(_Part):
    """Request counters: by HTTP status code, and the latency histogram's cumulative buckets by
    upper bound (``"0.1"``, ``"+Inf"``), as a pod's ``/metrics`` reads at one moment, or their
    growth over an interval."""

    requests: dict[str, float] = {}
    buckets: dict[str, float] = {}


class PodCounts(Counts):
    track: str = "stable"


class TrackNumbers(_Part):
    """One track's numbers over an interval (or a whole analysis)."""

    requests: int = 0
    errors: int = 0
    error_rate: float | None = None
    p99_ms: float | None = None


class IntervalResult(_Part):
    start: str | None = None
    end: str | None = None
    canary: TrackNumbers = TrackNumbers()
    stable: TrackNumbers = TrackNumbers()
    verdict: str = ""
    """pass | fail | short (too few requests to judge)"""
    message: str = ""


class AnalysisState(StrEnum):
    RUNNING = "Running"
    PASSED = "Passed"
    FAILED = "Failed"


class AnalysisRecord(_Part):
    """A canary's analysis as it happens: what the operator needs to go on after a restart (the
    counters it last read, per pod, and when to read again) and what ``kubectl describe`` shows."""

    version: int | None = None
    state: AnalysisState = AnalysisState.RUNNING
    started_at: str | None = None
    last_at: str | None = None
    """The end of the last interval (the baseline's time)."""
    next_at: str | None = None
    judged_at: str | None = None
    """The end of the last interval that had enough requests to be judged."""
    passed: int = 0
    """Consecutive passing intervals."""
    intervals_done: int = 0
    baseline: dict[str, PodCounts] = {}
    canary_total: Counts = Counts()
    stable_total: Counts = Counts()
    intervals: list[IntervalResult] = []
    """The newest ones (``defaults.ANALYSIS_INTERVALS_KEPT``)."""
    message: str = ""
    evidence_id: int | None = None
    reported: bool = False
    """The verdict is in the registry (evidence recorded, alias moved or the refusal told)."""


class VersionFacts(_Part):
    """What the chart's values depend on besides the spec, for a version the rollout may render again
    (the stable track, the canary, the last ready one): rendering from these gives the very values the
    version was rolled out with, so removing or promoting a canary changes no other pod."""

    format: str | None = None
    context_length: int | None = None
    load_bytes: int | None = None


class RolloutRecord(_Part):
    state: RolloutState | None = None
    revision: int | None = None
    """The Helm revision that made this rollout."""
    version: int | None = None
    digest: str | None = None
    started_at: str | None = None
    ready_since: str | None = None
    """When a canary became ready (the canary step counts from here)."""
    stable_version: int | None = None
    """What served before: a canary runs beside it."""
    stable_digest: str | None = None
    last_ready_revision: int | None = None
    """The newest release that became ready: the rollback target."""
    last_ready_version: int | None = None
    last_ready_digest: str | None = None
    failed_version: int | None = None
    """A version that failed for this spec: not retried until either changes."""
    failed_generation: int | None = None
    analysis: AnalysisRecord | None = None
    """The canary analysis of ``version`` (spec.rollout.canary.analysis), until the next rollout."""
    facts: dict[str, VersionFacts] = {}
    """By version number: the versions this record names (``version``, ``stableVersion``,
    ``lastReadyVersion``)."""

    @property
    def in_flight(self) -> bool:
        return self.state is not None and self.state.in_flight


class ModelStatus(_Part):
    name: str | None = None
    version: int | None = None
    digest: str | None = None
    alias: str | None = None


class HelmStatus(_Part):
    release: str | None = None
    revision: int | None = None
    chart: str | None = None


class DeploymentStatus(_Part):
    phase: Phase | None = None
    observed_generation: int | None = None
    model: ModelStatus | None = None
    helm: HelmStatus | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    ready: str | None = None
    url: str | None = None
    selector: str | None = None
    conditions: list[Condition] = []
    history: list[HistoryEntry] = []
    upgrade_started_at: str | None = None
    rollout: RolloutRecord = RolloutRecord()

    @classmethod
    def parse(cls, status: Mapping[str, Any] | None) -> DeploymentStatus:
        """The resource's status; an unreadable one (edited by hand) starts afresh rather than
        stopping the operator."""
        try:
            return cls.model_validate(dict(status or {}))
        except ValidationError as error:
            log.warning("ignoring an unreadable status (%s); starting from an empty one", error)
            return cls()

    def to_dict(self) -> dict[str, Any]:
        """The resource's spelling: camelCase, unset fields (and empty objects or lists, at any depth)
        left out, so a status read and written back unchanged compares equal."""
        out: dict[str, Any] = _without_empty(self.model_dump(mode="json", by_alias=True, exclude_none=True))
        return out

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def _without_empty(value: Any) -> Any:
    """Objects without their empty objects and lists, at every depth (they parse back as defaults)."""
    if isinstance(value, dict):
        return {key: _without_empty(item) for key, item in value.items() if item not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(item) for item in value]
    return value


def to_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386) turning ``old`` into ``new``: changed fields only, at every depth,
    with an object's vanished fields set to None (the patch deletes them; without it a merge keeps
    them, e.g. a gone pod's counters in the analysis); lists are replaced whole.  Top-level fields
    that vanished are left alone."""
    changed: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if before == value:
            continue
        changed[key] = _object_patch(before, value) if isinstance(value, dict) and isinstance(before, dict) else value
    return changed


def _object_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    return {**{gone: None for gone in old if gone not in new}, **to_patch(old, new)}
