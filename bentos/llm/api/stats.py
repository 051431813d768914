"""``GET /v1/engine/stats``: the engine's queues, counters and the settings it runs with, for
operators and tests (every accepted serving setting is read back here)."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from modelyard.bentos.llm.api.common import Served, json_response


async def engine_stats(_: Request, served: Served) -> Response:
    engine = served.engine.stats() if served.engine is not None else {}
    return json_response({**engine, "tasks": len(asyncio.all_tasks())})
