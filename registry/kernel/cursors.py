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
        raise BadRequest(f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page") from exc
