"""A Modelyard installation on the one-node cluster, for the end-to-end tests and the cluster benchmark:
`helm install charts/modelyard` with the images built here, models made in code and pushed through
the registry's Service, and a bounded request loop that classifies every answer by version."""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from kubernetes import client
from modelyard.bentos.examples import digits
from modelyard.bentos.packager import package_version
from modelyard.cli.local_cluster import chart_values
from modelyard.operator.helm_driver import HelmDriver
from modelyard.registry.client import RegistryClient

from tests.helpers import eventually
from tests.support.artifacts import program_bytes, sha256
from tests.support.charts import MODELYARD
from tests.support.node import Image, Node

MODEL = "digits-cnn"
ML = "ml"
GROUP, API_VERSION, PLURAL = "modelyard.io", "v1alpha1", "modeldeployments"
OPERATOR_PODS = "app.kubernetes.io/component=operator"
REGISTRY_PODS = "app.kubernetes.io/component=registry"


@dataclass
class Trained:
    program: Path
    metadata: dict[str, Any]
    expected: np.ndarray  # the in-process model's outputs for Platform.images

    def matches(self, outputs: np.ndarray) -> bool:
        """These outputs are this model's (the served program runs the same float32 kernels)."""
        return bool(np.allclose(outputs, self.expected, rtol=1e-4, atol=1e-5))


@dataclass
class Platform:
    node: Node
    api: client.ApiClient
    registry_url: str
    token: str
    images: np.ndarray
    candidates: list[Trained] = field(default_factory=list)  # trained, not pushed yet
    versions: dict[int, Trained] = field(default_factory=dict)  # pushed: version number → model

    def registry(self) -> RegistryClient:
        return RegistryClient(self.registry_url, self.token)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api)

    def status(self, name: str) -> dict[str, Any]:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, name).get("status") or {}
        except client.ApiException as error:
            if error.status == 404:
                return {}
            raise

    def wait_status(self, name: str, predicate: Any, what: str, timeout: float = 180) -> dict[str, Any]:
        try:
            return eventually(lambda: (s := self.status(name)) and predicate(s) and s, timeout=timeout,
                              interval=0.5, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\nstatus: {self.status(name)}\n{self.diagnose()}") from None

    def diagnose(self) -> str:
        """What a person would look at: pods, their states, the last words of model servers that restarted, and
        the operator's log."""
        lines = []
        for pod in self.core.list_pod_for_all_namespaces().items:
            states = [(c.name, c.ready, c.restart_count, c.state.waiting and c.state.waiting.reason)
                      for c in (pod.status.container_statuses or []) + (pod.status.init_container_statuses or [])]
            lines.append(f"{pod.metadata.namespace}/{pod.metadata.name} {pod.status.phase} {states}")
            for c in pod.status.container_statuses or []:
                if c.restart_count and pod.metadata.namespace == ML:
                    try:
                        log = self.core.read_namespaced_pod_log(pod.metadata.name, ML, container=c.name,
                                                                previous=True, tail_lines=40)
                        lines.append(f"--- {pod.metadata.name}/{c.name}, previous run ---\n{log}")
                    except client.ApiException as error:
                        lines.append(f"({pod.metadata.name} log: {error.reason})")
        operator = [p.metadata.name for p in self.core.list_namespaced_pod(
            "modelyard", label_selector=OPERATOR_PODS).items]
        if operator:
            try:
                log = self.core.read_namespaced_pod_log(operator[0], "modelyard", tail_lines=30)
                lines.append(f"--- operator log ---\n{log}")
            except client.ApiException as error:
                lines.append(f"(operator log: {error.reason})")
        return "\n".join(lines)

    def service_url(self, name: str, namespace: str = ML) -> str:
        service = self.core.read_namespaced_service(name, namespace)
        return f"http://{service.spec.cluster_ip}:{service.spec.ports[0].port}"

    def predict(self, url: str, timeout: float = 10) -> np.ndarray:
        answer = httpx.post(f"{url}/predict", json={"inputs": self.images.tolist()}, timeout=timeout)
        answer.raise_for_status()
        return np.array(answer.json())

    def revisions(self, name: str) -> list[int]:
        """The release's Helm revisions, oldest first."""
        return [r["revision"] for r in HelmDriver(str(self.node.kubeconfig)).history(ML, name)]

    def operator_pod(self) -> client.V1Pod | None:
        pods = [p for p in self.core.list_namespaced_pod("modelyard", label_selector=OPERATOR_PODS).items
                if p.metadata.deletion_timestamp is None]
        return pods[0] if pods else None

    def operator_metrics(self) -> str:
        """The operator pod's Prometheus text, through its metrics Service ("" while it is away)."""
        try:
            return httpx.get(f"{self.service_url('modelyard-operator-metrics', 'modelyard')}/metrics", timeout=5).text
        except httpx.HTTPError:
            return ""

    def replace_operator(self, *, wait: bool = True) -> None:
        """Delete the operator's pod (as a node failure or an eviction would); its Deployment makes
        another.  With ``wait``, returns once the new pod is Ready."""
        old = self.operator_pod()
        assert old is not None
        self.core.delete_namespaced_pod(old.metadata.name, "modelyard", grace_period_seconds=0)
        if wait:
            eventually(lambda: (pod := self.operator_pod()) and pod.metadata.uid != old.metadata.uid
                       and pod.status.container_statuses and pod.status.container_statuses[0].ready,
                       timeout=120, interval=0.5, what="a new operator pod Ready")

    def events(self, name: str) -> set[str]:
        """The reasons of the events posted on ModelDeployment ``name``."""
        items = self.core.list_namespaced_event(
            ML, field_selector=f"involvedObject.name={name},involvedObject.kind=ModelDeployment").items
        return {e.reason for e in items}

    def create_token(self, scope: str, name: str) -> str:
        """A new registry token, as an administrator makes one: `modelyard registry token create` run in the
        registry's pod (`kubectl exec`), against its database."""
        from kubernetes.stream import stream

        (pod,) = [p for p in self.core.list_namespaced_pod(
            "modelyard", label_selector="app.kubernetes.io/component=registry").items
            if p.metadata.deletion_timestamp is None]
        said = stream(self.core.connect_get_namespaced_pod_exec, pod.metadata.name, "modelyard",
                      command=["modelyard", "registry", "token", "create", "--scope", scope, "--name", name],
                      stderr=True, stdout=True, stdin=False, tty=False, _preload_content=True)
        tokens = [line.strip() for line in said.splitlines() if line.strip().startswith("my_")]
        assert len(tokens) == 1, said
        return tokens[0]

    def event_messages(self, name: str, reason: str) -> list[str]:
        """The messages of the events with ``reason`` posted on ModelDeployment ``name``, oldest first."""
        items = self.core.list_namespaced_event(
            ML, field_selector=f"involvedObject.name={name},involvedObject.kind=ModelDeployment").items
        return [e.message for e in sorted(items, key=lambda e: e.metadata.creation_timestamp) if e.reason == reason]

    def annotate(self, name: str, **annotations: str) -> None:
        """A metadata change: wakes the operator's handler without a new generation."""
        self.custom.patch_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, name,
                                                   {"metadata": {"annotations": annotations}})

    def create(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, {
            "apiVersion": f"{GROUP}/{API_VERSION}", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec})

    def serving(self, name: str, *, terminating: bool = False) -> list[client.V1Pod]:
        """The release's pods; with ``terminating``, also those shutting down (they still answer
        the connections they hold until their grace period ends)."""
        return [p for p in self.core.list_namespaced_pod(ML, label_selector=f"app.kubernetes.io/instance={name}").items
                if terminating or p.metadata.deletion_timestamp is None]


