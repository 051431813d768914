"""Canary analysis, pure: a pod's ``/metrics`` text → its counters; two readings → what was served
in between; the interval's numbers → a verdict; the analysis record → the next one.

The numbers come from the model servers themselves (``registry.kernel.serving_metrics``), read by
the operator every ``intervalSeconds``; no Prometheus is needed.  Counters are kept per pod in
``status.rollout.analysis.baseline``, so an operator restarted mid-analysis reads the growth since
the last interval it recorded: nothing is counted twice and no interval is lost.  A pod whose
counters went down restarted: its counters count from zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from modelyard.operator.spec import CanaryAnalysis
from modelyard.operator.status import (
    AnalysisRecord,
    AnalysisState,
    Counts,
    IntervalResult,
    PodCounts,
    TrackNumbers,
    from_time,
    to_time,
)
from modelyard.registry.kernel import defaults
from modelyard.registry.kernel import serving_metrics as contract

INF = "+Inf"


def read_exposition(text: str, track: str) -> PodCounts:
    """A pod's Prometheus text → its model requests by status and its latency buckets, summed over
    routes.  Modelyard's families when the server exports them (for a language model the latency is
    time to first token: ours, or vLLM's), else BentoML's (a user's own Bento); ``ValueError`` when the
    text is not Prometheus' format."""
    families = {family.name: family for family in text_string_to_metric_families(_request_lines(text))}
    requests_family: Metric | None
    if contract.REQUESTS in families:
        requests_family, latency = families[contract.REQUESTS], families.get(contract.DURATION)
        ttft = families.get(contract.TIME_TO_FIRST_TOKEN) or families.get(contract.VLLM_TIME_TO_FIRST_TOKEN)
        if ttft is not None:
            latency = ttft
        skip: tuple[str, ...] = ()
    else:
        requests_family = families.get(contract.BENTOML_REQUESTS)
        latency = families.get(contract.BENTOML_DURATION)
        skip = contract.BENTOML_NOT_MODEL_ROUTES
    requests: dict[str, float] = {}
    for sample in requests_family.samples if requests_family is not None else ():
        if sample.name.endswith("_total") and sample.labels.get("endpoint", "") not in skip:
            code = sample.labels.get("status") or sample.labels.get("http_response_code") or "0"
            requests[code] = requests.get(code, 0.0) + sample.value
    buckets: dict[str, float] = {}
    for sample in latency.samples if latency is not None else ():
        if sample.name.endswith("_bucket") and sample.labels.get("endpoint", "") not in skip:
            bound = _bound_key(float(sample.labels["le"]))
            buckets[bound] = buckets.get(bound, 0.0) + sample.value
    return PodCounts(track=track, requests=requests, buckets=buckets)


def _request_lines(text: str) -> str:
    """Only the lines of the families read here (a server's page is mostly others: process, BentoML's
    per-endpoint histograms); parsing is what the analysis spends its CPU on."""
    ours = f"\n{contract.REQUESTS}_total" in text or text.startswith(f"{contract.REQUESTS}_total")
    wanted = (("modelyard_", contract.VLLM_TIME_TO_FIRST_TOKEN) if ours
              else (contract.BENTOML_REQUESTS + "_total", contract.BENTOML_DURATION))
    kept = [line for line in text.splitlines()
            if line.startswith(wanted) or (line.startswith(("# TYPE ", "# HELP ")) and line[7:].startswith(wanted))]
    return "\n".join(kept) + "\n"


def _bound_key(bound: float) -> str:
    return INF if math.isinf(bound) else repr(bound)


def _bound(key: str) -> float:
    return math.inf if key == INF else float(key)


def growth(before: Counts | None, now: Counts) -> Counts:
    """What was served between two readings of one pod; a pod that restarted (a counter went
    down) counts from zero, a pod without an earlier reading from its first."""
    if before is None or sum(now.requests.values()) < sum(before.requests.values()) or any(
            now.buckets.get(key, 0.0) < value for key, value in before.buckets.items()):
        return Counts(requests=dict(now.requests), buckets=dict(now.buckets))
    return Counts(requests={code: max(0.0, n - before.requests.get(code, 0.0)) for code, n in now.requests.items()},
                  buckets={key: max(0.0, n - before.buckets.get(key, 0.0)) for key, n in now.buckets.items()})


def combine(parts: Iterable[Counts]) -> Counts:
    """Counts of several pods (or intervals) together.  Servers with different bucket bounds merge
    as step functions: at each bound, each part counts what it had at its largest bound below."""
    parts = list(parts)
    requests: dict[str, float] = {}
    for part in parts:
        for code, n in part.requests.items():
            requests[code] = requests.get(code, 0.0) + n
    bounds = sorted({_bound(key) for part in parts for key in part.buckets})
    buckets: dict[str, float] = {}
    for part in parts:
        own = sorted((_bound(key), n) for key, n in part.buckets.items())
        index, last = 0, 0.0
        for bound in bounds:
            while index < len(own) and own[index][0] <= bound:
                last = own[index][1]
                index += 1
            key = _bound_key(bound)
            buckets[key] = buckets.get(key, 0.0) + last
    return Counts(requests=requests, buckets=buckets)


def quantile(q: float, buckets: Mapping[str, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket the rank falls in; the highest
    finite bound when it falls in ``+Inf``; None without observations."""
    ordered = sorted((_bound(key), n) for key, n in buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    below_bound, below_count, running = 0.0, 0.0, 0.0
    for bound, count in ordered:
        running = max(running, count)  # cumulative counts never fall (a merged histogram may wobble)
        if running >= rank:
            if math.isinf(bound):
                return below_bound
            if running == below_count:
                return bound
            return below_bound + (bound - below_bound) * (rank - below_count) / (running - below_count)
        below_bound, below_count = bound, running
    return below_bound


def numbers(counts: Counts) -> TrackNumbers:
    requests = round(sum(counts.requests.values()))
    errors = round(sum(n for code, n in counts.requests.items() if code.isdigit()
                       and contract.is_error(int(code))))
    p99 = quantile(0.99, counts.buckets)
    return TrackNumbers(requests=requests, errors=errors, error_rate=errors / requests if requests else None,
                        p99_ms=None if p99 is None else round(p99 * 1000, 3))


@dataclass(frozen=True)
class IntervalVerdict:
    verdict: str
    """pass | fail | short"""
    message: str


def judge_interval(canary: TrackNumbers, stable: TrackNumbers, settings: CanaryAnalysis) -> IntervalVerdict:
    """One interval against the bounds: too few requests to judge, a broken bound, or a pass."""
    least = settings.least_requests
    if canary.requests < least or canary.requests == 0:
        return IntervalVerdict("short", f"{canary.requests} requests < minRequests {least}")
    broken = []
    rate = canary.error_rate or 0.0
    if rate > settings.error_rate_bound:
        broken.append(f"error rate {rate:.1%} > {settings.error_rate_bound:.1%} over {canary.requests} requests")
    latency_bounded = settings.max_p99_latency_ms is not None or settings.max_latency_ratio is not None
    if latency_bounded and canary.p99_ms is None:
        return IntervalVerdict("short", "the canary's pods report no latency")
    if settings.max_p99_latency_ms is not None and canary.p99_ms is not None \
            and canary.p99_ms > settings.max_p99_latency_ms:
        broken.append(f"p99 latency {canary.p99_ms:.0f} ms > {settings.max_p99_latency_ms:g} ms")
    if settings.max_latency_ratio is not None and canary.p99_ms is not None and not broken:
        if stable.requests < least or not stable.p99_ms:
            return IntervalVerdict("short", f"the stable track served {stable.requests} requests: too few to compare "
                                            "latencies with")
        ratio = canary.p99_ms / stable.p99_ms
        if ratio > settings.max_latency_ratio:
            broken.append(f"p99 latency {canary.p99_ms:.0f} ms is {ratio:.2f}× the stable track's "
                          f"{stable.p99_ms:.0f} ms > {settings.max_latency_ratio:g}×")
    if broken:
        return IntervalVerdict("fail", "; ".join(broken))
    p99 = f", p99 {canary.p99_ms:.0f} ms" if canary.p99_ms is not None else ""
    return IntervalVerdict("pass", f"error rate {rate:.1%} over {canary.requests} requests{p99}")


Reading = Mapping[str, PodCounts | None]
"""The release's pods at one moment: name → counters (None: listed but its /metrics did not answer)."""


def begin(version: int, reading: Reading, now: float, settings: CanaryAnalysis) -> AnalysisRecord:
    """The first reading once the canary is ready: the baseline every interval grows from."""
    at = to_time(now)
    return AnalysisRecord(version=version, started_at=at, last_at=at, judged_at=at,
                          next_at=to_time(now + settings.interval),
                          baseline={name: counts for name, counts in reading.items() if counts is not None})


@dataclass(frozen=True)
class Advance:
    record: AnalysisRecord
    interval: IntervalResult


def advance(record: AnalysisRecord, reading: Reading, now: float, settings: CanaryAnalysis,
            deadline_seconds: int) -> Advance:
    """One interval: what the pods served since the last reading, judged; the record's next state
    (``state`` Passed after ``samples`` passes in a row, Failed at the first broken bound or when
    no interval could be judged for ``deadline_seconds``)."""
    grown: dict[str, list[Counts]] = {"canary": [], "stable": []}
    baseline = {}
    for name, counts in reading.items():
        if counts is None:  # no answer this time: judged on the next reading, from the same baseline
            if name in record.baseline:
                baseline[name] = record.baseline[name]
            continue
        grown.setdefault(counts.track, []).append(growth(record.baseline.get(name), counts))
        baseline[name] = counts
    canary_counts, stable_counts = combine(grown["canary"]), combine(grown["stable"])
    canary, stable = numbers(canary_counts), numbers(stable_counts)
    verdict = judge_interval(canary, stable, settings)
    at = to_time(now)
    interval = IntervalResult(start=record.last_at, end=at, canary=canary, stable=stable, verdict=verdict.verdict,
                              message=verdict.message)
    update: dict[str, object] = {
        "last_at": at, "next_at": to_time(now + settings.interval), "baseline": baseline,
        "intervals_done": record.intervals_done + 1,
        "intervals": [*record.intervals, interval][-defaults.ANALYSIS_INTERVALS_KEPT:],
        "canary_total": combine([record.canary_total, canary_counts]),
        "stable_total": combine([record.stable_total, stable_counts])}
    subject = f"version {record.version}"
    if verdict.verdict == "fail":
        update.update(state=AnalysisState.FAILED, passed=0, judged_at=at, message=f"{subject}: {verdict.message}")
    elif verdict.verdict == "pass":
        passed = record.passed + 1
        update.update(passed=passed, judged_at=at)
        if passed >= settings.needed:
            update.update(state=AnalysisState.PASSED, message=(
                f"{subject}: {passed} intervals passed in a row; over the analysis "
                f"{summary(numbers(update['canary_total']))}"))  # type: ignore[arg-type]
    else:
        update["passed"] = 0
        since = from_time(record.judged_at) or from_time(record.started_at) or now
        if now - since > deadline_seconds:
            update.update(state=AnalysisState.FAILED, message=(
                f"{subject}: not enough traffic to judge ({verdict.message}) for {deadline_seconds} s "
                "(progressDeadlineSeconds)"))
    return Advance(record.model_copy(update=update), interval)


def summary(track: TrackNumbers) -> str:
    rate = f"error rate {track.error_rate:.1%}" if track.error_rate is not None else "no errors counted"
    p99 = f", p99 {track.p99_ms:.0f} ms" if track.p99_ms is not None else ""
    return f"{rate} over {track.requests} requests{p99}"


def evidence_metrics(record: AnalysisRecord) -> dict[str, float]:
    """The analysis' totals as the numbers a ``canary`` evaluation carries (rules read them:
    ``canary.error_rate``, ``canary.p99_ms``, ``canary.requests`` …)."""
    canary, stable = numbers(record.canary_total), numbers(record.stable_total)
    found: dict[str, float | None] = {
        "error_rate": canary.error_rate, "p99_ms": canary.p99_ms, "errors": float(canary.errors),
        "stable_requests": float(stable.requests), "stable_error_rate": stable.error_rate,
        "stable_p99_ms": stable.p99_ms, "intervals": float(record.intervals_done),
        "latency_ratio": (canary.p99_ms / stable.p99_ms if canary.p99_ms is not None and stable.p99_ms else None)}
    return {name: round(value, 6) for name, value in found.items() if value is not None}
