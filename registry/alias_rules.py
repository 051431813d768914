"""Protected aliases: the rules a version must meet before a non-admin caller may point the alias at it.

A rule reads a number from a source: the version's own metrics (frozen once it is ready), or the
evidence measured on it: the latest passing ``offline`` evaluation, or the latest passing
``canary`` evaluation (of any cluster, or of ``canary@CLUSTER``).  ``signed-by:NAME`` asks for a
signature that the trust store's NAME verified and still vouches for.  Pure: parsing and checking
only (the store reads the evidence and the signers and applies the rules inside ``set_alias``).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.registry.kernel.names import NAME_PATTERN
from modelyard.registry.kernel.schemas import RULE_PATTERN, SIGNED_BY_PATTERN

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt, "==": operator.eq}
OWN = "metrics"
"""The source of a rule without a prefix: the version's own metrics."""
EVIDENCE_KINDS = ("offline", "canary")


@dataclass(frozen=True)
class Rule:
    metric: str
    op: str
    threshold: float
    kind: str = OWN
    """``metrics`` (the version's own), ``offline`` or ``canary``."""
    cluster: str | None = None
    """For a canary rule: the cluster whose evidence counts (None: any)."""

    @property
    def source(self) -> str:
        """``metrics``, ``offline``, ``canary`` or ``canary@CLUSTER``: where the number comes from."""
        return self.kind if self.cluster is None else f"{self.kind}@{self.cluster}"

    def __str__(self) -> str:
        prefix = "" if self.kind == OWN else f"{self.source}."
        return f"{prefix}{self.metric} {self.op} {self.threshold:g}"

    @classmethod
    def parse(cls, text: str) -> Rule:
        """``accuracy>=0.95``, ``offline.accuracy>=0.95``, ``canary@staging.p99_ms<=120`` → Rule;
        ValueError for anything else, an unknown source included."""
        match = re.match(RULE_PATTERN, text)
        if not match:
            raise ValueError(f"invalid rule {text!r}: use [SOURCE.]METRIC OP NUMBER with OP one of >=, >, <=, <, == "
                             "(e.g. accuracy>=0.95, offline.accuracy>=0.95, canary@staging.error_rate<=0.01)")
        name, op, threshold = match.group(1), match.group(2), float(match.group(3))
        kind, cluster = OWN, None
        if "." in name:
            head, metric = name.split(".", 1)
            kind, at, named = head.partition("@")
            if kind not in (OWN, *EVIDENCE_KINDS) or (at and kind != "canary"):
                raise ValueError(f"invalid rule {text!r}: {head!r} is not a source of numbers; use metrics. (the "
                                 "version's own, also the default), offline. or canary[@CLUSTER].")
            if at and not re.match(NAME_PATTERN, named):
                raise ValueError(f"invalid rule {text!r}: {named!r} is not a cluster name")
            cluster = named or None
            name = metric
        if "@" in name or not name:
            raise ValueError(f"invalid rule {text!r}: a metric name cannot contain @")
        return cls(name, op, threshold, kind, cluster)

    def failure(self, metrics: Mapping[str, float], evidence: Mapping[str, Any] | None = None) -> str | None:
        """Why the numbers break this rule, or None when they meet it.  ``evidence`` maps a source
        (``offline``, ``canary``, ``canary@CLUSTER``) to the latest passing evaluation's ``{"id",
        "metrics"}``, or None when the version has none."""
        if self.kind == OWN:
            value = metrics.get(self.metric)
            if value is None:
                return f"{self} (the version records no {self.metric})"
        else:
            found = (evidence or {}).get(self.source)
            where = "" if self.cluster is None else f" from cluster {self.cluster}"
            if found is None:
                return f"{self} (no passing {self.kind} evaluation{where} of this version)"
            value = found["metrics"].get(self.metric)
            if value is None:
                return f"{self} (its latest passing {self.kind} evaluation{where}, #{found['id']}, records no " \
                       f"{self.metric})"
        if math.isnan(value) or not _COMPARE[self.op](value, self.threshold):
            return f"{self} ({self.metric} is {value:g})"
        return None


@dataclass(frozen=True)
class SignedBy:
    """``signed-by:NAME``: a signature verified by the trust store's NAME, which still vouches for it."""

    signer: str

    def __str__(self) -> str:
        return f"signed-by:{self.signer}"

    def failure(self, signers: Collection[str]) -> str | None:
        """Why a version whose trusted signers are ``signers`` breaks the rule, or None."""
        if self.signer in signers:
            return None
        return f"{self} (the version carries no signature that {self.signer} in the trust store vouches for)"


def parse(text: str) -> Rule | SignedBy:
    """A rule of either kind; ValueError for anything else."""
    match = re.match(SIGNED_BY_PATTERN, text)
    return SignedBy(match.group(1)) if match else Rule.parse(text)


def failures(rules: Sequence[str], metrics: Mapping[str, float], evidence: Mapping[str, Any] | None = None,
             signers: Collection[str] = ()) -> list[str]:
    """The rules the numbers (and the version's trusted ``signers``) break, each saying why; empty when
    every one holds."""
    broken = []
    for text in rules:
        rule = parse(text)
        why = rule.failure(signers) if isinstance(rule, SignedBy) else rule.failure(metrics, evidence)
        if why is not None:
            broken.append(why)
    return broken


def _number_rules(rules: Sequence[str]) -> list[Rule]:
    return [rule for text in rules if isinstance(rule := parse(text), Rule)]


def read_by(rules: Sequence[str]) -> set[str]:
    """The names of the version's own metrics that ``rules`` read."""
    return {rule.metric for rule in _number_rules(rules) if rule.kind == OWN}


def evidence_read_by(rules: Sequence[str]) -> set[tuple[str, str | None]]:
    """The evidence sources ``rules`` read: (kind, cluster or None)."""
    return {(rule.kind, rule.cluster) for rule in _number_rules(rules) if rule.kind != OWN}


def signers_read_by(rules: Sequence[str]) -> list[str]:
    """The signers ``signed-by`` rules ask for."""
    return [rule.signer for text in rules if isinstance(rule := parse(text), SignedBy)]
