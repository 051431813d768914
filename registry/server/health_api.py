"""``/healthz`` (process alive), ``/readyz`` (database and artifact store answer), ``/metrics``.

A database that was deleted, replaced or found damaged makes the registry unready
(503): its writes would be lost.  A nearly full artifact disk does not: reads and
pulls still work, so the registry stays in service and says ``degraded`` with the
free space (uploads get 507 until there is room).
"""

from __future__ import annotations

import logging

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from modelyard.registry.kernel.errors import Unavailable
from modelyard.registry.server.problems import problem_response

router = APIRouter(tags=["health"])
LOW_SPACE_BYTES = 64 << 20
"""Below this much free space on the artifact disk, ``/readyz`` reports the registry degraded."""
log = logging.getLogger("modelyard.registry")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or artifact store unavailable"}})
async def readyz(request: Request) -> Response:
    state = request.app.state
    if problem := state.store.problem():
        log.error("readiness: %s", problem)
        return problem_response(Unavailable(problem), request)
    try:
        await anyio.to_thread.run_sync(state.store.ping)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        log.warning("readiness: database unavailable: %s", exc)
        return problem_response(Unavailable(f"database unavailable: {type(exc).__name__}"), request)
    try:
        await anyio.to_thread.run_sync(state.artifacts.check)
        free = await anyio.to_thread.run_sync(state.artifacts.free_bytes)
    except Exception as exc:  # noqa: BLE001
        log.warning("readiness: artifact store unavailable: %s", exc)
        return problem_response(Unavailable(f"artifact store unavailable: {type(exc).__name__}"), request)
    if free is not None and free < LOW_SPACE_BYTES:
        log.warning("readiness: the artifact store has %d bytes free", free)
        return JSONResponse({"status": "degraded", "artifact_free_bytes": free,
                             "problems": [f"the artifact store is nearly full ({free} bytes free): uploads are "
                                          "refused with 507 until space is freed"]})
    return JSONResponse({"status": "ready", "artifact_free_bytes": free})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return request.app.state.metrics.render()
