"""KServe's Python model server with the same .pt2 program: the peer benchmarks/serving_bench.py measures.

Runs in the virtualenv benchmarks/kserve_env.sh makes (KServe's own dependency ranges); not imported by
the project.  A ``kserve.Model`` that loads the program with ``torch.export.load`` and runs it as KServe's
docs show a custom model: v1 (``{"instances"}`` → ``{"predictions"}``) and v2 / Open Inference Protocol
(REST, binary extension, gRPC), no batching, one torch thread, one worker, as our server is run.

    python kserve_peer.py PROGRAM --http-port P --grpc-port G
"""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from typing import Any

import grpc.aio._server
import numpy as np
import torch
import uvicorn
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


def _loopback_only() -> None:
    """KServe binds 0.0.0.0 and [::]; a benchmark's servers listen on 127.0.0.1 only."""
    config_init, add_port = uvicorn.Config.__init__, grpc.aio._server.Server.add_insecure_port

    def config(self: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        config_init(self, *args, **{**kwargs, "host": "127.0.0.1"})

    def port(self: Any, address: str) -> int:
        return add_port(self, address.replace("[::]", "127.0.0.1"))

    uvicorn.Config.__init__ = config  # type: ignore[method-assign]
    grpc.aio._server.Server.add_insecure_port = port  # type: ignore[method-assign]


class Digits(Model):
    def __init__(self, name: str, program: str) -> None:
        super().__init__(name)
        self.program = program
        self.load()

    def load(self) -> bool:
        torch.set_num_threads(1)
        self.module = torch.export.load(self.program).module()
        self.ready = True
        return self.ready

    def _forward(self, array: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return self.module(torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))).numpy()

    async def predict(self, payload: dict | InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        if isinstance(payload, InferRequest):
            outputs = self._forward(payload.inputs[0].as_numpy())
            output = InferOutput(name="output", shape=list(outputs.shape), datatype="FP32")
            output.set_data_from_numpy(outputs, binary_data=payload.use_binary_outputs)
            return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()),
                                 use_binary_outputs=payload.use_binary_outputs,
                                 requested_outputs=payload.request_outputs)
        if isinstance(payload, bytes):  # a body sent without a JSON content type
            payload = json.loads(payload)
        return {"predictions": self._forward(np.asarray(payload["instances"], dtype=np.float32)).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("program")
    parser.add_argument("--name", default="digits")
    parsed, _ = parser.parse_known_args()  # KServe's own flags (--http_port, --grpc_port) are KServe's to read
    _loopback_only()
    server = ModelServer(enable_latency_logging=False)
    # No line per request, as our server by default: it costs as much CPU as this model's forward pass.
    for logger in ("uvicorn.access", "kserve.trace"):
        logging.getLogger(logger).disabled = True
    server.start([Digits(parsed.name, parsed.program)])
