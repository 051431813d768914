"""OpenAI's API over a loaded model: ``/chat/completions``, ``/completions``, ``/embeddings``,
``/models`` (mounted under ``/v1``), and ``/engine/stats`` for operators and tests.

A plain Starlette app on the BentoML service (same process, port, probes and metrics):
BentoML's own API layer would buffer a stream and validate with its schemas, while
OpenAI's clients expect its exact shapes, server-sent events and error bodies.  Every
request is checked (``protocol``) and tokenized off the event loop; a request the model
cannot take (too long for its context, more tokens than fit) is a 400 in OpenAI's shape,
a full queue a 429.  Generation goes through the engine (``engine_client.EngineClient``:
continuous batching); embeddings through a micro-batcher, so concurrent requests share
forward passes.  Each route family has its module; this one maps errors and assembles them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.bentos.llm.api import chat, completions, embeddings, models, stats
from modelyard.bentos.llm.api.common import Served, error_response
from modelyard.bentos.llm.engine_client import GenerationFailed, Overloaded
from modelyard.bentos.llm.protocol import ApiError

Handler = Callable[[Request, Served], Awaitable[Response]]


def build_llm_app(served_ref: Callable[[], Served | None]) -> Starlette:
    """The ASGI app; ``served_ref()`` returns the loaded model once the service has it."""

    def route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            served = served_ref()
            if served is None:
                return error_response(ApiError(503, "the model is still loading", kind="server_error", code="loading"))
            try:
                return await handler(request, served)
            except ApiError as exc:
                return error_response(exc)
            except Overloaded as exc:
                return error_response(ApiError(429, str(exc), kind="server_error", code="overloaded"))
            except GenerationFailed as exc:
                return error_response(ApiError(500, str(exc), kind="server_error", code="generation_failed"))

        return wrapped

    return Starlette(routes=[
        Route("/models", route(models.list_models), methods=["GET"]),
        Route("/chat/completions", route(chat.create_chat_completion), methods=["POST"]),
        Route("/completions", route(completions.create_completion), methods=["POST"]),
        Route("/embeddings", route(embeddings.create_embeddings), methods=["POST"]),
        Route("/engine/stats", route(stats.engine_stats), methods=["GET"]),
    ])
