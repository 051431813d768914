"""HTTP ``Range`` for artifact downloads (RFC 9110 §14): one byte range per request.

Starlette's FileResponse handles ranges only for local files; artifacts may be
in S3, so the registry answers ranges itself over any store's ``open_range``.
"""

from __future__ import annotations

import re

from modelyard.registry.kernel.errors import RangeNotSatisfiable

_SINGLE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` inclusive for a satisfiable single range; None to send the whole body.

    A header we do not understand (several ranges, another unit) is ignored, as the
    RFC allows; a well-formed but unsatisfiable range raises 416.
    """
    if not header:
        return None
    match = _SINGLE.match(header.strip().replace(" ", ""))
    if not match:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable(f"range {header!r} selects no bytes of a {size}-byte artifact",
                                      extra={"size": size})
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if last and int(last) < start:
        return None  # invalid range spec: ignore
    if start >= size:
        raise RangeNotSatisfiable(f"range {header!r} starts beyond the {size}-byte artifact", extra={"size": size})
    return start, end
