"""What chat and text completions share: the sampling settings a request may have, and the answer,
whole or streamed as server-sent events, in OpenAI's shapes."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

from modelyard.bentos.llm.api.common import Served, json_response
from modelyard.bentos.llm.engine_client import GenerationFailed
from modelyard.bentos.llm.protocol import ApiError, ChatRequest, CompletionRequest
from modelyard.bentos.llm.sampling import SamplingParams
from modelyard.bentos.pod.request_metrics import token_timings
from modelyard.registry.kernel import defaults


def sampling(body: ChatRequest | CompletionRequest, prompt: list[int], max_model_len: int) -> SamplingParams:
    """The request's sampling settings, or a 400 when the prompt and completion cannot fit."""
    where = "messages" if isinstance(body, ChatRequest) else "prompt"
    if not prompt:
        raise ApiError(400, f"the {where} is empty once tokenized: send at least one token", param=where)
    room = max_model_len - len(prompt)
    wanted = body.token_limit
    if room < 1 or (wanted is not None and wanted > room):
        asked = f" and {wanted} tokens of completion" if wanted is not None else ""
        raise ApiError(400, f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                            f"{len(prompt)} tokens of prompt{asked}. Please reduce the length of the prompt or the "
                            "completion.", param=where, code="context_length_exceeded")
    return SamplingParams(max_tokens=wanted or min(room, defaults.LLM_DEFAULT_MAX_TOKENS),
                          temperature=body.temperature, top_p=body.top_p,
                          stop=tuple(body.stop or ()), seed=body.seed)


async def complete(served: Served, body: ChatRequest | CompletionRequest, prompt: list[int], *,
                   chat: bool) -> Response:
    assert served.engine is not None
    params = sampling(body, prompt, served.loaded.max_model_len)
    shape = _Shape(chat, body.model, len(prompt))
    deltas = _timed(served.engine.generate(prompt, params))
    if body.stream:
        first = await _first(deltas)  # a full queue is a 429 before the stream starts
        return StreamingResponse(_events(shape, first, deltas, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, tokens, finish = [], 0, None
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            text.append(delta.text)
            tokens, finish = delta.completion_tokens, delta.finish_reason
    return json_response(shape.whole("".join(text), finish, tokens))


async def _timed(deltas: AsyncGenerator[Any, None]) -> AsyncGenerator[Any, None]:
    """The engine's deltas, timed for ``/metrics``: time to the first token (what a canary's latency
    bound means for this server) and between tokens.  Closing this closes the engine's generator."""
    first_token, between_tokens = token_timings()
    last = time.perf_counter()
    seen = 0
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            now = time.perf_counter()
            gained = delta.completion_tokens - seen
            if gained > 0:
                if seen == 0:
                    first_token.observe(now - last)
                else:  # a delta may carry several tokens (text held back until it decodes)
                    between_tokens.observe((now - last) / gained)
                seen, last = delta.completion_tokens, now
            yield delta


async def _first(deltas: AsyncGenerator[Any, None]) -> Any:
    try:
        return await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise


async def _events(shape: _Shape, first: Any, deltas: Any, include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events: a role chunk, text chunks, the finish chunk, usage if asked, ``[DONE]``.
    A client that goes away cancels this generator; closing ``deltas`` frees its batch row."""
    async with contextlib.aclosing(deltas):
        if shape.chat:
            yield _event(shape.chunk(None, None, role=True))
        delta, tokens = first, 0
        while True:
            tokens = delta.completion_tokens
            if delta.text:
                yield _event(shape.chunk(delta.text, None))
            if delta.finish_reason is not None:
                yield _event(shape.chunk(None, delta.finish_reason))
                break
            try:
                delta = await anext(deltas)
            except GenerationFailed as exc:
                yield _event(ApiError(500, str(exc), kind="server_error", code="generation_failed").body())
                break
        if include_usage:
            yield _event(shape.usage_chunk(tokens))
        yield b"data: [DONE]\n\n"


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class _Shape:
    """OpenAI's response objects for one request (chat or text completion)."""

    def __init__(self, chat: bool, model: str, prompt_tokens: int) -> None:
        self.chat, self.model, self.prompt_tokens = chat, model, prompt_tokens
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def usage(self, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def _envelope(self, choices: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
        kind = "chat.completion" if self.chat else "text_completion"
        return {"id": self.id, "object": f"{kind}.chunk" if stream and self.chat else kind,
                "created": self.created, "model": self.model, "choices": choices}

    def whole(self, text: str, finish: str | None, completion_tokens: int) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {**self._envelope([choice], stream=False), "usage": self.usage(completion_tokens)}

    def chunk(self, text: str | None, finish: str | None, *, role: bool = False) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["delta"] = {"role": "assistant", "content": ""} if role else (
                {"content": text} if text is not None else {})
        else:
            choice["text"] = text or ""
        return self._envelope([choice], stream=True)

    def usage_chunk(self, completion_tokens: int) -> dict[str, Any]:
        return {**self._envelope([], stream=True), "usage": self.usage(completion_tokens)}
