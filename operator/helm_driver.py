"""Helm through the Helm SDK package (Helm v4 in process): one release per ModelDeployment.

Calls block (the library releases the GIL), so the reconciler runs them on a thread pool.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm

from modelyard.registry.kernel.defaults import Env

MODEL_SERVER_CHART = Path(__file__).resolve().parents[1] / "charts" / "model-server"
_PENDING = ("pending-install", "pending-upgrade", "pending-rollback")


def chart_path() -> Path:
    """The model-server chart: MODELYARD_MODEL_SERVER_CHART (the image sets it), else the source tree's."""
    configured = os.environ.get(Env.MODEL_SERVER_CHART)
    return Path(configured) if configured else MODEL_SERVER_CHART


@dataclass(frozen=True)
class ReleaseState:
    revision: int
    status: str
    chart: str
    values: dict[str, Any]


class HelmDriver:
    def __init__(self, kubeconfig: str | None = None, chart: Path | None = None, *, qps: float = 50.0,
                 burst: int = 100) -> None:
        self.kubeconfig = kubeconfig
        self.qps, self.burst = qps, burst
        self.chart = helm.Chart.load(str(chart or chart_path()))
        self.chart_name = f"{self.chart.name}-{self.chart.version}"
        self._configs: dict[str, helm.Config] = {}
        self._lock = threading.Lock()

    def _config(self, namespace: str) -> helm.Config:
        with self._lock:
            if namespace not in self._configs:
                # client-go's default throttle (5 QPS, burst 10) queued 200 installs for minutes.
                self._configs[namespace] = helm.Config(kubeconfig_path=self.kubeconfig, namespace=namespace,
                                                       qps=self.qps, burst_limit=self.burst)
            return self._configs[namespace]

    def current(self, namespace: str, name: str) -> ReleaseState | None:
        """The release's latest revision, or None when it was never installed (or was uninstalled)."""
        config = self._config(namespace)
        try:
            status = config.status(name)
        except helm.HelmNotFoundError:
            return None
        values = config.get_values(name) or {}
        return ReleaseState(revision=int(status["revision"]), status=status["status"],
                            chart=f"{status.get('chart_name', 'model-server')}-{status.get('chart_version', '')}",
                            values=dict(values))

    def apply(self, namespace: str, name: str, values: dict[str, Any], *, description: str,
              current: ReleaseState | None) -> int:
        """``helm upgrade --install``, given the release's ``current`` state (the caller has just read
        it to plan); returns the new revision."""
        config = self._config(namespace)
        if current is not None and current.status in _PENDING:
            # An operator killed mid-operation leaves the release locked; the revision it
            # was writing never finished, so it is marked failed and superseded.
            self._unlock(config, name, current)
            current = self.current(namespace, name)
        if current is None or current.status == "uninstalled":
            release = config.install(self.chart, name, values, namespace=namespace, description=description)
        else:
            release = config.upgrade(self.chart, name, values, namespace=namespace, description=description,
                                     max_history=20)
        return int(release["revision"])

    def _unlock(self, config: helm.Config, name: str, current: ReleaseState) -> None:
        deployed = [r for r in config.history(name) if r["status"] in ("deployed", "superseded")]
        if current.status == "pending-install" or not deployed:
            config.uninstall(name, ignore_not_found=True)
        else:
            config.rollback(name, version=int(deployed[-1]["revision"]))

    def rollback(self, namespace: str, name: str, revision: int) -> int:
        config = self._config(namespace)
        config.rollback(name, version=revision)
        return int(config.status(name)["revision"])

    def uninstall(self, namespace: str, name: str) -> None:
        self._config(namespace).uninstall(name, ignore_not_found=True)

    def history(self, namespace: str, name: str) -> list[dict[str, Any]]:
        try:
            return self._config(namespace).history(name)
        except helm.HelmNotFoundError:
            return []
