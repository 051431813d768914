"""ModelDeployment spec + resolved version → values for charts/model-server.

Pure: no I/O, no clocks, so the operator's rendering is unit- and property-tested
against the chart's own ``values.schema.json``.  The operator calls it on every
reconcile; equal inputs give equal values, which is what keeps an unchanged
resource from producing a new Helm revision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_RUNTIME_IMAGE = "ghcr.io/modelyard/modelyard-runtime:0.1.0"
DEFAULT_TOKEN_SECRET = "modelyard-registry-token"
DEFAULT_MAX_REQUEST_BYTES = 32 << 20
"""The model server's own default (``modelyard.bentos.config``); tests keep the two, the chart and the CRD equal."""


class SpecError(ValueError):
    """A spec the CRD schema let through but that cannot be rendered (reported as a status reason)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ResolvedVersion:
    """What the registry answered for ``spec.model``."""

    name: str
    version: int
    digest: str = ""
    alias: str = ""


@dataclass(frozen=True)
class OperatorDefaults:
    """The operator's configuration that a spec may override."""

    registry_url: str = "http://modelyard-registry.modelyard:8080"
    token_secret: str = DEFAULT_TOKEN_SECRET
    runtime_image: str = DEFAULT_RUNTIME_IMAGE


REGISTRY_TOKEN_REQUIRED = "RegistryTokenRequired"


@dataclass(frozen=True)
class RegistryAccess:
    """Which registry a ModelDeployment resolves from, and with which credentials.

    The operator's own token goes only to the registry it was configured with: a spec
    naming another registry must name a Secret with a token for it (``spec_token_ref``),
    which the operator reads to resolve and model pods read to pull.
    """

    url: str
    spec_token_ref: Mapping[str, Any] | None
    pod_token_ref: dict[str, str]


def _comparable(url: str) -> tuple[str, str, str]:
    parts = urlsplit(url.strip())
    return parts.scheme.lower(), parts.netloc.lower(), parts.path.rstrip("/")


def registry_access(spec: Mapping[str, Any], defaults: OperatorDefaults) -> RegistryAccess:
    registry = spec.get("registry") or {}
    url = registry.get("url") or defaults.registry_url
    ref = registry.get("tokenSecretRef") or None
    if ref is None and _comparable(url) != _comparable(defaults.registry_url):
        raise SpecError(REGISTRY_TOKEN_REQUIRED,
                        f"spec.registry.url {url} is not this operator's registry ({defaults.registry_url}): name a "
                        "Secret with a token for it in spec.registry.tokenSecretRef (the operator sends its own token "
                        "to its own registry only, and model pods would get a token meant for another registry)")
    pod_ref = ref or {"name": defaults.token_secret, "key": "token"}
    return RegistryAccess(url=url, spec_token_ref=ref,
                          pod_token_ref={"name": str(pod_ref.get("name", "")), "key": str(pod_ref.get("key", "token"))})


def split_image(image: str) -> tuple[str, str]:
    """``repo[:tag]`` → (repository, tag); a registry port is not a tag."""
    head, _, last = image.rpartition("/")
    if ":" in last:
        name, tag = last.split(":", 1)
        return (f"{head}/{name}" if head else name), tag
    return image, ""


def image_values(image: str) -> dict[str, str]:
    if "@" in image:  # the chart joins repository and tag with ":"
        raise SpecError("InvalidImage", f"image {image!r}: pin by tag, not by digest (repository:tag)")
    repository, tag = split_image(image)
    return {"repository": repository, "tag": tag}


def quantity(value: Any) -> str:
    """Kubernetes quantities must be strings in manifests (server-side apply refuses `2`)."""
    if isinstance(value, bool):
        raise SpecError("InvalidResources", f"{value!r} is not a quantity")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def canary_replicas(total: int, weight: int) -> int:
    """Replicas of the new version for a ``weight`` percent canary: at least one."""
    return max(1, math.ceil(total * weight / 100))


