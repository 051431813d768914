"""The Open Inference Protocol over HTTP: health, metadata and infer under ``/v2``, with the binary
tensor data extension that ``tritonclient`` uses by default.

Routes (``name`` is the registry's model name, ``version`` its version number):
``GET /v2/health/live``, ``/v2/health/ready``, ``/v2`` (server metadata),
``/v2/models/{name}[/versions/{version}]`` (model metadata), ``…/ready``, and
``POST …/infer``.  Errors are the protocol's ``{"error": "..."}`` with a 4xx (or 503 while the
model loads), never a 500 for what a client sent.

Binary extension: a request whose ``Inference-Header-Content-Length`` header is set carries that
many bytes of JSON, then each input that says ``parameters.binary_data_size`` in order; the sizes
must account for every byte that follows.  Outputs are returned the same way when the request
asks (``parameters.binary_data`` on an output, or ``binary_data_output`` on the request).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.bentos.oip.tensors import (InferenceError, ModelMeta, TensorMeta, check_outputs, datatype_of,
                                          little_endian_bytes, read_input)

HEADER_LENGTH = "inference-header-content-length"
PARSE_IN_THREAD_BYTES = 1 << 20
"""A body larger than this is read in a thread, so that the event loop answers probes meanwhile."""
EXTENSIONS = ("binary_tensor_data",)


class InferenceModel(Protocol):
    """What the routes serve: one model's metadata, its input check, and its forward pass."""

    meta: ModelMeta
    check: Callable[[np.ndarray], np.ndarray] | None

    def ready(self) -> bool: ...

    async def infer(self, array: np.ndarray) -> np.ndarray: ...


def targeted(model_ref: Callable[[], InferenceModel | None], name: str, version: str | None) -> InferenceModel:
    """The model a request names (and version, if it names one), loaded: else InferenceError 503 or 404.
    Both transports ask this first."""
    model = model_ref()
    if model is None or not model.ready():
        raise InferenceError("the model is still loading", 503)
    model.meta.check_target(name, version)
    return model


def error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status_code=status, media_type="application/json")


def json_response(payload: Any) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


def oip_router(model_ref: Callable[[], InferenceModel | None], *, server: str, server_version: str,
               infer_note: str | None = None) -> Router:
    """The protocol's routes for the model ``model_ref()`` returns (None while it loads).

    ``infer_note``: where a model with no tensor interface (a language model) is served instead;
    its infer route answers 400 with it.
    """

    def loaded(request: Request) -> InferenceModel:
        return targeted(model_ref, request.path_params["name"], request.path_params.get("version"))

    async def live(request: Request) -> Response:
        return json_response({"live": True})

    async def ready(request: Request) -> Response:
        model = model_ref()
        return json_response({"ready": True}) if model is not None and model.ready() else error(503, "not ready")

    async def server_metadata(request: Request) -> Response:
        return json_response({"name": server, "version": server_version, "extensions": list(EXTENSIONS)})

    async def model_metadata(request: Request) -> Response:
        return json_response(loaded(request).meta.to_json())

    async def model_ready(request: Request) -> Response:
        loaded(request)
        return json_response({"name": request.path_params["name"], "ready": True})

    async def infer(request: Request) -> Response:
        model = loaded(request)
        if infer_note is not None:
            raise InferenceError(infer_note)
        body = await request.body()
        if request.headers.get("content-encoding", "identity") != "identity":
            raise InferenceError("compressed request bodies are not accepted: send them uncompressed")
        if len(body) > PARSE_IN_THREAD_BYTES:
            decoded = await asyncio.to_thread(read_request, body, request.headers.get(HEADER_LENGTH), model)
        else:
            decoded = read_request(body, request.headers.get(HEADER_LENGTH), model)
        outputs = await model.infer(decoded.array)
        return infer_response(model.meta, decoded, outputs)

    routes = [Route("/v2", server_metadata, methods=["GET"]),
              Route("/v2/health/live", live, methods=["GET"]),
              Route("/v2/health/ready", ready, methods=["GET"])]
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        routes += [Route(prefix, model_metadata, methods=["GET"]),
                   Route(f"{prefix}/ready", model_ready, methods=["GET"]),
                   Route(f"{prefix}/infer", infer, methods=["POST"])]
    return Router(routes=[Route(route.path, _protocol_errors(route.endpoint), methods=route.methods)
                          for route in routes], default=not_found)


