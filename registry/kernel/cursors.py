"""Opaque page cursors: the last key of a page, base64url-encoded, handed back for the next one."""

from __future__ import annotations

import base64

from modelyard.registry.kernel.errors import BadRequest


def encode_cursor(value: str | int) -> str:
    return base64.urlsafe_b64encode(str(value).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise _foreign(cursor) from exc


def decode_number_cursor(cursor: str, *, digits: int, maximum: int | None = None) -> int:
    """A cursor whose key is a number of at most ``digits`` digits (and at most ``maximum``): a row id or
    a version number.  ``BadRequest`` for anything else, so no foreign cursor reaches a query."""
    raw = decode_cursor(cursor)
    if not raw.isdigit() or len(raw) > digits or (maximum is not None and int(raw) > maximum):
        raise _foreign(cursor)
    return int(raw)


def _foreign(cursor: str) -> BadRequest:
    return BadRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page")
