"""The operator's state machine (``operator/transitions.py``), without an API server: every phase
change, and every failure reason the README's troubleshooting table lists."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from modelyard.operator.canary_report import told
from modelyard.operator.resolve import RegistryUnreachable, ResolveFailure
from modelyard.operator.rollout import PodFailure, Track
from modelyard.operator.spec import DeploymentSpec, SpecError
from modelyard.operator.status import DeploymentStatus, Phase, Reason, RolloutState, to_patch, to_time
from modelyard.operator.transitions import (CheckInputs, FeedHealth, HelmFailure, HelmVerb, Outcome, ReconcileInputs,
                                            Release, Step, check_step, reconcile_step)
from modelyard.operator.values import OperatorDefaults, ResolvedVersion, model_server_values, registry_access

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000.0
RAW_SPEC: dict[str, Any] = {"model": {"name": "digits-cnn", "alias": "production"}, "replicas": 2,
                            "rollout": {"progressDeadlineSeconds": 100}}
SPEC = DeploymentSpec.parse(RAW_SPEC)
CANARY_SPEC = DeploymentSpec.parse({**RAW_SPEC, "rollout": {"strategy": "Canary", "progressDeadlineSeconds": 100,
                                                            "canary": {"weight": 50, "stepSeconds": 30}}})
V7 = ResolvedVersion("digits-cnn", 7, "sha256:" + "7" * 64, "production")
V8 = ResolvedVersion("digits-cnn", 8, "sha256:" + "8" * 64, "production")
DEFAULTS = OperatorDefaults()


def reconcile(resolution: Any, *, spec: DeploymentSpec | None = SPEC, status: DeploymentStatus | None = None,
              release: Release | None = None, feed: FeedHealth | None = FeedHealth(True), generation: int = 1,
              retry: int = 0, helm: int | HelmFailure | None = None, now: float = T0) -> Step:
    inputs = ReconcileInputs(name="md", namespace="ml", generation=generation, spec=spec,
                             status=status or DeploymentStatus(), resolution=resolution, now=now, feed=feed,
                             release=release, defaults=DEFAULTS, chart="model-server", retry=retry)
    return reconcile_step(inputs, helm)


def check(status: DeploymentStatus, tracks: list[Track], *, spec: DeploymentSpec = SPEC, now: float = T0 + 10,
          helm: int | None = None, generation: int = 1, failures: tuple[PodFailure, ...] = ()) -> Step:
    return check_step(CheckInputs(spec=spec, status=status, tracks=tracks, generation=generation, now=now,
                                  defaults=DEFAULTS, failures=failures), helm)


def track(*, ready: int, desired: int = 2, stalled: bool = False, name: str = "md", kind: str = "stable") -> Track:
    return Track(name=name, track=kind, desired=desired, ready=ready, updated=desired, current=True, total=desired,
                 available=ready, stalled=stalled)


def condition(step: Step, type_: str) -> tuple[str, str]:
    found = step.status.condition(type_)
    assert found is not None, f"no {type_} condition in {step.status.conditions}"
    return found.status, found.reason


def release_of(spec: DeploymentSpec, version: ResolvedVersion, revision: int) -> Release:
    return Release(revision, "model-server-0.1.0", model_server_values(spec, version, DEFAULTS))


def upgraded(version: ResolvedVersion = V7, *, status: DeploymentStatus | None = None, revision: int = 1,
             spec: DeploymentSpec = SPEC, release: Release | None = None) -> Step:
    first = reconcile(version, status=status, spec=spec, release=release)
    assert first.helm is not None and first.outcome == Outcome.UPGRADED
    return reconcile(version, status=status, spec=spec, release=release, helm=revision)


def ready(version: ResolvedVersion = V7, revision: int = 1) -> DeploymentStatus:
    """The status of a resource whose rollout of ``version`` completed."""
    step = check(upgraded(version, revision=revision).status, [track(ready=2)])
    assert step.status.phase == Phase.READY
    return step.status


# -- resolving and upgrading ---------------------------------------------------------------------


def test_a_new_resource_goes_resolving_rolling_out_ready() -> None:
    before = reconcile(V7)
    assert before.status.phase == Phase.ROLLING_OUT and before.helm is not None
    assert before.helm.verb == HelmVerb.UPGRADE and before.helm.values == model_server_values(SPEC, V7, DEFAULTS)
    assert condition(before, "Progressing") == ("True", Reason.UPGRADING)
    assert before.status.upgrade_started_at == to_time(T0) and not before.events  # recorded before Helm runs
    after = reconcile(V7, helm=3)
    assert after.helm is None and after.outcome == Outcome.UPGRADED and after.rollout == "started"
    assert after.status.rollout.state == RolloutState.PROGRESSING and after.status.rollout.revision == 3
    assert after.status.model is not None and after.status.model.version == 7
    assert after.status.helm is not None and after.status.helm.revision == 3
    assert after.status.url == "http://md.ml.svc.cluster.local:3000"
    assert [(h.version, h.result, h.reason) for h in after.status.history] == [(7, "Progressing", "Upgrade")]
    assert [e.reason for e in after.events] == ["RolloutStarted"]
    assert condition(after, "RegistryReachable") == ("True", Reason.REACHABLE)
    waiting = check(after.status, [track(ready=1)])
    assert waiting.status.phase == Phase.ROLLING_OUT and condition(waiting, "Ready") == ("False", Reason.ROLLING_OUT)
    assert waiting.status.ready == "1/2" and not waiting.events
    done = check(waiting.status, [track(ready=2)])
    assert done.status.phase == Phase.READY and done.rollout == "succeeded"
    assert condition(done, "Ready") == ("True", Reason.MINIMUM_REPLICAS_AVAILABLE)
    assert condition(done, "Progressing") == ("False", Reason.ROLLOUT_COMPLETE)
    assert done.status.rollout.last_ready_revision == 3 and done.status.history[-1].result == "Ready"
    assert [e.reason for e in done.events] == ["RolloutSucceeded"]


def test_an_unchanged_release_is_left_alone_and_a_failed_phase_heals() -> None:
    status = ready()
    same = reconcile(V7, status=status, release=release_of(SPEC, V7, 1))
    assert same.helm is None and same.outcome == Outcome.UNCHANGED and same.status.phase == Phase.READY
    assert to_patch(status.to_dict(), same.status.to_dict()) == {}  # nothing to write
    failed = reconcile(ResolveFailure(Reason.VERSION_NOT_READY, "not yet"), status=status).status
    assert failed.phase == Phase.FAILED
    healed = reconcile(V7, status=failed, release=release_of(SPEC, V7, 1))
    assert healed.status.phase == Phase.READY and healed.outcome == Outcome.UNCHANGED


def test_a_release_that_moved_unrecorded_is_adopted() -> None:
    """An operator killed right after Helm answered: the next one finds revision 2 it never recorded."""
    status = ready()
    adopted = reconcile(V8, status=status, release=release_of(SPEC, V8, 2))
    assert adopted.helm is None and adopted.status.phase == Phase.ROLLING_OUT
    assert adopted.status.rollout.state == RolloutState.PROGRESSING and adopted.status.rollout.revision == 2
    assert adopted.status.model is not None and adopted.status.model.version == 8


def test_an_alias_move_upgrades_and_helm_errors_degrade() -> None:
    status = ready()
    moved = reconcile(V8, status=status, release=release_of(SPEC, V7, 1))
    assert moved.helm is not None and moved.helm.values is not None and moved.helm.values["model"]["version"] == 8
    refused = reconcile(V8, status=status, release=release_of(SPEC, V7, 1), helm=HelmFailure("forbidden"), retry=2)
    assert refused.status.phase == Phase.DEGRADED and refused.outcome == Outcome.HELM_ERROR
    assert condition(refused, "Degraded") == ("True", Reason.HELM_ERROR)
    assert refused.retry is not None and refused.retry.delay == 20 and "forbidden" in refused.retry.message
    assert [e.reason for e in refused.events] == [Reason.HELM_ERROR] and refused.failure == Reason.HELM_ERROR


def test_an_unreachable_registry_keeps_the_phase_and_warns_once() -> None:
    status = ready()
    down = reconcile(RegistryUnreachable("connection refused"), status=status, retry=3)
    assert down.status.phase == Phase.READY and down.helm is None and down.outcome == Outcome.UNREACHABLE
    assert condition(down, "RegistryReachable") == ("False", Reason.REGISTRY_UNREACHABLE)
    assert down.retry is not None and down.retry.delay == 8 and [e.reason for e in down.events] == [
        Reason.REGISTRY_UNREACHABLE]
    again = reconcile(RegistryUnreachable("connection refused"), status=down.status, retry=9)
    assert not again.events and again.retry is not None and again.retry.delay == 60


def test_an_event_feed_outage_is_a_condition_of_its_own() -> None:
    step = reconcile(V7, feed=FeedHealth(False, "503", 60.0))
    status, reason = condition(step, "RegistryWatch")
    assert (status, reason) == ("False", Reason.EVENT_FEED_UNREACHABLE)
    assert "re-resolving every 60 s" in (step.status.condition("RegistryWatch").message or "")  # type: ignore[union-attr]
    assert condition(reconcile(V7), "RegistryWatch") == ("True", Reason.FOLLOWING)


@pytest.mark.parametrize("reason", [Reason.MODEL_NOT_FOUND, Reason.ALIAS_NOT_FOUND, Reason.VERSION_NOT_FOUND,
                                    Reason.VERSION_NOT_READY])
def test_what_the_registry_cannot_give_fails_and_is_retried(reason: Reason) -> None:
    step = reconcile(ResolveFailure(reason, "details"))
    assert step.status.phase == Phase.FAILED and step.outcome == Outcome.FAILED and step.helm is None
    assert condition(step, "Ready") == ("False", reason) and condition(step, "Degraded") == ("True", reason)
    assert step.retry is not None and step.retry.delay == 60.0  # failure_retry_seconds: not permanent
    assert [e.reason for e in step.events] == [reason]
    again = reconcile(ResolveFailure(reason, "details"), status=step.status)
    assert not again.events and again.failure == reason  # one Event per new reason, counted every time


def spec_failure(raw: dict[str, Any]) -> Step:
    """A spec that fails where the reconciler finds it: parsing, registry access, or rendering."""
    try:
        spec = DeploymentSpec.parse(raw)
        registry_access(spec.registry, DEFAULTS)
    except SpecError as error:
        return reconcile(error, spec=None, feed=None)
    return reconcile(ResolvedVersion("m", 1), spec=spec)


@pytest.mark.parametrize("raw, reason", [
    ({"model": {"name": "m"}}, Reason.INVALID_SPEC),
    ({"model": {"name": "m", "version": 1, "alias": "a"}}, Reason.INVALID_SPEC),
    ({"model": {"name": "m", "version": 1}, "autoscaling": {"minReplicas": 2}}, Reason.INVALID_SPEC),
    ({"model": {"name": "m", "version": 1}, "resources": {"gpuType": "h100"}}, Reason.INVALID_RESOURCES),
    ({"model": {"name": "m", "version": 1}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
     Reason.INVALID_AUTOSCALING),
    ({"model": {"name": "m", "version": 1}, "image": "runtime@sha256:abc"}, Reason.INVALID_IMAGE),
    ({"model": {"name": "m", "version": 1}, "registry": {"url": "https://elsewhere.example"}},
     Reason.REGISTRY_TOKEN_REQUIRED),
])
def test_specs_that_cannot_be_acted_on_fail_for_good(raw: dict[str, Any], reason: Reason) -> None:
    step = spec_failure(raw)
    assert step.status.phase == Phase.FAILED and step.helm is None
    assert condition(step, "Ready") == ("False", reason) and condition(step, "Degraded") == ("True", reason)
    assert step.retry is not None and step.retry.delay is None  # permanent: only a spec change helps
    ready_condition = step.status.condition("Ready")
    assert ready_condition is not None and ready_condition.message  # says what is wrong


def test_a_missing_required_field_names_the_field() -> None:
    with pytest.raises(SpecError) as caught:
        DeploymentSpec.parse({"model": {"name": "m", "version": 1}, "autoscaling": {"minReplicas": 2}})
    assert caught.value.reason == Reason.INVALID_SPEC
    assert "spec.autoscaling.maxReplicas" in str(caught.value)


# -- rollouts that fail ------------------------------------------------------------------------


def moved_to_v8(spec: DeploymentSpec = SPEC) -> DeploymentStatus:
    """Ready on v7 (revision 1), then the alias moved: v8 rolling out as revision 2."""
    step = upgraded(V8, status=ready(), revision=2, spec=spec, release=release_of(spec, V7, 1))
    assert step.status.phase == Phase.ROLLING_OUT
    return step.status


def test_a_stalled_rollout_is_rolled_back_to_the_last_ready_revision() -> None:
    status = moved_to_v8()
    stalled = [track(ready=1, stalled=True)]
    first = check(status, stalled)
    assert first.helm is not None and first.helm.verb == HelmVerb.ROLLBACK and first.helm.revision == 1
    step = check(status, stalled, helm=3)
    assert step.status.phase == Phase.DEGRADED and step.status.rollout.state == RolloutState.ROLLED_BACK
    assert condition(step, "Degraded") == ("True", Reason.ROLLED_BACK)
    assert condition(step, "Progressing") == ("False", Reason.ROLLED_BACK)
    assert step.status.model is not None and step.status.model.version == 7
    assert step.status.rollout.failed_version == 8 and step.status.rollout.revision == 3
    assert step.failure == Reason.ROLLED_BACK and step.rollout == "failed"
    assert step.status.history[-1].result == Reason.ROLLED_BACK
    assert "made no progress for 100 s" in step.events[0].message


def test_the_failed_version_is_held_back_until_the_spec_or_alias_moves() -> None:
    rolled_back = check(moved_to_v8(), [track(ready=1, stalled=True)], helm=3).status
    held = reconcile(V8, status=rolled_back, release=release_of(SPEC, V7, 3))
    assert held.outcome == Outcome.HELD_BACK and held.helm is None
    assert condition(held, "Degraded") == ("True", Reason.ROLLOUT_FAILED)
    assert reconcile(V8, status=rolled_back, release=release_of(SPEC, V7, 3), generation=2).helm is not None


@pytest.mark.parametrize("why", ["no earlier ready revision", "autoRollback off"])
def test_a_stalled_rollout_without_rollback_reports_the_deadline(why: str) -> None:
    if why == "autoRollback off":
        spec = DeploymentSpec.parse({**RAW_SPEC, "rollout": {"progressDeadlineSeconds": 100, "autoRollback": False}})
        status = moved_to_v8(spec)
    else:
        spec, status = SPEC, upgraded(V8, revision=1).status
    step = check(status, [track(ready=1, stalled=True)], spec=spec)
    assert step.helm is None and step.status.phase == Phase.DEGRADED
    assert step.status.rollout.state == RolloutState.FAILED
    assert condition(step, "Degraded") == ("True", Reason.PROGRESS_DEADLINE_EXCEEDED)


CANNOT_SERVE = PodFailure("md-x", "stable", 8, "digits-cnn:8: ValueError: Model architectures ['Foo'] are not "
                                               "supported")


def test_a_version_whose_server_cannot_serve_it_is_rolled_back_at_once_with_the_reason() -> None:
    status = moved_to_v8()
    starting = [track(ready=1)]  # not stalled: the deadline is far
    first = check(status, starting, failures=(CANNOT_SERVE,))
    assert first.helm is not None and first.helm.verb == HelmVerb.ROLLBACK and first.helm.revision == 1
    step = check(status, starting, helm=3, failures=(CANNOT_SERVE,))
    assert condition(step, "Degraded") == ("True", Reason.ROLLED_BACK) and step.status.model.version == 7
    assert "version 8 could not be served: digits-cnn:8: ValueError: Model architectures ['Foo']" in (
        step.status.condition("Degraded").message)


def test_a_first_version_whose_server_cannot_serve_it_fails_the_resource() -> None:
    status = upgraded(V8, revision=1).status
    step = check(status, [track(ready=0)], failures=(CANNOT_SERVE,))
    assert step.helm is None and step.status.phase == Phase.FAILED
    assert condition(step, "Ready") == ("False", Reason.MODEL_SERVER_FAILED)
    assert "ValueError: Model architectures ['Foo'] are not supported" in step.status.condition("Ready").message
    assert step.failure == Reason.MODEL_SERVER_FAILED
    later = check(step.status, [track(ready=0)], now=T0 + 60)  # a later check keeps the reason
    assert later.status.phase == Phase.FAILED and condition(later, "Ready") == ("False", Reason.MODEL_SERVER_FAILED)


BAD_SIGNATURE = PodFailure("md-x", "stable", 8, "digits-cnn:8: SignatureInvalid: no signature of digits-cnn:8 from "
                                                "team-cv verifies here (team-cv: …)")


def test_a_pod_that_refuses_the_versions_signature_fails_the_resource_with_its_reason() -> None:
    status = upgraded(V8, revision=1).status
    step = check(status, [track(ready=0)], failures=(BAD_SIGNATURE,))
    assert step.helm is None and step.status.phase == Phase.FAILED
    assert condition(step, "Ready") == ("False", Reason.SIGNATURE_INVALID)
    assert "no signature of digits-cnn:8 from team-cv verifies here" in step.status.condition("Ready").message
    assert PodFailure("p", "stable", 8, "digits-cnn:8: ValueError: SignatureInvalid: x").kind == "ModelServerFailed"


def test_a_version_without_the_required_signature_is_never_rolled_out() -> None:
    step = reconcile(ResolveFailure(Reason.SIGNATURE_REQUIRED, "digits-cnn:8 carries no signature from team-cv"))
    assert step.status.phase == Phase.FAILED and step.helm is None
    assert condition(step, "Ready") == ("False", Reason.SIGNATURE_REQUIRED)


def test_pods_of_a_finished_rollout_that_stop_being_ready_degrade_it() -> None:
    step = check(ready(), [track(ready=1)])
    assert step.status.phase == Phase.DEGRADED and step.helm is None
    assert condition(step, "Degraded") == ("True", Reason.REPLICAS_UNAVAILABLE)
    assert condition(step, "Ready") == ("False", Reason.REPLICAS_UNAVAILABLE)
    back = check(step.status, [track(ready=2)])
    assert back.status.phase == Phase.READY and condition(back, "Degraded") == ("False", Reason.NONE)


# -- canaries ----------------------------------------------------------------------------------


def canary_of_v8() -> DeploymentStatus:
    start = check(upgraded(V7, spec=CANARY_SPEC).status, [track(ready=2)], spec=CANARY_SPEC).status
    step = upgraded(V8, status=start, revision=2, spec=CANARY_SPEC, release=release_of(CANARY_SPEC, V7, 1))
    assert step.status.rollout.state == RolloutState.CANARY and step.status.rollout.stable_version == 7
    assert "as a canary beside 7" in step.events[0].message
    assert step.status.history[-1].reason == "Canary"
    return step.status


def test_a_ready_canary_waits_its_step_then_is_promoted() -> None:
    status = canary_of_v8()
    tracks = [track(ready=1, desired=1), track(ready=1, desired=1, name="md-canary", kind="canary")]
    became = check(status, tracks, spec=CANARY_SPEC, now=T0 + 10)
    assert became.status.rollout.ready_since == to_time(T0 + 10) and became.recheck_at == T0 + 40
    assert [e.reason for e in became.events] == ["CanaryReady"]
    waiting = check(became.status, tracks, spec=CANARY_SPEC, now=T0 + 20)
    assert waiting.helm is None and waiting.recheck_at == T0 + 40
    promote = check(became.status, tracks, spec=CANARY_SPEC, now=T0 + 40)
    assert promote.helm is not None and promote.helm.values is not None
    assert promote.helm.values["model"]["version"] == 8 and not promote.helm.values["canary"]["enabled"]
    promoted = check(became.status, tracks, spec=CANARY_SPEC, now=T0 + 40, helm=3)
    assert promoted.status.rollout.state == RolloutState.PROGRESSING and promoted.check_now
    assert [(h.result, h.reason) for h in promoted.status.history[-2:]] == [("Promoted", ""),
                                                                            ("Progressing", "CanaryPromoted")]


def test_a_stalled_canary_is_removed_and_the_stable_version_keeps_serving() -> None:
    status = canary_of_v8()
    tracks = [track(ready=1, desired=1), track(ready=0, desired=1, name="md-canary", kind="canary", stalled=True)]
    first = check(status, tracks, spec=CANARY_SPEC)
    assert first.helm is not None and first.helm.verb == HelmVerb.UPGRADE and first.helm.values is not None
    assert first.helm.values["model"]["version"] == 7 and not first.helm.values["canary"]["enabled"]
    step = check(status, tracks, spec=CANARY_SPEC, helm=3)
    assert step.status.phase == Phase.DEGRADED and condition(step, "Degraded") == ("True", Reason.CANARY_FAILED)
    assert step.status.model is not None and step.status.model.version == 7
    assert step.status.rollout.state == RolloutState.FAILED and step.status.rollout.failed_version == 8


def test_removing_or_promoting_a_canary_renders_each_version_as_it_was_rolled_out() -> None:
    """The values a canary's removal or promotion renders equal those the version was rolled out with (its
    format and facts kept in ``rollout.facts``): the stable pods are not restarted by a changed template,
    and the next reconcile makes no extra revision."""
    v7 = ResolvedVersion("digits-cnn", 7, V7.digest, "production", format="torch-export")
    v8 = ResolvedVersion("digits-cnn", 8, V8.digest, "production", format="torchscript")
    start = check(upgraded(v7, spec=CANARY_SPEC).status, [track(ready=2)], spec=CANARY_SPEC).status
    canary = upgraded(v8, status=start, revision=2, spec=CANARY_SPEC, release=release_of(CANARY_SPEC, v7, 1)).status
    assert set(canary.rollout.facts) == {"7", "8"} and canary.rollout.facts["7"].format == "torch-export"
    tracks = [track(ready=1, desired=1), track(ready=0, desired=1, name="md-canary", kind="canary", stalled=True)]
    removal = check(canary, tracks, spec=CANARY_SPEC)
    assert removal.helm is not None and removal.helm.values == model_server_values(CANARY_SPEC, v7, DEFAULTS)
    ready = [track(ready=1, desired=1), track(ready=1, desired=1, name="md-canary", kind="canary")]
    became = check(canary, ready, spec=CANARY_SPEC, now=T0 + 10)
    promote = check(became.status, ready, spec=CANARY_SPEC, now=T0 + 40)
    assert promote.helm is not None and promote.helm.values == model_server_values(CANARY_SPEC, v8, DEFAULTS)
    # After the removal, the spec resolving to the stable version again finds nothing to change.
    removed = check(canary, tracks, spec=CANARY_SPEC, helm=3).status
    again = reconcile(v7, spec=CANARY_SPEC, status=removed, release=Release(3, "model-server-0.1.0",
                                                                             removal.helm.values))
    assert again.helm is None


# -- the README's troubleshooting table --------------------------------------------------------

# A scenario per reason: the step that sets it (each is also checked in detail above).
SCENARIOS: dict[str, Callable[[], Step]] = {
    **{reason: (lambda r=reason: reconcile(ResolveFailure(r, "x"))) for reason in
       (Reason.MODEL_NOT_FOUND, Reason.ALIAS_NOT_FOUND, Reason.VERSION_NOT_FOUND, Reason.VERSION_NOT_READY)},
    Reason.INVALID_SPEC: lambda: spec_failure({"model": {"name": "m"}}),
    Reason.INVALID_RESOURCES: lambda: spec_failure({"model": {"name": "m", "version": 1},
                                                    "resources": {"gpuType": "h100"}}),
    Reason.INVALID_AUTOSCALING: lambda: spec_failure({"model": {"name": "m", "version": 1},
                                                      "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
    Reason.INVALID_IMAGE: lambda: spec_failure({"model": {"name": "m", "version": 1}, "image": "r@sha256:a"}),
    Reason.REGISTRY_TOKEN_REQUIRED: lambda: spec_failure({"model": {"name": "m", "version": 1},
                                                          "registry": {"url": "https://other.example"}}),
    Reason.INVALID_SERVING: lambda: reconcile(ResolvedVersion("m", 1, format="torch-export"), spec=DeploymentSpec.parse(
        {"model": {"name": "m", "version": 1}, "resources": {"gpu": 2}})),
    Reason.REGISTRY_UNREACHABLE: lambda: reconcile(RegistryUnreachable("down")),
    Reason.EVENT_FEED_UNREACHABLE: lambda: reconcile(V7, feed=FeedHealth(False, "503")),
    Reason.HELM_ERROR: lambda: reconcile(V7, helm=HelmFailure("forbidden")),
    Reason.ROLLED_BACK: lambda: check(moved_to_v8(), [track(ready=1, stalled=True)], helm=3),
    Reason.PROGRESS_DEADLINE_EXCEEDED: lambda: check(upgraded(V8).status, [track(ready=1, stalled=True)]),
    Reason.MODEL_SERVER_FAILED: lambda: check(upgraded(V8, revision=1).status, [track(ready=0)],
                                              failures=(CANNOT_SERVE,)),
    Reason.SIGNATURE_REQUIRED: lambda: reconcile(ResolveFailure(Reason.SIGNATURE_REQUIRED, "x")),
    Reason.SIGNATURE_INVALID: lambda: check(upgraded(V8, revision=1).status, [track(ready=0)],
                                            failures=(BAD_SIGNATURE,)),
    Reason.CANARY_FAILED: lambda: check(canary_of_v8(), [track(ready=1, desired=1), track(
        ready=0, desired=1, name="md-canary", kind="canary", stalled=True)], spec=CANARY_SPEC, helm=3),
    Reason.ROLLOUT_FAILED: lambda: reconcile(V8, status=check(moved_to_v8(), [track(ready=1, stalled=True)],
                                                              helm=3).status, release=release_of(SPEC, V7, 3)),
    Reason.REPLICAS_UNAVAILABLE: lambda: check(ready(), [track(ready=1)]),
    # What the registry answered to a canary's verdict (canary_report.told; test_canary_analysis.py has the flow).
    **{reason: (lambda r=reason: Step(told(DeploymentStatus(rollout={"analysis": {"version": 8, "state": "Failed"}}),
                                           T0, None, r, "403")))
       for reason in (Reason.EVIDENCE_NOT_RECORDED, Reason.ALIAS_NOT_MOVED)},
}


def test_a_language_model_larger_than_the_memory_limit_is_rolled_out_with_a_warning() -> None:
    big = ResolvedVersion("llm", 1, "sha256:" + "1" * 64, format="hf", facts={"load_bytes": 3 << 30})
    spec = DeploymentSpec.parse({"model": {"name": "llm", "version": 1}, "resources": {"memory": "2Gi"}})
    started = reconcile(big, spec=spec, helm=1)
    assert started.helm is None and started.status.phase == Phase.ROLLING_OUT
    warnings = [e for e in started.events if e.type == "Warning"]
    assert [e.reason for e in warnings] == [Reason.MEMORY_BELOW_MODEL] and "resources.memory 2Gi" in warnings[0].message
    roomy = DeploymentSpec.parse({"model": {"name": "llm", "version": 1}, "resources": {"memory": "8Gi"}})
    assert all(e.type != "Warning" for e in reconcile(big, spec=roomy, helm=1).events)


def troubleshooting_reasons() -> list[str]:
    """The reasons named in the first column of the README's troubleshooting table."""
    text = (ROOT / "README.md").read_text()
    table = text.split("### Troubleshooting", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in table.splitlines() if line.startswith("| `")]
    reasons = {name for row in rows for name in re.findall(r"\b([A-Z][a-z]+(?:[A-Z][a-z]+)+)\b", row)}
    return sorted(reasons - {"RegistryReachable", "RegistryWatch"})  # condition types, not reasons


