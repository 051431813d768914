"""OpenAI's API over a loaded model: ``/chat/completions``, ``/completions``, ``/embeddings``,
``/models`` (mounted under ``/v1``), and ``/engine/stats`` for operators and tests.

A plain Starlette app on the BentoML service (same process, port, probes and metrics):
BentoML's own API layer would buffer a stream and validate with its schemas, while
OpenAI's clients expect its exact shapes, server-sent events and error bodies.  Every
request is checked (``protocol``) and tokenized off the event loop; a request the model
cannot take (too long for its context, more tokens than fit) is a 400 in OpenAI's shape,
a full queue a 429.  Generation goes through the shared engine (continuous batching);
embeddings through a micro-batcher, so concurrent requests share forward passes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from modelyard.bentos.pod.batcher import MicroBatcher
from modelyard.bentos.llm.engine import GenerationEngine, GenerationFailed, Overloaded
from modelyard.bentos.llm.loading import LoadedModel
from modelyard.bentos.llm.protocol import (
    CHARS_PER_TOKEN_BOUND, MAX_EMBEDDING_TOKENS, ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, parse,
)
from modelyard.bentos.llm.sampling import SamplingParams
from modelyard.registry.kernel import defaults

EMBED_BATCH = 64
"""Texts encoded in one forward pass; concurrent requests fill it together."""


class Served:
    """The loaded model with its engine or batcher, once the service has loaded it."""

    def __init__(self, loaded: LoadedModel, engine: GenerationEngine | None) -> None:
        self.loaded = loaded
        self.engine = engine
        self.created = int(time.time())
        self.names = {loaded.spec.model, f"{loaded.spec.model}:{loaded.spec.version}"}
        self.embedder = MicroBatcher(self._encode, EMBED_BATCH) if loaded.encoder is not None else None

    def _encode(self, texts: np.ndarray) -> np.ndarray:
        vectors = self.loaded.encoder.encode(list(texts), batch_size=EMBED_BATCH, convert_to_numpy=True,
                                             show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _error(exc: ApiError) -> Response:
    return _json(exc.body(), exc.status)


def build_llm_app(served_ref: Callable[[], Served | None]) -> Starlette:
    """The ASGI app; ``served_ref()`` returns the loaded model once the service has it."""

    def route(handler: Callable[[Request, Served], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            served = served_ref()
            if served is None:
                return _error(ApiError(503, "the model is still loading", kind="server_error", code="loading"))
            try:
                return await handler(request, served)
            except ApiError as exc:
                return _error(exc)
            except Overloaded as exc:
                return _error(ApiError(429, str(exc), kind="server_error", code="overloaded"))
            except GenerationFailed as exc:
                return _error(ApiError(500, str(exc), kind="server_error", code="generation_failed"))

        return wrapped

    async def models(_: Request, served: Served) -> Response:
        spec = served.loaded.spec
        return _json({"object": "list", "data": [
            {"id": spec.model, "object": "model", "created": served.created, "owned_by": "modelyard",
             "version": spec.version, "digest": spec.digest, "task": served.loaded.task,
             "max_model_len": served.loaded.max_model_len},
        ]})

    async def chat(request: Request, served: Served) -> Response:
        body = parse(ChatRequest, await request.body())
        generating(served, body.model)
        renderer = served.loaded.chat
        if renderer is None:
            raise ApiError(400, f"{body.model} has no chat template: send a prompt to /v1/completions instead",
                           param="messages", code="no_chat_template")
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in body.messages]
        bounded(served, sum(len(m["content"]) for m in messages), "messages")
        prompt = await asyncio.get_running_loop().run_in_executor(renderer.executor, renderer.encode, messages)
        return await complete(served, body, prompt, chat=True)

    async def completions(request: Request, served: Served) -> Response:
        body = parse(CompletionRequest, await request.body())
        generating(served, body.model)
        bounded(served, len(body.text), "prompt")
        prompt = await asyncio.to_thread(lambda: list(served.loaded.tokenizer(body.text)["input_ids"]))
        return await complete(served, body, prompt, chat=False)

    async def embeddings(request: Request, served: Served) -> Response:
        body = parse(EmbeddingRequest, await request.body())
        known(served, body.model)
        if served.embedder is None:
            raise ApiError(400, f"{body.model} is a language model: it generates text and has no embeddings",
                           param="model", code="wrong_task")
        texts = body.texts
        for index, text in enumerate(texts):
            bounded(served, len(text), f"input[{index}]")
        counts = await asyncio.to_thread(_token_counts, served.loaded.tokenizer, texts)
        limit = served.loaded.max_model_len
        for index, count in enumerate(counts):
            if count > limit:
                raise ApiError(400, f"input[{index}] is {count} tokens; this model takes at most {limit}",
                               param="input", code="context_length_exceeded")
        if sum(counts) > MAX_EMBEDDING_TOKENS:
            raise ApiError(400, f"the inputs add up to {sum(counts)} tokens; one request may embed at most "
                                f"{MAX_EMBEDDING_TOKENS}: split them over several requests",
                           param="input", code="too_many_tokens")
        dimension = served.loaded.encoder.get_sentence_embedding_dimension()
        if body.dimensions is not None and body.dimensions != dimension:
            raise ApiError(400, f"this model's embeddings have {dimension} dimensions", param="dimensions")
        vectors = await _embed_in_slices(served.embedder, texts)
        data = [{"object": "embedding", "index": index,
                 "embedding": base64.b64encode(vector.astype("<f4").tobytes()).decode()
                 if body.encoding_format == "base64" else vector}
                for index, vector in enumerate(vectors)]
        total = sum(counts)
        return _json({"object": "list", "data": data, "model": body.model,
                      "usage": {"prompt_tokens": total, "total_tokens": total}})

    async def stats(_: Request, served: Served) -> Response:
        engine = served.engine.stats() if served.engine is not None else {}
        return _json({**engine, "tasks": len(asyncio.all_tasks())})

    return Starlette(routes=[
        Route("/models", route(models), methods=["GET"]),
        Route("/chat/completions", route(chat), methods=["POST"]),
        Route("/completions", route(completions), methods=["POST"]),
        Route("/embeddings", route(embeddings), methods=["POST"]),
        Route("/engine/stats", route(stats), methods=["GET"]),
    ])


def known(served: Served, name: str) -> None:
    if name not in served.names:
        raise ApiError(404, f"the model {name!r} does not exist here; this server serves {served.loaded.spec.model!r}",
                       param="model", code="model_not_found")


def bounded(served: Served, characters: int, param: str) -> None:
    """Refuse, untokenized, a text that cannot fit the context (see CHARS_PER_TOKEN_BOUND)."""
    limit = served.loaded.max_model_len
    if characters > limit * CHARS_PER_TOKEN_BOUND:
        raise ApiError(400, f"{param} is {characters} characters: far more than this model's maximum context "
                            f"length of {limit} tokens", param=param.split("[")[0], code="context_length_exceeded")


def generating(served: Served, name: str) -> None:
    known(served, name)
    if served.engine is None:
        raise ApiError(400, f"{name} is an encoder: it makes embeddings (/v1/embeddings), not text",
                       param="model", code="wrong_task")


async def _embed_in_slices(embedder: MicroBatcher, texts: list[str]) -> np.ndarray:
    """Embed ``texts`` one batch-sized slice at a time: each slice joins the batcher's queue behind
    what other requests queued meanwhile, so a request of 2,048 inputs holds the model for one
    slice at a time, never for all of them, and a one-word request waits at most a slice."""
    slices = [await embedder.submit(np.array(texts[start:start + EMBED_BATCH], dtype=object))
              for start in range(0, len(texts), EMBED_BATCH)]
    return slices[0] if len(slices) == 1 else np.concatenate(slices)


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]


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
    deltas = served.engine.generate(prompt, params)
    if body.stream:
        first = await _first(deltas)  # a full queue is a 429 before the stream starts
        return StreamingResponse(_events(shape, first, deltas, body.include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    text, tokens, finish = [], 0, None
    async with contextlib.aclosing(deltas):
        async for delta in deltas:
            text.append(delta.text)
            tokens, finish = delta.completion_tokens, delta.finish_reason
    return _json(shape.whole("".join(text), finish, tokens))


async def _first(deltas: AsyncIterator[Any]) -> Any:
    try:
        return await anext(deltas)
    except BaseException:
        await deltas.aclose()  # type: ignore[attr-defined]
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
