"""One home for defaults: ``modelyard.registry.kernel.defaults``.  The charts' values, the CRD's schema
defaults, the typed configurations and every environment variable name agree with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from modelyard.bentos.pod.settings import ServingSettings
from modelyard.operator.config import OperatorConfig
from modelyard.operator.spec import DeploymentSpec
from modelyard.operator.values import split_image
from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env

ROOT = Path(__file__).resolve().parents[1]
CHARTS = ROOT / "charts"
ENV_NAMES = {value for name, value in vars(Env).items() if name.isupper()}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_the_model_server_charts_values_are_the_defaults() -> None:
    values = load_yaml(CHARTS / "model-server" / "values.yaml")
    assert values["serving"] == {"maxRequestBytes": defaults.MAX_REQUEST_BYTES, "engine": defaults.ENGINE,
                                 "tensor": {}, "llm": {}, "vllm": {},  # each server's own defaults unless set
                                 "shmSize": defaults.VLLM_SHM_SIZE}
    assert values["registry"] == {"url": defaults.IN_CLUSTER_REGISTRY_URL,
                                  "tokenSecretRef": {"name": "", "key": defaults.TOKEN_SECRET_KEY}}
    assert values["replicas"] == defaults.REPLICAS
    assert (values["autoscaling"]["minReplicas"], values["autoscaling"]["targetCPUUtilization"]) == (
        defaults.AUTOSCALING_MIN_REPLICAS, defaults.TARGET_CPU_UTILIZATION)
    resources = values["resources"]
    assert (resources["gpu"], resources["cpu"], resources["memory"]) == (defaults.GPU, defaults.CPU, defaults.MEMORY)
    assert values["rollout"] == {"strategy": defaults.ROLLOUT_STRATEGY,
                                 "progressDeadlineSeconds": defaults.PROGRESS_DEADLINE_SECONDS}
    assert values["service"]["port"] == defaults.MODEL_SERVER_PORT
    assert values["service"]["grpcPort"] == defaults.GRPC_PORT
    helpers = (CHARTS / "model-server" / "templates" / "_helpers.tpl").read_text()  # the pod's gRPC port
    assert f'{{name: MODELYARD_GRPC_PORT, value: "{defaults.GRPC_PORT}"}}' in helpers
    assert f"{{name: grpc, containerPort: {defaults.GRPC_PORT}, protocol: TCP}}" in helpers
    repository, tag = split_image(defaults.RUNTIME_IMAGE)
    assert values["image"]["repository"] == repository
    assert load_yaml(CHARTS / "model-server" / "Chart.yaml")["appVersion"] == tag  # the chart's default tag


def test_the_modelyard_charts_values_are_the_defaults() -> None:
    values = load_yaml(CHARTS / "modelyard" / "values.yaml")
    assert values["registry"]["port"] == defaults.REGISTRY_PORT
    assert values["operator"]["tokenSecretName"] == defaults.TOKEN_SECRET
    assert values["operator"]["clusterName"] == defaults.CLUSTER_NAME
    _, tag = split_image(defaults.RUNTIME_IMAGE)
    # No image is published: the chart has no default one and refuses to render without it (test_charts)
    assert values["image"]["repository"] == values["operator"]["runtimeImage"]["repository"] == ""
    assert load_yaml(CHARTS / "modelyard" / "Chart.yaml")["appVersion"] == tag
    # The chart's registry Service is what the model-server chart (and the operator) default to.
    assert defaults.IN_CLUSTER_REGISTRY_URL == f"http://modelyard-registry.modelyard:{values['registry']['port']}"


def crd_defaults(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every ``default`` in an OpenAPI schema, by its path of property names."""
    found: dict[tuple[str, ...], Any] = {}
    if "default" in schema:
        found[path] = schema["default"]
    for name, child in (schema.get("properties") or {}).items():
        found.update(crd_defaults(child, (*path, name)))
    return found


