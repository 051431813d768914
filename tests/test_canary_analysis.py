"""Canary analysis without a cluster: reading a server's ``/metrics`` (as prometheus_client writes
it), p99 from histogram buckets against known distributions, the interval verdicts, the analysis
record's transitions (one case per verdict, a restart in the middle), the rollout steps they drive,
and what the operator tells the registry."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from modelyard.operator.analysis import (advance, begin, combine, evidence_metrics, growth, judge_interval, numbers,
                                         quantile, read_exposition)
from modelyard.operator.canary_report import canary_report, told
from modelyard.operator.rollout import Track
from modelyard.operator.spec import CanaryAnalysis, DeploymentSpec, SpecError
from modelyard.operator.status import (AnalysisState, Counts, DeploymentStatus, Phase, PodCounts, Reason,
                                       RolloutState, TrackNumbers, to_time)
from modelyard.operator.transitions import CheckInputs, HelmVerb, check_step, reading_needed
from modelyard.registry.kernel import serving_metrics as contract
from tests.test_operator_transitions import (CANARY_SPEC, DEFAULTS, RAW_SPEC, T0, V7, V8, canary_of_v8, condition,
                                             reconcile, release_of, track)

SETTINGS = CanaryAnalysis(interval_seconds=10, samples=3, min_requests=20, max_error_rate=0.05)


def exposition(statuses: dict[int, int], latencies: list[float], *, route: str = "/predict",
               ttft: list[float] | None = None, also: dict[int, int] | None = None,
               also_latency: list[float] = ()) -> str:
    """What a model server's /metrics says after serving these requests (prometheus_client's own text)."""
    registry = CollectorRegistry()
    requests = Counter(contract.REQUESTS, "r", ["route", "status"], registry=registry)
    duration = Histogram(contract.DURATION, "d", ["route"], buckets=contract.BUCKETS, registry=registry)
    for status, count in statuses.items():
        requests.labels(route, str(status)).inc(count)
    for seconds in latencies:
        duration.labels(route).observe(seconds)
    for status, count in (also or {}).items():  # a second route of the same server (the protocol's infer)
        requests.labels("/v2/models/{model}/infer", str(status)).inc(count)
    for seconds in also_latency:
        duration.labels("/v2/models/{model}/infer").observe(seconds)
    if ttft is not None:
        first = Histogram(contract.TIME_TO_FIRST_TOKEN, "t", buckets=contract.BUCKETS, registry=registry)
        for seconds in ttft:
            first.observe(seconds)
    return generate_latest(registry).decode()


# -- reading /metrics -----------------------------------------------------------------------------


def test_a_servers_metrics_are_read_by_status_and_latency_summed_over_routes() -> None:
    text = exposition({200: 90, 500: 7, 429: 3, 400: 5}, [0.02] * 105, also={200: 10}, also_latency=[0.3] * 10)
    both = read_exposition(text, "canary")
    assert both.track == "canary" and both.requests == {"200": 100, "500": 7, "429": 3, "400": 5}
    assert both.buckets["+Inf"] == 115 and both.buckets["0.025"] == 105 and both.buckets["0.01"] == 0
    track = numbers(both)
    assert (track.requests, track.errors) == (115, 10)  # 5xx and shed load; a 400 is the client's
    assert track.error_rate == pytest.approx(10 / 115)


def test_a_language_models_latency_is_its_time_to_first_token() -> None:
    read = read_exposition(exposition({200: 4}, [2.0] * 4, route="/v1/chat/completions", ttft=[0.04] * 4), "stable")
    assert numbers(read).p99_ms is not None and numbers(read).p99_ms <= 50


def test_a_vllm_pod_is_read_from_the_guards_counts_and_vllms_time_to_first_token() -> None:
    """Engine vllm: the guard in vLLM's process counts requests in our families; time to first token is vLLM's
    own histogram (its buckets and labels, as vLLM 0.32 writes them), and vLLM's other families are left out."""
    ours = exposition({200: 6, 400: 3, 503: 1}, [2.0] * 10, route="/v1/chat/completions")
    vllm = "\n".join([
        "# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.",
        "# TYPE vllm:time_to_first_token_seconds histogram",
        *(f'vllm:time_to_first_token_seconds_bucket{{engine="0",le="{le}",model_name="chat-lm"}} {n}'
          for le, n in (("0.01", 3.0), ("0.02", 4.0), ("0.04", 6.0), ("0.1", 6.0), ("0.25", 7.0), ("+Inf", 7.0))),
        'vllm:time_to_first_token_seconds_count{engine="0",model_name="chat-lm"} 7.0',
        "# TYPE vllm:e2e_request_latency_seconds histogram",
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="chat-lm"} 7.0',
        'http_requests_total{handler="/v1/chat/completions",method="POST",status="2xx"} 6.0', ""])
    read = read_exposition(ours + vllm, "canary")
    assert read.requests == {"200": 6, "400": 3, "503": 1}
    assert read.buckets == {"0.01": 3, "0.02": 4, "0.04": 6, "0.1": 6, "0.25": 7, "+Inf": 7}
    track = numbers(read)
    assert track.errors == 1 and track.p99_ms is not None and 100 < track.p99_ms <= 250