def train(seed: int, workdir: Path, images: np.ndarray) -> Trained:
    model = digits.build_model().eval()  # untrained: outputs are compared, not accuracy
    torch.manual_seed(seed)  # build_model always starts from the same weights: make each seed's its own
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    program = workdir / f"digits-{seed}.pt2"
    metadata = digits.export(model, program)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    return Trained(program, metadata, expected)


def push(platform: Platform, trained: Trained | None, *, broken: bool = False, package: bool = True) -> int:
    """A new version of MODEL (`modelyard push`), then packaged (`modelyard package`) unless told not to."""
    with platform.registry() as registry:
        registry.ensure_model(MODEL)
        if broken:  # the right container and metadata, but no program torch can load
            version = registry.create_version(MODEL, format="torch-export",
                                              metadata=next(iter(platform.versions.values())).metadata)
            garbage = program_bytes(b"garbage")
            registry.upload_artifact(MODEL, version.version, io.BytesIO(garbage), sha256=sha256(garbage))
        else:
            assert trained is not None
            version = registry.create_version(MODEL, format="torch-export", metadata=trained.metadata)
            registry.upload_artifact(MODEL, version.version, trained.program)
            platform.versions[version.version] = trained
        if package:
            package_version(registry, f"{MODEL}:{version.version}")
        return version.version


def push_program(platform: Platform, made: tuple[Path, dict[str, Any], np.ndarray]) -> int:
    """A TorchScript version of MODEL (``tests.support.behaviours``), served from its artifact; its answers
    are classified by the request loop like any version's."""
    program, metadata, expected = made
    with platform.registry() as registry:
        registry.ensure_model(MODEL)
        version = registry.create_version(MODEL, format="torchscript", metadata=metadata)
        registry.upload_artifact(MODEL, version.version, program)
    platform.versions[version.version] = Trained(program, metadata, expected)
    return version.version


