"""The operator's pure parts: rollout decisions, conditions, event routing, and resolving
against a real registry server (no Kubernetes needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelyard.operator import conditions as cond
from modelyard.operator.follower import RegistryFollower
from modelyard.operator.resolve import RegistryUnreachable, ResolveFailure, resolve
from modelyard.operator.rollout import judge as judge_record
from modelyard.operator.rollout import plan_release as plan_record
from modelyard.operator.rollout import PodFailure, pod_failure, replica_counts, track_of
from modelyard.operator.spec import DeploymentSpec, ModelSelector
from modelyard.operator.status import Condition, ConditionType, HistoryEntry, RolloutRecord, from_time, to_time
from modelyard.operator.values import OperatorDefaults, ResolvedVersion
from modelyard.registry.client import RegistryClient
from tests.support.operator import push_versions

V7 = ResolvedVersion("digits-cnn", 7, "sha256:" + "7" * 64, "production")
V8 = ResolvedVersion("digits-cnn", 8, "sha256:" + "8" * 64, "production")
SPEC: dict[str, Any] = {"model": {"name": "digits-cnn", "alias": "production"}, "replicas": 4}
CANARY_SPEC = {**SPEC, "rollout": {"strategy": "Canary", "canary": {"weight": 25, "stepSeconds": 30},
                                   "progressDeadlineSeconds": 100}}
DEFAULTS = OperatorDefaults()
T0 = 1_800_000_000.0
PROGRESSING, CANARY, COMPLETE = "Progressing", "Canary", "Complete"


def plan_release(spec: dict[str, Any], resolved: ResolvedVersion, rollout: dict[str, Any], *args: Any) -> Any:
    """``rollout.plan_release`` on the spec and rollout record as the resource spells them."""
    return plan_record(DeploymentSpec.parse(spec), resolved, RolloutRecord.model_validate(rollout), *args)


def judge(rollout: dict[str, Any], tracks: list[Any], spec: dict[str, Any], now: float,
          failures: list[PodFailure] | None = None) -> Any:
    return judge_record(RolloutRecord.model_validate(rollout), tracks, DeploymentSpec.parse(spec or SPEC), now,
                        failures or ())


def test_unchanged_inputs_plan_no_upgrade() -> None:
    first = plan_release(SPEC, V7, {}, 1, None, DEFAULTS)
    assert first.upgrade and not first.canary
    again = plan_release(SPEC, V7, {"state": COMPLETE, "revision": 1}, 1, first.values, DEFAULTS)
    assert not again.upgrade
    moved = plan_release(SPEC, V8, {"state": COMPLETE}, 1, first.values, DEFAULTS)
    assert moved.upgrade and moved.values["model"]["version"] == 8


def test_a_failed_version_is_held_back_until_the_spec_or_target_changes() -> None:
    current = plan_release(SPEC, V7, {}, 1, None, DEFAULTS).values
    failed = {"state": "RolledBack", "failedVersion": 8, "failedGeneration": 3}
    held = plan_release(SPEC, V8, failed, 3, current, DEFAULTS)
    assert held.held_back and not held.upgrade and "version 8 failed" in held.held_back
    assert plan_release(SPEC, V8, failed, 4, current, DEFAULTS).upgrade  # the spec changed
    v9 = ResolvedVersion("digits-cnn", 9, "sha256:" + "9" * 64, "production")
    assert plan_release(SPEC, v9, failed, 3, current, DEFAULTS).upgrade  # the alias moved on


def test_canary_keeps_the_last_ready_version_as_primary() -> None:
    installed = plan_release(CANARY_SPEC, V7, {}, 1, None, DEFAULTS)
    assert not installed.canary  # nothing served before: a plain install
    ready = {"state": COMPLETE, "lastReadyVersion": 7, "lastReadyDigest": V7.digest}
    plan = plan_release(CANARY_SPEC, V8, ready, 1, installed.values, DEFAULTS)
    assert plan.canary and plan.stable == V7
    assert plan.values["model"]["version"] == 7
    assert plan.values["canary"] == {"enabled": True, "model": {"version": 8, "digest": V8.digest}, "replicas": 1}
    # Re-planning mid-canary (a restart) gives the same values: no new revision.
    mid = {"state": CANARY, "version": 8, "stableVersion": 7, "stableDigest": V7.digest}
    assert not plan_release(CANARY_SPEC, V8, mid, 1, plan.values, DEFAULTS).upgrade
    # The spec switched to RollingUpdate mid-canary: the new version goes out as the primary now.
    switched = plan_release(SPEC, V8, mid, 2, plan.values, DEFAULTS)
    assert switched.upgrade and not switched.canary and switched.values["model"]["version"] == 8


def deployment(name: str, *, desired: int, ready: int, updated: int | None = None, generation: int = 2,
               observed: int = 2, track: str = "stable", total: int | None = None,
               available: int | None = None, stalled: bool = False) -> dict[str, Any]:
    """A Deployment's status as the controller reports it (``total``: pods of every revision;
    ``stalled``: no progress for its progressDeadlineSeconds)."""
    updated = ready if updated is None else updated
    progressing = ({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"} if stalled
                   else {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"})
    return {"metadata": {"name": name, "generation": generation, "labels": {"modelyard.io/track": track}},
            "spec": {"replicas": desired},
            "status": {"readyReplicas": ready, "updatedReplicas": updated, "observedGeneration": observed,
                       "replicas": max(ready, updated) if total is None else total,
                       "availableReplicas": ready if available is None else available,
                       "conditions": [progressing]}}


def test_a_deployment_is_rolled_out_only_when_the_controller_saw_the_new_spec() -> None:
    assert track_of(deployment("d", desired=2, ready=2)).rolled_out
    assert not track_of(deployment("d", desired=2, ready=2, observed=1)).rolled_out  # stale status
    assert not track_of(deployment("d", desired=2, ready=2, updated=1)).rolled_out  # old pods still count
    assert not track_of(deployment("d", desired=2, ready=1)).rolled_out
    assert replica_counts([track_of(deployment("d", desired=2, ready=3))]) == (2, 2)


def test_a_surge_is_not_rolled_out_while_the_ready_pod_is_the_old_one() -> None:
    """Seen on the real node: replicas 1, maxSurge 1, the new pod crash-looping.  The controller
    reports 2 pods, 1 updated (the new, not ready) and 1 ready and available (the old)."""
    surging = deployment("d", desired=1, ready=1, updated=1, total=2, available=1)
    assert not track_of(surging).rolled_out
    rollout = {"state": PROGRESSING, "startedAt": to_time(T0)}
    assert judge(rollout, [track_of(surging)], SPEC, T0 + 1).action == "wait"
    stalled = deployment("d", desired=1, ready=1, updated=1, total=2, available=1, stalled=True)
    assert judge(rollout, [track_of(stalled)], SPEC, T0 + 601).action == "deadline"
    # The old pod gone and the new one available: done.
    assert track_of(deployment("d", desired=1, ready=1, updated=1, total=1, available=1)).rolled_out
    # Ready but not yet available (minReadySeconds): not done either.
    assert not track_of(deployment("d", desired=2, ready=2, updated=2, total=2, available=1)).rolled_out


def test_judge_completes_waits_and_gives_up_when_the_controller_reports_no_progress() -> None:
    rollout = {"state": PROGRESSING, "startedAt": to_time(T0)}
    spec = {**SPEC, "rollout": {"progressDeadlineSeconds": 100}}
    ready = [track_of(deployment("d", desired=2, ready=2))]
    waiting = [track_of(deployment("d", desired=2, ready=1))]
    stalled = [track_of(deployment("d", desired=2, ready=1, stalled=True))]
    assert judge(rollout, ready, spec, T0 + 5).action == "complete"
    verdict = judge(rollout, waiting, spec, T0 + 5)
    # The Deployment's events wake the check; the pods are looked at every 10 s for a server that cannot serve
    assert verdict.action == "wait" and verdict.recheck_at == T0 + 15
    late = judge(rollout, stalled, spec, T0 + 100)
    assert late.action == "deadline" and "made no progress for 100 s (d: 1/2 ready" in late.message
    assert judge({"state": COMPLETE}, stalled, spec, T0 + 1000).action == "wait"


def test_a_rollout_that_keeps_progressing_is_not_cut_short_by_the_clock() -> None:
    """Seen on the real node: a canary promoted to 2 replicas, one pod at a time on a busy node, took
    longer than progressDeadlineSeconds in all while never stalling, and was rolled back."""
    rollout = {"state": PROGRESSING, "startedAt": to_time(T0)}
    spec = {**SPEC, "rollout": {"progressDeadlineSeconds": 90}}
    halfway = [track_of(deployment("d", desired=2, ready=2, updated=2, total=3, available=2))]
    assert judge(rollout, halfway, spec, T0 + 120).action == "wait"


def test_the_operators_clock_decides_only_without_a_deployment_to_judge_by() -> None:
    rollout = {"state": PROGRESSING, "startedAt": to_time(T0)}
    spec = {**SPEC, "rollout": {"progressDeadlineSeconds": 100}}
    assert judge(rollout, [], spec, T0 + 5).recheck_at == T0 + 15  # the pods, every 10 s; at most the deadline
    assert judge(rollout, [], spec, T0 + 95).recheck_at == T0 + 100
    gone = judge(rollout, [], spec, T0 + 100)
    assert gone.action == "deadline" and "no Deployment found" in gone.message
    unseen = [track_of(deployment("d", desired=2, ready=2, generation=3, observed=2, stalled=True))]
    assert judge(rollout, unseen, spec, T0 + 50).action == "wait"  # an old stall, not this rollout's
    assert judge(rollout, unseen, spec, T0 + 100).action == "deadline"


def test_a_pod_that_says_it_cannot_serve_ends_the_rollout_at_once_with_its_reason() -> None:
    rollout = {"state": PROGRESSING, "startedAt": to_time(T0), "version": 7}
    spec = {**SPEC, "rollout": {"progressDeadlineSeconds": 600}}
    waiting = [track_of(deployment("d", desired=1, ready=0))]
    message = "modelyard: cannot serve llm:7: ValueError: Model architectures ['FooForCausalLM'] are not supported"
    failure = pod_failure("d-abc", {"modelyard.io/version": "7", "modelyard.io/track": "stable"}, message)
    assert failure == PodFailure("d-abc", "stable", 7, "llm:7: ValueError: Model architectures ['FooForCausalLM'] "
                                                       "are not supported")
    verdict = judge(rollout, waiting, spec, T0 + 20, [failure])
    assert verdict.action == "server-failed" and verdict.message == f"could not be served: {failure.reason}"
    # Not ours (an OOM kill, a message another program wrote), another version's pod, or the canary's track
    # while the stable one rolls out: the rollout goes on.
    assert pod_failure("x", {}, "OOMKilled") is None and pod_failure("x", {}, None) is None
    older = PodFailure("d-old", "stable", 6, "llm:6: no")
    canary = PodFailure("d-canary-x", "canary", 7, "llm:7: no")
    assert judge(rollout, waiting, spec, T0 + 20, [older, canary]).action == "wait"
    # Once the version is ready, an old termination message of one of its pods changes nothing.
    ready = [track_of(deployment("d", desired=1, ready=1))]
    assert judge(rollout, ready, spec, T0 + 20, [failure]).action == "complete"


def test_judge_steps_a_canary_then_promotes() -> None:
    canary_ready = [track_of(deployment("d", desired=3, ready=3)),
                    track_of(deployment("d-canary", desired=1, ready=1, track="canary"))]
    rollout = {"state": CANARY, "startedAt": to_time(T0)}
    first = judge(rollout, canary_ready, CANARY_SPEC, T0 + 10)
    assert first.action == "canary-ready" and first.recheck_at == T0 + 40
    stepping = {**rollout, "readySince": to_time(T0 + 10)}
    assert judge(stepping, canary_ready, CANARY_SPEC, T0 + 20).action == "wait"
    assert judge(stepping, canary_ready, CANARY_SPEC, T0 + 40).action == "promote"
    unready = [canary_ready[0], track_of(deployment("d-canary", desired=1, ready=0, track="canary"))]
    assert judge(rollout, unready, CANARY_SPEC, T0 + 100).action == "wait"
    stalled = [canary_ready[0], track_of(deployment("d-canary", desired=1, ready=0, track="canary", stalled=True))]
    assert judge(rollout, stalled, CANARY_SPEC, T0 + 100).action == "deadline"


def test_times_round_trip() -> None:
    assert from_time(to_time(T0)) == T0 and from_time(None) is None


def test_conditions_keep_their_transition_time_until_the_status_flips() -> None:
    ready, reachable = ConditionType.READY, ConditionType.REGISTRY_REACHABLE
    conditions = cond.set_condition([], ready, False, "RollingOut", "0/2", "t1")
    conditions = cond.set_condition(conditions, ready, False, "RollingOut", "1/2", "t2")
    assert conditions == [Condition(type="Ready", status="False", reason="RollingOut", message="1/2",
                                    last_transition_time="t1")]
    conditions = cond.set_condition(conditions, reachable, None, "Unknown", "", "t3")
    conditions = cond.set_condition(conditions, ready, True, "MinimumReplicasAvailable", "2/2", "t4")
    assert [(c.type, c.status, c.last_transition_time) for c in conditions] == [
        ("Ready", "True", "t4"), ("RegistryReachable", "Unknown", "t3")]


def test_history_keeps_the_last_ten_and_records_outcomes() -> None:
    history: list[HistoryEntry] = []
    for revision in range(1, 13):
        history = cond.add_history(history, HistoryEntry(version=revision, revision=revision, result="Progressing"))
    assert [h.revision for h in history] == list(range(3, 13))
    history = cond.finish_history(history, 12, "RolledBack", "not ready", "t")
    assert history[-1] == HistoryEntry(version=12, revision=12, result="RolledBack", reason="not ready", time="t")
    assert history[-2].result == "Progressing"


def test_follower_wakes_exactly_the_resources_an_event_concerns() -> None:
    async def wake(keys: list, token: str) -> None:  # pragma: no cover - not started here
        pass

    follower = RegistryFollower(RegistryClient("http://127.0.0.1:9", ""), wake)
    follower.subscribe(("ml", "prod"), "digits", "production")
    follower.subscribe(("ml", "staging"), "digits", "staging")
    follower.subscribe(("ml", "pinned"), "digits", "")
    follower.subscribe(("nlp", "other"), "minilm", "production")
    assert follower.woken_by("digits", "alias.set", "production") == [("ml", "prod")]
    assert follower.woken_by("digits", "alias.deleted", "staging") == [("ml", "staging")]
    assert set(follower.woken_by("digits", "version.ready", None)) == {("ml", "prod"), ("ml", "staging"),
                                                                      ("ml", "pinned")}
    assert follower.woken_by("digits", "version.created", None) == []
    follower.subscribe(("ml", "prod"), "minilm", "production")  # the spec changed model: moved, not copied
    assert follower.woken_by("digits", "alias.set", "production") == []
    follower.unsubscribe(("ml", "prod"))
    assert follower.woken_by("minilm", "alias.set", "production") == [("nlp", "other")]


def test_resolve_sorts_registry_answers_into_reasons(sqlite_registry: Any) -> None:
    with RegistryClient(sqlite_registry.url, "") as client:
        (v1,) = push_versions(client, "digits-cnn", 1)
        pending = client.create_version("digits-cnn").version
        client.set_alias("digits-cnn", "production", v1)
        assert resolve(client, ModelSelector(name="digits-cnn", alias="production")).version == v1
        assert resolve(client, ModelSelector(name="digits-cnn", version=v1)).digest.startswith("sha256:")
        for model, reason in [({"name": "nope", "alias": "production"}, "ModelNotFound"),
                              ({"name": "nope", "version": 1}, "ModelNotFound"),
                              ({"name": "digits-cnn", "alias": "canary"}, "AliasNotFound"),
                              ({"name": "digits-cnn", "version": 99}, "VersionNotFound"),
                              ({"name": "digits-cnn", "version": pending}, "VersionNotReady")]:
            with pytest.raises(ResolveFailure) as failure:
                resolve(client, ModelSelector.model_validate(model))
            assert failure.value.reason == reason, model
    with RegistryClient("http://127.0.0.1:9", "", retries=0, timeout=2) as unreachable:
        with pytest.raises(RegistryUnreachable, match="cannot reach the registry"):
            resolve(unreachable, ModelSelector(name="digits-cnn", alias="production"))


def test_resolve_with_verify_takes_only_a_version_a_required_signer_vouches_for(sqlite_registry: Any,
                                                                                 tmp_path: Path) -> None:
    from modelyard.operator.spec import VerifySpec
    from modelyard.registry.kernel import schemas
    from modelyard.registry.signing.sign import SigningKey, sign
    from tests.support.signing import make_key_pair

    keys = make_key_pair(tmp_path / "keys", "team-cv")
    with RegistryClient(sqlite_registry.url, "") as client:
        (v1,) = push_versions(client, "digits-cnn", 1)
        selector, verify = ModelSelector(name="digits-cnn", version=v1), VerifySpec(signers=["team-cv"])
        assert resolve(client, selector, VerifySpec()).version == v1  # nothing required
        with pytest.raises(ResolveFailure) as failure:
            resolve(client, selector, verify)
        assert failure.value.reason == "SignatureRequired" and "no signature from team-cv" in str(failure.value)
        client.add_trust("team-cv", schemas.TrustRootCreate(method="key", pem=keys.public.read_text()))
        client.download_artifact("digits-cnn", v1, tmp_path / "model.pt2")
        client.sign_version("digits-cnn", v1, tmp_path / "model.pt2", SigningKey(keys.private))
        assert resolve(client, selector, verify).version == v1
        with pytest.raises(ResolveFailure):  # another signer's signature does not count
            resolve(client, selector, VerifySpec(signers=["team-nlp"]))
        assert resolve(client, selector, VerifySpec(require_signature=True)).version == v1
        client.remove_trust("team-cv")  # no longer vouched for
        with pytest.raises(ResolveFailure):
            resolve(client, selector, verify)


def test_push_versions_helper_uploads_verified_bytes(sqlite_registry: Any) -> None:
    """The operator tests' helper makes ready versions the way a user's push does."""
    with RegistryClient(sqlite_registry.url, "") as client:
        numbers = push_versions(client, "m", 2)
        versions = [client.get_version("m", n) for n in numbers]
        assert [v.status for v in versions] == ["ready", "ready"]
        assert versions[0].digest != versions[1].digest


def test_a_status_becomes_the_registrys_deployment_report() -> None:
    from modelyard.operator.reporting import deployment_report
    from modelyard.operator.status import DeploymentStatus

    status = DeploymentStatus.parse({
        "phase": "Degraded", "replicas": 4, "readyReplicas": 3, "url": "http://md.ml:3000",
        "model": {"name": "digits-cnn", "version": 7, "digest": V7.digest, "alias": "production"},
        "helm": {"release": "md", "revision": 5, "chart": "model-server-0.1.0"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "x", "lastTransitionTime": "2026-12-01T00:00:05Z"},
                       {"type": "Degraded", "status": "True", "reason": "RolledBack",
                        "lastTransitionTime": "2026-12-01T00:01:00Z"}],
        "history": [{"version": 8, "revision": 4, "result": "RolledBack", "reason": "made no progress for 600 s"}]})
    report = deployment_report(DeploymentSpec.parse(SPEC), status)
    assert (report.model, report.version, report.digest, report.phase) == ("digits-cnn", 7, V7.digest, "Degraded")
    assert (report.ready_replicas, report.desired_replicas, report.helm_revision) == (3, 4, 5)
    assert report.last_transition_time is not None and report.last_transition_time.minute == 1  # the newest
    assert (report.rollout_result, report.rollout_reason) == ("RolledBack", "made no progress for 600 s")
    fresh = deployment_report(DeploymentSpec.parse(SPEC), DeploymentStatus())
    assert (fresh.model, fresh.version, fresh.phase, fresh.desired_replicas) == ("digits-cnn", None, "Pending", 4)
