"""``/healthz`` (process alive), ``/readyz`` (database and artifact store answer), ``/metrics``."""

from __future__ import annotations

import logging

import anyio.to_thread
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from modelyard.registry.errors import Unavailable
from modelyard.registry.server.problems import problem_response

router = APIRouter(tags=["health"])
log = logging.getLogger("modelyard.registry")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or artifact store unavailable"}})
async def readyz(request: Request) -> Response:
    state = request.app.state
    try:
        await anyio.to_thread.run_sync(state.store.ping)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        log.warning("readiness: database unavailable: %s", exc)
        return problem_response(Unavailable(f"database unavailable: {type(exc).__name__}"), request)
    try:
        await anyio.to_thread.run_sync(state.artifacts.check)
    except Exception as exc:  # noqa: BLE001
        log.warning("readiness: artifact store unavailable: %s", exc)
        return problem_response(Unavailable(f"artifact store unavailable: {type(exc).__name__}"), request)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    return request.app.state.metrics.render()