def test_a_users_own_bento_is_read_from_bentomls_families_without_its_probes() -> None:
    text = "\n".join([
        "# TYPE bentoml_service_request_total counter",
        'bentoml_service_request_total{endpoint="/readyz",http_response_code="200"} 900.0',
        'bentoml_service_request_total{endpoint="/embed",http_response_code="200"} 40.0',
        'bentoml_service_request_total{endpoint="/embed",http_response_code="500"} 10.0',
        "# TYPE bentoml_service_request_duration_seconds histogram",
        'bentoml_service_request_duration_seconds_bucket{endpoint="/embed",http_response_code="200",le="0.1"} 50.0',
        'bentoml_service_request_duration_seconds_bucket{endpoint="/embed",http_response_code="200",le="+Inf"} 50.0',
        'bentoml_service_request_duration_seconds_bucket{endpoint="/readyz",http_response_code="200",le="+Inf"} 9.0',
        ""])
    read = read_exposition(text, "canary")
    assert read.requests == {"200": 40, "500": 10} and read.buckets == {"0.1": 50, "+Inf": 50}


def test_text_that_is_not_prometheus_format_is_refused() -> None:
    with pytest.raises(ValueError):
        read_exposition("modelyard_requests_total{route=\"/predict\" 12\n", "canary")


# -- p99 from buckets -----------------------------------------------------------------------------


def test_p99_from_buckets_follows_prometheus_histogram_quantile() -> None:
    # 100 observations: 50 ≤ 0.1 s, 40 more ≤ 0.2 s, 10 more ≤ 0.4 s → rank 99 lies 9/10 into (0.2, 0.4].
    assert quantile(0.99, {"0.1": 50, "0.2": 90, "0.4": 100, "+Inf": 100}) == pytest.approx(0.38)
    assert quantile(0.5, {"0.1": 50, "0.2": 90, "0.4": 100, "+Inf": 100}) == pytest.approx(0.1)
    assert quantile(0.99, {"0.1": 10, "+Inf": 100}) == pytest.approx(0.1)  # in +Inf: the highest finite bound
    assert quantile(0.99, {"0.1": 0, "+Inf": 0}) is None and quantile(0.99, {}) is None


@pytest.mark.parametrize("scale", [0.005, 0.05, 0.3])
def test_p99_of_a_known_distribution_is_within_its_bucket(scale: float) -> None:
    samples = np.random.default_rng(7).exponential(scale, 20_000)
    read = read_exposition(exposition({200: len(samples)}, samples.tolist()), "canary")
    truth = float(np.quantile(samples, 0.99))
    bounds = [0.0, *contract.BUCKETS]
    upper = next(b for b in contract.BUCKETS if b >= truth)
    lower = bounds[bounds.index(upper) - 1]
    got = numbers(read).p99_ms
    assert got is not None and lower * 1000 <= got <= upper * 1000, (truth, got)


