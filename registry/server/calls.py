"""Where a store call runs: in place or in a worker thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from modelyard.registry.store import RegistryStore

T = TypeVar("T")


async def run_read(store: RegistryStore, function: Callable[..., T], *args: Any) -> T:
    """Run a read-only store call: in place on SQLite (microseconds, and readers never
    wait for writers in WAL mode), in a worker thread on a networked database."""
    if store.inline_reads:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args)


_write_limiters: dict[int, anyio.CapacityLimiter] = {}


async def run_write(store: RegistryStore, function: Callable[..., T], *args: Any) -> T:
    """Run a writing store call in a worker thread.

    On SQLite only one write can proceed at a time anyway; letting one thread at a
    time in (the others wait on the event loop, not in threads fighting over the GIL
    and the write lock) more than doubles write throughput under concurrency.
    """
    limiter = None
    if store.inline_reads:  # SQLite
        limiter = _write_limiters.get(id(store))
        if limiter is None:
            limiter = _write_limiters[id(store)] = anyio.CapacityLimiter(1)
    return await anyio.to_thread.run_sync(function, *args, limiter=limiter)