def predictions_match(platform: Platform, url: str, version: int) -> bool:
    try:
        got = platform.predict(url)
    except httpx.HTTPError:
        return False
    return platform.versions[version].matches(got)


class RequestLoop:
    """Posts /predict back to back until stopped (or for at most ``limit`` seconds), recording each
    answer: the version whose outputs it matched, or the failure."""

    def __init__(self, platform: Platform, url: str, limit: float = 420) -> None:
        self.platform, self.url, self.limit = platform, url, limit
        self.results: list[str] = []
        self.marks: dict[str, int] = {}
        """Named points in ``results`` (``mark``), to count what was answered after them."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _classify(self, outputs: np.ndarray) -> str:
        for number, trained in self.platform.versions.items():
            if trained.matches(outputs):
                return f"v{number}"
        return "wrong outputs"

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        # A new connection per request, as many clients make them: each one is balanced by kube-proxy
        # over the Service's current endpoints (a kept-alive one stays with its pod).
        with httpx.Client(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as http:
            while not self._stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = http.post(f"{self.url}/predict", json={"inputs": self.platform.images.tolist()})
                    self.results.append(self._classify(np.array(answer.json())) if answer.status_code == 200
                                        else f"HTTP {answer.status_code}")
                except httpx.HTTPError as error:
                    self.results.append(f"{type(error).__name__}")
                time.sleep(0.05)

    def __enter__(self) -> RequestLoop:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def failures(self, since: str | None = None) -> Counter[str]:
        start = self.marks[since] if since else 0
        return Counter(r for r in self.results[start:] if not r.startswith("v"))

    def mark(self, name: str) -> None:
        self.marks[name] = len(self.results)


def make_registry_volume(api: client.ApiClient, node: Node) -> str:
    """The node has no storage provisioner: a hostPath PersistentVolume for the registry's claim."""
    path = node.workdir / "volumes" / "registry"
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, 0, 0)  # made by root, as a user makes one: the chart's registry.persistence.fixOwnership gives
    path.chmod(0o755)     # it to UID 10001, the registry's user
    storage_class = "modelyard-node-local"
    client.CoreV1Api(api).create_persistent_volume(client.V1PersistentVolume(
        metadata=client.V1ObjectMeta(name="modelyard-registry-data"),
        spec=client.V1PersistentVolumeSpec(capacity={"storage": "5Gi"}, access_modes=["ReadWriteOnce"],
                                           storage_class_name=storage_class,
                                           persistent_volume_reclaim_policy="Retain",
                                           host_path=client.V1HostPathVolumeSource(path=str(path),
                                                                                   type="Directory"))))
    return storage_class


def install(node: Node, images: dict[str, Image], workdir: Path) -> Platform:
    """charts/modelyard as release "modelyard" in namespace "modelyard" (registry on a hostPath
    PersistentVolume), a namespace "ml" for models, and four trained candidates; returns once the
    registry and operator pods are Ready."""
    api = node.api()
    core = client.CoreV1Api(api)
    server, runtime = images["modelyard"], images["modelyard-runtime"]
    values = chart_values(  # what `modelyard local-cluster` installs with, on this node's storage and sizes
        (server.repository, server.tag), (runtime.repository, runtime.tag), pull_policy="Never",
        registry={"persistence": {"storageClassName": make_registry_volume(api, node), "size": "5Gi",
                                  "fixOwnership": True},
                  "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}}},
        operator={"logFormat": "plain", "resources": {"requests": {"cpu": "50m", "memory": "192Mi"}}})
    if (vllm := images.get("modelyard-runtime-vllm")) is not None:
        values["operator"]["runtimeImages"] = {"vllm": {"repository": vllm.repository, "tag": vllm.tag}}
    node.helm("modelyard").install(MODELYARD, "modelyard", values, namespace="modelyard", create_namespace=True)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ML)))

    def running(component: str) -> bool:
        pods = core.list_namespaced_pod("modelyard", label_selector=f"app.kubernetes.io/component={component}").items
        return any(p.status.container_statuses and all(c.ready for c in p.status.container_statuses)
                   for p in pods)

    world = Platform(node, api, "", "", np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32))
    try:
        eventually(lambda: running("registry") and running("operator"), timeout=240, interval=1,
                   what="registry and operator pods Ready")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{world.diagnose()}") from None
    tokens = core.read_namespaced_secret("modelyard-tokens", "modelyard").data
    world.token = base64.b64decode(tokens["admin-token"]).decode()
    world.registry_url = world.service_url("modelyard-registry", "modelyard")
    world.candidates = [train(seed, workdir, world.images) for seed in (0, 1, 2, 3)]
    return world
