"""The micro-batcher both servers share: concurrent requests gathered into one forward pass.

The tensor server's routes (HTTP and gRPC) batch examples with it; the language-model server batches
texts to embed.  No fixed window: under load, what arrives during a forward pass forms the
next batch; alone, a request runs at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


class Overloaded(Exception):
    """A request waited longer than the batcher's ``max_queue_s`` for its forward pass (a 503)."""


@dataclass
class _Pending:
    array: np.ndarray
    future: asyncio.Future[np.ndarray] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """Gathers concurrent requests into batches of at most ``max_batch`` examples.

    A batch starts as soon as the previous one is done (no fixed window): under
    load, requests that arrive during a forward pass form the next batch; alone,
    a request runs at once.  ``max_wait_s`` bounds how long a batch waits to fill;
    ``max_queue_s`` (if set) sheds load: a request that waited longer than that for its
    forward pass fails with ``Overloaded`` instead of running late.
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray], max_batch: int, max_wait_s: float = 0.0,
                 max_queue_s: float | None = None) -> None:
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue_s = max_queue_s
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, array: np.ndarray) -> np.ndarray:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run())
        pending = _Pending(array)
        await self._queue.put(pending)
        return await pending.future

    async def _run(self) -> None:
        assert self._queue is not None
        while True:
            batch = [await self._queue.get()]
            size = len(batch[0].array)
            deadline = time.monotonic() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                if size + len(item.array) > self.max_batch and size:
                    await self._run_batch(batch)
                    batch, size = [item], len(item.array)
                    continue
                batch.append(item)
                size += len(item.array)
            await self._run_batch(batch)

    async def _run_batch(self, batch: list[_Pending]) -> None:
        if self.max_queue_s is not None:
            batch = self._shed(batch)
            if not batch:
                return
        try:
            joined = batch[0].array if len(batch) == 1 else np.concatenate([p.array for p in batch])
            outputs = await asyncio.to_thread(self.forward, joined)
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        start = 0
        for pending in batch:
            end = start + len(pending.array)
            if not pending.future.done():
                pending.future.set_result(outputs[start:end])
            start = end

    def _shed(self, batch: list[_Pending]) -> list[_Pending]:
        """Fail the requests that waited past ``max_queue_s``; the rest run."""
        assert self.max_queue_s is not None
        oldest = time.monotonic() - self.max_queue_s
        kept = []
        for pending in batch:
            if pending.enqueued >= oldest:
                kept.append(pending)
            elif not pending.future.done():
                pending.future.set_exception(Overloaded(
                    f"the request waited more than {self.max_queue_s * 1000:.0f} ms for the model "
                    "(max_latency_ms): the server is overloaded; retry later or add replicas"))
        return kept
