"""The real operator (a `modelyard operator run` process) against the real kube-apiserver and a
real registry server on SQLite: what needs no pods (reasons, finalizers, tokens, missing models).
Rollouts, readiness, rollback, canaries, restarts and registry outages run for real on the
one-node cluster (test_node_e2e.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client

from modelyard.operator.helm_driver import HelmDriver
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import Conflict
from modelyard.registry.kernel.processes.children import RegistryProcess
from tests.helpers import condition, eventually
from tests.support.kube import KubeApiServer, status_code, unique_namespace
from tests.support.operator import OperatorProcess, push_versions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
MODEL = "digits-cnn"


class Bed:
    """One test's world: a namespace, a registry process, an operator process, API clients."""

    def __init__(self, kube: KubeApiServer, namespace: str, registry: RegistryProcess, tmp: Path) -> None:
        self.kube = kube
        self.namespace = namespace
        self.registry = registry
        self.registry_client = RegistryClient(registry.url, "")
        self.api = kube.api()
        self.custom = client.CustomObjectsApi(self.api)
        self.apps = client.AppsV1Api(self.api)
        self.helm = HelmDriver(str(kube.kubeconfig))
        self.tmp = tmp
        self.operator = self.new_operator()

    def new_operator(self) -> OperatorProcess:
        return OperatorProcess(self.kube.kubeconfig, self.registry.url, [self.namespace], self.tmp / "operator.log")

    def create(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object("modelyard.io", "v1alpha1", self.namespace, "modeldeployments", {
            "apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name},
            "spec": spec})

    def md(self, name: str) -> dict[str, Any] | None:
        try:
            return self.custom.get_namespaced_custom_object("modelyard.io", "v1alpha1", self.namespace,
                                                            "modeldeployments", name)
        except client.ApiException as error:
            if error.status == 404:
                return None
            raise

    def status(self, name: str) -> dict[str, Any]:
        return (self.md(name) or {}).get("status") or {}

    def wait_status(self, name: str, predicate: Any, what: str, timeout: float = 30) -> dict[str, Any]:
        try:
            return eventually(lambda: (s := self.status(name)) and predicate(s) and s, timeout=timeout, what=what)
        except AssertionError as error:
            raise AssertionError(f"{error}\n--- operator log ---\n{self.operator.tail()}") from None

    def command(self, deployment: str) -> list[str]:
        return self.apps.read_namespaced_deployment(deployment, self.namespace).spec.template.spec.containers[0] \
            .command

    def revisions(self, name: str) -> list[int]:
        return [r["revision"] for r in self.helm.history(self.namespace, name)]

    def events(self, name: str) -> list[str]:
        items = client.CoreV1Api(self.api).list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={name},involvedObject.kind=ModelDeployment").items
        return [e.reason for e in items]

    def wait_events(self, name: str, *reasons: str, timeout: float = 15) -> None:
        """Events are posted after the status they describe is written: wait for them."""
        seen: set[str] = set()

        def probe() -> bool:
            seen.clear()
            seen.update(self.events(name))
            return set(reasons) <= seen

        try:
            eventually(probe, timeout=timeout, what=f"events {sorted(reasons)} on {name}")
        except AssertionError as error:
            raise AssertionError(f"{error}; seen: {sorted(seen)}") from None

    def close(self) -> None:
        self.operator.stop()
        self.registry_client.close()
        self.api.close()


@pytest.fixture
def bed(kube: KubeApiServer, modelyard_release: dict, namespace: str, tmp_path: Path) -> Iterator[Bed]:
    registry = RegistryProcess.on(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts").start()
    world = Bed(kube, namespace, registry, tmp_path)
    try:
        yield world
    finally:
        world.close()
        registry.stop()


def test_delete_uninstalls_the_release_before_the_resource_goes(bed: Bed) -> None:
    (v1,) = push_versions(bed.registry_client, MODEL, 1)
    bed.operator.start()
    bed.create("digits", {"model": {"name": MODEL, "version": v1}})
    bed.wait_status("digits", lambda s: s.get("helm", {}).get("revision") == 1, "revision 1")
    assert "modelyard.io/release" in bed.md("digits")["metadata"]["finalizers"]
    bed.custom.delete_namespaced_custom_object("modelyard.io", "v1alpha1", bed.namespace, "modeldeployments",
                                               "digits")
    eventually(lambda: bed.md("digits") is None, what="resource gone")
    assert bed.helm.current(bed.namespace, "digits") is None
    assert status_code(lambda: bed.apps.read_namespaced_deployment("digits", bed.namespace)) == 404


def test_missing_model_fails_with_a_reason_and_heals_when_the_registry_catches_up(bed: Bed) -> None:
    bed.operator.start()
    bed.create("later", {"model": {"name": "later-model", "alias": "production"}})
    status = bed.wait_status("later", lambda s: s.get("phase") == "Failed", "Failed")
    assert condition(status, "Ready")["reason"] == "ModelNotFound"
    assert "later-model" in condition(status, "Ready")["message"]
    # Counted by what happened, not as an error of the operator's own.
    eventually(lambda: 'modelyard_operator_reconciles_total{result="failed"}' in bed.operator.metrics(), timeout=10,
               what="a failed reconcile counted as failed")
    assert 'modelyard_operator_failures_total{reason="ModelNotFound"}' in bed.operator.metrics()

    (v1,) = push_versions(bed.registry_client, "later-model", 1)
    status = bed.wait_status("later", lambda s: condition(s, "Ready").get("reason") == "AliasNotFound",
                             "AliasNotFound")
    assert status["phase"] == "Failed"
    bed.registry_client.set_alias("later-model", "production", v1)
    status = bed.wait_status("later", lambda s: s.get("helm", {}).get("revision") == 1, "healed", timeout=15)
    assert status["model"]["version"] == v1
    bed.wait_events("later", "ModelNotFound", "AliasNotFound", "RolloutStarted")


class RecordingRegistry:
    """Another HTTP server posing as a registry: it records every Authorization header and
    answers 404 problems, so the operator resolves nothing from it."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen: list[tuple[str, str]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                seen.append((self.path, self.headers.get("Authorization") or ""))
                body = b'{"type":"urn:x","title":"Not Found","status":404,"detail":"nothing here","code":"not-found"}'
                self.send_response(404)
                self.send_header("Content-Type", "application/problem+json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def secret_token(bed: Bed, name: str) -> str | None:
    import base64

    try:
        secret = client.CoreV1Api(bed.api).read_namespaced_secret(name, bed.namespace)
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return base64.b64decode(secret.data["token"]).decode()


def test_model_pods_get_the_read_only_pull_token_never_the_operators(bed: Bed) -> None:
    """With auth on, as the chart runs it: the operator resolves with its own token and copies only
    the pull token into the namespace; without a pull token it copies nothing."""
    store_db = f"sqlite:///{bed.tmp / 'registry.db'}"
    tokens = {}
    for name, scope in (("admin", "admin"), ("operator", "read"), ("pull", "read")):
        created = subprocess.run([sys.executable, "-m", "modelyard.cli", "registry", "token", "create",
                                  "--scope", scope, "--name", name, "--db", store_db],
                                 capture_output=True, text=True, check=True, timeout=60)
        tokens[name] = created.stdout.strip().splitlines()[-1]
    bed.registry_client = RegistryClient(bed.registry.url, tokens["admin"])
    (v1,) = push_versions(bed.registry_client, MODEL, 1)
    bed.operator = OperatorProcess(bed.kube.kubeconfig, bed.registry.url, [bed.namespace], bed.tmp / "operator.log",
                                   extra=("--token", tokens["operator"], "--pull-token", tokens["pull"])).start()
    bed.create("digits", {"model": {"name": MODEL, "version": v1}})
    bed.wait_status("digits", lambda s: s.get("helm", {}).get("revision") == 1, "revision 1")
    assert secret_token(bed, "modelyard-registry-token") == tokens["pull"]
    container = bed.apps.read_namespaced_deployment("digits", bed.namespace).spec.template.spec.containers[0]
    reference = next(e for e in container.env if e.name == "MODELYARD_TOKEN").value_from.secret_key_ref
    assert (reference.name, reference.key) == ("modelyard-registry-token", "token")
    alias_move = httpx.put(f"{bed.registry.url}/api/v1/models/{MODEL}/aliases/production", json={"version": v1},
                           headers={"Authorization": f"Bearer {tokens['pull']}"})
    assert alias_move.status_code == 403  # what a model pod holds cannot move an alias

    bed.operator.stop()  # the same operator without a pull token, in a fresh namespace
    other = unique_namespace(bed.api)
    bed.operator = OperatorProcess(bed.kube.kubeconfig, bed.registry.url, [other], bed.tmp / "operator2.log",
                                   extra=("--token", tokens["operator"])).start()
    bed.namespace = other
    bed.create("digits", {"model": {"name": MODEL, "version": v1}})
    bed.wait_status("digits", lambda s: s.get("helm", {}).get("revision") == 1, "revision 1 without a pull token")
    assert secret_token(bed, "modelyard-registry-token") is None  # its own token is never copied


def test_a_spec_naming_another_registry_gets_the_operators_token_never(bed: Bed) -> None:
    """Whoever may create a ModelDeployment must not collect the operator's token by pointing
    spec.registry.url at a server of their own."""
    operator_token = "my_" + "o" * 40
    elsewhere = RecordingRegistry()
    try:
        bed.operator = OperatorProcess(bed.kube.kubeconfig, bed.registry.url, [bed.namespace],
                                       bed.tmp / "operator.log", extra=("--token", operator_token)).start()
        bed.create("stolen", {"model": {"name": MODEL, "alias": "production"}, "registry": {"url": elsewhere.url}})
        status = bed.wait_status("stolen", lambda s: s.get("phase") == "Failed", "Failed")
        ready = condition(status, "Ready")
        assert ready["reason"] == "RegistryTokenRequired" and "tokenSecretRef" in ready["message"]
        bed.wait_events("stolen", "RegistryTokenRequired")
        assert elsewhere.seen == []  # not even asked

        # With a token of its own for that registry, the operator asks it, with that token only.
        client.CoreV1Api(bed.api).create_namespaced_secret(bed.namespace, {
            "metadata": {"name": "elsewhere-token"}, "stringData": {"token": "my_elsewhere_token_123"}})
        bed.custom.patch_namespaced_custom_object("modelyard.io", "v1alpha1", bed.namespace, "modeldeployments",
                                                  "stolen", {"spec": {"registry": {
                                                      "url": elsewhere.url,
                                                      "tokenSecretRef": {"name": "elsewhere-token"}}}})
        status = bed.wait_status("stolen", lambda s: condition(s, "Ready").get("reason") == "ModelNotFound",
                                 "ModelNotFound from the other registry")
        assert elsewhere.seen and {auth for _, auth in elsewhere.seen} == {"Bearer my_elsewhere_token_123"}
        assert secret_token(bed, "modelyard-registry-token") is None
    finally:
        elsewhere.close()


def test_deployments_are_reported_to_the_registry_and_turn_stale_without_their_operator(
        kube: KubeApiServer, modelyard_release: dict, namespace: str, tmp_path: Path) -> None:
    """Within 2 s of a status change the registry answers with it; a killed operator's deployments
    turn stale; a deleted resource is removed (also when its operator restarted meanwhile)."""
    registry = RegistryProcess.on(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "artifacts",
                                  env={"MODELYARD_DEPLOYMENT_STALE_SECONDS": "8"}).start()
    world = Bed(kube, namespace, registry, tmp_path)
    extra = ("--cluster-name", "eu-1", "--report-seconds", "2.5")  # slower than the 2 s the report may take
    world.operator = OperatorProcess(kube.kubeconfig, registry.url, [namespace], tmp_path / "operator.log",
                                     extra=extra)
    reports = world.registry_client

    def reported() -> list[Any]:
        return reports.list_deployments(cluster="eu-1", namespace=namespace).items

    try:
        v1, v2 = push_versions(reports, "digits", 2)
        reports.set_alias("digits", "production", v1)
        world.operator.start()
        world.create("digits", {"model": {"name": "digits", "alias": "production"}, "replicas": 2})
        status = world.wait_status("digits", lambda s: s.get("helm", {}).get("revision") == 1, "installed")
        (found,) = eventually(lambda: [d for d in reported() if d.helm_revision == 1], timeout=2,
                              what="the status in the registry within 2 s")
        assert (found.name, found.model, found.version, found.phase) == ("digits", "digits", v1, status["phase"])
        assert found.digest == status["model"]["digest"] and found.desired_replicas == 2 and not found.stale
        assert found.url == status["url"]
        assert [d.cluster for d in reports.get_version("digits", v1).deployments] == ["eu-1"]
        with pytest.raises(Conflict, match=f"eu-1/{namespace}/digits"):
            reports.delete_version("digits", v1)

        reports.set_alias("digits", "production", v2)
        world.wait_status("digits", lambda s: s.get("helm", {}).get("revision") == 2, "upgraded")
        eventually(lambda: [d for d in reported() if d.version == v2 and d.helm_revision == 2], timeout=2,
                   what="the alias move in the registry within 2 s")
        reports.delete_version("digits", v1)  # served no more: the guard let go with the report

        world.operator.kill()
        (gone_quiet,) = eventually(lambda: [d for d in reported() if d.stale], timeout=15, what="stale")
        assert gone_quiet.version == v2  # the last word stays, marked not known healthy

        world.operator = OperatorProcess(kube.kubeconfig, registry.url, [namespace], tmp_path / "operator.log",
                                         extra=extra).start()
        eventually(lambda: [d for d in reported() if not d.stale], timeout=15, what="fresh again after a restart")
        world.custom.delete_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments",
                                                     "digits")
        eventually(lambda: reported() == [], timeout=15, what="removed with its resource")
        assert [e.type for e in reports.events(0, limit=1000).events if e.type.startswith("deployment.")][-1] \
            == "deployment.removed"
    finally:
        world.close()
        registry.stop()
