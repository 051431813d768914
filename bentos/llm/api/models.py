"""``GET /v1/models``: the one model this server serves, with what a client needs to size requests."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from modelyard.bentos.llm.api.common import Served, json_response


async def list_models(_: Request, served: Served) -> Response:
    spec = served.loaded.spec
    return json_response({"object": "list", "data": [
        {"id": spec.model, "object": "model", "created": served.created, "owned_by": "modelyard",
         "version": spec.version, "digest": spec.digest, "task": served.loaded.task,
         "max_model_len": served.loaded.max_model_len},
    ]})
