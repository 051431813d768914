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
    CANARY_FAILED = "CanaryFailed"
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
        """The resource's spelling: camelCase, unset fields (and an empty rollout record or list)
        left out, so a status read and written back unchanged compares equal."""
        out = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {key: value for key, value in out.items() if value not in ({}, [])}

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions if c.type == type_), None)


def to_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A merge patch turning ``old`` into ``new`` at the top level: changed fields, with an object's
    vanished fields set to None (a merge patch deletes them); lists are replaced whole."""
    changed: dict[str, Any] = {}
    for key, value in new.items():
        if old.get(key) == value:
            continue
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            value = {**{gone: None for gone in old[key] if gone not in value}, **value}
        changed[key] = value
    return changed