# -- growth between readings ----------------------------------------------------------------------


def test_growth_is_what_was_served_between_two_readings_and_a_restarted_pod_counts_from_zero() -> None:
    before = Counts(requests={"200": 100, "500": 1}, buckets={"0.1": 90, "+Inf": 101})
    after = Counts(requests={"200": 130, "500": 4}, buckets={"0.1": 110, "+Inf": 134})
    assert growth(before, after) == Counts(requests={"200": 30, "500": 3}, buckets={"0.1": 20, "+Inf": 33})
    restarted = Counts(requests={"200": 5}, buckets={"0.1": 5, "+Inf": 5})
    assert growth(before, restarted) == restarted
    assert growth(None, after) == after


def test_pods_with_different_buckets_combine_as_step_functions() -> None:
    a = Counts(requests={"200": 10}, buckets={"0.1": 10, "+Inf": 10})
    b = Counts(requests={"200": 10, "503": 2}, buckets={"0.05": 4, "0.2": 12, "+Inf": 12})
    both = combine([a, b])
    assert both.requests == {"200": 20, "503": 2}
    assert both.buckets == {"0.05": 4, "0.1": 14, "0.2": 22, "+Inf": 22}


# -- interval verdicts ------------------------------------------------------------------------------


def nums(requests: int, errors: int = 0, p99: float | None = 20.0) -> TrackNumbers:
    return TrackNumbers(requests=requests, errors=errors, error_rate=errors / requests if requests else None,
                        p99_ms=p99)


@pytest.mark.parametrize(("canary", "stable", "settings", "verdict", "said"), [
    (nums(100), nums(100), SETTINGS, "pass", "error rate 0.0% over 100 requests, p99 20 ms"),
    (nums(10), nums(100), SETTINGS, "short", "10 requests < minRequests 20"),
    (nums(312, 39), nums(300), SETTINGS, "fail", "error rate 12.5% > 5.0% over 312 requests"),
    (nums(100, p99=800), nums(100), CanaryAnalysis(max_p99_latency_ms=250, min_requests=20), "fail",
     "p99 latency 800 ms > 250 ms"),
    (nums(100, p99=90), nums(100, p99=30), CanaryAnalysis(max_latency_ratio=2, min_requests=20), "fail",
     "p99 latency 90 ms is 3.00× the stable track's 30 ms > 2×"),
    (nums(100, p99=50), nums(100, p99=30), CanaryAnalysis(max_latency_ratio=2, min_requests=20), "pass", "p99 50"),
    (nums(100, p99=50), nums(3, p99=30), CanaryAnalysis(max_latency_ratio=2, min_requests=20), "short",
     "stable track served 3 requests"),
    (nums(100, p99=None), nums(100), CanaryAnalysis(max_p99_latency_ms=250), "short", "report no latency"),
])
def test_an_interval_passes_fails_or_is_too_short_to_judge(canary: TrackNumbers, stable: TrackNumbers,
                                                            settings: CanaryAnalysis, verdict: str, said: str) -> None:
    judged = judge_interval(canary, stable, settings)
    assert judged.verdict == verdict and said in judged.message, judged


# -- the analysis record ------------------------------------------------------------------------------


def pod(track: str, ok: int, failed: int = 0, seconds: float = 0.02) -> PodCounts:
    read = read_exposition(exposition({200: ok, 500: failed} if failed else {200: ok}, [seconds] * (ok + failed)),
                           track)
    return read


def readings(*served: tuple[int, int]) -> list[dict[str, PodCounts | None]]:
    """Cumulative readings of one canary pod and one stable pod, (ok, failed) of the canary per interval."""
    out, ok, failed = [], 0, 0
    for index, (more_ok, more_failed) in enumerate(((0, 0), *served)):
        ok, failed = ok + more_ok, failed + more_failed
        out.append({"md-canary-0": pod("canary", ok, failed), "md-0": pod("stable", 50 * (index + 1))})
    return out


