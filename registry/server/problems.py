"""Every error answered as RFC 9457 ``application/problem+json``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from modelyard.registry.kernel.errors import BadRequest, HttpProblem, Invalid, RegistryError, Unavailable
from modelyard.registry.kernel.names import InvalidName

log = logging.getLogger("modelyard.registry")

PROBLEM_JSON = "application/problem+json"
_CODES = {400: "bad-request", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
          409: "conflict", 413: "too-large", 415: "unsupported-media-type", 422: "invalid"}


def problem_response(error: RegistryError, request: Request) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="modelyard"'} if error.status == 401 else None
    return JSONResponse(error.problem(instance=request.url.path), status_code=error.status,
                        media_type=PROBLEM_JSON, headers=headers)


class RejectNulInQuery:
    """ASGI middleware: a NUL character in the query string is a 400 problem, before any route
    runs (PostgreSQL cannot compare text with NUL in it; path parameters are patterns already)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = scope.get("query_string", b"") if scope["type"] == "http" else b""
        if query and (b"%00" in query or b"\x00" in query):
            error = BadRequest("query parameters must not contain NUL characters (%00)")
            response = JSONResponse(error.problem(instance=scope.get("path")), status_code=error.status,
                                    media_type=PROBLEM_JSON)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(RegistryError)
    async def _registry_error(request: Request, exc: RegistryError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(InvalidName)
    async def _invalid_name(request: Request, exc: InvalidName) -> JSONResponse:
        return problem_response(Invalid(str(exc)), request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        summary = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5])
        return problem_response(Invalid(f"invalid request: {summary}", extra={"errors": errors}), request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        title = {404: "Not Found", 405: "Method Not Allowed"}.get(exc.status_code, "Error")
        error = HttpProblem(exc.status_code, _CODES.get(exc.status_code, "error"), title, str(exc.detail))
        response = problem_response(error, request)
        if exc.headers:
            response.headers.update(exc.headers)
        return response

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _db_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", exc)
        return problem_response(Unavailable("the registry database is unavailable; retry shortly"), request)

    @app.exception_handler(DBAPIError)
    async def _db_error(request: Request, exc: DBAPIError) -> JSONResponse:
        if exc.connection_invalidated:
            return problem_response(Unavailable("the registry database connection was lost; retry shortly"), request)
        log.exception("database error on %s %s", request.method, request.url.path)
        return problem_response(RegistryError("internal database error"), request)

    app.add_middleware(RejectNulInQuery)

    @app.exception_handler(UnicodeDecodeError)
    async def _undecodable(request: Request, exc: UnicodeDecodeError) -> JSONResponse:
        return problem_response(BadRequest("request is not valid UTF-8"), request)
