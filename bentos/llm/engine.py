"""The generation engine: one thread runs the model, requests join and leave between steps.

A request is tokenized by its handler and submitted with its sampling settings; the
engine thread admits waiting requests into the running batch (``batch.prefill`` then
``batch.merge``) up to ``max_running`` rows, and every step makes one token for every row
in one forward pass (continuous batching).  Tokens go back to each request's asyncio
queue on its event loop.  A client that goes away marks its request cancelled; the
engine drops its row before the next step, so an abandoned stream costs one step at most.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import torch

from modelyard.bentos.llm import batch as batching
from modelyard.bentos.llm.engine_client import Delta, GenerationFailed, Overloaded
from modelyard.bentos.llm.sampling import SamplingParams, choose
from modelyard.bentos.llm.text import TextStream
from modelyard.registry.kernel import defaults

log = logging.getLogger("bentoml.modelyard")


@dataclass(eq=False)
class _Request:
    prompt: list[int]
    params: SamplingParams
    loop: asyncio.AbstractEventLoop
    text: TextStream
    generator: torch.Generator | None
    events: asyncio.Queue[Delta | BaseException] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    generated: int = 0

    def send(self, item: Delta | BaseException) -> None:
        _deliver_from_thread(self.loop, [(self, item)])


def _deliver_from_thread(loop: asyncio.AbstractEventLoop, items: list[tuple[_Request, Delta | BaseException]]) -> None:
    """Hand a step's deltas to their event loop in one wake-up (not one per request)."""
    try:
        loop.call_soon_threadsafe(_deliver, items)
    except RuntimeError:  # the loop is closed: nobody listens any more
        for request, _ in items:
            request.cancelled = True


def _deliver(items: list[tuple[_Request, Delta | BaseException]]) -> None:
    for request, item in items:
        request.events.put_nowait(item)


class GenerationEngine:
    def __init__(self, model: Any, tokenizer: Any, *, max_running: int, max_model_len: int,
                 max_waiting: int | None = None, prefill_tokens: int = defaults.LLM_PREFILL_TOKENS) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.max_running = max_running
        self.max_model_len = max_model_len
        self.max_waiting = max_waiting if max_waiting is not None else max_running * 16
        self.prefill_tokens = prefill_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.eos = _eos_ids(model, tokenizer)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._running: list[_Request] = []
        self._batch: batching.Batch | None = None
        self._wake = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0
        self.tokens = 0

    # -- the requests' side (event loop) -------------------------------------------------

    async def generate(self, prompt: list[int], params: SamplingParams) -> AsyncGenerator[Delta, None]:
        """Deltas until one carries a ``finish_reason``; leaving early cancels the request."""
        device = self.model.device
        request = _Request(prompt, params, asyncio.get_running_loop(), TextStream(self.tokenizer, params.stop),
                           params.generator(device))
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise Overloaded(f"{len(self._waiting)} requests are waiting already; retry later")
            self._waiting.append(request)
            self._wake.notify()
        try:
            while True:
                item = _merged(await request.events.get(), request.events)
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            request.cancelled = True

    def stats(self) -> dict[str, int]:
        with self._wake:
            return {"running": len(self._running), "waiting": len(self._waiting), "steps": self.steps,
                    "tokens": self.tokens, "max_running": self.max_running, "max_waiting": self.max_waiting,
                    "prefill_tokens": self.prefill_tokens, "max_model_len": self.max_model_len}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="modelyard-generation", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)

    # -- the engine thread ---------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self._waiting and not self._running:
                    self._wake.wait()
                if self._stopping:
                    return
                joining = self._admit()
            try:
                self._step(joining)
            except Exception as exc:  # noqa: BLE001 - every request in the batch hears of it
                log.exception("generation step failed")
                for request in [*self._running, *joining]:
                    request.send(GenerationFailed(f"generation failed: {exc}"))
                with self._wake:
                    self._running, self._batch = [], None

    def _admit(self) -> list[_Request]:
        """Waiting requests that fit in the batch (cancelled ones are dropped); under the lock.

        Joining prompts are prefilled together, padded to the longest, so they are also bounded
        by ``prefill_tokens``: many long prompts arriving at once join over several steps instead
        of needing one huge forward pass (at least one request always joins)."""
        joining: list[_Request] = []
        longest = 0
        while self._waiting and len(self._running) + len(joining) < self.max_running:
            request = self._waiting[0]
            if request.cancelled:
                self._waiting.popleft()
                continue
            padded = max(longest, len(request.prompt)) * (len(joining) + 1)
            if joining and padded > self.prefill_tokens:
                break
            longest = max(longest, len(request.prompt))
            joining.append(self._waiting.popleft())
        return joining

    def _step(self, joining: list[_Request]) -> None:
        if joining:
            fresh = batching.prefill(self.model, [r.prompt for r in joining], self.pad_id)
            if self._batch is None:
                self._batch = fresh
            else:
                batching.merge(self._batch, fresh)
            with self._wake:
                self._running.extend(joining)
        batch = self._batch
        assert batch is not None
        chosen = choose(batch.logits, [r.params for r in self._running], [r.generator for r in self._running])
        kept: list[int] = []
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[_Request, Delta | BaseException]]] = {}
        for row, (request, token) in enumerate(zip(self._running, chosen.tolist(), strict=True)):
            if request.cancelled:
                continue
            delta = self._advance(request, token)
            deliveries.setdefault(request.loop, []).append((request, delta))
            if delta.finish_reason is None:
                kept.append(row)
        with self._wake:  # counted before delivery: a client that has its last token sees it in stats()
            self.steps += 1
            self.tokens += len(self._running)
            self._running = [self._running[row] for row in kept]
        for loop, items in deliveries.items():
            _deliver_from_thread(loop, items)
        if not kept:
            self._batch = None
            return
        batching.keep(batch, kept)
        batching.step(self.model, batch, chosen[kept])

    def _advance(self, request: _Request, token: int) -> Delta:
        """The request's delta for its new token (with a finish reason when it is done)."""
        request.generated += 1
        finish = None
        if token in self.eos:
            text, finish = request.text.finish(), "stop"
        else:
            text = request.text.add(token)
            if request.text.stopped:
                finish = "stop"
            elif (request.generated >= request.params.max_tokens
                  or len(request.prompt) + request.generated >= self.max_model_len):
                text, finish = text + request.text.finish(), "length"
        return Delta(text, request.generated, finish)


def _merged(item: Delta | BaseException, queue: asyncio.Queue[Delta | BaseException]) -> Delta | BaseException:
    """``item`` joined with the deltas already queued behind it: a consumer that fell behind (a
    busy event loop, a slow client) sends one event for several tokens instead of one per token."""
    while isinstance(item, Delta) and item.finish_reason is None and not queue.empty():
        following = queue.get_nowait()
        if isinstance(following, BaseException):
            return following
        item = Delta(item.text + following.text, following.completion_tokens, following.finish_reason)
    return item


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)
