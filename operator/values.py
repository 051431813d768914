"""ModelDeployment spec + resolved version → values for charts/model-server.

Pure: no I/O, no clocks, so the operator's rendering is unit- and property-tested
against the chart's own ``values.schema.json``.  The operator calls it on every
reconcile; equal inputs give equal values, which is what keeps an unchanged
resource from producing a new Helm revision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from kubernetes.utils import parse_quantity

from modelyard.operator.spec import (
    Autoscaling, DeploymentSpec, RegistrySpec, Resources, SecretRef, Serving, SpecError, Strategy,
)
from modelyard.operator.status import Reason
from modelyard.registry.kernel import defaults

REGISTRY_TOKEN_REQUIRED = Reason.REGISTRY_TOKEN_REQUIRED.value


@dataclass(frozen=True)
class ResolvedVersion:
    """What the registry answered for ``spec.model``."""

    name: str
    version: int
    digest: str = ""
    alias: str = ""
    format: str = ""
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)
    """What the registry read from a model directory (``metadata.hf``): context length, memory to load."""


@dataclass(frozen=True)
class OperatorDefaults:
    """The operator's configuration that a spec may override."""

    registry_url: str = defaults.IN_CLUSTER_REGISTRY_URL
    token_secret: str = defaults.TOKEN_SECRET
    runtime_image: str = defaults.RUNTIME_IMAGE
    vllm_runtime_image: str = defaults.VLLM_RUNTIME_IMAGE
    """The runtime image with vLLM (``engine: vllm``); empty: none, and that engine is refused."""
    network_policy: ModelNetworkPolicy | None = None
    """Give each release a NetworkPolicy (None: none, and the values carry no ``networkPolicy`` key, so
    releases made before this setting existed are not upgraded for it)."""


@dataclass(frozen=True)
class ModelNetworkPolicy:
    operator_namespace: str
    client_namespaces: tuple[tuple[str, str], ...] = ()
    """Labels the client namespaces carry; empty: every namespace."""

    def values(self) -> dict[str, Any]:
        return {"enabled": True, "operatorNamespace": self.operator_namespace,
                "clientNamespaceSelector": dict(self.client_namespaces)}


@dataclass(frozen=True)
class RegistryAccess:
    """Which registry a ModelDeployment resolves from, and with which credentials.

    The operator's own token goes only to the registry it was configured with: a spec
    naming another registry must name a Secret with a token for it (``spec_token_ref``),
    which the operator reads to resolve and model pods read to pull.
    """

    url: str
    spec_token_ref: SecretRef | None
    pod_token_ref: dict[str, str]


