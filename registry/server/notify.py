"""Wakes ``GET /events`` long-polls the moment this process commits an event.

Writes commit in worker threads, so they signal through the event loop's
thread-safe entry point.  Events committed by other processes (more workers,
more replicas) wake it too on PostgreSQL, as soon as the change listener hears
them (``store.listen_for_changes``); on SQLite the long-poll's short re-check
interval picks them up.
"""

from __future__ import annotations

import asyncio


class EventNotifier:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Callable from any thread."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def current(self) -> asyncio.Event:
        """The signal the next change will set; take it *before* reading the log."""
        return self._changed

    @staticmethod
    async def wait(changed: asyncio.Event, timeout: float) -> None:
        """Return when ``changed`` is set or after ``timeout`` seconds, whichever is first."""
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            pass
