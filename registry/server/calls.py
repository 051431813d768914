"""Where a store call runs: in place or in a worker thread."""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread

from modelyard.registry.kernel import defaults
from modelyard.registry.store import RegistryStore

T = TypeVar("T")


async def run_read(store: RegistryStore, function: Callable[..., T], *args: Any) -> T:
    """Run a read-only store call: in place on SQLite (microseconds, and readers never
    wait for writers in WAL mode), in a worker thread on a networked database: a few at a time
    (``defaults.DB_THREADS``, see ``run_write``)."""
    if store.inline_reads:
        return function(*args)
    return await anyio.to_thread.run_sync(function, *args,
                                          limiter=_limiter(_read_limiters, store, defaults.DB_THREADS))


_read_limiters: weakref.WeakKeyDictionary[RegistryStore, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()
_write_limiters: weakref.WeakKeyDictionary[RegistryStore, anyio.CapacityLimiter] = weakref.WeakKeyDictionary()


async def run_write(store: RegistryStore, function: Callable[..., T], *args: Any) -> T:
    """Run a writing store call.

    SQLite takes one write at a time.  When this process is its only writer (the
    embedded single-process server), a write cannot wait on another process's lock,
    so it runs in place: a ~0.5 ms local transaction, with none of the thread
    hand-offs and GIL waits that otherwise cost more than the write (≈930 against
    ≈650 version creations/s in benchmarks/registry_bench.py).  Otherwise writes go
    to worker threads, one thread at a time on SQLite (the others wait on the event
    loop, not in threads fighting over the GIL and the write lock).  On PostgreSQL a few threads
    at a time (``defaults.DB_THREADS``): a write is several round trips, each a GIL hand-off,
    and sixteen threads handing it to each other spent more CPU on that than on the writes
    (117 against 216 alias moves/s at concurrency 16, with 2 threads).
    """
    if store.inline_writes:
        return function(*args)
    threads = 1 if store.inline_reads else defaults.DB_THREADS
    return await anyio.to_thread.run_sync(function, *args, limiter=_limiter(_write_limiters, store, threads))


def _limiter(limiters: weakref.WeakKeyDictionary[RegistryStore, anyio.CapacityLimiter], store: RegistryStore,
             threads: int) -> anyio.CapacityLimiter:
    """The store's limiter in ``limiters``, made on first use (it must be made inside the event loop)."""
    limiter = limiters.get(store)
    if limiter is None:
        limiter = limiters[store] = anyio.CapacityLimiter(threads)
    return limiter
