"""Status conditions and rollout history: pure list transformations.

Kubernetes convention: ``lastTransitionTime`` changes only when ``status`` flips, so a
condition rewritten with a new message keeps the time its state began.
"""

from __future__ import annotations

from collections.abc import Sequence

from modelyard.operator.status import Condition, ConditionType, HistoryEntry

HISTORY_LIMIT = 10
CONDITION_ORDER = tuple(ConditionType)


def set_condition(conditions: Sequence[Condition], type_: ConditionType, status: bool | None, reason: str,
                  message: str, now: str) -> list[Condition]:
    """``conditions`` with ``type_`` set; ``status`` None means Unknown."""
    text = "Unknown" if status is None else ("True" if status else "False")
    out: list[Condition] = []
    found = False
    for condition in conditions:
        if condition.type != type_:
            out.append(condition.model_copy())
            continue
        found = True
        since = condition.last_transition_time if condition.status == text else now
        out.append(Condition(type=type_, status=text, reason=reason, message=message,
                             last_transition_time=since or now))
    if not found:
        out.append(Condition(type=type_, status=text, reason=reason, message=message, last_transition_time=now))
    rank = {str(name): i for i, name in enumerate(CONDITION_ORDER)}
    return sorted(out, key=lambda c: rank.get(c.type, len(rank)))


def add_history(history: Sequence[HistoryEntry], entry: HistoryEntry) -> list[HistoryEntry]:
    """Append a rollout, keeping the newest ``HISTORY_LIMIT``."""
    return [h.model_copy() for h in history][-(HISTORY_LIMIT - 1):] + [entry]


def finish_history(history: Sequence[HistoryEntry], revision: int | None, result: str, reason: str,
                   now: str) -> list[HistoryEntry]:
    """Record the outcome of the rollout that created ``revision`` (the newest entry with it)."""
    out = [h.model_copy() for h in history]
    for i in range(len(out) - 1, -1, -1):
        if out[i].revision == revision:
            out[i] = out[i].model_copy(update={"result": result, "reason": reason, "time": now})
            break
    return out
