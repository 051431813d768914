"""The operator's configuration: flags of ``modelyard operator run``, each with an environment default.

The chart sets the environment (MODELYARD_REGISTRY_URL, MODELYARD_TOKEN, …); flags win, so a
developer can run the same operator against any cluster from a laptop.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from modelyard.operator.values import DEFAULT_RUNTIME_IMAGE, DEFAULT_TOKEN_SECRET, OperatorDefaults


@dataclass(frozen=True)
class OperatorConfig:
    registry_url: str = "http://127.0.0.1:8080"
    token: str | None = None
    """The operator's own registry token (read scope is enough to resolve)."""
    pull_token: str | None = None
    """Copied into each namespace's token Secret for model pods; defaults to ``token``."""
    token_secret: str = DEFAULT_TOKEN_SECRET
    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    namespaces: tuple[str, ...] = ()
    """Watched namespaces; empty means all of them (cluster-wide)."""
    kubeconfig: str | None = None
    peering: str | None = None
    """kopf peering name for high availability (one active operator); None runs standalone."""
    log_format: str = "plain"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 0
    """Prometheus endpoint; 0 turns it off."""
    health_host: str = "0.0.0.0"
    health_port: int = 0
    """Liveness/readiness endpoint (/healthz); 0 turns it off."""
    fallback_resolve_seconds: float = 60.0
    """How often every resource is re-resolved while the registry's event feed is unreachable."""
    failure_retry_seconds: float = 60.0
    """How soon a resource whose model/alias/version is missing is retried (events heal it sooner)."""
    helm_threads: int = 16
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def defaults(self) -> OperatorDefaults:
        return OperatorDefaults(registry_url=self.registry_url, token_secret=self.token_secret,
                                runtime_image=self.runtime_image)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        namespaces = tuple(n for n in env.get("MODELYARD_WATCH_NAMESPACES", "").split(",") if n)
        return cls(
            registry_url=env.get("MODELYARD_REGISTRY_URL", cls.registry_url),
            token=env.get("MODELYARD_TOKEN") or None,
            pull_token=env.get("MODELYARD_PULL_TOKEN") or None,
            token_secret=env.get("MODELYARD_TOKEN_SECRET", DEFAULT_TOKEN_SECRET),
            runtime_image=env.get("MODELYARD_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
            namespaces=namespaces,
            kubeconfig=env.get("KUBECONFIG") or None,
            peering=env.get("MODELYARD_PEERING") or None,
            log_format=env.get("MODELYARD_LOG_FORMAT", "plain"),
        )
