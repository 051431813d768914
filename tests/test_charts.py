"""The Helm charts, linted and rendered by real Helm (the Helm SDK in process), with every
rendered object validated against the Kubernetes OpenAPI schemas and its important
fields asserted: GPU limits, probes, labels, security context."""

from __future__ import annotations

import copy
from typing import Any

import helm_python as helm
import pytest

from modelyard.registry.kernel.defaults import MAX_REQUEST_BYTES as DEFAULT_MAX_REQUEST_BYTES
from tests.support.charts import (
    MODEL_SERVER, MODELYARD, by_kind, load, notes, one, render, validate_kubernetes, with_images,
)

DIGEST = "sha256:" + "ab" * 32
BASE: dict[str, Any] = {"model": {"name": "digits-cnn", "version": 7, "digest": DIGEST, "alias": "production"},
                        "registry": {"url": "http://modelyard-registry.modelyard:8080",
                                     "tokenSecretRef": {"name": "registry-token", "key": "token"}}}


def values(**overrides: Any) -> dict[str, Any]:
    merged = copy.deepcopy(BASE)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


MATRIX = {
    "cpu-only": values(),
    "1-gpu-typed": values(resources={"gpu": 1, "gpuType": "nvidia-h100-80gb", "cpu": "4", "memory": "16Gi"}),
    "8-gpus-typed": values(resources={"gpu": 8, "gpuType": "nvidia-a100-sxm4-80gb", "cpu": "32", "memory": "256Gi"},
                           replicas=2),
    "autoscaling": values(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 8,
                                       "targetCPUUtilization": 60}),
    "canary": values(replicas=3, rollout={"strategy": "Canary"},
                     canary={"enabled": True, "model": {"version": 8, "digest": DIGEST}, "replicas": 1}),
    "pvc-cache": values(cache={"persistentVolumeClaim": {"enabled": True, "size": "50Gi",
                                                         "storageClassName": "fast"}}),
    "service-monitor": values(serviceMonitor={"enabled": True, "interval": "15s", "labels": {"release": "prom"}}),
    "network-policy": values(networkPolicy={"enabled": True, "operatorNamespace": "platform",
                                            "clientNamespaceSelector": {"team": "ml"}}),
    "grpc": values(serving={"engine": "torch", "tensor": {"grpc": True}},
                   networkPolicy={"enabled": True, "operatorNamespace": "modelyard", "clientNamespaceSelector": {}}),
    "signed-only": values(verify={"requireSignature": True, "signers": ["team-cv", "team-nlp"],
                                  "trustSecret": "model-signers"}),
    "vllm-2-gpus": values(resources={"gpu": 2, "cpu": "8", "memory": "64Gi"},
                          serving={"engine": "vllm", "llm": {"maxModelLen": 8192},
                                   "vllm": {"gpuMemoryUtilization": 0.85, "enablePrefixCaching": True,
                                            "toolCallParser": "hermes", "compactJson": True}}),
}


