"""modelyard.operator.values: ModelDeployment spec + resolved version → model-server chart values.

Property-based: every spec the CRD accepts yields values the chart's own schema accepts,
and (on a sample) that real Helm renders into valid Kubernetes objects."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelyard.operator.spec import DeploymentSpec, RegistrySpec, SecretRef, SpecError
from modelyard.operator.values import (
    REGISTRY_TOKEN_REQUIRED,
    ModelNetworkPolicy,
    OperatorDefaults,
    ResolvedVersion,
    canary_replicas,
    model_server_values,
    registry_access,
    split_image,
)
from tests.support.charts import MODEL_SERVER, load, one, render, validate_kubernetes, values_schema
from tests.test_crd_schema import SCHEMA as CRD_SCHEMA

DIGEST = "sha256:" + "0f" * 32
CHART_SCHEMA = jsonschema.Draft7Validator(values_schema(MODEL_SERVER))
CRD = jsonschema.Draft7Validator(CRD_SCHEMA)

names = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")
cpus = st.one_of(st.integers(1, 64), st.sampled_from(["500m", "1", "2", "0.5", "16"]))
memories = st.sampled_from(["512Mi", "1Gi", "8Gi", "80Gi", "1024M"])
label_values = st.from_regex(r"\A[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?\Z")


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    model: dict[str, Any] = {"name": draw(names)}
    if draw(st.booleans()):
        model["version"] = draw(st.integers(1, 10_000))
    else:
        model["alias"] = draw(st.sampled_from(["production", "staging", "canary", "v2.1"]))
    spec: dict[str, Any] = {"model": model}
    if draw(st.booleans()):
        spec["replicas"] = draw(st.integers(0, 50))
    if draw(st.booleans()):
        low = draw(st.integers(1, 10))
        spec["autoscaling"] = {"minReplicas": low, "maxReplicas": draw(st.integers(low, 40)),
                               "targetCPUUtilization": draw(st.integers(1, 100))}
    if draw(st.booleans()):
        gpu = draw(st.integers(0, 8))
        resources: dict[str, Any] = {"gpu": gpu, "cpu": draw(cpus), "memory": draw(memories)}
        if gpu and draw(st.booleans()):
            resources["gpuType"] = draw(st.sampled_from(["nvidia-h100-80gb", "NVIDIA-A100-SXM4-80GB", "tesla-t4"]))
        spec["resources"] = resources
    if draw(st.booleans()):
        spec["serving"] = {"maxBatchSize": draw(st.integers(1, 1024)), "maxLatencyMs": draw(st.integers(1, 60_000)),
                           "workers": draw(st.integers(1, 8)), "batching": draw(st.booleans())}
    if draw(st.booleans()):
        spec["rollout"] = {"strategy": draw(st.sampled_from(["RollingUpdate", "Canary"])),
                           "canary": {"weight": draw(st.integers(1, 99)), "stepSeconds": draw(st.integers(1, 600))},
                           "progressDeadlineSeconds": draw(st.integers(1, 3600)),
                           "autoRollback": draw(st.booleans())}
        if spec["rollout"]["strategy"] == "Canary" and draw(st.booleans()):  # analysis changes no values
            spec["rollout"]["canary"]["analysis"] = {
                "intervalSeconds": draw(st.integers(1, 3600)), "samples": draw(st.integers(1, 1000)),
                "minRequests": draw(st.integers(0, 10_000)), "maxErrorRate": draw(st.floats(0, 1)),
                "maxP99LatencyMs": draw(st.floats(1, 1e6)), "maxLatencyRatio": draw(st.floats(0.01, 100))}
            if "alias" in model:
                spec["rollout"]["canary"]["onFailure"] = draw(st.sampled_from(["hold", "revertAlias"]))
                spec["rollout"]["canary"]["promote"] = {"alias": model["alias"] + "-next"}
    if draw(st.booleans()):
        spec["registry"] = {"url": "https://registry.example.com",
                            "tokenSecretRef": {"name": draw(names), "key": "token"}}
    if draw(st.booleans()):
        spec["image"] = draw(st.sampled_from(["registry.local:5000/runtime:1.2", "runtime", "ghcr.io/a/b:latest"]))
    if draw(st.booleans()):
        spec["nodeSelector"] = draw(st.dictionaries(names, label_values, max_size=3))
    if draw(st.booleans()):
        spec["tolerations"] = [{"key": draw(names), "operator": "Exists", "effect": "NoSchedule"}]
    return spec


def values_of(spec: dict[str, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The values for a spec as the resource spells it (parsed the way the operator parses it)."""
    return model_server_values(DeploymentSpec.parse(spec), *args, **kwargs)


