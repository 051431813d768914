"""A small async HTTP load generator (aiohttp) shared by the benchmarks: bounded by time or count."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

WARM_UP_REQUESTS = 200
"""Unmeasured requests a benchmark sends each server before its first phase (the same to every peer):
a first phase then measures its work, not a worker's imports and connection pools."""


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (nearest rank below); nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Phase:
    name: str
    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """The ``q`` quantile of the latencies, in ms."""
        return percentile(self.latencies, q) * 1000


async def run_timed(session: aiohttp.ClientSession, name: str, requests: list[tuple[str, str, dict[str, Any]]],
                    concurrency: int, seconds: float, examples_per_request: int = 1) -> Phase:
    """Send ``requests`` round-robin for ``seconds`` with ``concurrency`` workers.

    ``ops`` counts examples (``examples_per_request`` per successful request).
    """
    phase = Phase(name)
    deadline = time.perf_counter() + seconds

    async def worker(offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            method, url, kwargs = requests[i % len(requests)]
            t0 = time.perf_counter()
            async with session.request(method, url, **kwargs) as response:
                await response.read()
                if response.status >= 400:
                    phase.errors += 1
                else:
                    phase.ops += examples_per_request
            phase.latencies.append(time.perf_counter() - t0)
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(k * 7) for k in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase
