"""Typed registry errors, shared by the server (which renders them as RFC 9457
problem+json) and the client (which raises them from a problem body), so a
caller catches the same ``NotFound`` whether it talks to the store or over HTTP.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RegistryError(Exception):
    """Base class; ``status`` is the HTTP status the server answers with."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal-error"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(self, detail: str, *, extra: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra or {}

    def problem(self, instance: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:modelyard:problem:{self.code}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        if instance:
            body["instance"] = instance
        body.update(self.extra)
        return body


class BadRequest(RegistryError):
    status, code, title = 400, "bad-request", "Bad Request"


class Unauthorized(RegistryError):
    status, code, title = 401, "unauthorized", "Unauthorized"


class Forbidden(RegistryError):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(RegistryError):
    status, code, title = 404, "not-found", "Not Found"


class Conflict(RegistryError):
    status, code, title = 409, "conflict", "Conflict"


class PreconditionFailed(RegistryError):
    status, code, title = 412, "precondition-failed", "Precondition Failed"


class RangeNotSatisfiable(RegistryError):
    status, code, title = 416, "range-not-satisfiable", "Range Not Satisfiable"


class Invalid(RegistryError):
    status, code, title = 422, "invalid", "Unprocessable Content"


class DigestMismatch(Invalid):
    code = "digest-mismatch"


class PayloadTooLarge(RegistryError):
    status, code, title = 413, "payload-too-large", "Content Too Large"


class Unavailable(RegistryError):
    status, code, title = 503, "unavailable", "Service Unavailable"


class InsufficientStorage(RegistryError):
    """The artifact store has no room for the upload (nothing was stored)."""

    status, code, title = 507, "insufficient-storage", "Insufficient Storage"


class HttpProblem(RegistryError):
    """An HTTP-level error raised by the framework (unknown route, wrong method …)."""

    def __init__(self, status: int, code: str, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.title = status, code, title  # type: ignore[misc]


_BY_STATUS: dict[int, type[RegistryError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, Conflict, PreconditionFailed,
                RangeNotSatisfiable, Invalid, PayloadTooLarge, Unavailable, InsufficientStorage)
}
_BY_CODE: dict[str, type[RegistryError]] = {DigestMismatch.code: DigestMismatch}


def error_from_problem(status: int, body: dict[str, Any] | None, fallback: str) -> RegistryError:
    """Rebuild the typed error a server answered with (used by the client)."""
    body = body or {}
    cls = _BY_CODE.get(str(body.get("code")), _BY_STATUS.get(status, RegistryError))
    detail = str(body.get("detail") or body.get("title") or fallback)
    known = {"type", "title", "status", "detail", "code", "instance"}
    error = cls(detail, extra={k: v for k, v in body.items() if k not in known})
    return error
