"""Bounds on what one request may cost the model server, enforced before any handler runs.

A JSON body is parsed on the server's event loop (BentoML's routes) at about 50 ms
per MB on this hardware: unbounded, one 200 MB request blocked ``/readyz`` for 12 s
and kept 700 MB.  ``BodyLimit`` answers 413 to a body larger than the limit, from
its ``Content-Length`` before reading a byte, or as soon as a chunked body passes
it, so the worst parse stays short next to the chart's probe timeouts.
"""

from __future__ import annotations

import logging

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _BodyTooLarge(BaseException):
    """Raised from ``receive``; a BaseException so that handlers' ``except Exception`` let it through."""


class BodyLimit:
    """ASGI middleware: request bodies larger than ``max_bytes`` get a 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes or declared < 0:
                    await self._refuse(send, declared)
                    return
                # The HTTP server delivers no more than Content-Length: nothing left to count.
                await self.app(scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send, received)

    async def _refuse(self, send: Send, size: int) -> None:
        detail = (f"the request body ({size} bytes) is larger than the {self.max_bytes} bytes this server accepts "
                  "(MODELYARD_MAX_REQUEST_BYTES); send smaller batches" if size >= 0
                  else "invalid Content-Length")
        body = orjson.dumps({"error": detail})
        await send({"type": "http.response.start", "status": 413 if size >= 0 else 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class QuietBadRequests(logging.Filter):
    """BentoML logs a full traceback for every request that fails validation (a 400): a flood
    under bad traffic.  This turns those records into one DEBUG line; other errors pass as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and _is_validation_error(record.exc_info[1]):
            error = record.exc_info[1]
            record.msg = "%s [%s] refused with 400: %s"
            kept = tuple(record.args)[:2] if isinstance(record.args, tuple) else ()
            record.args = (*kept, str(error).replace("\n", " ")[:300])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def _is_validation_error(error: BaseException | None) -> bool:
    from pydantic import ValidationError

    return isinstance(error, ValidationError)


def quiet_bad_requests() -> None:
    """Install :class:`QuietBadRequests` on the logger BentoML's HTTP app reports errors with."""
    logger = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(existing, QuietBadRequests) for existing in logger.filters):
        logger.addFilter(QuietBadRequests())
