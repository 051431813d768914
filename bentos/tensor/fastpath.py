"""The tensor server's request path: the Open Inference Protocol under ``/v2``, and ``/predict`` and
``/predict_batch`` with their JSON contract, all answered here rather than by BentoML's API machinery.

BentoML's API path costs about 1.5 ms of CPU per request on this hardware (pydantic models, serde,
context and tracing) and its adaptive batcher waits on a latency model of its own: at concurrency
32 on 2 cores that made ``/predict`` 0.4–0.9× KServe's Python server with a quarter-second p99.
Here each request is parsed with orjson (in a thread when large), checked with the same strict
rules (``signature.coerce``, the exact shape), and joins one micro-batcher that every route and
the gRPC service share (``pod.batcher``): under load, what arrives during a forward pass forms the
next batch.  BentoML still declares ``/predict`` and ``/predict_batch`` (its OpenAPI document and
clients keep working) and serves everything else: probes, ``/metrics``, ``/model``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from modelyard.bentos.oip.rest import PARSE_IN_THREAD_BYTES, error, is_protocol_path, json_response, not_found, oip_router
from modelyard.bentos.oip.tensors import DATATYPES, InferenceError, ModelMeta, TensorMeta, datatype_of
from modelyard.bentos.pod.batcher import MicroBatcher, Overloaded
from modelyard.bentos.pod.signature import coerce

log = logging.getLogger("modelyard.serving")
PLAIN_ROUTES = ("/predict", "/predict_batch")
"""The JSON routes BentoML declares and this path answers."""
OIP_INFER_ROUTE = "/v2/models/{model}/infer"
"""The metrics label of every OIP infer path (model names are the client's to choose)."""


class TensorEndpoint:
    """The loaded program as the fast routes and the gRPC service see it: its protocol metadata,
    its input check and its forward pass, micro-batched unless batching is off."""

    def __init__(self, *, meta: ModelMeta, check: Callable[[np.ndarray], np.ndarray] | None,
                 forward: Callable[[np.ndarray], np.ndarray], forward_chunked: Callable[[np.ndarray], np.ndarray],
                 max_batch: int, batching: bool, max_queue_s: float) -> None:
        self.meta, self.check = meta, check
        self.dtype = DATATYPES[meta.inputs[0].datatype]
        self.max_batch = max_batch
        self._forward_chunked = forward_chunked
        self._batcher = MicroBatcher(forward, max_batch, max_queue_s=max_queue_s) if batching else None

    def ready(self) -> bool:
        return True

    async def infer(self, array: np.ndarray) -> np.ndarray:
        """The outputs; InferenceError 503 when the queue is past ``max_latency_ms``, 500 when the model
        itself fails (logged once, its type told to the client as BentoML's routes did)."""
        try:
            if self._batcher is None or len(array) > self.max_batch:  # already a batch: straight to the model
                return await asyncio.to_thread(self._forward_chunked, array)
            return await self._batcher.submit(array)
        except Overloaded as exc:
            raise InferenceError(str(exc), 503) from None
        except Exception as exc:  # noqa: BLE001 - the model's own failure
            log.error("the model failed on a request of %d examples: %s", len(array), exc)
            raise InferenceError(f"the model failed: {type(exc).__name__}", 500) from None


def model_meta(*, model: str, version: int, platform: str, input_shape: tuple[int, ...] | None, input_dtype: str,
               example_output: np.ndarray) -> ModelMeta:
    """The protocol's metadata of a program: its declared input (``[-1]`` where the version declares
    no shape) and its output as the load-time example pass produced it."""
    return ModelMeta(name=model, version=str(version), platform=platform,
                     inputs=(TensorMeta("input", datatype_of(input_dtype), input_shape or (-1,)),),
                     outputs=(TensorMeta("output", datatype_of(example_output.dtype),
                                         (-1, *example_output.shape[1:])),))


def build_app(endpoint_ref: Callable[[], TensorEndpoint | None], *, server_version: str) -> Router:
    """Every fast route; ``endpoint_ref()`` is the loaded endpoint (None until BentoML started it)."""

    def parse_inputs(body: bytes, endpoint: TensorEndpoint) -> np.ndarray:
        payload = orjson.loads(body)
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise ValueError('expected a JSON object {"inputs": [...]}')
        array = coerce(payload["inputs"], endpoint.dtype)
        return endpoint.check(array) if endpoint.check is not None else array

    def route(batch: bool) -> Callable[[Request], Any]:
        async def predict(request: Request) -> Response:
            endpoint = endpoint_ref()
            if endpoint is None:
                return error(503, "the model is still loading")
            body = await request.body()
            try:
                if len(body) > PARSE_IN_THREAD_BYTES:
                    array = await asyncio.to_thread(parse_inputs, body, endpoint)
                else:
                    array = parse_inputs(body, endpoint)
            except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
                return error(400, str(exc))
            if not batch and len(array) > endpoint.max_batch:
                return error(400, f"{len(array)} examples are more than max_batch_size ({endpoint.max_batch}) "
                                  "for /predict: send them to /predict_batch (or the Open Inference Protocol's "
                                  "infer), which take any number")
            try:
                return json_response(await endpoint.infer(array))
            except InferenceError as exc:
                return error(exc.status, str(exc))
        return predict

    oip = oip_router(endpoint_ref, server="modelyard", server_version=server_version)
    routes = [Route("/predict", route(False), methods=["POST"]),
              Route("/predict_batch", route(True), methods=["POST"]), *oip.routes]
    return Router(routes=routes, default=not_found)


def is_fast_path(path: str) -> bool:
    return path in PLAIN_ROUTES or is_protocol_path(path)


def metrics_route(path: str) -> str | None:
    """The ``route`` label a request is counted under (OIP infer paths under one label), or None."""
    if path in PLAIN_ROUTES:
        return path
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return OIP_INFER_ROUTE
    return None

