"""The charts against a real kube-apiserver (1.20, built from Debian's source package).

Offline rendering (tests/test_charts.py) checks shapes; this checks what a server says:
server-side apply, CRD schema validation, discovery-driven API versions, and RBAC.
"""

from __future__ import annotations

import copy
import threading
from typing import Any

import helm_python as helm
import pytest
import yaml
from kubernetes import client

from tests.support.charts import MODEL_SERVER, MODELYARD, with_images
from tests.helpers import eventually
from tests.support.kube import (KubeApiServer, crd_established, get_json, mark_deployment_ready, status_code,
                                unique_namespace)

pytestmark = pytest.mark.cluster

DIGEST = "sha256:" + "ab" * 32
GPU_VALUES: dict[str, Any] = {
    "model": {"name": "digits-cnn", "version": 7, "digest": DIGEST, "alias": "production"},
    "registry": {"url": "http://modelyard-registry.modelyard:8080",
                 "tokenSecretRef": {"name": "registry-token", "key": "token"}},
    "replicas": 2,
    "resources": {"gpu": 2, "gpuType": "nvidia-h100-80gb", "cpu": "4", "memory": "16Gi"},
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 4, "targetCPUUtilization": 60},
}
GOOD_MD: dict[str, Any] = {
    "apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "digits"},
    "spec": {"model": {"name": "digits-cnn", "alias": "production"}, "replicas": 2,
             "resources": {"gpu": 1, "cpu": "2", "memory": "8Gi"}},
}


def test_modelyard_chart_installs_crds_the_server_enforces(kube: KubeApiServer, modelyard_release: dict,
                                                           namespace: str) -> None:
    assert modelyard_release["status"] == "deployed"
    with kube.api() as api:
        eventually(lambda: crd_established(api), what="CRD Established")
        # What `kubectl explain md.spec.model` reads: the published OpenAPI document.
        definition = eventually(lambda: get_json(api, "/openapi/v2")["definitions"].get(
            "io.modelyard.v1alpha1.ModelDeployment"), interval=0.5, what="the CRD in the published OpenAPI")
        model = definition["properties"]["spec"]["properties"]["model"]
        assert {"name", "version", "alias"} <= set(model["properties"])
        assert "exactly one of version" in model["description"]

        custom = client.CustomObjectsApi(api)

        def create(body: dict[str, Any]) -> int:
            return status_code(lambda: custom.create_namespaced_custom_object(
                "modelyard.io", "v1alpha1", namespace, "modeldeployments", body))

        assert create(GOOD_MD) == 200
        stored = custom.get_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments",
                                                     "digits")
        assert stored["spec"]["resources"]["gpu"] == 1
        for broken in (
            {"model": {"name": "digits-cnn", "alias": "production", "version": 3}},  # both
            {"model": {"name": "digits-cnn", "version": 3}, "replicas": -1},
            {"model": {"name": "digits-cnn", "version": 3}, "resources": {"gpu": "2"}},
            {"model": {"name": "digits-cnn"}},  # neither
        ):
            body = copy.deepcopy(GOOD_MD)
            body["metadata"]["name"] = "broken"
            body["spec"] = broken
            assert create(body) == 422, broken
        # The scale subresource works the way `kubectl scale md/digits --replicas 3` uses it.
        custom.patch_namespaced_custom_object_scale("modelyard.io", "v1alpha1", namespace, "modeldeployments",
                                                    "digits", {"spec": {"replicas": 3}})
        assert custom.get_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments",
                                                   "digits")["spec"]["replicas"] == 3


