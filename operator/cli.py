"""``modelyard operator run``: flags, each with the environment variable the chart sets."""

from __future__ import annotations

import re
from typing import Annotated

import typer

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.names import NAME_PATTERN

operator_app = typer.Typer(help="The Kubernetes operator (ModelDeployment → Helm release).", no_args_is_help=True)


@operator_app.command("run")
def run(
    registry: Annotated[str, typer.Option("--registry", envvar=Env.REGISTRY_URL,
                                          help="the operator's registry (its token is sent there only; a spec "
                                               "naming another registry must bring spec.registry.tokenSecretRef)")]
    = defaults.REGISTRY_URL,
    token: Annotated[str | None, typer.Option("--token", envvar=Env.TOKEN, show_default=False,
                                              help="the operator's registry token")] = None,
    pull_token: Annotated[str | None, typer.Option("--pull-token", envvar=Env.PULL_TOKEN,
                                                   show_default=False,
                                                   help="a read-only token put into namespaces' token Secret "
                                                        "for model pods (default: none; --token is never copied)")]
    = None,
    token_secret: Annotated[str, typer.Option("--token-secret", envvar=Env.TOKEN_SECRET,
                                              help="Secret model pods read the registry token from")]
    = defaults.TOKEN_SECRET,
    runtime_image: Annotated[str, typer.Option("--runtime-image", envvar=Env.RUNTIME_IMAGE,
                                               help="the model pods' image (engines transformers and torch)")]
    = defaults.RUNTIME_IMAGE,
    vllm_runtime_image: Annotated[str, typer.Option("--vllm-runtime-image", envvar=Env.VLLM_RUNTIME_IMAGE,
                                                    help="the model pods' image for engine vllm (empty: none, and "
                                                         "that engine is refused)")]
    = defaults.VLLM_RUNTIME_IMAGE,
    namespace: Annotated[list[str] | None, typer.Option("--namespace", "-n", show_default=False,
                                                        help="watch this namespace (repeatable)")] = None,
    all_namespaces: Annotated[bool, typer.Option("--all-namespaces", "-A",
                                                 help="watch every namespace (the default without -n)")] = False,
    kubeconfig: Annotated[str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", show_default=False,
                                                   help="default: the pod's service account")] = None,
    peering: Annotated[str | None, typer.Option("--peering", envvar=Env.PEERING, show_default=False,
                                                help="kopf peering name: one active operator among replicas")]
    = None,
    standalone: Annotated[bool, typer.Option("--standalone", help="ignore --peering")] = False,
    log_format: Annotated[str, typer.Option("--log-format", envvar=Env.LOG_FORMAT,
                                            help="plain | full | json")] = "plain",
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="Prometheus /metrics; 0: off")] = 0,
    metrics_host: Annotated[str, typer.Option("--metrics-host")] = "0.0.0.0",
    health_port: Annotated[int, typer.Option("--health-port", help="/healthz for probes; 0: off")] = 0,
    health_host: Annotated[str, typer.Option("--health-host")] = "0.0.0.0",
    fallback_resolve_seconds: Annotated[float, typer.Option(
        "--fallback-resolve-seconds", help="re-resolve period while the registry's event feed is down")]
    = defaults.FALLBACK_RESOLVE_SECONDS,
    cluster_name: Annotated[str, typer.Option("--cluster-name", envvar=Env.CLUSTER_NAME,
                                              help="the name deployments are reported to the registry under")]
    = defaults.CLUSTER_NAME,
    report_seconds: Annotated[float, typer.Option("--report-seconds", min=0.1,
                                                  help="heartbeat: how often each deployment is reported again")]
    = defaults.DEPLOYMENT_REPORT_SECONDS,
    failure_retry_seconds: Annotated[float, typer.Option(
        "--failure-retry-seconds", help="retry period for a missing model/alias/version")]
    = defaults.FAILURE_RETRY_SECONDS,
    model_network_policy: Annotated[bool, typer.Option(
        "--model-network-policy", envvar=Env.MODEL_NETWORK_POLICY,
        help="give each model release a NetworkPolicy: its port open to client namespaces and this operator")]
    = False,
    operator_namespace: Annotated[str, typer.Option(
        "--operator-namespace", envvar=Env.OPERATOR_NAMESPACE,
        help="where this operator's pods run (the model pods' NetworkPolicy admits them)")] = "modelyard",
    model_client_namespaces: Annotated[str, typer.Option(
        "--model-client-namespaces", envvar=Env.MODEL_CLIENT_NAMESPACES,
        help="labels (k=v,…) of the namespaces that may call model pods under the policy; empty: all")] = "",
) -> None:
    """Reconcile ModelDeployments into Helm releases of charts/model-server until stopped."""
    from modelyard.operator.config import OperatorConfig
    from modelyard.operator.values import ModelNetworkPolicy
    from modelyard.operator.main import run as run_operator

    if all_namespaces and namespace:
        raise typer.BadParameter("use --namespace or --all-namespaces, not both")
    if not re.fullmatch(NAME_PATTERN, cluster_name):  # the registry keys reports by it (an RFC 1123 label)
        raise typer.BadParameter(f"--cluster-name {cluster_name!r}: use a DNS label (a-z, 0-9, -; at most 63)")
    pairs = [pair.partition("=") for pair in model_client_namespaces.split(",") if pair]
    if any(not key or not equals for key, equals, _ in pairs):
        raise typer.BadParameter(f"--model-client-namespaces {model_client_namespaces!r}: use key=value,…")
    client_labels = tuple((key, value) for key, _, value in pairs)
    if log_format not in ("plain", "full", "json"):
        raise typer.BadParameter(f"--log-format must be plain, full or json, not {log_format!r}")
    run_operator(OperatorConfig(
        registry_url=registry, token=token, pull_token=pull_token, token_secret=token_secret,
        runtime_image=runtime_image, vllm_runtime_image=vllm_runtime_image, namespaces=tuple(namespace or ()),
        kubeconfig=kubeconfig, peering=None if standalone else peering, log_format=log_format,
        metrics_host=metrics_host, metrics_port=metrics_port, health_host=health_host, health_port=health_port,
        fallback_resolve_seconds=fallback_resolve_seconds, failure_retry_seconds=failure_retry_seconds,
        cluster_name=cluster_name, report_seconds=report_seconds,
        network_policy=ModelNetworkPolicy(operator_namespace, client_labels) if model_network_policy else None,
    ))
