"""Small helpers shared by tests."""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def content_digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def eventually(probe: Callable[[], T | None], *, timeout: float = 30.0, interval: float = 0.1,
               what: str = "condition") -> T:
    """Poll ``probe`` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout} s (last: {last!r})")


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    """A ModelDeployment status condition by type ({} when absent)."""
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})