def test_model_server_install_upgrade_rollback_uninstall(kube: KubeApiServer, namespace: str) -> None:
    config = kube.helm(namespace)
    installed = config.install(MODEL_SERVER, "digits", GPU_VALUES, namespace=namespace)
    assert installed["revision"] == 1
    with kube.api() as api:
        apps = client.AppsV1Api(api)
        container = apps.read_namespaced_deployment("digits", namespace).spec.template.spec.containers[0]
        assert container.resources.limits["nvidia.com/gpu"] == "2"
        assert container.command[:3] == ["modelyard", "serve", "digits-cnn:7"]

        newer = copy.deepcopy(GPU_VALUES)
        newer["model"]["version"] = 8
        assert config.upgrade(MODEL_SERVER, "digits", newer, namespace=namespace)["revision"] == 2
        assert apps.read_namespaced_deployment("digits", namespace).spec.template.spec.containers[0] \
            .command[2] == "digits-cnn:8"

        config.rollback("digits", version=1)
        assert apps.read_namespaced_deployment("digits", namespace).spec.template.spec.containers[0] \
            .command[2] == "digits-cnn:7"
        history = config.history("digits")
        assert [(h["revision"], h["status"]) for h in history] == [(1, "superseded"), (2, "superseded"),
                                                                   (3, "deployed")]

        release_secrets = client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=helm")
        assert len(release_secrets.items) == 3

        config.uninstall("digits")
        assert status_code(lambda: apps.read_namespaced_deployment("digits", namespace)) == 404
        assert client.CoreV1Api(api).list_namespaced_secret(namespace, label_selector="owner=helm").items == []


def test_a_1_20_server_gets_the_api_versions_it_serves(kube: KubeApiServer, namespace: str) -> None:
    """Discovery on this server has neither autoscaling/v2 nor policy/v1, so the chart picks
    v2beta2 / v1beta1 here (the offline render, on current Kubernetes, picks v2 / v1)."""
    release = kube.helm(namespace).install(MODEL_SERVER, "digits", GPU_VALUES, namespace=namespace)
    kinds = {doc["kind"]: doc["apiVersion"] for doc in yaml.safe_load_all(release["manifest"]) if doc}
    assert kinds["HorizontalPodAutoscaler"] == "autoscaling/v2beta2"
    assert kinds["PodDisruptionBudget"] == "policy/v1beta1"
    with kube.api() as api:
        hpa = get_json(api, f"/apis/autoscaling/v2beta2/namespaces/{namespace}/horizontalpodautoscalers/digits")
        assert hpa["spec"]["maxReplicas"] == 4
        assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60


def test_a_helm_wait_finishes_once_the_deployment_reports_ready(kube: KubeApiServer, namespace: str) -> None:
    """Helm's readiness wait works against this server once the test plays the controller."""
    outcome: dict[str, Any] = {}

    def install() -> None:
        try:
            outcome["release"] = kube.helm(namespace).install(
                MODEL_SERVER, "digits", {**GPU_VALUES, "autoscaling": {"enabled": False}, "replicas": 1},
                namespace=namespace, wait="watcher", timeout=60)
        except helm.HelmError as error:
            outcome["error"] = error

    thread = threading.Thread(target=install)
    thread.start()
    with kube.api() as api:
        apps = client.AppsV1Api(api)
        eventually(lambda: status_code(lambda: apps.read_namespaced_deployment("digits", namespace)) == 200,
                   what="Deployment created")
        mark_deployment_ready(api, namespace, "digits")
    thread.join(timeout=60)
    assert "error" not in outcome, outcome
    assert outcome["release"]["status"] == "deployed"


