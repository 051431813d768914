"""Protected aliases: the rules a version's metrics must meet before a non-admin caller may point
the alias at it.  Pure: parsing and checking only (the store applies them inside ``set_alias``)."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from modelyard.registry.kernel.schemas import RULE_PATTERN

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``accuracy>=0.95`` → Rule; ValueError for anything else."""
        match = re.match(RULE_PATTERN, text)
        if not match:
            raise ValueError(f"invalid rule {text!r}: use METRIC OP NUMBER with OP one of >=, >, <=, <, == "
                             "(e.g. accuracy>=0.95)")
        return cls(match.group(1), match.group(2), float(match.group(3)))

    def failure(self, metrics: Mapping[str, float]) -> str | None:
        """Why ``metrics`` break this rule, or None when they meet it."""
        value = metrics.get(self.metric)
        if value is None:
            return f"{self} (the version records no {self.metric})"
        if math.isnan(value) or not _COMPARE[self.op](value, self.threshold):
            return f"{self} ({self.metric} is {value:g})"
        return None


def failures(rules: Sequence[str], metrics: Mapping[str, float]) -> list[str]:
    """The rules ``metrics`` break, each saying why; empty when every one holds."""
    return [why for text in rules if (why := Rule.parse(text).failure(metrics)) is not None]


def read_by(rules: Sequence[str]) -> set[str]:
    """The metric names ``rules`` read."""
    return {Rule.parse(text).metric for text in rules}