def resolved_for(spec: dict[str, Any], version: int = 5) -> ResolvedVersion:
    model = spec["model"]
    return ResolvedVersion(model["name"], model.get("version", version), DIGEST, model.get("alias", ""))


@settings(max_examples=300, deadline=None)
@given(spec=specs(), stable_version=st.one_of(st.none(), st.integers(1, 10_000)))
def test_every_valid_spec_gives_values_the_chart_schema_accepts(spec: dict[str, Any],
                                                                 stable_version: int | None) -> None:
    document = {"apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "x"},
                "spec": spec}
    assert not list(CRD.iter_errors(document))  # the generator only makes specs the CRD accepts
    resolved = resolved_for(spec)
    stable = None if stable_version is None else ResolvedVersion(resolved.name, stable_version)
    values = values_of(spec, resolved, stable=stable)
    problems = [e.message for e in CHART_SCHEMA.iter_errors(values)]
    assert not problems, problems
    assert values == values_of(spec, resolved, stable=stable)  # pure: same in, same out
    assert values["resources"]["gpu"] == spec.get("resources", {}).get("gpu", 0)
    assert all(isinstance(values["resources"][k], str) for k in ("cpu", "memory", "cpuLimit", "memoryLimit"))
    if values["canary"]["enabled"]:
        assert values["model"]["version"] == stable_version and values["canary"]["model"]["version"] == resolved.version
        assert 1 <= values["canary"]["replicas"]
    else:
        assert values["model"]["version"] == resolved.version


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=specs())
def test_sampled_specs_render_with_real_helm_into_valid_objects(spec: dict[str, Any]) -> None:
    values = values_of(spec, resolved_for(spec))
    chart = load(MODEL_SERVER)
    chart.validate_schema(chart.merge_values(values))
    objects = render(MODEL_SERVER, values, name="md")
    validate_kubernetes(objects)
    pod = one(objects, "Deployment", "md")["spec"]["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    gpu = spec.get("resources", {}).get("gpu", 0)
    assert limits.get("nvidia.com/gpu") == (str(gpu) if gpu else None)


def test_design_example() -> None:
    spec = {"model": {"name": "digits-cnn", "alias": "production"},
            "registry": {"url": "http://modelyard-registry.modelyard:8080",
                         "tokenSecretRef": {"name": "registry-token", "key": "token"}},
            "replicas": 2, "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetCPUUtilization": 70},
            "resources": {"gpu": 1, "gpuType": "nvidia-h100-80gb", "cpu": "2", "memory": "8Gi"},
            "serving": {"maxBatchSize": 32, "maxLatencyMs": 10, "workers": 1},
            "rollout": {"strategy": "RollingUpdate", "progressDeadlineSeconds": 600, "autoRollback": True},
            "image": "ghcr.io/acme/modelyard-runtime:0.1.0"}
    values = values_of(spec, ResolvedVersion("digits-cnn", 7, DIGEST, "production"))
    assert values["model"] == {"name": "digits-cnn", "version": 7, "digest": DIGEST, "alias": "production"}
    assert values["image"] == {"repository": "ghcr.io/acme/modelyard-runtime", "tag": "0.1.0",
                               "pullPolicy": "IfNotPresent"}
    assert values["autoscaling"] == {"enabled": True, "minReplicas": 1, "maxReplicas": 8, "targetCPUUtilization": 70}
    assert values["resources"]["gpu"] == 1 and values["resources"]["gpuType"] == "nvidia-h100-80gb"
    assert values["serving"]["tensor"]["maxLatencyMs"] == 10
    assert values["registry"]["tokenSecretRef"] == {"name": "registry-token", "key": "token"}
    assert values["canary"]["enabled"] is False


def test_operator_defaults_fill_what_the_spec_leaves_out() -> None:
    defaults = OperatorDefaults(registry_url="http://reg:8080", token_secret="tok", runtime_image="rt:9")
    values = values_of({"model": {"name": "m", "version": 2}}, ResolvedVersion("m", 2), defaults)
    assert values["registry"] == {"url": "http://reg:8080", "tokenSecretRef": {"name": "tok", "key": "token"}}
    assert values["image"]["repository"] == "rt" and values["image"]["tag"] == "9"
    assert values["replicas"] == 1 and values["resources"]["gpu"] == 0