def run(served: list[tuple[int, int]], settings: CanaryAnalysis = SETTINGS, deadline: int = 100):
    series = readings(*served)
    record = begin(8, series[0], T0, settings)
    intervals = []
    for index, reading in enumerate(series[1:], start=1):
        step = advance(record, reading, T0 + 10 * index, settings, deadline)
        record = step.record
        intervals.append(step.interval)
        if record.state != AnalysisState.RUNNING:
            break
    return record, intervals


def test_samples_passing_intervals_in_a_row_pass_the_canary() -> None:
    record, intervals = run([(40, 0), (40, 1), (40, 0)])
    assert record.state == AnalysisState.PASSED and record.passed == 3 and len(intervals) == 3
    assert [i.canary.requests for i in intervals] == [40, 41, 40] and intervals[0].stable.requests == 50
    assert "3 intervals passed in a row" in record.message and "over 121 requests" in record.message
    metrics = evidence_metrics(record)
    assert metrics["error_rate"] == pytest.approx(1 / 121, abs=1e-6) and metrics["stable_requests"] == 150


def test_the_first_interval_that_breaks_a_bound_fails_the_canary() -> None:
    record, intervals = run([(40, 0), (35, 5), (40, 0)])
    assert record.state == AnalysisState.FAILED and len(intervals) == 2
    assert record.message == "version 8: error rate 12.5% > 5.0% over 40 requests"
    assert evidence_metrics(record)["errors"] == 5


def test_a_short_interval_breaks_the_streak() -> None:
    record, intervals = run([(40, 0), (40, 0), (5, 0), (40, 0), (40, 0)])
    assert [i.verdict for i in intervals] == ["pass", "pass", "short", "pass", "pass"]
    assert record.state == AnalysisState.RUNNING and record.passed == 2


def test_too_little_traffic_for_the_progress_deadline_fails_the_canary() -> None:
    record, intervals = run([(3, 0)] * 20, deadline=35)
    assert record.state == AnalysisState.FAILED and len(intervals) == 4  # judged last at T0: 40 s > 35 s
    assert "not enough traffic to judge (3 requests < minRequests 20) for 35 s" in record.message


def test_a_pod_that_did_not_answer_is_counted_at_the_next_reading() -> None:
    series = readings((40, 0), (40, 0))
    record = begin(8, series[0], T0, SETTINGS)
    missed = advance(record, {**series[1], "md-canary-0": None}, T0 + 10, SETTINGS, 100)
    assert missed.interval.canary.requests == 0 and missed.interval.verdict == "short"
    caught_up = advance(missed.record, series[2], T0 + 20, SETTINGS, 100)
    assert caught_up.interval.canary.requests == 80


def test_an_operator_restarted_mid_analysis_neither_double_counts_nor_loses_an_interval() -> None:
    """The record goes through the resource's status (JSON) between intervals, as across a restart."""
    series = readings((40, 0), (40, 0), (40, 0))
    straight = begin(8, series[0], T0, SETTINGS)
    through_status = straight
    for index, reading in enumerate(series[1:], start=1):
        straight = advance(straight, reading, T0 + 10 * index, SETTINGS, 100).record
        status = DeploymentStatus(rollout={"state": "Canary", "version": 8, "analysis": through_status})
        restored = DeploymentStatus.parse(status.to_dict()).rollout.analysis
        assert restored is not None
        through_status = advance(restored, reading, T0 + 10 * index, SETTINGS, 100).record
    assert through_status == straight and straight.state == AnalysisState.PASSED
    assert numbers(straight.canary_total).requests == 120
    # Reading the same counters again (a check that ran twice) adds an empty interval, never a second count.
    again = advance(straight.model_copy(update={"state": AnalysisState.RUNNING}), series[-1], T0 + 40, SETTINGS, 100)
    assert again.interval.canary.requests == 0 and numbers(again.record.canary_total).requests == 120


