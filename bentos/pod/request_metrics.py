"""The model requests a server answered, counted on BentoML's own ``/metrics`` in the families of
``registry.kernel.serving_metrics`` (what the operator's canary analysis reads).

One ASGI middleware counts every model route of a server alike (the tensor server's routes, the
Open Inference Protocol's infer, the OpenAI routes; gRPC infer is counted by its service), by the status code the client got and with its latency
up to the last byte of the answer; a handler that raises is counted as the 500 the client sees.
BentoML's own middleware skips the tensor server's fast routes, and its labels differ per route
kind, which is why the servers count themselves.  prometheus_client is imported on first use: BentoML points it
at its multiprocess directory only after the service module is imported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.registry.kernel import serving_metrics as contract


@cache
def _families() -> tuple[Any, Any]:
    from prometheus_client import Counter, Histogram

    requests = Counter(contract.REQUESTS, "Model requests by route and HTTP status code", ["route", "status"])
    seconds = Histogram(contract.DURATION, "Latency of model requests to their last byte", ["route"],
                        buckets=contract.BUCKETS)
    return requests, seconds


@cache
def token_timings() -> tuple[Any, Any]:
    """(time to first token, inter-token latency) histograms of the language-model server."""
    from prometheus_client import Histogram

    return (Histogram(contract.TIME_TO_FIRST_TOKEN, "From a generation request to its first token",
                      buckets=contract.BUCKETS),
            Histogram(contract.INTER_TOKEN_LATENCY, "Between two tokens of one generation",
                      buckets=contract.TOKEN_BUCKETS))


def declare(routes: tuple[str, ...], *, generates: bool = False) -> None:
    """Show the families from the start, at zero (called in the worker once the model is loaded): a
    reader that sees a server before its first request reads zeros here, not BentoML's families."""
    requests, latency = _families()
    for route in routes:
        requests.labels(route, "200")
        latency.labels(route)
    if generates:
        token_timings()


def observe(route: str, status: int, seconds: float) -> None:
    requests, latency = _families()
    requests.labels(route, str(status)).inc()
    latency.labels(route).observe(seconds)


class RequestMetrics:
    """ASGI middleware: counts requests to ``routes`` (exact paths), or those ``label`` names a route
    for (paths that carry a client's words, such as a model name, are counted under one label);
    others pass untouched."""

    def __init__(self, app: ASGIApp, routes: tuple[str, ...] = (),
                 label: Callable[[str], str | None] | None = None) -> None:
        self.app = app
        self.routes = frozenset(routes)
        self.label = label

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        route = path if path in self.routes else self.label(path) if self.label is not None else None
        if scope["type"] != "http" or route is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        finally:
            observe(route, status, time.perf_counter() - started)
