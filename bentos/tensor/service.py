"""The generic BentoML service for registry models (torch.export / TorchScript).

A model Bento holds only the program and ``modelyard-model.json``; this module
is the code, imported by the Bento's two-line ``service.py``.  Settings come
from the environment (``modelyard.bentos.pod.settings``) because the operator sets
them per deployment on the pod.  Requests are validated against the input
spec in the version's metadata: a wrong shape or dtype is a 400 that says what
was expected.  The model routes (``/predict``, ``/predict_batch`` and the Open Inference
Protocol, over HTTP and gRPC) are answered by ``tensor.fastpath``; BentoML declares the first
two, serves the probes, ``/metrics`` and ``/model``, and runs the worker processes.
"""

# No `from __future__ import annotations`: BentoML reads these annotations at runtime.

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
import numpy as np
from bentoml.validators import DType
from pydantic import AfterValidator, BeforeValidator

from modelyard.bentos.pod.settings import TENSOR_ENGINE, ServingSettings, served_settings, torch_threads
from modelyard.bentos.oip import GRPC_INFER_ROUTE
from modelyard.bentos.oip.rest import Dispatch
from modelyard.bentos.tensor.fastpath import (OIP_INFER_ROUTE, PLAIN_ROUTES, TensorEndpoint, build_app,
                                              is_fast_path, metrics_route, model_meta)
from modelyard.bentos.pod.limits import BodyLimit, quiet_bad_requests
from modelyard.bentos.pod.request_metrics import RequestMetrics, declare
from modelyard.bentos.pod.timeouts import cancel_request_timers
from modelyard.bentos.pod.signature import InputSpec, coerce
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.kernel.processes.tuning import tune_for_serving

log = logging.getLogger("modelyard.bentos")

BENTO_DIR = Path(os.environ.get(Env.BENTO_DIR) or Path.cwd())
SPEC = ModelSpec.read(BENTO_DIR)
SETTINGS = ServingSettings.from_env()
TENSOR = SETTINGS.tensor
INPUT = InputSpec.from_metadata(SPEC.metadata)
BATCH_CHUNK = 1024

DTYPE = INPUT.dtype if INPUT is not None else "float32"


def _inputs(values: Any) -> np.ndarray:
    """Strict conversion (no strings, booleans or nulls turned into numbers), then the exact shape."""
    array = coerce(values, DTYPE)
    return INPUT.check(array) if INPUT is not None else array


def _at_most_one_batch(array: np.ndarray) -> np.ndarray:
    if len(array) > TENSOR.max_batch_size:
        raise ValueError(f"{len(array)} examples are more than max_batch_size ({TENSOR.max_batch_size}) for "
                         "/predict: send them to /predict_batch, which takes any number")
    return array


# BentoML's DType stays for the OpenAPI document; the conversion before it is ours.
Inputs = Annotated[np.ndarray, DType(DTYPE), BeforeValidator(_inputs)]
SmallBatch = Annotated[Inputs, AfterValidator(_at_most_one_batch)]
quiet_bad_requests()
cancel_request_timers()


_ENDPOINT: list[TensorEndpoint] = []  # the loaded model in this worker process, for the fast routes


def _endpoint() -> TensorEndpoint | None:
    return _ENDPOINT[0] if _ENDPOINT else None


SERVER_VERSION = importlib.metadata.version("modelyard")
FAST_APP = build_app(_endpoint, server_version=SERVER_VERSION)
COUNTED_ROUTES = (*PLAIN_ROUTES, OIP_INFER_ROUTE, *((GRPC_INFER_ROUTE,) if TENSOR.grpc_port else ()))


