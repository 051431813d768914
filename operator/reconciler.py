"""The reconciler: I/O around the pure transitions in ``transitions`` (which decide with ``rollout``
and ``values``).

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
from dataclasses import replace
from functools import partial
from typing import Any, TypeVar

import helm_python as helm
import httpx
import kopf

from modelyard.operator import metrics
from modelyard.operator.canary_report import canary_report, told
from modelyard.operator.config import OperatorConfig
from modelyard.operator.follower import Key, RegistryFollower
from modelyard.operator.helm_driver import HelmDriver, ReleaseState
from modelyard.operator.kube import Kube
from modelyard.operator.reporting import DeploymentReporter, deployment_report
from modelyard.operator.resolve import RegistryUnreachable, ResolveFailure, resolve
from modelyard.operator.rollout import track_of
from modelyard.operator.scrape import read_pods, scrape_client
from modelyard.operator.spec import DeploymentSpec, SpecError
from modelyard.operator.status import ConditionType, DeploymentStatus, Reason, to_patch
from modelyard.operator.transitions import (
    CheckInputs,
    FeedHealth,
    HelmAction,
    HelmFailure,
    HelmVerb,
    Outcome,
    ReconcileInputs,
    Release,
    Resolution,
    Retry,
    Step,
    check_step,
    reading_needed,
    reconcile_step,
)
from modelyard.operator.values import RegistryAccess, ResolvedVersion, registry_access
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import RegistryError, Unavailable

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
        self._clients: dict[Key, RegistryClient] = {}
        self.reporter = DeploymentReporter(config.cluster_name, config.report_seconds, self.io)
        self._heartbeat: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None

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
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for follower in self._followers.values():
            await follower.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()
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
        return await self.io(self.kube.secret_value, md["metadata"]["namespace"], ref.name, ref.key)

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

    async def _write(self, md: dict[str, Any], before: DeploymentStatus, step: Step,
                     spec: DeploymentSpec | None = None) -> None:
        """One status patch (what changed since ``before``) and the step's Events; the new status goes
        to the registry too (``reporting``), without waiting for it."""
        key = (md["metadata"]["namespace"], md["metadata"]["name"])
        changed = to_patch(before.to_dict(), step.status.to_dict())
        if changed:
            await self.io(self.kube.patch_status, key[0], key[1], changed)
        client = self._clients.get(key)
        if spec is not None and client is not None and self.reporter.update(
                key, client, deployment_report(spec, step.status)):
            self._spawn(self.reporter.send(key))
            if self._heartbeat is None:
                self._heartbeat = asyncio.get_running_loop().create_task(self.reporter.heartbeat())
        for event in step.events:
            await self.io(self.kube.event, md, event.type, event.reason, event.message)
        if step.failure:
            metrics.FAILURES.labels(step.failure).inc()
            if step.failure == Reason.ROLLED_BACK:
                metrics.ROLLBACKS.inc()
        if step.rollout:
            metrics.ROLLOUTS.labels(step.rollout).inc()

    async def _run_helm(self, namespace: str, name: str, action: HelmAction, current: ReleaseState | None) -> int:
        """Run ``action``; an upgrade starts from ``current``, the release as the caller read it."""
        if action.verb == HelmVerb.ROLLBACK:
            assert action.revision is not None
            return await self.helm_call(self.helm.rollback, namespace, name, action.revision)
        return await self.helm_call(self.helm.apply, namespace, name, action.values, description=action.description,
                                    current=current)

    # -- reconcile: resolve, plan, helm upgrade ---------------------------------------------

    async def reconcile(self, namespace: str, name: str, retry: int = 0) -> None:
        key = (namespace, name)
        started = time.perf_counter()
        outcome, again = Outcome.ERROR, None
        try:
            async with self.lock(key):
                outcome, again = await self._reconcile(key, retry)
        finally:
            metrics.RECONCILES.labels(outcome.value).inc()
            metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        if again is not None:  # kopf runs the handler again: after the delay, or on the next spec change
            if again.delay is None:
                raise kopf.PermanentError(again.message)
            raise kopf.TemporaryError(again.message, delay=again.delay)
        if outcome in (Outcome.UPGRADED, Outcome.UNCHANGED):
            self.request_check(namespace, name)

    async def _reconcile(self, key: Key, retry: int) -> tuple[Outcome, Retry | None]:
        """Read the resource and what it depends on, take one transition, run Helm, write."""
        namespace, name = key
        md = await self.io(self.kube.get, namespace, name)
        if md is None or md["metadata"].get("deletionTimestamp"):
            return Outcome.GONE, None
        status = DeploymentStatus.parse(md.get("status"))
        common: dict[str, Any] = dict(
            name=name, namespace=namespace, generation=int(md["metadata"].get("generation") or 1), status=status,
            defaults=self.config.defaults, chart=self.helm.chart_name, retry=retry,
            failure_retry_seconds=self.config.failure_retry_seconds)
        try:
            spec = DeploymentSpec.parse(md.get("spec"))
            access = registry_access(spec.registry, self.config.defaults)
        except SpecError as error:
            return await self._take(md, status, reconcile_step(
                ReconcileInputs(**common, spec=None, resolution=error, now=self.clock())))
        client, follower = self._registry(access, await self._registry_token(md, access))
        self._clients[key] = client
        follower.subscribe(key, spec.model.name, spec.model.alias or "")
        feed = FeedHealth(follower.healthy, follower.error, self.config.fallback_resolve_seconds)
        try:
            resolution: Resolution = await self.io(resolve, client, spec.model, spec.verify)
        except (RegistryUnreachable, ResolveFailure) as failure:
            resolution = failure
        release, current = None, None
        if isinstance(resolution, ResolvedVersion):
            current = await self.helm_call(self.helm.current, namespace, name)
            if current is not None:
                release = Release(current.revision, current.chart, current.values)
        inputs = ReconcileInputs(**common, spec=spec, resolution=resolution, feed=feed, release=release,
                                 now=self.clock())
        step = reconcile_step(inputs)
        if step.outcome in (Outcome.UPGRADED, Outcome.UNCHANGED, Outcome.HELD_BACK):
            await self._ensure_pull_token(md, access)
        if step.helm is None:
            return await self._take(md, status, step, spec)
        await self._write(md, status, step, spec)  # recorded as started before Helm runs
        event_time = follower.event_times.pop(key, None)
        if event_time is not None:
            metrics.EVENT_TO_UPGRADE_SECONDS.observe(max(0.0, self.clock() - event_time))
        try:
            result: int | HelmFailure = await self._run_helm(namespace, name, step.helm, current)
        except helm.HelmError as error:
            result = HelmFailure(str(error))
        return await self._take(md, step.status, reconcile_step(inputs, result), spec)

    async def _take(self, md: dict[str, Any], before: DeploymentStatus, step: Step,
                    spec: DeploymentSpec | None = None) -> tuple[Outcome, Retry | None]:
        """Write a reconcile step; what it says about retrying goes back to ``reconcile``."""
        await self._write(md, before, step, spec)
        return step.outcome, step.retry

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
        try:
            spec = DeploymentSpec.parse(md.get("spec"))
        except SpecError:
            return  # reconcile reports it
        status = DeploymentStatus.parse(md.get("status"))
        tracks = [track_of(d) for d in await self.io(self.kube.release_deployments, namespace, name)]
        failures = (tuple(await self.io(self.kube.release_pod_failures, namespace, name))
                    if status.rollout.in_flight else ())
        inputs = CheckInputs(spec=spec, status=status, tracks=tracks,
                             generation=int(md["metadata"].get("generation") or 1), now=self.clock(),
                             defaults=self.config.defaults, failures=failures)
        if reading_needed(inputs):
            pods = await self.io(self.kube.release_pods, namespace, name)
            inputs = replace(inputs, reading=await read_pods(self._scraper(), pods), now=self.clock())
        step = check_step(inputs)
        if step.helm is not None:
            current = await self.helm_call(self.helm.current, namespace, name)
            step = check_step(inputs, await self._run_helm(namespace, name, step.helm, current))
        await self._write(md, status, step, spec)
        if step.recheck_at is not None:
            self.schedule(key, step.recheck_at)
        elif step.check_now:
            self.request_check(namespace, name)
        await self._report_canary(md, spec, step.status)

    def _scraper(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = scrape_client()
        return self._http

    async def _report_canary(self, md: dict[str, Any], spec: DeploymentSpec, status: DeploymentStatus) -> None:
        """Record a finished analysis as canary evidence on the version, then make the alias move the spec
        asks for; the registry judges the move.  Told once (``analysis.reported``, the ``Evidence``
        condition); an unreachable registry is tried again, a refusal is told and not repeated."""
        namespace, name = md["metadata"]["namespace"], md["metadata"]["name"]
        report = canary_report(spec, status, self.config.cluster_name, namespace, name)
        client = self._clients.get((namespace, name))
        if report is None or client is None:
            return
        record = status.rollout.analysis
        assert record is not None
        evidence_id = record.evidence_id
        subject = f"{report.model}:{report.version}"
        if evidence_id is None:
            try:
                evidence = await self.io(client.record_evaluation, report.model, report.version, report.evaluation)
            except Unavailable as error:
                log.warning("recording the canary verdict of %s/%s: %s; trying again", namespace, name, error)
                self.schedule((namespace, name), self.clock() + 10)
                return
            except RegistryError as error:
                await self._tell(md, status, told(status, self.clock(), None, Reason.EVIDENCE_NOT_RECORDED,
                                                  f"the registry refused the canary evaluation of {subject}: {error}"))
                return
            evidence_id = evidence.id
            recorded = (f"canary evaluation #{evidence_id} ({report.evaluation.verdict}) recorded on {subject}")
            # Kept before the alias moves: a move tried again after an outage records no second evaluation.
            after = told(status, self.clock(), evidence_id, Reason.EVIDENCE_RECORDED, recorded,
                         reported=report.move is None)
            await self._tell(md, status, after)
            status = after
        else:
            recorded = f"canary evaluation #{evidence_id} recorded on {subject}"
        if report.move is None:
            return
        move = report.move
        try:
            await self.io(client.set_alias, report.model, move.alias, move.version)
        except Unavailable as error:
            log.warning("moving alias %s of %s: %s; trying again", move.alias, report.model, error)
            self.schedule((namespace, name), self.clock() + 10)
            return
        except RegistryError as error:
            await self._tell(md, status, told(status, self.clock(), evidence_id, Reason.ALIAS_NOT_MOVED, (
                f"{recorded}; alias {move.alias} was not moved to version {move.version}: {error}")))
            return
        verb = "moved back" if move.kind == "revert" else "promoted"
        await self._tell(md, status, told(status, self.clock(), evidence_id, Reason.EVIDENCE_RECORDED, (
            f"{recorded}; alias {move.alias} {verb} to version {move.version}")),
            ("Normal", "AliasReverted" if move.kind == "revert" else "AliasPromoted",
             (f"alias {move.alias} {verb} to version {move.version} on canary evaluation #{evidence_id} "
              f"of version {report.version}")))

    async def _tell(self, md: dict[str, Any], before: DeploymentStatus, after: DeploymentStatus,
                    event: tuple[str, str, str] | None = None) -> None:
        """Write the ``Evidence`` condition (one patch) and post it as an event."""
        changed = to_patch(before.to_dict(), after.to_dict())
        if changed:
            await self.io(self.kube.patch_status, md["metadata"]["namespace"], md["metadata"]["name"], changed)
        condition = after.condition(ConditionType.EVIDENCE)
        if event is None and condition is not None:
            event = ("Normal" if condition.status == "True" else "Warning", condition.reason, condition.message)
        if event is not None:
            await self.io(self.kube.event, md, *event)

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
            await self.reporter.remove(key, self._clients.pop(key, None) or await self._client_for(key))
        self._locks.pop(key, None)

    async def _client_for(self, key: Key) -> RegistryClient | None:
        """The registry client of a resource this operator has not reconciled since it started (deleted
        while the operator was away): from its spec, so its report is removed all the same."""
        md = await self.io(self.kube.get, *key)
        if md is None:
            return None
        try:
            access = registry_access(DeploymentSpec.parse(md.get("spec")).registry, self.config.defaults)
        except SpecError:
            return None
        return self._registry(access, await self._registry_token(md, access))[0]

