"""Reporting each ModelDeployment to the registry it resolves from: what serves where.

``deployment_report`` is pure (status → report).  ``DeploymentReporter`` sends a report when it
changes, re-sends every one periodically (the heartbeat that keeps it from turning stale in the
registry), and removes it when its resource goes.  Reporting is best effort: a registry that is
down or refuses the token never holds up a rollout; the next change or heartbeat tries again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from modelyard.operator.spec import DeploymentSpec
from modelyard.operator.status import DeploymentStatus, Phase, from_time
from modelyard.registry.kernel import schemas
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import NotFound, RegistryError

log = logging.getLogger("modelyard.operator")
Key = tuple[str, str]
RunBlocking = Callable[..., Awaitable[Any]]


def deployment_report(spec: DeploymentSpec, status: DeploymentStatus) -> schemas.DeploymentReport:
    """What the registry records for one ModelDeployment, from its status."""
    model = status.model
    times = [c.last_transition_time for c in status.conditions if c.last_transition_time]
    last = status.history[-1] if status.history else None
    return schemas.DeploymentReport(
        model=(model.name if model and model.name else spec.model.name),
        version=model.version if model else None, digest=model.digest if model else None,
        phase=(status.phase or Phase.PENDING).value,
        ready_replicas=status.ready_replicas or 0,
        desired_replicas=status.replicas if status.replicas is not None else spec.replicas,
        helm_revision=status.helm.revision if status.helm else None, url=status.url,
        last_transition_time=datetime.fromtimestamp(from_time(max(times)) or 0, UTC) if times else None,
        rollout_result=last.result or None if last else None,
        rollout_reason=(last.reason or None) if last else None)


class DeploymentReporter:
    def __init__(self, cluster: str, interval: float, run_blocking: RunBlocking) -> None:
        self.cluster = cluster
        self.interval = interval
        self._run = run_blocking
        self._reports: dict[Key, tuple[RegistryClient, schemas.DeploymentReport]] = {}
        self._sent: dict[Key, schemas.DeploymentReport] = {}
        self._warned: set[str] = set()

    def update(self, key: Key, client: RegistryClient, report: schemas.DeploymentReport) -> bool:
        """Remember the newest report; True when it differs from the last one sent (send it now)."""
        self._reports[key] = (client, report)
        return self._sent.get(key) != report

    async def send(self, key: Key) -> None:
        found = self._reports.get(key)
        if found is None:
            return
        client, report = found
        namespace, name = key
        try:
            await self._run(client.report_deployment, self.cluster, namespace, name, report)
        except (RegistryError, OSError) as error:
            self._warn_once(client.url, f"could not report {namespace}/{name} to {client.url}: {error}")
            self._sent.pop(key, None)
            return
        self._sent[key] = report

    async def remove(self, key: Key, client: RegistryClient | None) -> None:
        """Its resource was deleted: stop reporting it and remove it from ``client``'s registry."""
        self._reports.pop(key, None)
        self._sent.pop(key, None)
        if client is None:
            return
        namespace, name = key
        try:
            await self._run(client.remove_deployment, self.cluster, namespace, name)
        except NotFound:
            pass
        except (RegistryError, OSError) as error:  # it turns stale in the registry instead
            log.warning("could not remove %s/%s from %s: %s", namespace, name, client.url, error)

    async def heartbeat(self) -> None:
        """Re-send every report each ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.gather(*(self.send(key) for key in list(self._reports)), return_exceptions=True)

    def _warn_once(self, url: str, message: str) -> None:
        if url not in self._warned:
            self._warned.add(url)
            log.warning("%s (reports to this registry keep being retried; this is logged once)", message)
