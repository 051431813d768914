"""Serving settings, typed per engine: what every server reads, what the tensor server reads, what
the language-model server reads.

The operator sets them per ModelDeployment on the pod (the chart turns ``spec.serving`` into
``MODELYARD_*`` variables), ``modelyard serve`` from its options; a server reads them when it is
imported (BentoML does not apply a bentofile's ``envs`` to a local ``bentoml serve``).  Each
setting has one row in ``FIELDS``: its section, its variable, and how it is read, so reading
and writing the environment cannot drift apart.  ``IGNORED_BY`` says which sections an engine
does not read, so that a caller can refuse a setting that would change nothing.  Pure: no
BentoML or torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")

TENSOR_ENGINE = defaults.TENSOR_ENGINE
LLM_ENGINE = defaults.LLM_ENGINE
VLLM_ENGINE = defaults.VLLM_ENGINE


@dataclass(frozen=True)
class CommonSettings:
    """What every server reads."""

    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    """Larger bodies get a 413 before they are read (the chart's probe timeouts allow for the rest)."""
    access_log: bool = False
    """BentoML's per-request log line (``MODELYARD_ACCESS_LOG=on``)."""
    threads: int | None = None
    """torch's intra-op threads; None: the CPU limit shared among the workers."""
    gpus: int | None = None
    """GPUs the server uses; None: every GPU this machine shows.  A pod is given an exact count
    (``resources.gpu``), and 0 means the CPU even where a GPU is visible."""


@dataclass(frozen=True)
class TensorSettings:
    """What the tensor server (torch.export, TorchScript) reads: its micro-batching, workers and gRPC port."""

    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_latency_ms: int = defaults.MAX_LATENCY_MS
    """A load-shedding bound, not a batching window (see ``defaults.MAX_LATENCY_MS``)."""
    batching: bool = defaults.BATCHING
    workers: int = defaults.SERVE_WORKERS
    grpc_port: int | None = None
    """The Open Inference Protocol's gRPC port; None: no gRPC server."""


@dataclass(frozen=True)
class LlmSettings:
    """What the language-model server reads: its continuous-batching engine's bounds."""

    max_running: int = defaults.LLM_MAX_RUNNING
    """Sequences generated for at once (rows of the running batch)."""
    max_waiting: int = defaults.LLM_MAX_WAITING
    """Requests that may wait for a row; beyond that a request gets a 429 at once."""
    max_model_len: int | None = None
    """The longest sequence (prompt + completion); None: the model's context, capped by
    ``defaults.LLM_MAX_MODEL_LEN``."""
    prefill_tokens: int = defaults.LLM_PREFILL_TOKENS
    """Padded prompt tokens prefilled together in one step (a longer prompt is prefilled alone)."""


@dataclass(frozen=True)
class VllmSettings:
    """What vLLM's server reads of ours (a small, typed set of its own flags; None: vLLM's default, or
    where it has none, ours in ``defaults``).  ``llm.max_model_len`` is read by vLLM too."""

    gpu_memory_utilization: float | None = None
    """The share of each GPU's memory vLLM may take (``--gpu-memory-utilization``); GPUs only."""
    max_num_seqs: int | None = None
    """Sequences scheduled at once (``--max-num-seqs``)."""
    enable_prefix_caching: bool | None = None
    """Reuse the KV cache of shared prompt prefixes (``--enable-prefix-caching``)."""
    cpu_kv_cache_gib: int | None = None
    """The KV cache on CPU, in GiB (``VLLM_CPU_KVCACHE_SPACE``; default ``defaults.VLLM_CPU_KV_CACHE_GIB``)."""
    tool_call_parser: str | None = None
    """How tool calls are read from the model's text (``--tool-call-parser``, with auto tool choice)."""
    compact_json: bool | None = None
    """Structured output (JSON schemas, named tool calls) without whitespace between JSON tokens, through
    xgrammar: a small model cannot spend its tokens on whitespace and run out before the JSON closes."""


@dataclass(frozen=True)
class ServingSettings:
    """All of a pod's serving settings: the engine, and each section."""

    engine: str = defaults.ENGINE
    common: CommonSettings = field(default_factory=CommonSettings)
    tensor: TensorSettings = field(default_factory=TensorSettings)
    llm: LlmSettings = field(default_factory=LlmSettings)
    vllm: VllmSettings = field(default_factory=VllmSettings)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingSettings:
        """The settings the environment sets (``ValueError`` naming a variable that is wrong)."""
        env = dict(os.environ if env is None else env)
        engine = env.get(Env.ENGINE) or defaults.ENGINE
        if engine not in defaults.ENGINES:
            raise ValueError(f"{Env.ENGINE}={engine!r} is not one of {', '.join(defaults.ENGINES)}")
        sections: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        for row in FIELDS:
            raw = env.get(row.env)
            if raw is not None and raw != "":
                sections[row.section][row.name] = row.parse(raw)
        return cls(engine=engine, **{section: SECTIONS[section](**values) for section, values in sections.items()})

    def to_env(self) -> dict[str, str]:
        """The variables that give these settings back through ``from_env``."""
        env = {Env.ENGINE: self.engine}
        for row in FIELDS:
            value = getattr(getattr(self, row.section), row.name)
            if value is not None:
                env[row.env] = row.show(value)
        return env

    def with_values(self, section: str, **values: Any) -> ServingSettings:
        """A copy with the given fields of one section changed (None: left as it is)."""
        given = {name: value for name, value in values.items() if value is not None}
        return replace(self, **{section: replace(getattr(self, section), **given)}) if given else self

    def bentoml_resources(self) -> dict[str, object]:
        return {"gpu": self.common.gpus} if self.common.gpus else {}


@dataclass(frozen=True)
class _Field:
    section: str
    name: str
    env: str
    kind: type
    minimum: float = 0
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, raw: str) -> Any:
        if self.kind is bool:
            value = raw.lower()
            if value in ("on", "true", "1", "yes"):
                return True
            if value in ("off", "false", "0", "no"):
                return False
            raise ValueError(f"{self.env}={raw!r} is not on or off")
        if self.kind is str:
            if raw not in self.choices:
                raise ValueError(f"{self.env}={raw!r} is not one of {', '.join(self.choices)}")
            return raw
        try:
            number = self.kind(raw)
        except ValueError:
            raise ValueError(f"{self.env}={raw!r} is not {'an integer' if self.kind is int else 'a number'}") from None
        if number != number or number < self.minimum or (self.maximum is not None and number > self.maximum):
            bounds = f"at least {self.minimum:g}" + (f" and at most {self.maximum:g}" if self.maximum else "")
            raise ValueError(f"{self.env}={raw} must be {bounds}")
        return number

    def show(self, value: Any) -> str:
        return ("on" if value else "off") if self.kind is bool else str(value)


FIELDS: tuple[_Field, ...] = (
    _Field("common", "max_request_bytes", Env.MAX_REQUEST_BYTES, int, 1024),
    _Field("common", "access_log", Env.ACCESS_LOG, bool),
    _Field("common", "threads", Env.TORCH_THREADS, int, 1),
    _Field("common", "gpus", Env.GPUS, int, 0),
    _Field("tensor", "max_batch_size", Env.MAX_BATCH_SIZE, int, 1),
    _Field("tensor", "max_latency_ms", Env.MAX_LATENCY_MS, int, 1),
    _Field("tensor", "batching", Env.BATCHING, bool),
    _Field("tensor", "workers", Env.SERVE_WORKERS, int, 1),
    _Field("tensor", "grpc_port", Env.GRPC_PORT, int, 1, 65535),
    _Field("llm", "max_running", Env.LLM_MAX_RUNNING, int, 1),
    _Field("llm", "max_waiting", Env.LLM_MAX_WAITING, int, 0),
    _Field("llm", "max_model_len", Env.MAX_MODEL_LEN, int, 1),
    _Field("llm", "prefill_tokens", Env.LLM_PREFILL_TOKENS, int, 1),
    _Field("vllm", "gpu_memory_utilization", Env.VLLM_GPU_MEMORY_UTILIZATION, float, 0.05, 1.0),
    _Field("vllm", "max_num_seqs", Env.VLLM_MAX_NUM_SEQS, int, 1),
    _Field("vllm", "enable_prefix_caching", Env.VLLM_PREFIX_CACHING, bool),
    _Field("vllm", "cpu_kv_cache_gib", Env.VLLM_CPU_KV_CACHE_GIB, int, 1),
    _Field("vllm", "tool_call_parser", Env.VLLM_TOOL_CALL_PARSER, str, choices=defaults.VLLM_TOOL_CALL_PARSERS),
    _Field("vllm", "compact_json", Env.VLLM_COMPACT_JSON, bool),
)
SECTIONS: dict[str, type] = {"common": CommonSettings, "tensor": TensorSettings, "llm": LlmSettings,
                             "vllm": VllmSettings}
