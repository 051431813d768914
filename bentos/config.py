"""Serving settings for the generic model service, read from the environment.

BentoML does not apply a bentofile's ``envs`` to a local ``bentoml serve``, and
the operator sets these per ModelDeployment on the pod, so the service reads
them itself when it is imported.  Pure: no BentoML or torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
DEFAULT_MAX_REQUEST_BYTES = 32 << 20


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


@dataclass(frozen=True)
class ServingConfig:
    max_batch_size: int = 32
    # BentoML answers 503 ("overloaded") to requests it cannot serve within this, so it is
    # a load-shedding bound, not a batching window: 10 ms shed 80% of single requests at
    # concurrency 32 on 2 cores (benchmarks/serving_bench.py), 1000 ms none.
    max_latency_ms: int = 1000
    batching: bool = True
    workers: int = 1
    gpus: int = 0
    threads: int | None = None  # torch intra-op threads; None: from the CPU limit
    access_log: bool = False  # BentoML's per-request log line (MODELYARD_ACCESS_LOG=on)
    # Larger request bodies get a 413 before they are read: a JSON body is parsed on the
    # event loop at about 50 ms per MB, so this bounds how long one request can hold the
    # probes (benchmarks/serving_bench.py; the chart's probe timeouts allow for it).
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServingConfig:
        env = dict(os.environ if env is None else env)
        threads = _int(env, "MODELYARD_TORCH_THREADS", 0)
        return cls(
            max_batch_size=_int(env, "MODELYARD_MAX_BATCH_SIZE", 32, 1),
            max_latency_ms=_int(env, "MODELYARD_MAX_LATENCY_MS", 1000, 1),
            batching=env.get("MODELYARD_BATCHING", "on").lower() not in ("off", "false", "0", "no"),
            workers=_int(env, "MODELYARD_SERVE_WORKERS", 1, 1),
            gpus=_int(env, "MODELYARD_GPUS", 0, 0),
            threads=threads or None,
            access_log=env.get("MODELYARD_ACCESS_LOG", "off").lower() in ("on", "true", "1", "yes"),
            max_request_bytes=_int(env, "MODELYARD_MAX_REQUEST_BYTES", DEFAULT_MAX_REQUEST_BYTES, 1024),
        )

    def bentoml_resources(self) -> dict[str, object]:
        return {"gpu": self.gpus} if self.gpus else {}

    def to_env(self) -> dict[str, str]:
        env = {
            "MODELYARD_MAX_BATCH_SIZE": str(self.max_batch_size),
            "MODELYARD_MAX_LATENCY_MS": str(self.max_latency_ms),
            "MODELYARD_BATCHING": "on" if self.batching else "off",
            "MODELYARD_SERVE_WORKERS": str(self.workers),
            "MODELYARD_GPUS": str(self.gpus),
            "MODELYARD_MAX_REQUEST_BYTES": str(self.max_request_bytes),
        }
        if self.threads:
            env["MODELYARD_TORCH_THREADS"] = str(self.threads)
        if self.access_log:
            env["MODELYARD_ACCESS_LOG"] = "on"
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
