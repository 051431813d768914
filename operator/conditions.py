"""Status conditions and rollout history: pure list transformations.

Kubernetes convention: ``lastTransitionTime`` changes only when ``status`` flips, so a
condition rewritten with a new message keeps the time its state began.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

HISTORY_LIMIT = 10

READY = "Ready"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
REGISTRY_REACHABLE = "RegistryReachable"
REGISTRY_WATCH = "RegistryWatch"

CONDITION_ORDER = (READY, PROGRESSING, DEGRADED, REGISTRY_REACHABLE, REGISTRY_WATCH)


def set_condition(conditions: Sequence[Mapping[str, Any]], type_: str, status: bool | None, reason: str,
                  message: str, now: str) -> list[dict[str, Any]]:
    """``conditions`` with ``type_`` set; ``status`` None means Unknown."""
    text = "Unknown" if status is None else ("True" if status else "False")
    out: list[dict[str, Any]] = []
    found = False
    for condition in conditions:
        if condition.get("type") != type_:
            out.append(dict(condition))
            continue
        found = True
        since = condition.get("lastTransitionTime") if condition.get("status") == text else now
        out.append({"type": type_, "status": text, "reason": reason, "message": message,
                    "lastTransitionTime": since or now})
    if not found:
        out.append({"type": type_, "status": text, "reason": reason, "message": message,
                    "lastTransitionTime": now})
    rank = {name: i for i, name in enumerate(CONDITION_ORDER)}
    return sorted(out, key=lambda c: rank.get(c.get("type", ""), len(rank)))


def condition(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    return next((c for c in conditions or () if c.get("type") == type_), None)


def add_history(history: Sequence[Mapping[str, Any]] | None, entry: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Append a rollout, keeping the newest ``HISTORY_LIMIT``."""
    return [dict(h) for h in history or ()][-(HISTORY_LIMIT - 1):] + [dict(entry)]


def finish_history(history: Sequence[Mapping[str, Any]] | None, revision: int, result: str, reason: str,
                   now: str) -> list[dict[str, Any]]:
    """Record the outcome of the rollout that created ``revision`` (the newest entry with it)."""
    out = [dict(h) for h in history or ()]
    for entry in reversed(out):
        if entry.get("revision") == revision:
            entry.update(result=result, reason=reason, time=now)
            break
    return out
