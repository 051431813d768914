"""A ModelDeployment's ``spec``, typed: parsed once where the resource is read, then passed around.

The CRD's schema (charts/modelyard/crds) already refuses wrong types and ranges; these models give
the rest of the operator attribute access with the schema's defaults (``registry.kernel.defaults``), and
turn what the schema cannot express (exactly one of version and alias, a missing field when the
schema was bypassed) into a ``SpecError`` with a reason for the status.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from modelyard.operator.status import Reason
from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.names import ModelRef


class SpecError(ValueError):
    """A spec the operator cannot act on; ``reason`` is the status condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class _Part(BaseModel):
    """camelCase in the resource, snake_case here; fields the schema does not know are ignored
    (the API server prunes them anyway)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True, extra="ignore")


class Strategy(StrEnum):
    ROLLING_UPDATE = "RollingUpdate"
    CANARY = "Canary"


class ModelSelector(_Part):
    name: str = Field(min_length=1)
    version: int | None = None
    alias: str | None = None

    @model_validator(mode="after")
    def _one_of_version_and_alias(self) -> ModelSelector:
        if (self.version is None) == (self.alias is None):
            raise ValueError("spec.model needs exactly one of version or alias")
        return self

    @property
    def ref(self) -> ModelRef:
        return ModelRef(name=self.name, version=self.version, alias=self.alias)


class SecretRef(_Part):
    name: str
    key: str = defaults.TOKEN_SECRET_KEY


class RegistrySpec(_Part):
    url: str | None = None
    token_secret_ref: SecretRef | None = None


class Autoscaling(_Part):
    min_replicas: int = defaults.AUTOSCALING_MIN_REPLICAS
    max_replicas: int
    target_cpu_utilization: int = Field(defaults.TARGET_CPU_UTILIZATION, alias="targetCPUUtilization")


class Resources(_Part):
    gpu: int = defaults.GPU
    gpu_type: str = ""
    cpu: Any = defaults.CPU
    """A Kubernetes quantity: an integer or a string ("500m"); checked by ``values.quantity``."""
    memory: Any = defaults.MEMORY


class LlmServing(_Part):
    """The language-model server's own settings (``serving.llm``); unset: the server's defaults."""

    max_running: int | None = None
    max_waiting: int | None = None
    prefill_tokens: int | None = None


class Serving(_Part):
    """``spec.serving``.  The tensor server's fields and the language-model server's (``llm``,
    ``maxModelLen``) have no schema default: a field is set only when the user set it, so the
    operator can refuse one that the engine serving the version would ignore (``values``)."""

    max_batch_size: int | None = None
    max_latency_ms: int | None = None
    workers: int | None = None
    batching: bool | None = None
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    engine: str = defaults.ENGINE
    max_model_len: int | None = None
    llm: LlmServing = LlmServing()


class CanarySettings(_Part):
    weight: int = defaults.CANARY_WEIGHT
    step_seconds: int = defaults.CANARY_STEP_SECONDS


class RolloutSpec(_Part):
    strategy: Strategy = Strategy(defaults.ROLLOUT_STRATEGY)
    canary: CanarySettings = CanarySettings()
    progress_deadline_seconds: int = defaults.PROGRESS_DEADLINE_SECONDS
    auto_rollback: bool = defaults.AUTO_ROLLBACK


class DeploymentSpec(_Part):
    model: ModelSelector
    registry: RegistrySpec = RegistrySpec()
    image: str | None = None
    replicas: int = defaults.REPLICAS
    autoscaling: Autoscaling | None = None
    resources: Resources = Resources()
    serving: Serving = Serving()
    rollout: RolloutSpec = RolloutSpec()
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] = {}

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> DeploymentSpec:
        """The resource's ``spec``, or ``SpecError(InvalidSpec)`` saying which fields are wrong."""
        try:
            return cls.model_validate(dict(spec or {}))
        except ValidationError as error:
            raise SpecError(Reason.INVALID_SPEC, describe(error)) from None


def describe(error: ValidationError) -> str:
    """Pydantic's errors as one line a user can act on: ``spec.model.name: Field required; …``."""
    parts = []
    for item in error.errors(include_url=False):
        where = ".".join(["spec", *(str(p) for p in item["loc"])])
        message = str(item["msg"]).removeprefix("Value error, ")
        parts.append(message if message.startswith("spec.") else f"{where}: {message}")
    return "; ".join(parts)
