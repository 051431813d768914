"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), on a port of its own.

It runs on the model server's own event loop (started by the service's startup hook), so its
requests join the same micro-batcher as the HTTP routes.  Each worker process binds the port
with ``SO_REUSEPORT`` (gRPC's default on Linux), as the HTTP server does.  The message size
limit is the server's ``maxRequestBytes``: a larger request is RESOURCE_EXHAUSTED before a byte
of it is parsed.  Infer requests are counted in the same metric families as every HTTP model
route (``pod.request_metrics``), their gRPC status turned into the HTTP status it stands for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np

from modelyard.bentos.oip import GRPC_INFER_ROUTE
from modelyard.bentos.oip import inference_pb2 as pb
from modelyard.bentos.oip import inference_pb2_grpc as pb_grpc
from modelyard.bentos.oip.rest import EXTENSIONS, InferenceModel, targeted
from modelyard.bentos.oip.tensors import (InferenceError, TensorMeta, check_outputs, datatype_of,
                                          little_endian_bytes, read_input)
from modelyard.bentos.pod.request_metrics import observe

log = logging.getLogger("modelyard.serving")
CONTENTS_FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
                  "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
                  "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
                  "FP64": "fp64_contents"}
"""Where typed contents carry each datatype (FP16 travels only as raw bytes)."""
STATUS_CODES = {400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND,
                413: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL,
                503: grpc.StatusCode.UNAVAILABLE}


def read_infer_request(request: Any, model: InferenceModel) -> np.ndarray:
    """A ``ModelInferRequest``'s one input as a checked array (the REST route's rules)."""
    expected = model.meta.inputs[0]
    if len(request.inputs) != 1:
        raise InferenceError(f"expected exactly one input, {expected.name!r}, got {len(request.inputs)}")
    check_outputs(model.meta.outputs[0], [output.name for output in request.outputs])
    tensor = request.inputs[0]
    common = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape), "check": model.check}
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise InferenceError(f"raw_input_contents has {len(request.raw_input_contents)} entries for one input")
        return read_input(expected, raw=request.raw_input_contents[0], **common)
    field = CONTENTS_FIELD.get(tensor.datatype)
    if field is None and tensor.datatype == expected.datatype:
        raise InferenceError(f"input {expected.name!r} ({expected.datatype}) travels as raw_input_contents only")
    # Typed contents arrive as numbers of the field's type; the strict conversion checks range and finiteness.
    data = np.asarray(getattr(tensor.contents, field)) if field is not None else None
    return read_input(expected, data=data, **common)


def infer_response(model: InferenceModel, request: Any, outputs: np.ndarray) -> Any:
    meta: TensorMeta = model.meta.outputs[0]
    return pb.ModelInferResponse(
        model_name=model.meta.name, model_version=model.meta.version, id=request.id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=meta.name, datatype=datatype_of(outputs.dtype),
                                                         shape=list(outputs.shape))],
        raw_output_contents=[little_endian_bytes(outputs)])


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The protocol's RPCs for the model ``model_ref()`` returns."""

    def __init__(self, model_ref: Callable[[], InferenceModel | None], *, server: str, server_version: str) -> None:
        self.model_ref, self.server, self.server_version = model_ref, server, server_version

    def _model(self, name: str, version: str) -> InferenceModel:
        return targeted(self.model_ref, name, version)

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model = self.model_ref()
        return pb.ServerReadyResponse(ready=model is not None and model.ready())

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            self._model(request.name, request.version)
        except InferenceError as exc:
            if exc.status == 503:
                return pb.ModelReadyResponse(ready=False)
            await context.abort(STATUS_CODES[exc.status], str(exc))
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerMetadataResponse(name=self.server, version=self.server_version, extensions=list(EXTENSIONS))

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            meta = self._model(request.name, request.version).meta
        except InferenceError as exc:
            await context.abort(STATUS_CODES[exc.status], str(exc))
        tensors = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta.name, versions=[meta.version], platform=meta.platform,
            inputs=[tensors(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.inputs],
            outputs=[tensors(name=t.name, datatype=t.datatype, shape=list(t.shape)) for t in meta.outputs])

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        status = 500
        try:
            model = self._model(request.model_name, request.model_version)
            outputs = await model.infer(read_infer_request(request, model))
            status = 200
            return infer_response(model, request, outputs)
        except InferenceError as exc:
            status = exc.status
            await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), str(exc))
        finally:
            observe(GRPC_INFER_ROUTE, status, time.perf_counter() - started)


async def start_server(service: InferenceService, port: int, *, host: str, max_message_bytes: int) -> grpc.aio.Server:
    """The gRPC server on ``host:port``, started (on the running event loop)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", max_message_bytes),
                                      ("grpc.so_reuseport", 1)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(service, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen for gRPC on {address}")
    await server.start()
    log.info("Open Inference Protocol over gRPC on %s", address)
    return server