@bentoml.service(
    name="modelyard-model",
    workers=TENSOR.workers,
    resources=SETTINGS.bentoml_resources(),
    traffic={"timeout": 60},
    # A log line per request costs as much CPU as a small model's forward pass; on demand.  The
    # fast routes skip BentoML's tracing and per-request metrics middleware (prefixes; regexes).
    logging={"access": {"enabled": SETTINGS.common.access_log,
                        "skip_paths": [] if SETTINGS.common.access_log else ["/predict", "/v2"]}},
    tracing={"excluded_urls": ["/predict(_batch)?$", "/v2(/|$)"]},
)
class ModelService:
    """Serves one model version: ``POST /predict {"inputs": [...]}`` → ``[...]`` (model outputs)."""

    def __init__(self) -> None:
        from modelyard.bentos.pod.failure import report_failure
        from modelyard.bentos.tensor.loader import load_program, pick_device

        try:
            self.device = pick_device(SETTINGS.common.gpus)
            program = load_program(SPEC, BENTO_DIR, self.device, torch_threads(SETTINGS.common, TENSOR.workers))
        except Exception as exc:
            report_failure(exc)  # BentoML would restart the worker forever; the runtime stops instead
            raise
        self.module, self.spec = program.module, SPEC
        example = program.example_output if program.example_output is not None else np.zeros((1,), np.float32)
        meta = model_meta(model=SPEC.model, version=SPEC.version, platform=SPEC.format,
                          input_shape=INPUT.shape if INPUT is not None else None, input_dtype=DTYPE,
                          example_output=example)
        _ENDPOINT.append(TensorEndpoint(meta=meta, check=INPUT.check if INPUT is not None else None,
                                        forward=self._forward, forward_chunked=self._forward_chunked,
                                        max_batch=TENSOR.max_batch_size, batching=TENSOR.batching,
                                        max_queue_s=TENSOR.max_latency_ms / 1000))
        self._grpc: Any = None
        declare(COUNTED_ROUTES)
        tune_for_serving()  # after the load: torch's objects are then frozen out of the GC

    @bentoml.on_startup
    async def _start_grpc(self) -> None:
        """The protocol's gRPC service on this worker's event loop, where it shares the batcher."""
        if TENSOR.grpc_port:
            from modelyard.bentos.oip.grpc_service import InferenceService, start_server

            service = InferenceService(_endpoint, server="modelyard", server_version=SERVER_VERSION)
            self._grpc = await start_server(service, TENSOR.grpc_port, host=os.environ.get(Env.SERVE_HOST, "127.0.0.1"),
                                            max_message_bytes=SETTINGS.common.max_request_bytes)

    @bentoml.on_shutdown
    async def _stop_grpc(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=5)

    # The two routes' contract as BentoML shows it (OpenAPI, its clients); tensor.fastpath answers them.
    @bentoml.api
    def predict(self, inputs: SmallBatch) -> np.ndarray:
        """For many small requests: concurrent requests are gathered into batches of up to
        ``max_batch_size`` examples (a request larger than that is refused)."""
        return self._forward(inputs)

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, inputs: Inputs) -> np.ndarray:
        """For one large request: any number of examples, run in chunks as they come."""
        return self._forward_chunked(inputs)

    def _forward_chunked(self, inputs: np.ndarray) -> np.ndarray:
        return np.concatenate([self._forward(inputs[start:start + BATCH_CHUNK])
                               for start in range(0, len(inputs), BATCH_CHUNK)])

    def _forward(self, inputs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.module(torch.from_numpy(np.ascontiguousarray(inputs)).to(self.device))
        return output.detach().cpu().numpy()

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Which version is served, on which device, with which settings."""
        return {"model": self.spec.model, "version": self.spec.version, "digest": self.spec.digest,
                "format": self.spec.format, "device": self.device, "metadata": self.spec.metadata,
                "serving": served_settings(SETTINGS, TENSOR_ENGINE)}


# BentoML's service decorator adds the method at run time; its stubs do not show it.
ModelService.add_asgi_middleware(BodyLimit, max_bytes=SETTINGS.common.max_request_bytes)  # type: ignore[attr-defined]
ModelService.add_asgi_middleware(RequestMetrics, label=metrics_route)  # type: ignore[attr-defined]
ModelService.add_asgi_middleware(Dispatch, routes=FAST_APP, owns=is_fast_path)  # type: ignore[attr-defined]
