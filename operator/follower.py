"""Follows the registry's ``/events`` feed: one long-poll per registry, per operator process.

Resources subscribe to (model, alias).  When an alias moves, every subscriber is woken at
once by a trigger annotation (its update handler reconciles).  While the feed cannot be
read, every subscriber is re-resolved every ``fallback_seconds`` instead, and ``healthy``
says so (the reconciler reports it as the RegistryWatch condition).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from modelyard.operator import metrics
from modelyard.registry.kernel import defaults
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.errors import RegistryError
from modelyard.registry.kernel.schemas import EventPage

log = logging.getLogger("modelyard.operator.follower")
Key = tuple[str, str]  # (namespace, name)
Wake = Callable[[list[Key], str], Awaitable[None]]

WAKES_ON_ANY_CHANGE = ("model.created", "version.ready", "version.packaged", "version.signed", "version.deleted",
                       "model.deleted")


class RegistryFollower:
    def __init__(self, client: RegistryClient, wake: Wake, *,
                 fallback_seconds: float = defaults.FALLBACK_RESOLVE_SECONDS, poll_seconds: float = 5.0) -> None:
        self.client = client
        self.wake = wake
        self.fallback_seconds = fallback_seconds
        self.poll_seconds = poll_seconds
        """Long-poll length.  Short, because a poll in flight holds process exit (its thread is joined)."""
        self.healthy = True
        self.error = ""
        self.cursor: int | None = None
        self.event_times: dict[Key, float] = {}
        """When the event that woke a resource happened (for the event → upgrade metric)."""
        self._subscribers: dict[str, dict[Key, str]] = defaultdict(dict)
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, key: Key, model: str, alias: str) -> None:
        """``alias`` empty: a fixed version (woken only by changes of the model's versions)."""
        self.unsubscribe(key)  # the spec may have changed model
        self._subscribers[model][key] = alias

    def unsubscribe(self, key: Key) -> None:
        for followers in self._subscribers.values():
            followers.pop(key, None)

    def subscribers(self) -> list[Key]:
        return [key for followers in self._subscribers.values() for key in followers]

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="registry-follower")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def woken_by(self, model: str, type_: str, alias: str | None) -> list[Key]:
        followers = self._subscribers.get(model, {})
        if type_ in ("alias.set", "alias.deleted"):
            return [key for key, followed in followers.items() if followed == alias]
        if type_ in WAKES_ON_ANY_CHANGE:
            return list(followers)
        return []

    async def _run(self) -> None:
        backoff = 1.0
        last_fallback = time.monotonic()
        while True:
            try:
                if self.cursor is None:  # start at the head: what happened before is resolved on resume
                    self.cursor = await asyncio.to_thread(self._head)
                    metrics.FEED_UP.set(1)
                page = await asyncio.to_thread(self.client.events, self.cursor, timeout=self.poll_seconds)
            except (RegistryError, OSError) as error:
                await self._unhealthy(str(error))
                if time.monotonic() - last_fallback >= self.fallback_seconds:
                    last_fallback = time.monotonic()
                    await self.wake(self.subscribers(), f"poll-{int(time.time())}")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            if not self.healthy:
                self.healthy, self.error = True, ""
                metrics.FEED_UP.set(1)
                log.info("registry event feed is back: re-resolving every resource")
                await self.wake(self.subscribers(), f"feed-{page.next}")
            try:
                await self._dispatch(page)
            except Exception:  # noqa: BLE001 - one bad batch must not stop following
                log.exception("dispatching registry events failed")
                self.cursor = page.next

    def _head(self) -> int:
        """The newest event id (the feed answers ``next`` = after when nothing is newer)."""
        cursor = 0
        while True:
            page = self.client.events(cursor, limit=1000)
            if not page.events:
                return cursor
            cursor = page.next

    async def _dispatch(self, page: EventPage) -> None:
        if page.truncated:  # the feed's retention dropped events this follower never saw
            log.warning("fell behind the registry's event retention: re-resolving every resource")
            self.cursor = page.next
            await self.wake(self.subscribers(), f"relist-{page.next}")
            return
        woken: dict[Key, float] = {}
        for event in page.events:
            metrics.REGISTRY_EVENTS.labels(event.type).inc()
            for key in self.woken_by(event.model, event.type, event.alias):
                woken.setdefault(key, event.time.timestamp())
        self.cursor = page.next
        if woken:
            self.event_times.update(woken)
            await self.wake(list(woken), str(self.cursor))

    async def _unhealthy(self, error: str) -> None:
        if self.healthy:
            log.warning("registry event feed unreachable (%s): re-resolving every %.0f s instead",
                        error, self.fallback_seconds)
            self.healthy, self.error = False, error
            metrics.FEED_UP.set(0)
            await self.wake(self.subscribers(), f"feed-down-{int(time.time())}")
