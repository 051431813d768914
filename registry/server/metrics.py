"""Prometheus metrics: request counts and latencies by route template (never by raw
path, which would let clients create unbounded label values)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.registry.store.read_cache import ReadCache


class RegistryMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("modelyard_registry_requests_total", "HTTP requests",
                                ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("modelyard_registry_request_seconds", "HTTP request latency",
                                 ["method", "route"], registry=self.registry,
                                 buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60))
        self.artifact_bytes = Counter("modelyard_registry_artifact_bytes_total", "Artifact bytes moved",
                                      ["direction"], registry=self.registry)
        self.events = Counter("modelyard_registry_events_total", "Change events committed by this process",
                              registry=self.registry)

    def watch_read_cache(self, cache: ReadCache) -> None:
        self.registry.register(_ReadCacheCollector(cache))

    def render(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class _ReadCacheCollector(Collector):
    """The read cache's figures, read when scraped (nothing to update on the hot path)."""

    def __init__(self, cache: ReadCache) -> None:
        self.cache = cache

    def collect(self) -> Iterable[Any]:
        yield GaugeMetricFamily("modelyard_registry_read_cache_live", "1 while this replica hears every replica's "
                                "changes and serves hot reads from its cache (PostgreSQL)", value=int(self.cache.live))
        yield GaugeMetricFamily("modelyard_registry_read_cache_entries", "Answers held", value=len(self.cache))
        yield CounterMetricFamily("modelyard_registry_read_cache_hits", "Reads answered by the cache",
                                  value=self.cache.hits)
        yield CounterMetricFamily("modelyard_registry_read_cache_misses", "Reads the cache could have answered "
                                  "and did not (not held, or expired)", value=self.cache.misses)


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task or body wrapping, unlike BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, metrics: RegistryMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route: Any = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope["method"]
            self.metrics.requests.labels(method, template, str(status)).inc()
            self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
