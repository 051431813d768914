"""A real kube-apiserver + etcd for the suite (tests/cluster/kube-apiserver.sh), and helpers to use it.

No controllers, scheduler or kubelet run: Deployments get no pods.  Tests that need
"ready" pods patch the Deployment's status themselves (``mark_deployment_ready``), as
envtest-based operator tests do.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from modelyard.operator.status import to_time

SCRIPT = Path(__file__).resolve().parents[1] / "cluster" / "kube-apiserver.sh"


class KubeApiServer:
    """One etcd + kube-apiserver pair in ``workdir``; stops only what it started."""

    def __init__(self, workdir: Path, *, rbac: bool = False) -> None:
        self.workdir = workdir
        self.rbac = rbac
        self.kubeconfig = workdir / "kubeconfig"
        self.operator_kubeconfig = workdir / "operator.kubeconfig"
        self.start_seconds = 0.0

    def start(self) -> KubeApiServer:
        started = time.monotonic()
        args = ["bash", str(SCRIPT), "start", str(self.workdir)] + (["rbac"] if self.rbac else [])
        result = subprocess.run(args, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"kube-apiserver did not start (exit {result.returncode}):\n{result.stderr[-3000:]}")
        self.start_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        subprocess.run(["bash", str(SCRIPT), "stop", str(self.workdir)], capture_output=True, timeout=60)

    def api(self, *, as_operator: bool = False) -> client.ApiClient:
        """A client of its own (never the kubernetes module's global configuration)."""
        path = self.operator_kubeconfig if as_operator else self.kubeconfig
        return config.new_client_from_config(config_file=str(path))

    def helm(self, namespace: str, *, as_operator: bool = False) -> helm.Config:
        path = self.operator_kubeconfig if as_operator else self.kubeconfig
        return helm.Config(kubeconfig_path=str(path), namespace=namespace)


def crd_established(api: client.ApiClient, name: str = "modeldeployments.modelyard.io") -> bool:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])


def cached_binary_exists() -> bool:
    """The control plane and node binaries are built (kube-apiserver.sh writes `complete` last)."""
    root = Path(os.environ.get("MODELYARD_CACHE_DIR", Path.home() / ".cache" / "modelyard")) / "kubernetes"
    return any(root.glob("*/complete"))


def unique_namespace(api: client.ApiClient, prefix: str = "t") -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    client.CoreV1Api(api).create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def mark_deployment_ready(api: client.ApiClient, namespace: str, name: str) -> None:
    """Play the deployment controller: report every desired replica updated and ready."""
    apps = client.AppsV1Api(api)
    deployment = apps.read_namespaced_deployment(name, namespace)
    replicas = deployment.spec.replicas if deployment.spec.replicas is not None else 1
    apps.patch_namespaced_deployment_status(name, namespace, {"status": {
        "observedGeneration": deployment.metadata.generation, "replicas": replicas,
        "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
                        "message": "test", "lastUpdateTime": to_time(time.time()), "lastTransitionTime": to_time(time.time())},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                        "message": "test", "lastUpdateTime": to_time(time.time()), "lastTransitionTime": to_time(time.time())}],
    }})


def get_json(api: client.ApiClient, path: str) -> Any:
    """GET any API path (discovery, /openapi/v2, older API versions the typed client lacks)."""
    response = api.call_api(path, "GET", auth_settings=["BearerToken"], _preload_content=False,
                            _return_http_data_only=True)
    return json.loads(response.data)


def status_code(call: Callable[[], Any]) -> int:
    """The HTTP status the API server answered ``call`` with (2xx → 200)."""
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200