@pytest.mark.parametrize("chart", [MODEL_SERVER, MODELYARD], ids=["model-server", "modelyard"])
def test_charts_lint_clean_in_strict_mode(chart) -> None:  # noqa: ANN001
    lint_values = BASE if chart == MODEL_SERVER else {}
    report = helm.lint(chart, lint_values, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1 and not report["errors"] and not problems, report


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_model_server_renders_valid_kubernetes_objects(case: str) -> None:
    objects = render(MODEL_SERVER, MATRIX[case])
    assert validate_kubernetes(objects) >= 2
    deployment = one(objects, "Deployment", "digits")
    pod = deployment["spec"]["template"]["spec"]
    main = pod["containers"][0]
    init = pod["initContainers"][0]
    # The init container pulls exactly the resolved version into the cache; the server serves it.
    assert init["command"][:3] == ["modelyard", "pull", "digits-cnn:7"] and "/cache" in init["command"]
    assert main["command"][:3] == ["modelyard", "serve", "digits-cnn:7"]
    vllm = MATRIX[case].get("serving", {}).get("engine") == "vllm"  # vLLM's /health is both
    assert main["readinessProbe"]["httpGet"]["path"] == ("/health" if vllm else "/readyz")
    assert main["livenessProbe"]["httpGet"]["path"] == ("/health" if vllm else "/livez")
    assert vllm or main["readinessProbe"] != main["livenessProbe"]
    # Probes wait out the slowest accepted request body's parse (they share the server's event loop).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["timeoutSeconds"] >= 5
    limit = next(e for e in main["env"] if e["name"] == "MODELYARD_MAX_REQUEST_BYTES")
    assert int(limit["value"]) == MATRIX[case].get("serving", {}).get("maxRequestBytes", DEFAULT_MAX_REQUEST_BYTES)
    assert main["lifecycle"]["preStop"] and pod["terminationGracePeriodSeconds"] >= 5
    # Security: non-root, read-only root, no escalation, no capabilities; token from a Secret.
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (main, init):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        token = next(e for e in container["env"] if e["name"] == "MODELYARD_TOKEN")
        assert token == {"name": "MODELYARD_TOKEN",
                         "valueFrom": {"secretKeyRef": {"name": "registry-token", "key": "token"}}}
    # Labels on every object.
    for obj in objects:
        labels = obj["metadata"]["labels"]
        for key in ("name", "instance", "version", "component", "managed-by"):
            assert labels[f"app.kubernetes.io/{key}"], (obj["kind"], key)
        assert labels["modelyard.io/model"] == "digits-cnn"
        assert labels["modelyard.io/version"] in ("7", "8")
        assert obj["metadata"]["namespace"] == "ml"
    # The Service selects both tracks; each Deployment only its own.
    service = one(objects, "Service")
    for dep in by_kind(objects, "Deployment"):
        selector = dep["spec"]["selector"]["matchLabels"]
        assert set(service["spec"]["selector"].items()) < set(selector.items())
        assert set(selector.items()) <= set(dep["spec"]["template"]["metadata"]["labels"].items())


def test_gpus_render_limits_toleration_and_node_selector() -> None:
    pod = one(render(MODEL_SERVER, MATRIX["8-gpus-typed"]), "Deployment")["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "8"  # a string: SSA refuses an integer quantity
    assert resources["requests"]["nvidia.com/gpu"] == "8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "nvidia-a100-sxm4-80gb"}
    assert resources["limits"]["cpu"] == "32" and resources["limits"]["memory"] == "256Gi"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["MODELYARD_GPUS"] == "8"
    untyped = one(render(MODEL_SERVER, values(resources={"gpu": 1, "cpu": "1", "memory": "1Gi"})),
                  "Deployment")["spec"]["template"]["spec"]
    assert "nodeSelector" not in untyped and untyped["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_no_gpu_means_no_gpu_fields() -> None:
    objects = render(MODEL_SERVER, MATRIX["cpu-only"])
    text = repr(objects)
    assert "nvidia.com/gpu" not in text
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    user = render(MODEL_SERVER, values(nodeSelector={"pool": "cpu"},
                                       tolerations=[{"key": "x", "operator": "Exists"}]))
    user_pod = one(user, "Deployment")["spec"]["template"]["spec"]
    assert user_pod["nodeSelector"] == {"pool": "cpu"} and user_pod["tolerations"] == [{"key": "x", "operator": "Exists"}]


def test_autoscaling_owns_replicas_and_pdb_follows_replica_count() -> None:
    single = render(MODEL_SERVER, MATRIX["cpu-only"])
    assert one(single, "Deployment")["spec"]["replicas"] == 1
    assert not by_kind(single, "HorizontalPodAutoscaler") and not by_kind(single, "PodDisruptionBudget")
    scaled = render(MODEL_SERVER, MATRIX["autoscaling"])
    assert "replicas" not in one(scaled, "Deployment")["spec"]
    hpa = one(scaled, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 8)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert hpa["spec"]["scaleTargetRef"]["name"] == "digits"
    assert one(scaled, "PodDisruptionBudget")["apiVersion"] == "policy/v1"
    assert one(render(MODEL_SERVER, values(replicas=3)), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_older_clusters_get_the_older_api_versions() -> None:
    """A 1.20 server has neither autoscaling/v2 nor policy/v1; discovery picks them there
    (tests/test_cluster_charts.py installs it on one).  The override renders the same branch offline."""
    old = values(autoscaling={"enabled": True, "minReplicas": 2, "maxReplicas": 4},
                 apiVersions={"autoscaling": "autoscaling/v2beta2", "policy": "policy/v1beta1"})
    objects = render(MODEL_SERVER, old)
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2beta2"
    validate_kubernetes([hpa], "1.25")  # the last release that served autoscaling/v2beta2
    assert one(objects, "PodDisruptionBudget")["apiVersion"] == "policy/v1beta1"


def test_canary_is_a_second_deployment_behind_the_same_service() -> None:
    objects = render(MODEL_SERVER, MATRIX["canary"])
    stable, canary = one(objects, "Deployment", "digits"), one(objects, "Deployment", "digits-canary")
    assert stable["spec"]["replicas"] == 3 and canary["spec"]["replicas"] == 1
    assert stable["spec"]["template"]["metadata"]["labels"]["modelyard.io/version"] == "7"
    assert canary["spec"]["template"]["metadata"]["labels"]["modelyard.io/version"] == "8"
    assert canary["spec"]["template"]["spec"]["containers"][0]["command"][2] == "digits-cnn:8"
    assert canary["metadata"]["labels"]["modelyard.io/track"] == "canary"
    assert "canary" in notes(MODEL_SERVER, MATRIX["canary"]).lower()


def test_the_model_pods_policy_opens_the_serving_port_to_clients_and_the_operators_scrape() -> None:
    assert not by_kind(render(MODEL_SERVER, values()), "NetworkPolicy")  # off unless the operator turns it on
    policy = one(render(MODEL_SERVER, MATRIX["network-policy"]), "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "digits"
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]  # the serving port, where /metrics is, and no other
    operator, clients = rule["from"]
    assert operator == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "platform"}},
                        "podSelector": {"matchLabels": {"app.kubernetes.io/component": "operator"}}}
    assert clients == {"namespaceSelector": {"matchLabels": {"team": "ml"}}}
    every = one(render(MODEL_SERVER, values(networkPolicy={"enabled": True, "operatorNamespace": "modelyard",
                                                             "clientNamespaceSelector": {}})), "NetworkPolicy")
    assert every["spec"]["ingress"][0]["from"][1] == {"namespaceSelector": {}}  # every namespace's pods


def test_pvc_cache_and_service_monitor() -> None:
    objects = render(MODEL_SERVER, MATRIX["pvc-cache"])
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    volumes = {v["name"]: v for v in one(objects, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    existing = render(MODEL_SERVER, values(cache={"persistentVolumeClaim": {"enabled": True, "claimName": "shared"}}))
    assert not by_kind(existing, "PersistentVolumeClaim")
    monitor = one(render(MODEL_SERVER, MATRIX["service-monitor"]), "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert not by_kind(render(MODEL_SERVER, MATRIX["cpu-only"]), "ServiceMonitor")


@pytest.mark.parametrize("bad, complaint", [
    (values(replicas=-1), "replicas"),
    (values(resources={"gpu": "2", "cpu": "1", "memory": "1Gi"}), "gpu"),
    (values(rollout={"strategy": "BlueGreen"}), "strategy"),
    (values(model={"name": "digits-cnn", "version": 0}), "version"),
    (values(resources={"gpu": 1, "cpu": 2, "memory": "1Gi"}), "cpu"),
    (values(canary={"enabled": True, "model": {"version": 8}, "replicas": 1}), "strategy"),
    (values(surprise=True), "surprise"),
])
def test_values_schema_rejects_nonsense(bad: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        load(MODEL_SERVER).validate_schema(load(MODEL_SERVER).merge_values(bad))
    assert complaint in str(caught.value)
    with pytest.raises(helm.HelmError):
        render(MODEL_SERVER, bad)


def test_template_guards_explain_themselves() -> None:
    with pytest.raises(helm.HelmError, match="maxReplicas .* below"):
        render(MODEL_SERVER, values(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}))
    with pytest.raises(helm.HelmError, match="single-writer"):
        render(MODELYARD, with_images({"registry": {"replicas": 2}}))


# -- charts/modelyard --------------------------------------------------------------

def test_modelyard_chart_defaults() -> None:
    objects = render(MODELYARD, with_images(), name="modelyard", namespace="modelyard")
    assert validate_kubernetes(objects) >= 8
    registry = one(objects, "Deployment", "modelyard-registry")
    pod = registry["spec"]["template"]["spec"]
    assert registry["spec"]["strategy"]["type"] == "Recreate"  # SQLite on a RWO volume: one writer
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["MODELYARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "modelyard-tokens",
                                                                          "key": "admin-token"}
    assert "MODELYARD_DB_URL" not in env  # SQLite on the PVC
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "data"}
    claim = one(objects, "PersistentVolumeClaim")
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    secret = one(objects, "Secret", "modelyard-tokens")
    assert set(secret["data"]) == {"admin-token", "operator-token", "pull-token"}
    assert env["MODELYARD_PULL_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "modelyard-tokens",
                                                                         "key": "pull-token"}
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    # Each install without the Secret generates fresh tokens (upgrades read them back with lookup).
    again = one(render(MODELYARD, with_images(), name="modelyard", namespace="modelyard"), "Secret",
                "modelyard-tokens")
    assert again["data"]["admin-token"] != secret["data"]["admin-token"]
    operator = one(objects, "Deployment", "modelyard-operator")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:3] == ["modelyard", "operator", "run"] and "--all-namespaces" in container["command"]
    assert container["livenessProbe"]["httpGet"]["port"] == "health"
    # The operator resolves with its own token and hands model pods only the read-only pull token.
    operator_env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"] if "valueFrom" in e}
    assert operator_env == {"MODELYARD_TOKEN": "operator-token", "MODELYARD_PULL_TOKEN": "pull-token"}
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "modelyard"
    for obj in by_kind(objects, "Deployment"):
        spec = obj["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_modelyard_rbac_is_least_privilege() -> None:
    objects = render(MODELYARD, with_images(), name="modelyard", namespace="modelyard")
    cluster_wide = one(objects, "ClusterRole", "modelyard-operator-cluster")["rules"]
    # Cluster-wide: read CRDs, peer.  No Secrets, no workloads, no wildcards.
    assert {r for rule in cluster_wide for r in rule["resources"]} == {"customresourcedefinitions",
                                                                        "clusterkopfpeerings"}
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
            assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
    namespaced = one(objects, "ClusterRole", "modelyard-operator")["rules"]
    granted = {(group, resource): set(rule["verbs"]) for rule in namespaced
               for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"patch", "update"} <= granted[("modelyard.io", "modeldeployments/status")]
    assert {"create", "delete", "patch"} <= granted[("apps", "deployments")]
    assert {"create", "delete", "list"} <= granted[("", "secrets")]  # Helm's release records
    assert granted[("", "pods")] == {"get", "list", "watch"}

    scoped = render(MODELYARD, with_images({"operator": {"watchNamespaces": ["ml", "prod"]}}), name="modelyard",
                    namespace="modelyard")
    validate_kubernetes(scoped)
    bindings = by_kind(scoped, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml", "prod"]
    assert not [b for b in by_kind(scoped, "ClusterRoleBinding") if b["roleRef"]["name"] == "modelyard-operator"]
    assert sorted(p["metadata"]["namespace"] for p in by_kind(scoped, "KopfPeering")) == ["ml", "prod"]
    command = one(scoped, "Deployment", "modelyard-operator")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=ml" in command and "--namespace=prod" in command and "--all-namespaces" not in command


def test_modelyard_chart_production_settings() -> None:
    production = {"registry": {"replicas": 3, "database": {"urlSecretRef": {"name": "registry-db"}},
                               "artifacts": {"url": "s3://models/prod", "s3CredentialsSecret": "s3-creds"},
                               "adminToken": {"existingSecret": "my-admin"}},
                  "serviceMonitor": {"enabled": True}, "networkPolicy": {
                      "enabled": True, "registryClientNamespaceSelector": {"matchLabels": {"ml": "true"}},
                      "modelClientNamespaceLabels": {"team": "ml", "tier": "web"}}}
    objects = render(MODELYARD, with_images(production), name="modelyard", namespace="modelyard")
    validate_kubernetes(objects)
    registry = one(objects, "Deployment", "modelyard-registry")
    assert registry["spec"]["replicas"] == 3 and "strategy" not in registry["spec"]
    container = registry["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MODELYARD_DB_URL"]["valueFrom"]["secretKeyRef"] == {"name": "registry-db", "key": "url"}
    assert env["MODELYARD_ARTIFACTS"]["value"] == "s3://models/prod"
    assert env["MODELYARD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "my-admin", "key": "token"}
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert not by_kind(objects, "PersistentVolumeClaim")
    assert "admin-token" not in one(objects, "Secret")["data"]
    job = one(objects, "Job")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["modelyard", "registry", "migrate"]
    assert len(by_kind(objects, "ServiceMonitor")) == 2 and len(by_kind(objects, "NetworkPolicy")) == 2
    operator_env = {e["name"]: e.get("value") for e in one(objects, "Deployment", "modelyard-operator")["spec"][
        "template"]["spec"]["containers"][0]["env"]}
    assert (operator_env["MODELYARD_MODEL_NETWORK_POLICY"], operator_env["MODELYARD_OPERATOR_NAMESPACE"],
            operator_env["MODELYARD_MODEL_CLIENT_NAMESPACES"]) == ("true", "modelyard", "team=ml,tier=web")
    with pytest.raises(helm.HelmError, match="s3CredentialsSecret"):
        render(MODELYARD, with_images({"registry": {"artifacts": {"url": "s3://models/x"}}}))


def test_modelyard_chart_refuses_to_render_without_images_and_says_how_to_make_them() -> None:
    """No image is published: an install as printed would pull images that exist nowhere (ImagePullBackOff)."""
    with pytest.raises(helm.HelmError, match=r"image.repository is not set: no Modelyard image is published yet.*"
                                             r"make local-cluster"):
        render(MODELYARD, name="modelyard", namespace="modelyard")
    with pytest.raises(helm.HelmError, match=r"operator.runtimeImage.repository is not set.*make local-cluster"):
        render(MODELYARD, {"image": {"repository": "modelyard", "tag": "dev"}}, name="modelyard", namespace="modelyard")
    pod = one(render(MODELYARD, with_images(), name="modelyard", namespace="modelyard"), "Deployment",
              "modelyard-operator")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["containers"][0]["image"] == "localhost/modelyard:test"
    assert env["MODELYARD_RUNTIME_IMAGE"] == "localhost/modelyard-runtime:test"


def test_the_registry_volume_can_be_given_to_its_user_by_an_init_container() -> None:
    """A hostPath or pre-made volume is owned by whoever made it (root): fsGroup does not reach it."""
    plain = one(render(MODELYARD, with_images(), name="modelyard", namespace="modelyard"), "Deployment",
                "modelyard-registry")["spec"]["template"]["spec"]
    assert "initContainers" not in plain and plain["securityContext"]["runAsUser"] == 10001
    objects = render(MODELYARD, with_images({"registry": {"persistence": {"fixOwnership": True}}}), name="modelyard",
                     namespace="modelyard")
    validate_kubernetes(objects)
    (fix,) = one(objects, "Deployment", "modelyard-registry")["spec"]["template"]["spec"]["initContainers"]
    assert fix["command"] == ["chown", "-R", "10001:10001", "/data"]
    assert fix["securityContext"]["runAsUser"] == 0 and fix["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
    assert fix["volumeMounts"] == [{"name": "data", "mountPath": "/data"}]
    external = render(MODELYARD, with_images({"registry": {"persistence": {"fixOwnership": True, "enabled": False}}}),
                      name="modelyard", namespace="modelyard")  # an emptyDir is the pod's own: nothing to fix
    assert "initContainers" not in one(external, "Deployment", "modelyard-registry")["spec"]["template"]["spec"]


def test_modelyard_values_schema_rejects_nonsense() -> None:
    chart = load(MODELYARD)
    for bad in ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, {"registry": {"replicas": -1}},
                {"operator": {"logFormat": "xml"}}, {"registry": {"artifacts": {"url": "ftp://x"}}}):
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(chart.merge_values(bad))


def test_crds_ship_in_the_crds_folder() -> None:
    names = sorted(c["name"] for c in load(MODELYARD).crds)
    assert names == ["crds/kopf-peerings.kopf.dev.yaml", "crds/modeldeployments.modelyard.io.yaml"], names


def test_grpc_opens_a_port_on_the_pods_the_service_and_the_policy_only_when_on() -> None:
    objects = render(MODEL_SERVER, MATRIX["grpc"])
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "grpc", "containerPort": 8081, "protocol": "TCP"} in container["ports"]
    assert {"name": "MODELYARD_GRPC_PORT", "value": "8081"} in container["env"]
    service_ports = one(objects, "Service")["spec"]["ports"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in service_ports] == [("http", 3000, "http"),
                                                                               ("grpc", 8081, "grpc")]
    assert one(objects, "NetworkPolicy")["spec"]["ingress"][0]["ports"] == [{"port": "http", "protocol": "TCP"},
                                                                           {"port": "grpc", "protocol": "TCP"}]
    plain = render(MODEL_SERVER, values(serving={"engine": "torch", "tensor": {"grpc": False}}))
    assert [p["name"] for p in one(plain, "Service")["spec"]["ports"]] == ["http"]
    pod = one(plain, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert [p["name"] for p in pod["ports"]] == ["http"]
    assert "MODELYARD_GRPC_PORT" not in {e["name"] for e in pod["env"]}


def test_verify_reaches_both_containers_with_the_trust_secret_mounted_read_only() -> None:
    pod = one(render(MODEL_SERVER, MATRIX["signed-only"]), "Deployment")["spec"]["template"]["spec"]
    for container in (pod["initContainers"][0], pod["containers"][0]):  # the pull verifies, then serve again
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env["MODELYARD_REQUIRE_SIGNATURE"], env["MODELYARD_SIGNERS"], env["MODELYARD_TRUST_DIR"]) == (
            "true", "team-cv,team-nlp", "/etc/modelyard/trust")
        assert {"name": "trust", "mountPath": "/etc/modelyard/trust", "readOnly": True} in container["volumeMounts"]
    assert {"name": "trust", "secret": {"secretName": "model-signers"}} in pod["volumes"]
    plain = one(render(MODEL_SERVER, values()), "Deployment")["spec"]["template"]["spec"]
    assert not {e["name"] for e in plain["containers"][0]["env"]} & {
        "MODELYARD_REQUIRE_SIGNATURE", "MODELYARD_SIGNERS", "MODELYARD_TRUST_DIR"}
    assert all(v["name"] != "trust" for v in plain["volumes"])


def test_a_pod_gets_only_the_serving_settings_its_values_carry() -> None:
    """The operator fills one engine's section (with defaults), or for a user's own Bento what the spec set:
    the chart renders exactly those keys, so a server never receives a setting it would refuse."""
    def env_of(serving: dict[str, Any]) -> dict[str, str]:
        pod = one(render(MODEL_SERVER, values(serving=serving)), "Deployment")["spec"]["template"]["spec"]
        return {e["name"]: e.get("value") for e in pod["containers"][0]["env"] if e["name"].startswith("MODELYARD_")}

    llm = env_of({"engine": "transformers", "llm": {"maxRunning": 3, "maxWaiting": 7, "prefillTokens": 64,
                                                    "maxModelLen": 128}})
    assert {k: llm[k] for k in ("MODELYARD_LLM_MAX_RUNNING", "MODELYARD_LLM_MAX_WAITING",
                                "MODELYARD_LLM_PREFILL_TOKENS", "MODELYARD_MAX_MODEL_LEN")} == {
        "MODELYARD_LLM_MAX_RUNNING": "3", "MODELYARD_LLM_MAX_WAITING": "7", "MODELYARD_LLM_PREFILL_TOKENS": "64",
        "MODELYARD_MAX_MODEL_LEN": "128"}
    assert not any(k in llm for k in ("MODELYARD_MAX_BATCH_SIZE", "MODELYARD_BATCHING"))
    tensor = env_of({"engine": "torch", "tensor": {"maxBatchSize": 8, "maxLatencyMs": 50, "workers": 2,
                                                   "batching": False}})
    assert (tensor["MODELYARD_MAX_BATCH_SIZE"], tensor["MODELYARD_MAX_LATENCY_MS"], tensor["MODELYARD_SERVE_WORKERS"],
            tensor["MODELYARD_BATCHING"]) == ("8", "50", "2", "off")
    assert not any(k.startswith("MODELYARD_LLM_") for k in tensor)
    own = env_of({"engine": "auto", "tensor": {"maxBatchSize": 16}})  # a user's Bento: only what was set
    assert own["MODELYARD_MAX_BATCH_SIZE"] == "16" and "MODELYARD_MAX_LATENCY_MS" not in own


def test_a_vllm_pod_gets_its_settings_probes_on_health_and_shared_memory() -> None:
    def pod_of(serving: dict[str, Any]) -> dict[str, Any]:
        return one(render(MODEL_SERVER, values(serving=serving)), "Deployment")["spec"]["template"]["spec"]

    pod = pod_of({"engine": "vllm", "shmSize": "2Gi", "llm": {"maxModelLen": 4096},
                  "vllm": {"maxNumSeqs": 64, "cpuKvCacheGiB": 4, "enablePrefixCaching": False,
                           "toolCallParser": "llama3_json", "compactJson": True}})
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"] if e["name"].startswith("MODELYARD_")}
    assert {k: v for k, v in env.items() if k.startswith("MODELYARD_VLLM_")} == {
        "MODELYARD_VLLM_MAX_NUM_SEQS": "64", "MODELYARD_VLLM_CPU_KV_CACHE_GIB": "4",
        "MODELYARD_VLLM_PREFIX_CACHING": "off", "MODELYARD_VLLM_TOOL_CALL_PARSER": "llama3_json",
        "MODELYARD_VLLM_COMPACT_JSON": "on"}
    assert (env["MODELYARD_ENGINE"], env["MODELYARD_MAX_MODEL_LEN"]) == ("vllm", "4096")
    assert {container[probe]["httpGet"]["path"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")} == {
        "/health"}
    (shm,) = [v for v in pod["volumes"] if v["name"] == "shm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]

    ours = pod_of({"engine": "transformers"})
    assert ours["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert not [v for v in ours["volumes"] if v["name"] == "shm"]
    assert not any(e["name"].startswith("MODELYARD_VLLM_") for e in ours["containers"][0]["env"])