def _protocol_errors(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        try:
            return await handler(request)
        except InferenceError as exc:
            return error(exc.status, str(exc))
    return answer


class DecodedRequest:
    """An infer request read and checked: its input array, id, and how to return the output."""

    __slots__ = ("array", "id", "binary_output")

    def __init__(self, array: np.ndarray, request_id: str | None, binary_output: bool) -> None:
        self.array, self.id, self.binary_output = array, request_id, binary_output


def read_request(body: bytes, header_length: str | None, model: InferenceModel) -> DecodedRequest:
    """The request's JSON (and binary part) into one checked input array; InferenceError otherwise."""
    view = memoryview(body)
    if header_length is not None:
        try:
            size = int(header_length)
        except ValueError:
            size = -1
        if not 0 <= size <= len(body):
            raise InferenceError(f"Inference-Header-Content-Length is {header_length[:20]!r} but the body has "
                                 f"{len(body)} bytes")
        head, binary = view[:size], view[size:]
    else:
        head, binary = view, view[len(body):]
    try:
        payload = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise InferenceError(f"the request is not JSON ({exc})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise InferenceError('expected a JSON object {"inputs": [{"name", "shape", "datatype", "data"}, ...]}')
    inputs = payload["inputs"]
    expected = model.meta.inputs[0]
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InferenceError(f"expected exactly one input, {expected.name!r} ({expected.datatype}, shape "
                             f"{list(expected.shape)}), got {len(inputs)}")
    tensor = inputs[0]
    raw = None
    declared = _parameters(tensor).get("binary_data_size")
    if declared is not None:
        if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
            raise InferenceError("binary_data_size must be a non-negative integer")
        if declared != len(binary):
            raise InferenceError(f"the inputs declare {declared} bytes of binary data but {len(binary)} follow the "
                                 "JSON header")
        raw = binary
    elif len(binary):
        raise InferenceError(f"{len(binary)} bytes follow the JSON header but no input declares binary_data_size")
    array = read_input(expected, name=tensor.get("name"), datatype=tensor.get("datatype"), shape=tensor.get("shape"),
                       check=model.check, data=tensor.get("data"), raw=raw)
    return DecodedRequest(array, _request_id(payload.get("id")), _binary_output(payload, model.meta.outputs[0]))


def _parameters(holder: dict[str, Any]) -> dict[str, Any]:
    parameters = holder.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise InferenceError("parameters must be a JSON object")
    return parameters


def _request_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 256:
        raise InferenceError("id must be a string of at most 256 characters")
    return value


def _binary_output(payload: dict[str, Any], output: TensorMeta) -> bool:
    """Whether the output goes back as binary: asked per output, else for the whole request."""
    default = _parameters(payload).get("binary_data_output", False) is True
    requested = payload.get("outputs")
    if requested is None:
        return default
    if not isinstance(requested, list) or not all(isinstance(item, dict) for item in requested):
        raise InferenceError('outputs must be a list of {"name": ...} objects')
    check_outputs(output, [item.get("name") for item in requested])
    flags = [_parameters(item).get("binary_data") for item in requested]
    return any(flag is True for flag in flags) or (default and not any(flag is False for flag in flags))


def infer_response(meta: ModelMeta, request: DecodedRequest, outputs: np.ndarray) -> Response:
    tensor: dict[str, Any] = {"name": meta.outputs[0].name, "datatype": datatype_of(outputs.dtype),
                              "shape": list(outputs.shape)}
    answer: dict[str, Any] = {"model_name": meta.name, "model_version": meta.version}
    if request.id is not None:
        answer["id"] = request.id
    answer["outputs"] = [tensor]
    if not request.binary_output:
        tensor["data"] = outputs.ravel()
        return json_response(answer)
    data = little_endian_bytes(outputs)
    tensor["parameters"] = {"binary_data_size": len(data)}
    head = orjson.dumps(answer)
    return Response(head + data, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(head))})


def is_protocol_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


class Dispatch:
    """ASGI middleware: HTTP requests for the paths ``owns`` claims go to ``routes`` (ahead of BentoML's
    router, which would redirect ``/v2`` to ``/v2/`` and run its own per-request middleware); the rest to
    the app."""

    def __init__(self, app: ASGIApp, routes: ASGIApp, owns: Callable[[str], bool] = is_protocol_path) -> None:
        self.app, self.routes, self.owns = app, routes, owns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.owns(scope["path"]):
            await self.routes(scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
    """The protocol's 404 for a path under ``/v2`` that is none of its routes."""
    await error(404, f"no route {scope.get('path', '')[:200]}: the Open Inference Protocol's routes are "
                     "/v2, /v2/health/live|ready and /v2/models/NAME[/versions/N][/ready|/infer]")(scope, receive, send)