# -- the spec -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rollout", "said"), [
    ({"canary": {"analysis": {"samples": 3}}}, "need spec.rollout.strategy: Canary"),
    ({"strategy": "Canary", "canary": {"onFailure": "revertAlias"}}, "needs spec.model.alias"),
    ({"strategy": "Canary", "canary": {"promote": {"alias": "production"}, "analysis": {"samples": 3}}},
     "a different alias"),
    ({"strategy": "Canary", "canary": {"promote": {"alias": "live"}}}, "set spec.rollout.canary.analysis"),
])
def test_canary_settings_that_cannot_work_are_refused(rollout: dict, said: str) -> None:
    model = {"name": "m", "version": 3} if "revertAlias" in str(rollout) else {"name": "m", "alias": "production"}
    with pytest.raises(SpecError, match=said) as caught:
        DeploymentSpec.parse({"model": model, "rollout": rollout})
    assert caught.value.reason == Reason.INVALID_SPEC


def test_analysis_is_off_until_a_field_is_set_and_unset_fields_take_the_defaults() -> None:
    assert not CANARY_SPEC.rollout.canary.analysis.enabled
    on = DeploymentSpec.parse({**RAW_SPEC, "rollout": {"strategy": "Canary", "canary": {"analysis": {"samples": 2}}}})
    analysis = on.rollout.canary.analysis
    assert analysis.enabled and (analysis.interval, analysis.needed, analysis.least_requests) == (30, 2, 20)
    assert analysis.error_rate_bound == 0.01


# -- the rollout steps -----------------------------------------------------------------------------------

ANALYSED = DeploymentSpec.parse({**RAW_SPEC, "rollout": {
    "strategy": "Canary", "progressDeadlineSeconds": 100,
    "canary": {"weight": 50, "onFailure": "revertAlias", "promote": {"alias": "live"},
               "analysis": {"intervalSeconds": 10, "samples": 2, "minRequests": 20, "maxErrorRate": 0.05}}}})
TRACKS = [track(ready=1, desired=1), track(ready=1, desired=1, name="md-canary", kind="canary")]


def checked(status: DeploymentStatus, now: float, reading: dict | None, helm: int | None = None):
    inputs = CheckInputs(spec=ANALYSED, status=status, tracks=TRACKS, generation=1, now=now, defaults=DEFAULTS,
                         reading=reading)
    return inputs, check_step(inputs, helm)


def analysed_canary() -> DeploymentStatus:
    status = canary_of_v8()
    assert not reading_needed(CheckInputs(spec=ANALYSED, status=status, tracks=TRACKS[:1], generation=1, now=T0 + 5))
    return status


def test_a_ready_canary_under_analysis_is_promoted_after_its_intervals_pass() -> None:
    series = readings((40, 0), (40, 0))
    inputs, ready = checked(analysed_canary(), T0 + 10, series[0])
    assert reading_needed(inputs)
    assert ready.status.rollout.analysis is not None and ready.recheck_at == T0 + 20
    assert "analysing its traffic every 10 s until 2 intervals pass" in ready.events[0].message
    inputs, early = checked(ready.status, T0 + 15, None)
    assert not reading_needed(inputs) and early.helm is None and early.recheck_at == T0 + 20
    _, first = checked(ready.status, T0 + 20, series[1])
    assert [e.reason for e in first.events] == ["CanaryAnalysis"] and first.recheck_at == T0 + 30
    assert "interval 1: pass" in first.events[0].message
    _, promote = checked(first.status, T0 + 30, series[2])
    assert promote.helm is not None and promote.helm.values is not None
    assert promote.helm.values["model"]["version"] == 8 and not promote.helm.values["canary"]["enabled"]
    _, promoted = checked(first.status, T0 + 30, series[2], helm=4)
    assert promoted.status.rollout.state == RolloutState.PROGRESSING
    assert promoted.status.rollout.analysis is not None and promoted.status.rollout.analysis.state == "Passed"
    assert [e.reason for e in promoted.events] == ["CanaryAnalysis", "CanaryPromoted"]
    assert "2 intervals passed in a row" in promoted.events[1].message
    report = canary_report(ANALYSED, promoted.status, "staging", "ml", "md")
    assert report is not None and report.evaluation.verdict == "pass" and report.evaluation.source == "staging/ml/md"
    assert report.evaluation.requests == 80 and report.move is not None
    assert (report.move.alias, report.move.version, report.move.kind) == ("live", 8, "promote")


