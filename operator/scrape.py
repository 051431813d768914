"""Reading the model pods' ``/metrics`` for the canary analysis: every pod at once, each bounded
in time (``defaults.ANALYSIS_SCRAPE_SECONDS``) and size (``defaults.ANALYSIS_SCRAPE_BYTES``).

A pod that does not answer, answers with an error, too much or not Prometheus' format is read as
None: the analysis keeps its last counters and counts what it served at the next reading.
"""

from __future__ import annotations

import asyncio
import logging

import httpx

from modelyard.operator.analysis import Reading, read_exposition
from modelyard.operator.kube import PodTarget
from modelyard.operator.status import PodCounts
from modelyard.registry.kernel import defaults

log = logging.getLogger("modelyard.operator")


def scrape_client() -> httpx.AsyncClient:
    """One client for every read, a connection per read: no idle socket is held to every pod between
    intervals, and keeping them saved no CPU measurably (``benchmarks/analysis_bench.py`` runs both:
    0.74–1.36× the other way round, within this machine's noise)."""
    return httpx.AsyncClient(timeout=defaults.ANALYSIS_SCRAPE_SECONDS,
                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=0))


async def read_pods(http: httpx.AsyncClient, pods: list[PodTarget], *,
                    timeout: float = defaults.ANALYSIS_SCRAPE_SECONDS,
                    limit: int = defaults.ANALYSIS_SCRAPE_BYTES) -> Reading:
    answers = await asyncio.gather(*(_read(http, pod, timeout, limit) for pod in pods))
    return {pod.name: counts for pod, counts in zip(pods, answers, strict=True)}


async def _read(http: httpx.AsyncClient, pod: PodTarget, timeout: float, limit: int) -> PodCounts | None:
    try:
        async with asyncio.timeout(timeout):
            async with http.stream("GET", pod.metrics_url) as answer:
                if answer.status_code != 200:
                    log.info("%s: /metrics answered %s", pod.name, answer.status_code)
                    return None
                body = bytearray()
                async for chunk in answer.aiter_bytes():
                    body += chunk
                    if len(body) > limit:
                        log.warning("%s: /metrics is larger than %d bytes; not read", pod.name, limit)
                        return None
        text = body.decode("utf-8", errors="replace")
        return await asyncio.to_thread(read_exposition, text, pod.track)
    except Exception as error:  # noqa: BLE001 - a pod answers what it likes: any failure is "no reading"
        log.info("%s: /metrics not read: %s", pod.name, error)
        return None
