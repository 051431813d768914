"""Serving settings for the generic model service, read from the environment.

BentoML does not apply a bentofile's ``envs`` to a local ``bentoml serve``, and
the operator sets these per ModelDeployment on the pod, so the service reads
them itself when it is imported.  Pure: no BentoML or torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _int(env: dict[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise ValueError(f"{name}={value} must be at least {minimum}")
    return value


def _flag(env: dict[str, str], name: str, default: bool) -> bool:
    """A switch: only an explicit off turns a default-on switch off, and only an explicit on
    turns a default-off switch on."""
    raw = env.get(name, "").lower()
    if not raw:
        return default
    return raw not in ("off", "false", "0", "no") if default else raw in ("on", "true", "1", "yes")


def _choice(env: dict[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = env.get(name) or default
    if raw not in choices:
        raise ValueError(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return raw


@dataclass(frozen=True)
class ServingConfig:
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    max_latency_ms: int = defaults.MAX_LATENCY_MS
    """A load-shedding bound, not a batching window (see ``defaults.MAX_LATENCY_MS``)."""
    batching: bool = defaults.BATCHING
    workers: int = defaults.SERVE_WORKERS
    gpus: int = 0
    threads: int | None = None  # torch intra-op threads; None: from the CPU limit
    access_log: bool = False  # BentoML's per-request log line (MODELYARD_ACCESS_LOG=on)
    max_request_bytes: int = defaults.MAX_REQUEST_BYTES
    """Larger bodies get a 413 before they are read (the chart's probe timeouts allow for the rest)."""
    engine: str = defaults.ENGINE
    max_model_len: int | None = None
    """A language model's longest sequence (prompt + completion); None: the model's own context."""

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingConfig:
        env = dict(os.environ if env is None else env)
        threads = _int(env, Env.TORCH_THREADS, 0)
        return cls(
            max_batch_size=_int(env, Env.MAX_BATCH_SIZE, defaults.MAX_BATCH_SIZE, 1),
            max_latency_ms=_int(env, Env.MAX_LATENCY_MS, defaults.MAX_LATENCY_MS, 1),
            batching=_flag(env, Env.BATCHING, defaults.BATCHING),
            workers=_int(env, Env.SERVE_WORKERS, defaults.SERVE_WORKERS, 1),
            gpus=_int(env, Env.GPUS, 0, 0),
            threads=threads or None,
            access_log=_flag(env, Env.ACCESS_LOG, False),
            max_request_bytes=_int(env, Env.MAX_REQUEST_BYTES, defaults.MAX_REQUEST_BYTES, 1024),
            engine=_choice(env, Env.ENGINE, defaults.ENGINE, defaults.ENGINES),
            max_model_len=_int(env, Env.MAX_MODEL_LEN, 0, 0) or None,
        )

    def bentoml_resources(self) -> dict[str, object]:
        return {"gpu": self.gpus} if self.gpus else {}

    def to_env(self) -> dict[str, str]:
        env = {
            Env.MAX_BATCH_SIZE: str(self.max_batch_size),
            Env.MAX_LATENCY_MS: str(self.max_latency_ms),
            Env.BATCHING: "on" if self.batching else "off",
            Env.SERVE_WORKERS: str(self.workers),
            Env.GPUS: str(self.gpus),
            Env.MAX_REQUEST_BYTES: str(self.max_request_bytes),
        }
        if self.threads:
            env[Env.TORCH_THREADS] = str(self.threads)
        if self.engine != defaults.ENGINE:
            env[Env.ENGINE] = self.engine
        if self.max_model_len:
            env[Env.MAX_MODEL_LEN] = str(self.max_model_len)
        if self.access_log:
            env[Env.ACCESS_LOG] = "on"
        return env


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


def torch_threads(config: ServingConfig, workers: int | None = None) -> int:
    """Intra-op threads per worker: the CPU limit shared among the workers."""
    return config.threads or max(1, cpu_limit() // max(1, workers or config.workers))