def test_a_canary_that_fails_an_interval_is_removed_with_its_numbers_and_its_alias_reverted() -> None:
    series = readings((40, 0), (30, 10))
    _, ready = checked(analysed_canary(), T0 + 10, series[0])
    _, first = checked(ready.status, T0 + 20, series[1])
    _, remove = checked(first.status, T0 + 30, series[2])
    assert remove.helm is not None and remove.helm.verb == HelmVerb.UPGRADE and remove.helm.values is not None
    assert remove.helm.values["model"]["version"] == 7 and not remove.helm.values["canary"]["enabled"]
    _, failed = checked(first.status, T0 + 30, series[2], helm=4)
    assert condition(failed, "Degraded") == ("True", Reason.CANARY_FAILED) and failed.status.phase == Phase.DEGRADED
    message = failed.status.condition("Degraded").message
    assert "canary of version 8 failed its analysis: version 8: error rate 25.0% > 5.0% over 40 requests" in message
    assert "version 7 keeps serving" in message
    assert [(e.type, e.reason) for e in failed.events] == [("Warning", "CanaryAnalysis"), ("Warning", "CanaryFailed")]
    assert failed.status.rollout.state == RolloutState.FAILED and failed.status.rollout.version == 7
    report = canary_report(ANALYSED, failed.status, "prod", "ml", "md")
    assert report is not None and report.evaluation.verdict == "fail" and report.evaluation.metrics["errors"] == 10
    assert report.move is not None and (report.move.alias, report.move.version, report.move.kind) == (
        "production", 7, "revert")
    # Told once: the Evidence condition says so and nothing more is owed.
    done = told(failed.status, T0 + 31, 12, Reason.EVIDENCE_RECORDED, "canary evaluation #12 (fail) recorded")
    assert canary_report(ANALYSED, done, "prod", "ml", "md") is None
    assert done.condition("Evidence").status == "True" and done.rollout.analysis.evidence_id == 12
    # The alias moved back: the resource follows it to what serves, and is Ready again.
    settled = reconcile(V7, spec=ANALYSED, status=done, release=release_of(ANALYSED, V7, 4))
    assert settled.helm is None and settled.status.phase == Phase.READY
    assert settled.status.rollout.state == RolloutState.COMPLETE and condition(settled, "Degraded")[0] == "False"


def test_with_hold_a_failed_canary_leaves_the_alias_where_it_is() -> None:
    spec = DeploymentSpec.parse({**RAW_SPEC, "rollout": {"strategy": "Canary", "canary": {
        "analysis": {"samples": 2}}}})
    status = DeploymentStatus(rollout={"state": "Failed", "version": 7, "analysis": {
        "version": 8, "state": "Failed", "startedAt": to_time(T0), "lastAt": to_time(T0 + 30)}})
    report = canary_report(spec, status, "prod", "ml", "md")
    assert report is not None and report.move is None and report.evaluation.verdict == "fail"


@pytest.mark.parametrize("reason", [Reason.EVIDENCE_NOT_RECORDED, Reason.ALIAS_NOT_MOVED])
def test_a_refusal_by_the_registry_is_a_false_evidence_condition(reason: Reason) -> None:
    status = DeploymentStatus(rollout={"state": "Failed", "version": 7, "analysis": {"version": 8, "state": "Failed"}})
    done = told(status, T0, None, reason, "403: no")
    assert done.condition("Evidence").status == "False" and done.condition("Evidence").reason == reason
    assert canary_report(ANALYSED, done, "prod", "ml", "md") is None