def model_default(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    """The default of the field at ``path`` (camelCase names, as in the resource)."""
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    info = fields[path[0]]
    if len(path) == 1:
        return info.get_default(call_default_factory=True)
    annotation = info.annotation
    nested = next(t for t in getattr(annotation, "__args__", (annotation,)) if isinstance(t, type)
                  and issubclass(t, BaseModel))
    return model_default(nested, path[1:])


def test_the_crds_defaults_are_the_operators() -> None:
    crd = load_yaml(CHARTS / "modelyard" / "crds" / "modeldeployments.modelyard.io.yaml")
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    found = crd_defaults(spec)
    assert len(found) >= 10  # the walk found the schema's defaults
    for path, value in found.items():
        assert model_default(DeploymentSpec, path) == value, ".".join(path)


def test_the_crds_documented_server_defaults_are_the_servers() -> None:
    """The tensor and language-model fields carry no schema default (so the operator can tell a field the
    user set); their descriptions name the default, which must be the servers' own."""
    crd = load_yaml(CHARTS / "modelyard" / "crds" / "modeldeployments.modelyard.io.yaml")
    serving = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["serving"]
    documented = {name: int(match.group(1)) if match.group(1).isdigit() else match.group(1) == "true"
                  for name, field in {**serving["properties"], **serving["properties"]["llm"]["properties"]}.items()
                  if (match := re.search(r"\(default (\w+)\)", field.get("description", "")))}
    settings = ServingSettings()
    assert documented == {"maxBatchSize": settings.tensor.max_batch_size, "maxLatencyMs": settings.tensor.max_latency_ms,
                          "workers": settings.tensor.workers, "batching": settings.tensor.batching,
                          "grpc": settings.tensor.grpc_port is not None,
                          "maxRunning": settings.llm.max_running, "maxWaiting": settings.llm.max_waiting,
                          "prefillTokens": settings.llm.prefill_tokens}


def test_typed_configurations_start_from_the_defaults() -> None:
    serving = ServingSettings()
    assert (serving.tensor.max_batch_size, serving.tensor.max_latency_ms, serving.tensor.batching,
            serving.tensor.workers, serving.common.max_request_bytes) == (
        defaults.MAX_BATCH_SIZE, defaults.MAX_LATENCY_MS, defaults.BATCHING, defaults.SERVE_WORKERS,
        defaults.MAX_REQUEST_BYTES)
    assert (serving.llm.max_running, serving.llm.max_waiting, serving.llm.prefill_tokens) == (
        defaults.LLM_MAX_RUNNING, defaults.LLM_MAX_WAITING, defaults.LLM_PREFILL_TOKENS)
    assert ServingSettings.from_env({}) == serving
    operator = OperatorConfig()
    assert (operator.registry_url, operator.token_secret, operator.runtime_image, operator.fallback_resolve_seconds,
            operator.failure_retry_seconds) == (defaults.REGISTRY_URL, defaults.TOKEN_SECRET, defaults.RUNTIME_IMAGE,
                                                defaults.FALLBACK_RESOLVE_SECONDS, defaults.FAILURE_RETRY_SECONDS)
    assert OperatorConfig().defaults.registry_url == defaults.REGISTRY_URL


def python_files() -> list[Path]:
    return [p for folder in ("registry", "bentos", "operator", "cli") for p in (ROOT / folder).rglob("*.py")
            if "examples" not in p.parts]  # the examples are user code that stands alone


def test_no_environment_variable_is_named_outside_the_defaults_module() -> None:
    """A bare ``"MODELYARD_…"`` string in code is a second home for a name (help texts may mention them)."""
    spelled = []
    for path in python_files():
        if path == ROOT / "registry" / "kernel" / "defaults.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and re.fullmatch(r"MODELYARD_[A-Z_]+", node.value):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value}")
    assert not spelled, spelled


@pytest.mark.parametrize("folder", ["charts", "docker"])
def test_every_environment_variable_the_deployment_sets_is_known(folder: str) -> None:
    named = set()
    for path in (ROOT / folder).rglob("*"):
        if path.is_file():
            named |= set(re.findall(r"\bMODELYARD_[A-Z_]+\b", path.read_text(errors="replace")))
    assert named, f"no MODELYARD_ variable found under {folder}/"
    assert named <= ENV_NAMES, sorted(named - ENV_NAMES)
