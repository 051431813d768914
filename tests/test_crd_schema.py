"""The ModelDeployment CRD: its OpenAPI schema accepts good documents and refuses bad ones
(checked here with jsonschema; tests/test_cluster_charts.py checks the API server agrees)."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest
import yaml

from tests.support.charts import MODELYARD

CRD = yaml.safe_load((MODELYARD / "crds" / "modeldeployments.modelyard.io.yaml").read_text())
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]

GOOD = {
    "apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment",
    "metadata": {"name": "digits", "namespace": "ml"},
    "spec": {
        "model": {"name": "digits-cnn", "alias": "production"},
        "registry": {"url": "http://modelyard-registry.modelyard:8080",
                     "tokenSecretRef": {"name": "registry-token", "key": "token"}},
        "replicas": 2,
        "autoscaling": {"minReplicas": 1, "maxReplicas": 8, "targetCPUUtilization": 70},
        "resources": {"gpu": 1, "gpuType": "nvidia-h100-80gb", "cpu": "2", "memory": "8Gi"},
        "serving": {"maxBatchSize": 32, "maxLatencyMs": 10, "workers": 1},
        "rollout": {"strategy": "RollingUpdate", "canary": {"weight": 10, "stepSeconds": 60},
                    "progressDeadlineSeconds": 600, "autoRollback": True},
        "image": "ghcr.io/modelyard/modelyard-runtime:0.1.0",
        "nodeSelector": {}, "tolerations": [], "affinity": {},
    },
}


def document(**spec_changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    for dotted, value in spec_changes.items():
        target = doc["spec"]
        *path, last = dotted.split("__")
        for key in path:
            target = target.setdefault(key, {})
        if value is _DELETE:
            target.pop(last, None)
        else:
            target[last] = value
    return doc


_DELETE = object()


def errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


@pytest.mark.parametrize("doc", [
    GOOD,
    document(model={"name": "digits-cnn", "version": 3}),
    document(resources={"cpu": 2, "memory": "512Mi"}, autoscaling=_DELETE),  # an integer CPU is a quantity
    document(rollout={"strategy": "Canary", "canary": {"weight": 25, "stepSeconds": 30}}),
    {"apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "m"},
     "spec": {"model": {"name": "m", "version": 1}}},
], ids=["design-example", "fixed-version", "int-cpu", "canary", "minimal"])
def test_good_documents_are_accepted(doc: dict[str, Any]) -> None:
    assert errors(doc) == []


@pytest.mark.parametrize("doc, where", [
    (document(model={"name": "digits-cnn", "version": 3, "alias": "production"}), "model"),
    (document(model={"name": "digits-cnn"}), "model"),
    (document(replicas=-1), "replicas"),
    (document(resources__gpu="2"), "resources.gpu"),
    (document(resources__gpu=-1), "resources.gpu"),
    (document(rollout__strategy="BlueGreen"), "rollout.strategy"),
    (document(rollout__canary__weight=100), "rollout.canary.weight"),
    (document(serving__maxBatchSize=0), "serving.maxBatchSize"),
    (document(serving__llm__maxRunning=0), "serving.llm.maxRunning"),
    (document(serving__llm__prefillTokens="many"), "serving.llm.prefillTokens"),
    (document(model={"name": "", "version": 1}), "model.name"),
    (document(model={"name": "x", "version": 0}), "model.version"),
    (document(resources__memory="lots"), "resources.memory"),
    (document(autoscaling__targetCPUUtilization=150), "autoscaling.targetCPUUtilization"),
    (document(registry__url="ftp://registry"), "registry.url"),
    (document(model={"name": "x", "alias": "Prod Alias"}), "model.alias"),
], ids=["version-and-alias", "neither", "negative-replicas", "gpu-string", "gpu-negative", "unknown-strategy",
        "weight-100", "batch-0", "llm-running-0", "llm-prefill-string", "empty-name", "version-0", "bad-memory", "cpu-150", "ftp-registry", "bad-alias"])
def test_bad_documents_are_refused(doc: dict[str, Any], where: str) -> None:
    found = errors(doc)
    assert found and any(e.startswith(f"spec.{where}") for e in found), found


def test_crd_shape_for_kubectl() -> None:
    assert CRD["spec"]["names"]["shortNames"] == ["md"]
    assert CRD["spec"]["scope"] == "Namespaced" and VERSION["name"] == "v1alpha1"
    assert VERSION["subresources"]["status"] == {}
    assert VERSION["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    columns = [c["name"].upper() for c in VERSION["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["MODEL", "VERSION", "PHASE", "READY", "AGE"]
    phases = SCHEMA["properties"]["status"]["properties"]["phase"]["enum"]
    assert phases == ["Pending", "Resolving", "Packaging", "RollingOut", "Ready", "Degraded", "Failed"]


def test_the_quickstarts_suggestion_is_a_valid_model_deployment() -> None:
    from modelyard.bentos.quickstart import deployment_yaml

    assert errors(yaml.safe_load(deployment_yaml(3))) == []


def test_every_schema_node_uses_only_known_keywords() -> None:
    """A stray comma in a YAML flow mapping once turned half a description into a keyword,
    and a real API server refused the CRD; every node must use JSONSchemaProps keywords only."""
    known = {"type", "description", "properties", "items", "required", "oneOf", "anyOf", "enum", "default",
             "minimum", "maximum", "minLength", "maxLength", "pattern", "format", "maxItems",
             "additionalProperties", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields"}

    def walk(node: Any, path: str) -> None:
        assert isinstance(node, dict), path
        assert set(node) <= known, f"{path}: {set(node) - known}"
        for name, child in (node.get("properties") or {}).items():
            walk(child, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key], f"{path}.{key}")
        for key in ("oneOf", "anyOf"):
            for i, child in enumerate(node.get(key) or []):
                walk(child, f"{path}.{key}[{i}]")

    walk(SCHEMA, "")
