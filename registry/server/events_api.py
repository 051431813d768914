"""``/events``: the ordered change feed, long-polled by operators."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request

from modelyard.registry.kernel import schemas
from modelyard.registry.server.deps import Reader, Store, run_read
from modelyard.registry.store import RegistryStore

router = APIRouter(tags=["events"])

RECHECK_SECONDS = 0.5
"""How often a long-poll re-reads the log for events committed by other processes."""


@router.get("/events", response_model=schemas.EventPage)
async def list_events(
    request: Request, store: Store, _: Reader,
    after: Annotated[int, Query(ge=0, le=2**62, description="return events with a larger id")] = 0,
    timeout: Annotated[float, Query(ge=0, le=60, description="seconds to wait for an event")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
) -> schemas.EventPage:
    """Events after ``after``, oldest first; waits up to ``timeout`` seconds for one to happen."""
    return await long_poll(request, store, after, timeout, limit)


async def long_poll(request: Request, store: RegistryStore, after: int, timeout: float,
                    limit: int) -> schemas.EventPage:
    """Wait up to ``timeout`` seconds for events after ``after`` (the UI's live feed uses it too)."""
    notifier = request.app.state.notifier
    deadline = time.monotonic() + timeout
    while True:
        changed = notifier.current()  # taken before reading, so a commit in between is not missed
        events = await run_read(store, store.events_after, after, limit)
        remaining = deadline - time.monotonic()
        if events or remaining <= 0 or await request.is_disconnected():
            # events that follow ``after`` without a gap prove nothing was dropped: no read needed
            gap = not events or events[0].id != after + 1
            truncated = bool(after) and gap and await run_read(store, store.events_truncated, after)
            return schemas.EventPage(events=events, next=events[-1].id if events else after, truncated=truncated)
        await notifier.wait(changed, min(remaining, RECHECK_SECONDS))