def test_an_operator_with_network_policies_gives_each_release_one_that_admits_it() -> None:
    spec = {"model": {"name": "m", "version": 2}}
    assert "networkPolicy" not in values_of(spec, ResolvedVersion("m", 2))  # releases made without it stay as they are
    policy = ModelNetworkPolicy("platform", (("team", "ml"),))
    values = values_of(spec, ResolvedVersion("m", 2), OperatorDefaults(network_policy=policy))
    assert values["networkPolicy"] == {"enabled": True, "operatorNamespace": "platform",
                                       "clientNamespaceSelector": {"team": "ml"}}
    objects = render(MODEL_SERVER, values)
    validate_kubernetes(objects)
    assert one(objects, "NetworkPolicy")["spec"]["ingress"][0]["from"][0]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": "platform"}}


def test_canary_runs_the_new_version_beside_the_stable_one() -> None:
    spec = {"model": {"name": "m", "alias": "production"}, "replicas": 10,
            "rollout": {"strategy": "Canary", "canary": {"weight": 25}}}
    values = values_of(spec, ResolvedVersion("m", 8, DIGEST), stable=ResolvedVersion("m", 7, DIGEST))
    assert values["model"]["version"] == 7
    assert values["canary"] == {"enabled": True, "model": {"version": 8, "digest": DIGEST}, "replicas": 3}
    promoted = values_of(spec, ResolvedVersion("m", 8, DIGEST))
    assert promoted["model"]["version"] == 8 and promoted["canary"]["enabled"] is False
    rolling = {**spec, "rollout": {"strategy": "RollingUpdate"}}
    assert not values_of(rolling, ResolvedVersion("m", 8), stable=ResolvedVersion("m", 7))["canary"]["enabled"]
    assert [canary_replicas(n, 10) for n in (1, 5, 10, 11)] == [1, 1, 1, 2]


@pytest.mark.parametrize("spec, reason", [
    ({"model": {"name": "m"}}, "InvalidSpec"),
    ({"model": {"name": "m", "version": 1, "alias": "a"}}, "InvalidSpec"),
    ({"model": {"name": "m", "version": 1}, "resources": {"gpu": 0, "gpuType": "h100", "cpu": "1",
                                                         "memory": "1Gi"}}, "InvalidResources"),
    ({"model": {"name": "m", "version": 1}, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
     "InvalidAutoscaling"),
    ({"model": {"name": "m", "version": 1}, "image": "runtime@sha256:abc"}, "InvalidImage"),
    ({"model": {"name": "m", "version": 1}, "registry": {"url": "https://elsewhere.example"}},
     "RegistryTokenRequired"),
])
def test_specs_that_cannot_render_say_why(spec: dict[str, Any], reason: str) -> None:
    with pytest.raises(SpecError) as caught:
        values_of(spec, ResolvedVersion("m", 1))
    assert caught.value.reason == reason and str(caught.value)


def test_the_operators_token_goes_to_its_own_registry_only() -> None:
    defaults = OperatorDefaults(registry_url="http://modelyard-registry.modelyard:8080", token_secret="pull")
    own = registry_access(RegistrySpec(url="HTTP://Modelyard-Registry.modelyard:8080/"), defaults)
    assert own.spec_token_ref is None and own.pod_token_ref == {"name": "pull", "key": "token"}
    assert registry_access(RegistrySpec(), defaults).url == defaults.registry_url
    with pytest.raises(SpecError, match="tokenSecretRef") as caught:
        registry_access(RegistrySpec(url="http://attacker.example:8080"), defaults)
    assert caught.value.reason == REGISTRY_TOKEN_REQUIRED
    ref = SecretRef(name="their-token", key="value")
    foreign = registry_access(RegistrySpec(url="http://other.example", token_secret_ref=ref), defaults)
    assert foreign.spec_token_ref == ref and foreign.pod_token_ref == {"name": "their-token", "key": "value"}


def test_resolved_model_must_match_the_spec() -> None:
    with pytest.raises(SpecError, match="is not spec.model.name"):
        values_of({"model": {"name": "a", "version": 1}}, ResolvedVersion("b", 1))


@pytest.mark.parametrize("image, expected", [
    ("ghcr.io/a/runtime:1.2", ("ghcr.io/a/runtime", "1.2")),
    ("registry.local:5000/runtime", ("registry.local:5000/runtime", "")),
    ("registry.local:5000/runtime:7", ("registry.local:5000/runtime", "7")),
    ("runtime", ("runtime", "")),
])
def test_split_image(image: str, expected: tuple[str, str]) -> None:
    assert split_image(image) == expected
