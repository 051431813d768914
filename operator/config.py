"""The operator's configuration, as ``modelyard operator run`` parses it from flags and their
environment variables (cli.py; the chart sets the environment)."""

from __future__ import annotations

from dataclasses import dataclass

from modelyard.operator.values import ModelNetworkPolicy, OperatorDefaults
from modelyard.registry.kernel import defaults


@dataclass(frozen=True)
class OperatorConfig:
    registry_url: str = defaults.REGISTRY_URL
    token: str | None = None
    """The operator's own registry token (read scope is enough to resolve); sent to ``registry_url`` only."""
    pull_token: str | None = None
    """A read-only token copied into each namespace's token Secret for model pods; none: the Secret is
    the user's to create.  The operator's own token is never copied."""
    token_secret: str = defaults.TOKEN_SECRET
    runtime_image: str = defaults.RUNTIME_IMAGE
    vllm_runtime_image: str = defaults.VLLM_RUNTIME_IMAGE
    """The runtime image with vLLM, for ``engine: vllm`` (and ``auto`` on GPUs); empty: none."""
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
    fallback_resolve_seconds: float = defaults.FALLBACK_RESOLVE_SECONDS
    """How often every resource is re-resolved while the registry's event feed is unreachable."""
    failure_retry_seconds: float = defaults.FAILURE_RETRY_SECONDS
    """How soon a resource whose model/alias/version is missing is retried (events heal it sooner)."""
    helm_threads: int = 16
    cluster_name: str = defaults.CLUSTER_NAME
    """The name deployments are reported under to the registry (one per cluster)."""
    report_seconds: float = defaults.DEPLOYMENT_REPORT_SECONDS
    """How often every deployment is reported again when nothing changed (the heartbeat)."""

    network_policy: ModelNetworkPolicy | None = None
    """A NetworkPolicy for every model release: its serving port open to the client namespaces and to
    this operator's pods (the canary analysis reads each pod's /metrics there)."""

    @property
    def defaults(self) -> OperatorDefaults:
        return OperatorDefaults(registry_url=self.registry_url, token_secret=self.token_secret,
                                runtime_image=self.runtime_image, vllm_runtime_image=self.vllm_runtime_image,
                                network_policy=self.network_policy)
