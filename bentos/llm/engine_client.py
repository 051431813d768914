"""What the API asks of an engine: the one interface between the routes and whatever generates.

The routes (``api``) see only this, as vLLM's OpenAI server sees its ``EngineClient``: submit a
tokenized prompt with its sampling settings and read deltas until one carries a finish reason
(leaving early cancels the request), or read the engine's stats.  ``engine.GenerationEngine`` is
the continuous-batching engine on transformers that implements it today.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.bentos.llm.sampling import SamplingParams


class Overloaded(RuntimeError):
    """More requests wait than the engine queues; the client should retry later."""


class GenerationFailed(RuntimeError):
    """A step of the batch failed (out of memory, a model error); every request in it hears of it."""


@dataclass(frozen=True)
class Delta:
    """What a request gained in one step: new text, tokens generated so far, and why it ended."""

    text: str
    completion_tokens: int
    finish_reason: str | None = None  # "stop" | "length" once finished


class EngineClient(Protocol):
    def generate(self, prompt: list[int], params: SamplingParams) -> AsyncGenerator[Delta, None]:
        """Deltas until one carries a ``finish_reason``; closing the iterator early cancels the request.
        Raises ``Overloaded`` (too many waiting: a 429) or ``GenerationFailed`` (the step failed)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Queues, counters and the bounds it runs with (``/v1/engine/stats``)."""
        ...


if TYPE_CHECKING:  # checked by mypy (tests/test_contract.py); never run
    from modelyard.bentos.llm.engine import GenerationEngine

    def _the_engine_is_an_engine_client(engine: GenerationEngine) -> EngineClient:
        return engine
