"""The reconciler: I/O around the pure decisions in ``rollout`` and ``values``.

One asyncio lock per resource serialises the three ways work arrives (kopf's
create/update/resume handler, the Deployments' events, and timers for deadlines and
canary steps), so each step reads the resource fresh, decides, and writes its status once.
Blocking calls (registry client, Kubernetes client, Helm) run on threads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import helm_python as helm
import kopf

from modelyard.operator import conditions as cond
from modelyard.operator import metrics
from modelyard.operator.config import OperatorConfig
from modelyard.operator.follower import Key, RegistryFollower
from modelyard.operator.helm_driver import HelmDriver
from modelyard.operator.kube import Kube
from modelyard.operator.resolve import RegistryUnreachable, ResolveFailure, resolve
from modelyard.operator.rollout import (CANARY, COMPLETE, FAILED, IN_FLIGHT, PROGRESSING, ROLLED_BACK, judge,
                                        plan_release, replica_counts, to_time, track_of)
from modelyard.operator.values import RegistryAccess, ResolvedVersion, SpecError, model_server_values, registry_access
from modelyard.registry.client import RegistryClient
from modelyard.registry.names import ModelRef

log = logging.getLogger("modelyard.operator")
T = TypeVar("T")


class Reconciler:
    def __init__(self, config: OperatorConfig, kube: Kube, helm_driver: HelmDriver,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.kube = kube
        self.helm = helm_driver
        self.clock = clock
        self.io_pool = ThreadPoolExecutor(16, thread_name_prefix="io")
        self.helm_pool = ThreadPoolExecutor(config.helm_threads, thread_name_prefix="helm")
        self._locks: dict[Key, asyncio.Lock] = {}
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._checks: set[Key] = set()
        self._followers: dict[tuple[str, str | None], RegistryFollower] = {}
        self._token_secrets: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- plumbing ---------------------------------------------------------------------

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.io_pool, partial(fn, *args, **kwargs))

    async def helm_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.helm_pool, partial(fn, *args, **kwargs))

    def lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for follower in self._followers.values():
            await follower.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.io_pool.shutdown(wait=False, cancel_futures=True)
        self.helm_pool.shutdown(wait=False, cancel_futures=True)

    def _registry(self, access: RegistryAccess, token: str | None) -> tuple[RegistryClient, RegistryFollower]:
        url = access.url.rstrip("/")
        key = (url, token)
        if key not in self._followers:
            client = RegistryClient(url, token or "", timeout=10.0, retries=1)
            follower = RegistryFollower(client, self.wake, fallback_seconds=self.config.fallback_resolve_seconds)
            follower.start()
            self._followers[key] = follower
        follower = self._followers[key]
        return follower.client, follower

    async def _registry_token(self, md: dict[str, Any], access: RegistryAccess) -> str | None:
        """The spec's own token, else the operator's (``registry_access`` allows that for its own registry only)."""
        ref = access.spec_token_ref
        if not ref:
            return self.config.token
        return await self.io(self.kube.secret_value, md["metadata"]["namespace"], ref["name"],
                             ref.get("key", "token"))

    async def wake(self, keys: list[Key], token: str) -> None:
        """Make kopf re-run the update handler of each resource (the follower's trigger)."""
        results = await asyncio.gather(*(self.io(self.kube.trigger, ns, name, token) for ns, name in keys),
                                       return_exceptions=True)
        for (namespace, name), result in zip(keys, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("could not wake %s/%s: %s", namespace, name, result)

    def schedule(self, key: Key, at: float) -> None:
        """Re-check ``key`` at wall-clock time ``at`` (a deadline or a canary step); one timer per resource."""
        loop = asyncio.get_running_loop()
        if (old := self._timers.pop(key, None)) is not None:
            old.cancel()
        delay = max(0.0, at - self.clock()) + 0.05
        self._timers[key] = loop.call_later(delay, lambda: self.request_check(*key))

    def request_check(self, namespace: str, name: str) -> None:
        """Coalesce bursts (a Deployment reports several times per rollout) into one check."""
        key = (namespace, name)
        if key in self._checks:
            return
        self._checks.add(key)

        async def run() -> None:
            await asyncio.sleep(0.05)
            self._checks.discard(key)
            try:
                await self.check(namespace, name)
            except Exception:  # noqa: BLE001 - logged; the next event or timer retries
                log.exception("checking the rollout of %s/%s failed", namespace, name)
                self.schedule(key, self.clock() + 5)

        self._spawn(run())

    async def _patch(self, md: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        changed: dict[str, Any] = {}
        for key, value in new.items():
            if old.get(key) == value:
                continue
            if isinstance(value, dict) and isinstance(old.get(key), dict):  # fields that went: delete them
                value = {**{gone: None for gone in old[key] if gone not in value}, **value}
            changed[key] = value
        if changed:
            await self.io(self.kube.patch_status, md["metadata"]["namespace"], md["metadata"]["name"], changed)

    async def _event(self, md: dict[str, Any], type_: str, reason: str, message: str) -> None:
        await self.io(self.kube.event, md, type_, reason, message)

    # -- reconcile: resolve, plan, helm upgrade ---------------------------------------------

    async def reconcile(self, namespace: str, name: str, retry: int = 0) -> None:
        key = (namespace, name)
        started = time.perf_counter()
        result = "error"
        try:
            async with self.lock(key):
                result = await self._reconcile(key, retry)
        finally:
            metrics.RECONCILES.labels(result).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if result in ("upgraded", "unchanged"):
            self.request_check(namespace, name)

    async def _reconcile(self, key: Key, retry: int) -> str:
        namespace, name = key
        md = await self.io(self.kube.get, namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return "gone"
        spec, old = md.get("spec") or {}, dict(md.get("status") or {})
        generation = int(md["metadata"].get("generation") or 1)
        now = to_time(self.clock())
        status = dict(old)
        conditions = list(old.get("conditions") or [])
        try:
            access = registry_access(spec, self.config.defaults)
        except SpecError as error:
            await self._fail(md, old, status, conditions, error.reason, str(error), generation, now)
            raise kopf.PermanentError(str(error)) from error
        client, follower = self._registry(access, await self._registry_token(md, access))
        follower.subscribe(key, spec["model"]["name"], spec["model"].get("alias") or "")
        if not status.get("phase"):
            status["phase"] = "Resolving"
        conditions = cond.set_condition(
            conditions, cond.REGISTRY_WATCH, follower.healthy,
            "Following" if follower.healthy else "EventFeedUnreachable",
            "following the registry's event feed" if follower.healthy else
            f"event feed unreachable ({follower.error}); re-resolving every "
            f"{self.config.fallback_resolve_seconds:.0f} s", now)

        try:
            resolved = await self.io(resolve, client, spec["model"])
        except RegistryUnreachable as error:
            conditions = cond.set_condition(conditions, cond.REGISTRY_REACHABLE, False, "RegistryUnreachable",
                                            str(error), now)
            status["conditions"] = conditions
            if (cond.condition(old.get("conditions"), cond.REGISTRY_REACHABLE) or {}).get("status") != "False":
                await self._event(md, "Warning", "RegistryUnreachable", str(error))
            await self._patch(md, old, status)
            metrics.FAILURES.labels("RegistryUnreachable").inc()
            raise kopf.TemporaryError(f"registry unreachable: {error}", delay=min(2 ** retry, 60)) from error
        except ResolveFailure as failure:
            await self._fail(md, old, status, conditions, failure.reason, str(failure), generation, now)
            raise kopf.TemporaryError(str(failure), delay=self.config.failure_retry_seconds) from failure

        conditions = cond.set_condition(conditions, cond.REGISTRY_REACHABLE, True, "Reachable",
                                        f"resolved {ModelRef(**spec['model'])} → version {resolved.version}", now)
        rollout = dict(old.get("rollout") or {})
        current = await self.helm_call(self.helm.current, namespace, name)
        try:
            plan = plan_release(spec, resolved, rollout, generation, current.values if current else None,
                                self.config.defaults)
        except SpecError as error:
            await self._fail(md, old, status, conditions, error.reason, str(error), generation, now)
            raise kopf.PermanentError(str(error)) from error
        await self._ensure_pull_token(md, access)

        if plan.held_back:
            status.update(observedGeneration=generation, conditions=cond.set_condition(
                conditions, cond.DEGRADED, True, "RolloutFailed", plan.held_back, now))
            await self._patch(md, old, status)
            return "held-back"

        if not plan.upgrade:
            assert current is not None
            status.update(observedGeneration=generation, conditions=conditions)
            if rollout.get("revision") != current.revision and rollout.get("state") not in (ROLLED_BACK, FAILED):
                # The release moved without us recording it (an operator killed right after Helm
                # answered): adopt its revision and judge it like any rollout.
                rollout.update(state=CANARY if plan.canary else PROGRESSING, revision=current.revision,
                               version=resolved.version, digest=resolved.digest, startedAt=now, readySince=None)
                status.update(rollout=rollout, phase="RollingOut",
                              helm={"release": name, "revision": current.revision, "chart": current.chart},
                              model=_model_status(resolved))
            if status.get("phase") in ("Resolving", "Failed", "Pending"):
                status["phase"] = "RollingOut" if rollout.get("state") in IN_FLIGHT else "Ready"
            await self._patch(md, old, status)
            return "unchanged"

        # A new revision.  Record that it started before Helm runs: a crash in between re-plans the same values.
        event_time = follower.event_times.pop(key, None)
        if event_time is not None:
            metrics.EVENT_TO_UPGRADE_SECONDS.observe(max(0.0, self.clock() - event_time))
        what = f"{resolved.name}:{resolved.version}" + (
            f" as a canary beside {plan.stable.version}" if plan.canary and plan.stable else "")
        status.update(phase="RollingOut", observedGeneration=generation, conditions=cond.set_condition(
            conditions, cond.PROGRESSING, True, "Upgrading", f"rolling out {what}", now),
            upgradeStartedAt=now)
        await self._patch(md, old, status)
        old = dict(status)
        try:
            revision = await self.helm_call(self.helm.apply, namespace, name, plan.values,
                                            description=f"modelyard: {what}", current=current)
        except helm.HelmError as error:
            message = f"helm upgrade failed: {error}"
            status.update(phase="Degraded", conditions=cond.set_condition(
                status["conditions"], cond.DEGRADED, True, "HelmError", message, now))
            await self._patch(md, old, status)
            await self._event(md, "Warning", "HelmError", message)
            metrics.FAILURES.labels("HelmError").inc()
            raise kopf.TemporaryError(message, delay=min(5 * 2 ** retry, 120)) from error

        rollout.update(state=CANARY if plan.canary else PROGRESSING, revision=revision, version=resolved.version,
                       digest=resolved.digest, startedAt=now, readySince=None,
                       stableVersion=plan.stable.version if plan.canary and plan.stable else None,
                       stableDigest=plan.stable.digest if plan.canary and plan.stable else None,
                       failedVersion=None, failedGeneration=None)
        status.update(
            rollout=rollout, model=_model_status(resolved),
            helm={"release": name, "revision": revision, "chart": self.helm.chart_name},
            url=f"http://{name}.{namespace}.svc.cluster.local:{int((plan.values.get('service') or {}).get('port', 3000))}",
            selector=f"app.kubernetes.io/name=model-server,app.kubernetes.io/instance={name}",
            history=cond.add_history(old.get("history"), {"version": resolved.version, "revision": revision,
                                                          "result": "Progressing", "reason": "Canary" if plan.canary
                                                          else "Upgrade", "time": now}),
            conditions=cond.set_condition(status["conditions"], cond.DEGRADED, False, "None", "", now))
        await self._patch(md, old, status)
        await self._event(md, "Normal", "RolloutStarted", f"rolling out {what} (Helm revision {revision})")
        metrics.ROLLOUTS.labels("started").inc()
        return "upgraded"

    async def _fail(self, md: dict[str, Any], old: dict[str, Any], status: dict[str, Any],
                    conditions: list[dict[str, Any]], reason: str, message: str, generation: int, now: str) -> None:
        conditions = cond.set_condition(conditions, cond.REGISTRY_REACHABLE, True, "Reachable", "", now)
        conditions = cond.set_condition(conditions, cond.READY, False, reason, message, now)
        status.update(phase="Failed", observedGeneration=generation,
                      conditions=cond.set_condition(conditions, cond.DEGRADED, True, reason, message, now))
        ready = cond.condition(old.get("conditions"), cond.READY) or {}
        if old.get("phase") != "Failed" or ready.get("reason") != reason:
            await self._event(md, "Warning", reason, message)
        await self._patch(md, old, status)
        metrics.FAILURES.labels(reason).inc()

    async def _ensure_pull_token(self, md: dict[str, Any], access: RegistryAccess) -> None:
        """Model pods pull with the Secret ``config.token_secret``; create it, holding the read-only
        pull token, when the spec names none.  The operator's own token is never copied anywhere."""
        namespace = md["metadata"]["namespace"]
        token = self.config.pull_token
        if access.spec_token_ref or not token or namespace in self._token_secrets:
            return
        await self.io(self.kube.ensure_secret, namespace, self.config.token_secret, "token", token)
        self._token_secrets.add(namespace)

    # -- readiness, deadlines, canary steps, rollback -----------------------------------------

    async def check(self, namespace: str, name: str) -> None:
        async with self.lock((namespace, name)):
            await self._check((namespace, name))

    async def _check(self, key: Key) -> None:
        namespace, name = key
        md = await self.io(self.kube.get, namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return
        spec, old = md.get("spec") or {}, dict(md.get("status") or {})
        status = dict(old)
        rollout = dict(old.get("rollout") or {})
        now_s = self.clock()
        now = to_time(now_s)
        tracks = [track_of(d) for d in await self.io(self.kube.release_deployments, namespace, name)]
        verdict = judge(rollout, tracks, spec, now_s)
        conditions = list(old.get("conditions") or [])

        if verdict.action == "complete":
            rollout.update(state=COMPLETE, lastReadyRevision=rollout.get("revision"),
                           lastReadyVersion=rollout.get("version"), lastReadyDigest=rollout.get("digest"),
                           readySince=None, stableVersion=None, stableDigest=None)
            status["history"] = cond.finish_history(old.get("history"), rollout.get("revision"), "Ready", "", now)
            conditions = cond.set_condition(conditions, cond.PROGRESSING, False, "RolloutComplete",
                                            f"version {rollout.get('version')} is ready", now)
            conditions = cond.set_condition(conditions, cond.DEGRADED, False, "None", "", now)
            await self._event(md, "Normal", "RolloutSucceeded",
                              f"version {rollout.get('version')} ready (Helm revision {rollout.get('revision')})")
            metrics.ROLLOUTS.labels("succeeded").inc()
        elif verdict.action == "canary-ready":
            rollout["readySince"] = now
            await self._event(md, "Normal", "CanaryReady", f"canary of version {rollout.get('version')} is ready; "
                                                           f"promoting after the canary step")
        elif verdict.action == "promote":
            revision = await self._promote(md, rollout)
            rollout.update(state=PROGRESSING, revision=revision, startedAt=now, readySince=None,
                           stableVersion=None, stableDigest=None)
            status["helm"] = {**(old.get("helm") or {}), "revision": revision}
            status["history"] = cond.add_history(
                cond.finish_history(old.get("history"), old.get("rollout", {}).get("revision"), "Promoted", "", now),
                {"version": rollout.get("version"), "revision": revision, "result": "Progressing",
                 "reason": "CanaryPromoted", "time": now})
            await self._event(md, "Normal", "CanaryPromoted", f"version {rollout.get('version')} promoted "
                                                              f"(Helm revision {revision})")
        elif verdict.action == "deadline":
            conditions = await self._give_up(md, spec, old, status, rollout, conditions, verdict.message, now)

        desired, ready = replica_counts(tracks)
        state = rollout.get("state")
        ready_now = bool(tracks) and all(t.rolled_out for t in tracks if t.track == "stable") and ready >= desired
        conditions = cond.set_condition(
            conditions, cond.READY, ready_now,
            "MinimumReplicasAvailable" if ready_now else ("RollingOut" if state in IN_FLIGHT else "ReplicasUnavailable"),
            f"{ready}/{desired} replicas ready", now) if tracks or state else conditions
        if state == COMPLETE:
            status["phase"] = "Ready" if ready_now else "Degraded"
            if not ready_now:
                conditions = cond.set_condition(conditions, cond.DEGRADED, True, "ReplicasUnavailable",
                                                f"{ready}/{desired} replicas ready", now)
            else:
                conditions = cond.set_condition(conditions, cond.DEGRADED, False, "None", "", now)
        elif state in IN_FLIGHT:
            status["phase"] = "RollingOut"
        status.update(rollout=rollout, conditions=conditions, replicas=desired, readyReplicas=ready,
                      ready=f"{ready}/{desired}")
        await self._patch(md, old, status)
        if verdict.recheck_at is not None and rollout.get("state") in IN_FLIGHT:
            self.schedule(key, verdict.recheck_at)
        elif rollout.get("state") in IN_FLIGHT and verdict.action == "promote":
            self.request_check(namespace, name)

    async def _deploy_only(self, md: dict[str, Any], version: ResolvedVersion, description: str) -> int:
        """Upgrade the release to ``version`` alone (no canary): a promotion, or a failed canary's removal."""
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        values = model_server_values(md["spec"], version, self.config.defaults)
        current = await self.helm_call(self.helm.current, namespace, name)
        return await self.helm_call(self.helm.apply, namespace, name, values, description=description,
                                    current=current)

    async def _promote(self, md: dict[str, Any], rollout: dict[str, Any]) -> int:
        """The canary was ready for a whole step: the primary moves to it and the canary goes."""
        target = _pinned(md["spec"], rollout["version"], rollout.get("digest"))
        return await self._deploy_only(md, target, f"modelyard: promote canary {target.name}:{target.version}")

    async def _give_up(self, md: dict[str, Any], spec: dict[str, Any], old: dict[str, Any], status: dict[str, Any],
                       rollout: dict[str, Any], conditions: list[dict[str, Any]], why: str,
                       now: str) -> list[dict[str, Any]]:
        """A rollout missed its deadline: remove a canary, or roll back, or report Degraded."""
        failed_version, failed_revision = rollout.get("version"), rollout.get("revision")
        rollout.update(failedVersion=failed_version, failedGeneration=int(md["metadata"].get("generation") or 1),
                       readySince=None)
        history = old.get("history")
        if rollout.get("state") == CANARY and rollout.get("stableVersion") is not None:
            stable = _pinned(spec, rollout["stableVersion"], rollout.get("stableDigest"))
            revision = await self._deploy_only(md, stable, f"modelyard: remove failed canary {failed_version}")
            reason, message = "CanaryFailed", (f"canary of version {failed_version} {why}; removed, version "
                                               f"{stable.version} keeps serving (Helm revision {revision})")
            rollout.update(state=FAILED, revision=revision, version=stable.version, digest=stable.digest,
                           stableVersion=None, stableDigest=None)
            status["model"] = _model_status(stable)
            status["helm"] = {**(old.get("helm") or {}), "revision": revision}
        elif (spec.get("rollout") or {}).get("autoRollback", True) and rollout.get("lastReadyRevision"):
            target = int(rollout["lastReadyRevision"])
            revision = await self.helm_call(self.helm.rollback, md["metadata"]["namespace"], md["metadata"]["name"],
                                            target)
            reason, message = "RolledBack", (f"version {failed_version} {why}; rolled back to Helm revision "
                                             f"{target} (version {rollout.get('lastReadyVersion')}) as revision "
                                             f"{revision}")
            rollout.update(state=ROLLED_BACK, revision=revision, version=rollout.get("lastReadyVersion"),
                           digest=rollout.get("lastReadyDigest"))
            status["model"] = _model_status(_pinned(spec, rollout["lastReadyVersion"], rollout.get("lastReadyDigest")))
            status["helm"] = {**(old.get("helm") or {}), "revision": revision}
            metrics.ROLLBACKS.inc()
        else:
            reason, message = "ProgressDeadlineExceeded", f"version {failed_version} {why}" + (
                "" if rollout.get("lastReadyRevision") else "; no earlier ready revision to roll back to")
            rollout["state"] = FAILED
        status["history"] = cond.finish_history(history, failed_revision, reason, why, now)
        status["phase"] = "Degraded"
        await self._event(md, "Warning", reason, message)
        metrics.ROLLOUTS.labels("failed").inc()
        metrics.FAILURES.labels(reason).inc()
        conditions = cond.set_condition(conditions, cond.PROGRESSING, False, reason, message, now)
        return cond.set_condition(conditions, cond.DEGRADED, True, reason, message, now)

    # -- delete -------------------------------------------------------------------------------

    async def delete(self, namespace: str, name: str) -> None:
        """Uninstall the release; the finalizer goes only once Helm says it is gone."""
        key = (namespace, name)
        async with self.lock(key):
            for follower in self._followers.values():
                follower.unsubscribe(key)
            if (timer := self._timers.pop(key, None)) is not None:
                timer.cancel()
            try:
                await self.helm_call(self.helm.uninstall, namespace, name)
                left = await self.helm_call(self.helm.current, namespace, name)
            except helm.HelmError as error:
                raise kopf.TemporaryError(f"helm uninstall failed: {error}", delay=10) from error
            if left is not None and left.status != "uninstalled":
                raise kopf.TemporaryError(f"release {name} still {left.status}", delay=5)
        self._locks.pop(key, None)


def _pinned(spec: dict[str, Any], version: int, digest: str | None) -> ResolvedVersion:
    """A version the operator recorded earlier (stable, last ready, canary target) of ``spec.model``."""
    return ResolvedVersion(spec["model"]["name"], int(version), digest or "", spec["model"].get("alias") or "")


def _model_status(resolved: ResolvedVersion) -> dict[str, Any]:
    status = {"name": resolved.name, "version": resolved.version, "digest": resolved.digest, "alias": resolved.alias}
    return {k: v for k, v in status.items() if v != ""}
