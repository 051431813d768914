"""``modelyard operator run``: configuration → kopf.run with our handlers."""

from __future__ import annotations

import asyncio
import logging
import os

import kopf
from prometheus_client import start_http_server

from modelyard.operator.config import OperatorConfig
from modelyard.operator.handlers import build_registry
from modelyard.operator.helm_driver import HelmDriver
from modelyard.operator.kube import Kube, api_client
from modelyard.operator.reconciler import Reconciler


def run(config: OperatorConfig) -> None:
    """Run until SIGINT/SIGTERM.  Standalone unless a peering name is set (then one active operator)."""
    if config.kubeconfig:
        os.environ["KUBECONFIG"] = config.kubeconfig  # kopf's login and the kubernetes client agree
    kopf.configure(verbose=False, log_format={"json": kopf.LogFormat.JSON, "full": kopf.LogFormat.FULL}
                   .get(config.log_format, kopf.LogFormat.PLAIN), log_prefix=True)
    for chatty in ("kubernetes", "httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if config.metrics_port:
        start_http_server(config.metrics_port, addr=config.metrics_host)
    reconciler = Reconciler(config, Kube(api_client(config.kubeconfig)), HelmDriver(config.kubeconfig))
    registry = build_registry(reconciler, config.kubeconfig)
    liveness = f"http://{config.health_host}:{config.health_port}/healthz" if config.health_port else None
    asyncio.run(kopf.operator(
        registry=registry,
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=config.peering is None,
        peering_name=config.peering,
        liveness_endpoint=liveness,
    ))