assert {(f.section, f.name) for f in FIELDS} == {
    (section, f.name) for section, kind in SECTIONS.items() for f in fields(kind)}, "a setting without a row"

READ_BY: dict[str, tuple[str, ...]] = {
    TENSOR_ENGINE: ("common", "tensor"),
    LLM_ENGINE: ("common", "llm"),
    VLLM_ENGINE: ("common", "vllm", "llm.max_model_len"),
}
"""What each engine reads: whole sections, or one ``section.name``."""


def reads(engine: str, section: str, name: str) -> bool:
    """Whether ``engine`` reads the setting ``section.name``."""
    read = READ_BY[engine]
    return section in read or f"{section}.{name}" in read


def ignored(settings: ServingSettings, engine: str) -> list[str]:
    """The settings (``section.name``) given a value that ``engine`` would not read."""
    defaults_ = ServingSettings()
    return [f"{row.section}.{row.name}" for row in FIELDS
            if not reads(engine, row.section, row.name)
            and getattr(getattr(settings, row.section), row.name) != getattr(getattr(defaults_, row.section), row.name)]


def engine_for(fmt: str | None, engine: str, *, gpus: int = 0, vllm_available: bool = False,
               task: str | None = None) -> str:
    """The engine that serves a version of format ``fmt``: the one asked for, or for ``auto`` by format
    (for ``hf``, vLLM where it is available and the server has GPUs: ``auto_engine``).  ``ValueError``
    when the engine asked for does not serve the format."""
    served_by = defaults.ENGINES_OF_FORMAT.get(fmt or "")
    if engine == "auto":
        if served_by is None:
            raise ValueError(f"no engine serves format {fmt!r}")
        return auto_engine(fmt or "", gpus=gpus, vllm_available=vllm_available, task=task)
    if served_by is not None and engine not in served_by:
        raise ValueError(f"engine {engine} does not serve format {fmt}: use {' or '.join(served_by)} (or auto)")
    return engine


def auto_engine(fmt: str, *, gpus: int, vllm_available: bool, task: str | None = None) -> str:
    """What ``auto`` picks: vLLM for a causal language model (``task`` generate, or not known) on GPUs where
    vLLM is available (on CPU only where ``defaults.VLLM_ON_CPU`` says so), else the format's own server."""
    if fmt == "hf" and vllm_available and (gpus > 0 or defaults.VLLM_ON_CPU) and task in (None, "generate"):
        return VLLM_ENGINE
    return defaults.ENGINE_OF_FORMAT[fmt]


def gpus_to_use(asked: int | None, visible: int) -> int:
    """The GPUs a server uses: the count the pod was given (0: the CPU, even where one is visible), or
    every visible one when no count was given (a local ``modelyard serve``).  ``ModelLoadError``
    when the pod was given more than it can see."""
    if asked is None:
        return visible
    if asked > visible:
        raise ModelLoadError(f"the server was given {asked} GPU(s) (resources.gpu) but sees {visible or 'none'}: "
                             "is the NVIDIA device plugin running and the runtime image built for CUDA?")
    return asked


def served_settings(settings: ServingSettings, engine: str) -> dict[str, Any]:
    """What a server shows of its settings (``/model``): the engine, and the settings it reads."""
    shown: dict[str, Any] = {"engine": engine}
    for row in FIELDS:
        if reads(engine, row.section, row.name):
            shown.setdefault(row.section, {})[row.name] = getattr(getattr(settings, row.section), row.name)
    return shown


def cpu_limit(cpu_max: Path = CGROUP_CPU_MAX, fallback: int | None = None) -> int:
    """CPUs this container may use: its cgroup quota, else the machine's count.

    torch defaults to one thread per visible core; in a pod limited to 2 CPUs on a
    64-core node that oversubscribes the quota and throttles every request.
    """
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max":
            return max(1, int(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    return max(1, fallback or os.cpu_count() or 1)


def torch_threads(common: CommonSettings, workers: int = 1) -> int:
    """Intra-op threads per worker: the CPU limit shared among the workers."""
    return common.threads or max(1, cpu_limit() // max(1, workers))