def _comparable(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def registry_access(registry: RegistrySpec, operator: OperatorDefaults) -> RegistryAccess:
    url = registry.url or operator.registry_url
    ref = registry.token_secret_ref
    if ref is None and _comparable(url) != _comparable(operator.registry_url):
        raise SpecError(REGISTRY_TOKEN_REQUIRED,
                        f"spec.registry.url {url} is not this operator's registry ({operator.registry_url}): name a "
                        "Secret with a token for it in spec.registry.tokenSecretRef (the operator sends its own token "
                        "to its own registry only, and model pods would get a token meant for another registry)")
    pod_ref = ref or SecretRef(name=operator.token_secret)
    return RegistryAccess(url=url, spec_token_ref=ref, pod_token_ref={"name": pod_ref.name, "key": pod_ref.key})


def split_image(image: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repository, tag); a registry port is not a tag."""
    head, _, last = image.rpartition("/")
    if ":" in last:
        name, tag = last.split(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return image, ""


def image_values(image: str) -> dict[str, str]:
    if "@" in image:  # the chart joins repository and tag with ":"
        raise SpecError(Reason.INVALID_IMAGE, f"image {image!r}: pin by tag, not by digest (repository:tag)")
    repository, tag = split_image(image)
    return {"repository": repository, "tag": tag}


def quantity(value: Any) -> str:
    """Kubernetes quantities must be strings in manifests (server-side apply refuses `2`)."""
    if isinstance(value, bool):
        raise SpecError(Reason.INVALID_RESOURCES, f"{value!r} is not a quantity")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def canary_replicas(total: int, weight: int) -> int:
    """Replicas of the new version for a ``weight`` percent canary: at least one."""
    return max(1, math.ceil(total * weight / 100))


def model_server_values(spec: DeploymentSpec, resolved: ResolvedVersion,
                        operator: OperatorDefaults = OperatorDefaults(), *,
                        stable: ResolvedVersion | None = None) -> dict[str, Any]:
    """The Helm values for one ModelDeployment.

    ``resolved`` is the version to roll out.  During a Canary rollout, pass the
    version serving now as ``stable``: the chart keeps it as the primary
    Deployment and runs ``resolved`` as the canary at the spec's weight.  Promotion
    is the same call without ``stable``.
    """
    if resolved.name != spec.model.name:
        raise SpecError(Reason.INVALID_SPEC,
                        f"resolved model {resolved.name!r} is not spec.model.name {spec.model.name!r}")

    access = registry_access(spec.registry, operator)
    resources, serving, rollout = spec.resources, spec.serving, spec.rollout
    cpu = quantity(resources.cpu)
    memory = quantity(resources.memory)
    engine = check_engine(serving, resources, resolved, vllm_image=operator.vllm_runtime_image,
                          own_image=bool(spec.image))
    image = spec.image or (operator.vllm_runtime_image if engine == defaults.VLLM_ENGINE else operator.runtime_image)

    values: dict[str, Any] = {
        "model": _model(resolved),
        "registry": {"url": access.url, "tokenSecretRef": access.pod_token_ref},
        "verify": {"requireSignature": spec.verify.required, "signers": list(spec.verify.signers),
                   "trustSecret": spec.verify.trust_secret},
        "image": {**image_values(image), "pullPolicy": "IfNotPresent"},
        "replicas": spec.replicas,
        "autoscaling": _autoscaling(spec.autoscaling),
        "resources": {"gpu": resources.gpu, "gpuType": resources.gpu_type,
                      "cpu": cpu, "memory": memory, "cpuLimit": cpu, "memoryLimit": memory},
        "serving": serving_values(serving, resources, resolved, engine),
        "rollout": {"strategy": rollout.strategy.value,
                    "progressDeadlineSeconds": rollout.progress_deadline_seconds},
        "canary": {"enabled": False, "model": {"version": resolved.version, "digest": resolved.digest},
                   "replicas": 1},
        "cache": {"sizeLimit": cache_size(resolved, stable),
                  "persistentVolumeClaim": {"enabled": False, "claimName": "", "storageClassName": "", "size": "20Gi",
                                            "accessMode": "ReadWriteOnce"}},
        "service": {"type": "ClusterIP", "port": defaults.MODEL_SERVER_PORT},
        "nodeSelector": dict(spec.node_selector),
        "tolerations": [dict(t) for t in spec.tolerations],
        "affinity": dict(spec.affinity),
    }
    if operator.network_policy is not None:
        values["networkPolicy"] = operator.network_policy.values()
    if resources.gpu < 0:
        raise SpecError(Reason.INVALID_RESOURCES, "resources.gpu must not be negative")
    if resources.gpu_type and not resources.gpu:
        raise SpecError(Reason.INVALID_RESOURCES, "resources.gpuType needs resources.gpu of at least 1")

    if rollout.strategy == Strategy.CANARY and stable is not None and stable.version != resolved.version:
        total = values["autoscaling"]["minReplicas"] if values["autoscaling"]["enabled"] else spec.replicas
        values["model"] = _model(stable)
        values["canary"] = {"enabled": True, "model": {"version": resolved.version, "digest": resolved.digest},
                            "replicas": canary_replicas(max(total, 1), rollout.canary.weight)}
    return values


TENSOR, LLM, VLLM = defaults.TENSOR_ENGINE, defaults.LLM_ENGINE, defaults.VLLM_ENGINE
SERVING_FIELDS: dict[str, tuple[str, tuple[str, ...]]] = {
    # spec.serving field → (its ``Serving`` attribute, the engines that read it)
    "maxBatchSize": ("max_batch_size", (TENSOR,)), "maxLatencyMs": ("max_latency_ms", (TENSOR,)),
    "workers": ("workers", (TENSOR,)), "batching": ("batching", (TENSOR,)), "grpc": ("grpc", (TENSOR,)),
    "maxModelLen": ("max_model_len", (LLM, VLLM)),
    "llm.maxRunning": ("llm.max_running", (LLM,)), "llm.maxWaiting": ("llm.max_waiting", (LLM,)),
    "llm.prefillTokens": ("llm.prefill_tokens", (LLM,)),
    "vllm.gpuMemoryUtilization": ("vllm.gpu_memory_utilization", (VLLM,)),
    "vllm.maxNumSeqs": ("vllm.max_num_seqs", (VLLM,)),
    "vllm.enablePrefixCaching": ("vllm.enable_prefix_caching", (VLLM,)),
    "vllm.cpuKvCacheGiB": ("vllm.cpu_kv_cache_gib", (VLLM,)),
    "vllm.toolCallParser": ("vllm.tool_call_parser", (VLLM,)),
    "vllm.compactJson": ("vllm.compact_json", (VLLM,)),
}
"""The engine-specific fields of ``spec.serving``: a field set for a version another engine serves is refused."""
SERVER_NAMES = {TENSOR: "the tensor server (torch.export, TorchScript)",
                LLM: "the language-model server (engine transformers)", VLLM: "vLLM (engine vllm)"}


def _given(serving: Serving) -> dict[str, Any]:
    """The engine-specific fields the spec sets, by their name in the resource."""
    found = {}
    for name, (attribute, _) in SERVING_FIELDS.items():
        value: Any = serving
        for part in attribute.split("."):
            value = getattr(value, part)
        if value is not None:
            found[name] = value
    return found


def serving_values(serving: Serving, resources: Resources, resolved: ResolvedVersion,
                   engine: str | None) -> dict[str, Any]:
    """The chart's ``serving`` values: the engine that serves ``resolved`` (``check_engine``) and the
    settings of that engine only (with its defaults), or SpecError(InvalidServing) naming a field that
    engine would ignore or that does not apply where it runs.  A version that is its own Bento gets what
    the spec sets for the tensor and language-model servers, for its service to read."""
    label = f"{resolved.name}:{resolved.version} (format {resolved.format})"
    values: dict[str, Any] = {"engine": engine or defaults.ENGINE, "maxRequestBytes": serving.max_request_bytes}
    given = _given(serving)
    own_service = engine is None
    for name in given:
        readers = SERVING_FIELDS[name][1]
        if engine in readers or (own_service and VLLM not in readers) or (engine is not None and not resolved.format):
            continue
        mine = ", ".join(f"serving.{field}" for field, (_, by) in SERVING_FIELDS.items() if engine in by)
        served = f"{SERVER_NAMES[engine]}" if engine else "its own service (format bento)"
        raise SpecError(Reason.INVALID_SERVING,
                        f"serving.{name} is read only by {' and '.join(SERVER_NAMES[r] for r in readers)}; {label} is "
                        f"served by {served}, which would ignore it: remove it"
                        + (f" (that server's settings are {mine})" if mine else ""))
    if engine == VLLM:
        if "vllm.gpuMemoryUtilization" in given and not resources.gpu:
            raise SpecError(Reason.INVALID_SERVING, "serving.vllm.gpuMemoryUtilization applies to GPUs and "
                            "resources.gpu is 0: remove it (on the CPU, serving.vllm.cpuKvCacheGiB sizes the KV cache)")
        if "vllm.cpuKvCacheGiB" in given and resources.gpu:
            raise SpecError(Reason.INVALID_SERVING, "serving.vllm.cpuKvCacheGiB applies on the CPU and "
                            f"resources.gpu is {resources.gpu}: remove it (serving.vllm.gpuMemoryUtilization sizes "
                            "GPU memory)")
    tensor = {name: value for name, value in given.items() if TENSOR in SERVING_FIELDS[name][1]}
    llm = {name: value for name, value in given.items() if LLM in SERVING_FIELDS[name][1]}
    if engine == TENSOR:
        tensor = {"maxBatchSize": defaults.MAX_BATCH_SIZE, "maxLatencyMs": defaults.MAX_LATENCY_MS,
                  "workers": defaults.SERVE_WORKERS, "batching": defaults.BATCHING, **tensor}
    if engine == LLM:
        llm = {"llm.maxRunning": defaults.LLM_MAX_RUNNING, "llm.maxWaiting": defaults.LLM_MAX_WAITING,
               "llm.prefillTokens": defaults.LLM_PREFILL_TOKENS, **llm}
    if tensor and engine in (TENSOR, None):
        values["tensor"] = tensor
    if llm and engine in (LLM, VLLM, None):
        values["llm"] = {name.removeprefix("llm."): value for name, value in llm.items()}
    vllm = {name.removeprefix("vllm."): value for name, value in given.items() if name.startswith("vllm.")}
    if vllm and engine == VLLM:
        values["vllm"] = vllm
    return values


def check_engine(serving: Serving, resources: Resources, resolved: ResolvedVersion, *,
                 vllm_image: str = "", own_image: bool = False) -> str | None:
    """The engine that serves ``resolved`` (None: a version in format ``bento``, its own service, or one
    whose format is not known), or SpecError(InvalidServing) when the spec asks for what it cannot
    do: an engine that does not serve the version's format, vLLM without a vLLM runtime image
    (``vllm_image``, the operator's; or the spec's own image, ``own_image``), a ``maxModelLen`` longer than the
    model's context, or several GPUs for one replica of a model program (only a model directory is
    sharded across GPUs).  ``auto`` picks vLLM for a model directory on GPUs where there is a vLLM
    image (``bentos.pod.settings.auto_engine`` decides the same in the pod)."""
    fmt = resolved.format
    served_by = defaults.ENGINES_OF_FORMAT.get(fmt)
    if serving.engine != "auto" and fmt and (served_by is None or serving.engine not in served_by):
        raise SpecError(Reason.INVALID_SERVING, f"serving.engine {serving.engine} does not serve {resolved.name}:"
                        f"{resolved.version} (format {fmt}); leave it out (auto)"
                        + (f" or pick {' or '.join(served_by)}" if served_by else ""))
    if serving.engine != "auto":
        engine: str | None = serving.engine
    elif (fmt == "hf" and vllm_image and (resources.gpu > 0 or defaults.VLLM_ON_CPU)
          and resolved.facts.get("task", "generate") == "generate"):
        engine = VLLM
    else:
        engine = defaults.ENGINE_OF_FORMAT.get(fmt)
    if engine == VLLM and not (vllm_image or own_image):
        raise SpecError(Reason.INVALID_SERVING, "serving.engine vllm needs a runtime image with vLLM, and this "
                        "operator has none: set the chart's operator.runtimeImages.vllm (the operator's "
                        "--vllm-runtime-image), or spec.image, or use engine transformers")
    if engine == VLLM and resolved.facts.get("task") not in (None, "generate"):
        raise SpecError(Reason.INVALID_SERVING, f"{resolved.name}:{resolved.version} is a "
                        f"{resolved.facts.get('architecture') or 'model'} ({resolved.facts.get('task')}): engine vllm "
                        "serves causal language models here; use engine transformers (or auto)")
    context = resolved.facts.get("context_length")
    if serving.max_model_len is not None and isinstance(context, int) and serving.max_model_len > context:
        raise SpecError(Reason.INVALID_SERVING, f"serving.maxModelLen {serving.max_model_len} is longer than "
                        f"{resolved.name}:{resolved.version}'s context of {context} tokens")
    if resources.gpu > 1 and fmt and fmt != "hf":
        raise SpecError(Reason.INVALID_SERVING, f"resources.gpu {resources.gpu}: a {fmt} program runs on one GPU; "
                        "ask for 1 GPU and more replicas (only format hf models are sharded across GPUs)")
    return engine


CACHE_FLOOR_GI = 10


def cache_size(*versions: ResolvedVersion | None) -> str:
    """The pod's cache volume: 10Gi, or room for a model directory twice (its archive is
    downloaded beside what it extracts to) plus a quarter, for the largest version it may hold."""
    needed = max((v.facts.get("load_bytes") or 0 for v in versions if v is not None), default=0)
    gib = max(CACHE_FLOOR_GI, math.ceil(needed * 2.5 / (1 << 30)))
    return f"{gib}Gi"


def memory_warnings(spec: DeploymentSpec, resolved: ResolvedVersion) -> list[str]:
    """Why a replica's memory may not hold the model: its weights alone, as the registry measured
    them, against ``resources.memory`` (CPU) or nothing checkable (GPU memory is not a resource)."""
    needed = resolved.facts.get("load_bytes")
    if not isinstance(needed, int) or spec.resources.gpu:
        return []
    limit = memory_bytes(spec.resources.memory)
    if limit is None or limit >= needed:
        return []
    return [f"{resolved.name}:{resolved.version} needs {needed:,} bytes for its weights alone, more than "
            f"resources.memory {spec.resources.memory}: the replica will likely be killed for lack of memory"]


def memory_bytes(value: Any) -> int | None:
    """A Kubernetes memory quantity in bytes (the Kubernetes client's parser), or None when it is not one."""
    try:
        return int(parse_quantity(value))
    except ValueError:
        return None


def _model(version: ResolvedVersion) -> dict[str, Any]:
    return {"name": version.name, "version": version.version, "digest": version.digest, "alias": version.alias}


def _autoscaling(spec: Autoscaling | None) -> dict[str, Any]:
    if spec is None:
        return {"enabled": False, "minReplicas": 1, "maxReplicas": 1,
                "targetCPUUtilization": defaults.TARGET_CPU_UTILIZATION}
    low, high = spec.min_replicas, spec.max_replicas
    if high < low:
        raise SpecError(Reason.INVALID_AUTOSCALING, f"autoscaling.maxReplicas ({high}) is below minReplicas ({low})")
    return {"enabled": True, "minReplicas": low, "maxReplicas": high,
            "targetCPUUtilization": spec.target_cpu_utilization}
