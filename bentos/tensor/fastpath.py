"""A lean prediction route beside BentoML's: ``POST /v2/predict``.

BentoML's API path costs about 1.5 ms of CPU per request on this hardware
(pydantic models, serde, tracing), which caps a small model at ~600 single
requests/s on 2 cores however fast the model is.  This route is a plain ASGI
app mounted on the same BentoML service (same process, model, port, probes,
metrics: ``pod.request_metrics`` counts it like every model route): orjson or a
binary ``.npy`` body in, the same exact-shape check, and its own micro-batcher that gathers concurrent requests into one forward pass
(a request of more than ``max_batch_size`` examples goes straight to the model).

Bodies: ``application/json`` ``{"inputs": [...]}`` → ``{"outputs": [...]}``;
``application/x-npy`` (``numpy.save`` bytes, never unpickled, the header checked
against the body's length before anything is allocated) → ``.npy`` bytes.  Values
are converted with the same strict rules as BentoML's routes (``signature.coerce``).
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelyard.bentos.pod.batcher import MicroBatcher
from modelyard.bentos.tensor.signature import coerce, read_npy

NPY = "application/x-npy"
PARSE_IN_THREAD_BYTES = 1 << 20
log = logging.getLogger("modelyard.serving")


def _error(status: int, detail: str) -> Response:
    return Response(orjson.dumps({"error": detail}), status_code=status, media_type="application/json")


def build_app(service_ref: Callable[[], object], check: Callable[[np.ndarray], np.ndarray] | None,
              dtype: str, max_batch: int) -> Starlette:
    """The ASGI app; ``service_ref()`` returns the loaded service (it exists once BentoML started it)."""
    batchers: dict[int, MicroBatcher] = {}

    def parse(body: bytes, binary: bool) -> np.ndarray:
        if binary:
            array = coerce(read_npy(body), dtype)
        else:
            payload = orjson.loads(body)
            if not isinstance(payload, dict) or "inputs" not in payload:
                raise ValueError('expected a JSON object {"inputs": [...]}')
            array = coerce(payload["inputs"], dtype)
        return check(array) if check is not None else array

    async def predict(request: Request) -> Response:
        service = service_ref()
        if service is None:
            return _error(503, "the model is still loading")
        body = await request.body()
        binary = request.headers.get("content-type", "").startswith(NPY)
        try:
            if len(body) > PARSE_IN_THREAD_BYTES:  # a large body: let the loop answer probes meanwhile
                array = await asyncio.to_thread(parse, body, binary)
            else:
                array = parse(body, binary)
        except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
            return _error(400, str(exc))
        try:
            if len(array) > max_batch:  # already a batch: straight to the model, in chunks
                outputs = await asyncio.to_thread(service._forward_chunked, array)  # type: ignore[attr-defined]
            else:
                batcher = batchers.get(id(service))
                if batcher is None:
                    batcher = batchers[id(service)] = MicroBatcher(service._forward, max_batch)  # type: ignore[attr-defined]
                outputs = await batcher.submit(array)
        except Exception as exc:  # noqa: BLE001 - the model's own failure: a 500 that says so, as BentoML's routes do
            log.error("the model failed on a request of %d examples: %s", len(array), exc)
            return _error(500, f"the model failed: {type(exc).__name__}")
        if binary or request.headers.get("accept", "").startswith(NPY):
            buffer = io.BytesIO()
            np.save(buffer, outputs, allow_pickle=False)
            return Response(buffer.getvalue(), media_type=NPY)
        return Response(orjson.dumps({"outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY),
                        media_type="application/json")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"])])
