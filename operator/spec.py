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


class VllmServing(_Part):
    """vLLM's settings (``serving.vllm``); unset: vLLM's defaults."""

    gpu_memory_utilization: float | None = None
    max_num_seqs: int | None = None
    enable_prefix_caching: bool | None = None
    cpu_kv_cache_gib: int | None = Field(None, alias="cpuKvCacheGiB")
    tool_call_parser: str | None = None
    compact_json: bool | None = None


class Serving(_Part):
    """``spec.serving``.  The tensor server's fields and the language-model server's (``llm``,
    ``maxModelLen``) have no schema default: a field is set only when the user set it, so the
    operator can refuse one that the engine serving the version would ignore (``values``)."""

    max_batch_size: int | None = None
    max_latency_ms: int | None = None
    workers: int | None = None
    batching: bool | None = None
    grpc: bool | None = None
    """The Open Inference Protocol's gRPC port (``defaults.GRPC_PORT``) on the pods and the Service."""
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    engine: str = defaults.ENGINE
    max_model_len: int | None = None
    llm: LlmServing = LlmServing()
    vllm: VllmServing = VllmServing()


class CanaryAnalysis(_Part):
    """``rollout.canary.analysis``: the canary is judged by the numbers its pods serve.  No schema
    defaults: any field set turns analysis on, and the unset ones take ``defaults``' values."""

    interval_seconds: int | None = None
    samples: int | None = None
    min_requests: int | None = None
    max_error_rate: float | None = None
    max_p99_latency_ms: float | None = None
    """Time to first token for the language-model server; request latency otherwise."""
    max_latency_ratio: float | None = None
    """The canary's p99 over the stable track's, in the same interval."""

    @property
    def enabled(self) -> bool:
        return any(value is not None for value in self.model_dump().values())

    @property
    def interval(self) -> int:
        return self.interval_seconds or defaults.ANALYSIS_INTERVAL_SECONDS

    @property
    def needed(self) -> int:
        return self.samples or defaults.ANALYSIS_SAMPLES

    @property
    def least_requests(self) -> int:
        return defaults.ANALYSIS_MIN_REQUESTS if self.min_requests is None else self.min_requests

    @property
    def error_rate_bound(self) -> float:
        return defaults.ANALYSIS_MAX_ERROR_RATE if self.max_error_rate is None else self.max_error_rate


class FailureAction(StrEnum):
    HOLD = "hold"
    REVERT_ALIAS = "revertAlias"


class PromoteAlias(_Part):
    alias: str = Field(min_length=1)


class CanarySettings(_Part):
    weight: int = defaults.CANARY_WEIGHT
    step_seconds: int = defaults.CANARY_STEP_SECONDS
    analysis: CanaryAnalysis = CanaryAnalysis()
    on_failure: FailureAction = FailureAction(defaults.CANARY_ON_FAILURE)
    promote: PromoteAlias | None = None


class RolloutSpec(_Part):
    strategy: Strategy = Strategy(defaults.ROLLOUT_STRATEGY)
    canary: CanarySettings = CanarySettings()
    progress_deadline_seconds: int = defaults.PROGRESS_DEADLINE_SECONDS
    auto_rollback: bool = defaults.AUTO_ROLLBACK


class VerifySpec(_Part):
    """``spec.verify``: serve only versions signed by the registry's trusted signers (``signers``: one of these)."""

    require_signature: bool = False
    signers: list[str] = []
    trust_secret: str = ""

    @property
    def required(self) -> bool:
        return self.require_signature or bool(self.signers)


class DeploymentSpec(_Part):
    model: ModelSelector
    registry: RegistrySpec = RegistrySpec()
    verify: VerifySpec = VerifySpec()
    image: str | None = None
    replicas: int = defaults.REPLICAS
    autoscaling: Autoscaling | None = None
    resources: Resources = Resources()
    serving: Serving = Serving()
    rollout: RolloutSpec = RolloutSpec()
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, Any]] = []
    affinity: dict[str, Any] = {}

    @model_validator(mode="after")
    def _canary_settings_fit(self) -> DeploymentSpec:
        canary = self.rollout.canary
        if self.rollout.strategy != Strategy.CANARY and (canary.analysis.enabled or canary.promote is not None
                                                         or canary.on_failure != FailureAction.HOLD):
            raise ValueError("spec.rollout.canary.analysis, onFailure and promote need spec.rollout.strategy: Canary")
        if canary.on_failure == FailureAction.REVERT_ALIAS and self.model.alias is None:
            raise ValueError("spec.rollout.canary.onFailure: revertAlias needs spec.model.alias (a pinned version "
                             "has no alias to revert)")
        if canary.promote is not None and (canary.promote.alias == self.model.alias or not canary.analysis.enabled):
            raise ValueError("spec.rollout.canary.promote moves another alias than the one followed, on the evidence "
                             "of an analysis: set spec.rollout.canary.analysis and a different alias")
        return self

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