def model_server_values(spec: Mapping[str, Any], resolved: ResolvedVersion,
                        defaults: OperatorDefaults = OperatorDefaults(), *,
                        stable: ResolvedVersion | None = None) -> dict[str, Any]:
    """The Helm values for one ModelDeployment.

    ``resolved`` is the version to roll out.  During a Canary rollout, pass the
    version serving now as ``stable``: the chart keeps it as the primary
    Deployment and runs ``resolved`` as the canary at the spec's weight.  Promotion
    is the same call without ``stable``.
    """
    model = spec.get("model") or {}
    if not isinstance(model, Mapping) or not model.get("name"):
        raise SpecError("InvalidSpec", "spec.model.name is required")
    if ("version" in model) == ("alias" in model):
        raise SpecError("InvalidSpec", "spec.model needs exactly one of version or alias")
    if resolved.name != model["name"]:
        raise SpecError("InvalidSpec", f"resolved model {resolved.name!r} is not spec.model.name {model['name']!r}")

    access = registry_access(spec, defaults)
    resources = spec.get("resources") or {}
    serving = spec.get("serving") or {}
    rollout = spec.get("rollout") or {}
    strategy = rollout.get("strategy", "RollingUpdate")
    replicas = int(spec.get("replicas", 1))
    cpu = quantity(resources.get("cpu", "1"))
    memory = quantity(resources.get("memory", "2Gi"))

    values: dict[str, Any] = {
        "model": _model(resolved),
        "registry": {"url": access.url, "tokenSecretRef": access.pod_token_ref},
        "image": {**image_values(spec.get("image") or defaults.runtime_image), "pullPolicy": "IfNotPresent"},
        "replicas": replicas,
        "autoscaling": _autoscaling(spec.get("autoscaling")),
        "resources": {"gpu": int(resources.get("gpu", 0)), "gpuType": resources.get("gpuType", ""),
                      "cpu": cpu, "memory": memory, "cpuLimit": cpu, "memoryLimit": memory},
        "serving": {"maxBatchSize": int(serving.get("maxBatchSize", 32)),
                    "maxLatencyMs": int(serving.get("maxLatencyMs", 1000)),
                    "workers": int(serving.get("workers", 1)),
                    "batching": bool(serving.get("batching", True)),
                    "maxRequestBytes": int(serving.get("maxRequestBytes", DEFAULT_MAX_REQUEST_BYTES))},
        "rollout": {"strategy": strategy,
                    "progressDeadlineSeconds": int(rollout.get("progressDeadlineSeconds", 600))},
        "canary": {"enabled": False, "model": {"version": resolved.version, "digest": resolved.digest},
                   "replicas": 1},
        "cache": {"sizeLimit": "10Gi", "persistentVolumeClaim": {"enabled": False, "claimName": "",
                                                               "storageClassName": "", "size": "20Gi",
                                                               "accessMode": "ReadWriteOnce"}},
        "service": {"type": "ClusterIP", "port": 3000},
        "nodeSelector": dict(spec.get("nodeSelector") or {}),
        "tolerations": [dict(t) for t in spec.get("tolerations") or []],
        "affinity": dict(spec.get("affinity") or {}),
    }
    if values["resources"]["gpu"] < 0:
        raise SpecError("InvalidResources", "resources.gpu must not be negative")
    if values["resources"]["gpuType"] and not values["resources"]["gpu"]:
        raise SpecError("InvalidResources", "resources.gpuType needs resources.gpu of at least 1")

    if strategy == "Canary" and stable is not None and stable.version != resolved.version:
        weight = int((rollout.get("canary") or {}).get("weight", 10))
        total = values["autoscaling"]["minReplicas"] if values["autoscaling"]["enabled"] else replicas
        values["model"] = _model(stable)
        values["canary"] = {"enabled": True, "model": {"version": resolved.version, "digest": resolved.digest},
                            "replicas": canary_replicas(max(total, 1), weight)}
    return values


def _model(version: ResolvedVersion) -> dict[str, Any]:
    return {"name": version.name, "version": version.version, "digest": version.digest, "alias": version.alias}


def _autoscaling(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    if not spec:
        return {"enabled": False, "minReplicas": 1, "maxReplicas": 1, "targetCPUUtilization": 70}
    low, high = int(spec.get("minReplicas", 1)), int(spec["maxReplicas"])
    if high < low:
        raise SpecError("InvalidAutoscaling", f"autoscaling.maxReplicas ({high}) is below minReplicas ({low})")
    return {"enabled": True, "minReplicas": low, "maxReplicas": high,
            "targetCPUUtilization": int(spec.get("targetCPUUtilization", 70))}