class TestOperatorRbac:
    """The chart's operator ClusterRoles, bound to the identity of its ServiceAccount, on a
    server that enforces RBAC: the operator can do its job and nothing cluster-wide beyond it."""

    @pytest.fixture(scope="class")
    def rbac_cluster(self, kube_rbac: KubeApiServer) -> KubeApiServer:
        kube_rbac.helm("modelyard").install(MODELYARD, "modelyard", with_images(), namespace="modelyard",
                                            create_namespace=True)
        with kube_rbac.api() as api:
            eventually(lambda: crd_established(api), what="CRD Established")
        return kube_rbac

    def test_operator_can_do_its_job(self, rbac_cluster: KubeApiServer) -> None:
        with rbac_cluster.api() as admin:
            namespace = unique_namespace(admin)
            client.CustomObjectsApi(admin).create_namespaced_custom_object(
                "modelyard.io", "v1alpha1", namespace, "modeldeployments", copy.deepcopy(GOOD_MD))
        with rbac_cluster.api(as_operator=True) as api:
            custom = client.CustomObjectsApi(api)
            listed = custom.list_cluster_custom_object("modelyard.io", "v1alpha1", "modeldeployments")
            assert [i["metadata"]["name"] for i in listed["items"]] == ["digits"]
            custom.patch_namespaced_custom_object_status(
                "modelyard.io", "v1alpha1", namespace, "modeldeployments", "digits",
                {"status": {"phase": "Resolving"}})
            custom.patch_namespaced_custom_object(  # the finalizer
                "modelyard.io", "v1alpha1", namespace, "modeldeployments", "digits",
                {"metadata": {"finalizers": ["modelyard.io/release"]}})
            client.CoreV1Api(api).create_namespaced_event(namespace, client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name="digits."), reason="Test", message="rbac",
                involved_object=client.V1ObjectReference(kind="ModelDeployment", name="digits",
                                                          namespace=namespace)))
            client.AppsV1Api(api).list_deployment_for_all_namespaces(label_selector="modelyard.io/model")
        # Helm, as the operator, installs and removes a GPU model server (Deployment, Service,
        # HPA, PDB, release Secrets).
        config = rbac_cluster.helm(namespace, as_operator=True)
        assert config.install(MODEL_SERVER, "digits", GPU_VALUES, namespace=namespace)["revision"] == 1
        assert config.upgrade(MODEL_SERVER, "digits", {**GPU_VALUES, "replicas": 3},
                              namespace=namespace)["revision"] == 2
        config.uninstall("digits")

    def test_operator_cannot_reach_beyond_it(self, rbac_cluster: KubeApiServer) -> None:
        with rbac_cluster.api(as_operator=True) as api:
            rbac = client.RbacAuthorizationV1Api(api)
            core = client.CoreV1Api(api)
            forbidden = {
                "create ClusterRole": lambda: rbac.create_cluster_role(client.V1ClusterRole(
                    metadata=client.V1ObjectMeta(name="escalate"), rules=[])),
                "bind a Role": lambda: rbac.create_namespaced_role_binding("modelyard", client.V1RoleBinding(
                    metadata=client.V1ObjectMeta(name="x"),
                    role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                              name="cluster-admin"),
                    subjects=[client.RbacV1Subject(kind="User", name="x")])),
                "create Namespace": lambda: core.create_namespace(client.V1Namespace(
                    metadata=client.V1ObjectMeta(name="nope"))),
                "list Nodes": lambda: core.list_node(),
                "delete the CRD": lambda: client.ApiextensionsV1Api(api).delete_custom_resource_definition(
                    "modeldeployments.modelyard.io"),
                "exec into Pods": lambda: core.create_namespaced_pod(
                    "modelyard", client.V1Pod(metadata=client.V1ObjectMeta(name="p"),
                                              spec=client.V1PodSpec(containers=[client.V1Container(
                                                  name="c", image="busybox")]))),
                "create DaemonSets": lambda: client.AppsV1Api(api).create_namespaced_daemon_set(
                    "modelyard", {"metadata": {"name": "d"}, "spec": {}}),
            }
            answers = {what: status_code(call) for what, call in forbidden.items()}
            assert answers == {what: 403 for what in forbidden}
            # It may read CRDs (kopf discovers its resource) but not change them.
            assert status_code(lambda: client.ApiextensionsV1Api(api).read_custom_resource_definition(
                "modeldeployments.modelyard.io")) == 200

    def test_namespaced_mode_grants_exactly_the_watched_namespaces(self, rbac_cluster: KubeApiServer) -> None:
        with rbac_cluster.api() as admin:
            watched, other = unique_namespace(admin, "watched"), unique_namespace(admin, "other")
        rbac_cluster.helm("modelyard").upgrade(
            MODELYARD, "modelyard", with_images({"operator": {"watchNamespaces": [watched]}}), namespace="modelyard")
        try:
            with rbac_cluster.api(as_operator=True) as api:
                apps = client.AppsV1Api(api)
                assert status_code(lambda: apps.list_namespaced_deployment(watched)) == 200
                assert status_code(lambda: apps.list_namespaced_deployment(other)) == 403
                assert status_code(lambda: apps.list_deployment_for_all_namespaces()) == 403
        finally:
            rbac_cluster.helm("modelyard").upgrade(MODELYARD, "modelyard", with_images(), namespace="modelyard")