def test_the_troubleshooting_table_is_what_the_operator_sets() -> None:
    listed = troubleshooting_reasons()
    assert len(listed) >= 15, listed
    assert set(listed) <= {r.value for r in Reason}, set(listed) - {r.value for r in Reason}
    assert set(listed) == set(SCENARIOS), set(listed) ^ set(SCENARIOS)


@pytest.mark.parametrize("reason", sorted(SCENARIOS))
def test_each_troubleshooting_reason_has_a_transition_that_sets_it(reason: str) -> None:
    step = SCENARIOS[reason]()
    assert reason in {c.reason for c in step.status.conditions}, step.status.conditions


def test_a_status_read_and_written_back_unchanged_needs_no_patch() -> None:
    """As the API server stores it: empty strings dropped (``kube.without_empty``), camelCase."""
    raw = {"phase": "Ready", "observedGeneration": 3,
           "model": {"name": "digits-cnn", "version": 7, "digest": V7.digest, "alias": "production"},
           "helm": {"release": "md", "revision": 4, "chart": "model-server-0.1.0"},
           "conditions": [{"type": "Ready", "status": "True", "reason": "MinimumReplicasAvailable",
                           "message": "2/2 replicas ready", "lastTransitionTime": "2026-12-01T00:00:00Z"},
                          {"type": "Degraded", "status": "False", "reason": "None",
                           "lastTransitionTime": "2026-12-01T00:00:00Z"}],
           "history": [{"version": 7, "revision": 4, "result": "Ready", "time": "2026-12-01T00:00:00Z"}],
           "rollout": {"state": "Complete", "revision": 4, "version": 7, "lastReadyRevision": 4}}
    status = DeploymentStatus.parse(raw)
    assert status.rollout.state == RolloutState.COMPLETE and status.rollout.last_ready_revision == 4
    assert to_patch(DeploymentStatus.parse(raw).to_dict(), status.to_dict()) == {}
    assert status.to_dict()["rollout"] == raw["rollout"] and status.to_dict()["helm"] == raw["helm"]
    assert DeploymentStatus.parse({"phase": "Packaging"}).phase == Phase.PACKAGING  # the CRD allows it
    cleared = status.model_copy(update={"rollout": status.rollout.model_copy(update={"last_ready_revision": None})})
    assert to_patch(status.to_dict(), cleared.to_dict()) == {  # a field that went is deleted by the merge patch
        "rollout": {"lastReadyRevision": None}}
    # At any depth: a gone pod's counters leave the analysis, a changed one is sent alone.
    analysed = {"rollout": {"state": "Canary", "analysis": {"passed": 1, "baseline": {
        "md-0": {"track": "stable", "requests": {"200": 5.0}}, "md-canary-0": {"track": "canary"}}}}}
    later = {"rollout": {"state": "Canary", "analysis": {"passed": 2, "baseline": {
        "md-0": {"track": "stable", "requests": {"200": 9.0}}}}}}
    assert to_patch(analysed, later) == {"rollout": {"analysis": {"passed": 2, "baseline": {
        "md-canary-0": None, "md-0": {"requests": {"200": 9.0}}}}}}
