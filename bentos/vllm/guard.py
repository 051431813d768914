"""What stands in front of vLLM's OpenAI app, inside its process (vLLM's ``--middleware``).

vLLM serves many routes and trusts what it is given in ways a hostile client can use; the guard
keeps the rules every Modelyard model server keeps:

- **Only the routes we serve**: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``, the
  probes and ``/metrics``.  Everything else vLLM offers (``/v1/responses``, ``/v1/messages``, token-id
  generation, elastic scaling, …) answers 404: each would need its own checks.
- **Bodies are bounded** (``BodyLimit``, ``MODELYARD_MAX_REQUEST_BYTES``: 413 before a byte is parsed).
- **No forged turns**: vLLM parses a model's control tokens wherever they appear, so a user who writes
  ``<|system|>`` in a message gets another role's turn.  Our engine encodes such text as text; vLLM
  cannot be told to, so a chat message that contains one of the model's control tokens is a 400.
- **A chat template is bounded**: vLLM renders templates in a thread, unbounded in time and memory.
  Each chat is rendered first by the language-model server's renderer (child processes with a time
  and memory ceiling, ``bentos.llm.chat_template``); a render past its bounds is a 400 and never
  reaches vLLM.  A template that merely refuses the messages is left for vLLM to answer.
- **Ready means it generated**: vLLM's ``/health`` says its engine is up, not that the model runs (vLLM's CPU
  attention has no kernel for some head sizes, and finds out on the first request, then exits).  Until one
  token has been generated the guard answers the probes itself: it asks vLLM for one token first, and the
  pod turns ready only if that worked; a model that cannot run fails before any client is sent to it, and the
  runtime reports vLLM's error as the pod's termination message.
- **Counted alike**: requests are counted in ``registry.kernel.serving_metrics``' families on vLLM's own
  ``/metrics`` (its registry is prometheus_client's default), so the canary analysis reads a vLLM
  pod as it reads ours; time to first token comes from vLLM's ``vllm:time_to_first_token_seconds``.

vLLM adds the class with no arguments, so it reads its configuration from the environment the
runtime set (``launch.vllm_command``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelyard.bentos.llm.chat_template import ChatTemplateRenderer
from modelyard.bentos.llm.protocol import MAX_MESSAGES, ApiError
from modelyard.bentos.pod.limits import BodyLimit
from modelyard.bentos.pod.request_metrics import RequestMetrics, declare
from modelyard.bentos.pod.settings import ServingSettings
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.registry.kernel.defaults import Env

log = logging.getLogger("modelyard.vllm")
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions")
OPEN_ROUTES = frozenset({*MODEL_ROUTES, "/v1/models", "/health", "/ping", "/version", "/metrics", "/load"})
"""The routes a client reaches; vLLM's others answer 404."""
PROBES = frozenset({"/readyz", "/livez"})
"""Our other servers' probes, answered as vLLM's ``/health`` (up once the engine is, failing once it died)."""
HEALTH = "/health"
WARM_UP = {"prompt": "Hello", "max_tokens": 1, "temperature": 0}
CHAT_ROUTE = "/v1/chat/completions"


def control_tokens(model_dir: Path) -> list[str]:
    """The model's control tokens (special added tokens), read from its tokenizer files as data: no
    tokenizer code runs here."""
    try:
        tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    except (OSError, ValueError):
        tokenizer = {}
    added = tokenizer.get("added_tokens") if isinstance(tokenizer, dict) else None
    decoder = _tokenizer_config(model_dir).get("added_tokens_decoder")
    entries = [*(added if isinstance(added, list) else ()), *(decoder.values() if isinstance(decoder, dict) else ())]
    found = {entry["content"] for entry in entries  # a file is data here: whatever else it holds is skipped
             if isinstance(entry, dict) and entry.get("special") and isinstance(entry.get("content"), str)
             and entry["content"]}
    return sorted(found, key=len, reverse=True)


def message_texts(messages: Any) -> list[tuple[int, str]]:
    """(index, text) of every text a chat's messages carry: string contents and text parts."""
    texts: list[tuple[int, str]] = []
    if not isinstance(messages, list):
        return texts
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            texts.append((index, content))
        elif isinstance(content, list):
            texts += [(index, part["text"]) for part in content
                      if isinstance(part, dict) and isinstance(part.get("text"), str)]
    return texts


def renderable(messages: list[Any]) -> list[dict[str, str]]:
    """The chat as the renderer takes it: role and text content (parts joined)."""
    shown = []
    for message in messages:
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, list):
                content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
            shown.append({"role": str(message.get("role", "")), "content": content if isinstance(content, str) else ""})
    return shown


class ChatChecks:
    """The checks a chat request passes before vLLM sees it (see the module's docstring)."""

    def __init__(self, tokens: list[str], renderer: ChatTemplateRenderer | None) -> None:
        self.pattern = re.compile("|".join(map(re.escape, tokens))) if tokens else None
        self.renderer = renderer

    def forged_turn(self, body: Any) -> ApiError | None:
        """A 400 for a message that writes one of the model's control tokens, else None."""
        if self.pattern is None or not isinstance(body, dict):
            return None
        for index, text in message_texts(body.get("messages")):
            if match := self.pattern.search(text):
                return ApiError(400, f"messages[{index}] contains {match.group()!r}, a control token of this model: "
                                     "it is refused (it would forge a turn of another role)",
                                param=f"messages[{index}].content", code="control_token")
        return None

    async def bounded_render(self, body: Any) -> ApiError | None:
        """A 400 when the model's chat template exceeds its time or memory bound on this chat."""
        if self.renderer is None or not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return None
        messages = body["messages"]
        if len(messages) > MAX_MESSAGES:
            return ApiError(400, f"at most {MAX_MESSAGES} messages", param="messages")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self.renderer.executor, self.renderer.encode, renderable(messages))
        except ApiError as error:
            if error.code == "chat_template_limit" or error.status >= 500:
                return error
        return None  # rendered, or refused by the template itself: vLLM answers that as it does


class Guard:
    """ASGI middleware vLLM adds to its app (constructed with the app only)."""

    def __init__(self, app: ASGIApp) -> None:
        self.vllm = app
        settings = ServingSettings.from_env()
        checked = BodyLimit(self._route, max_bytes=settings.common.max_request_bytes)
        self.app = RequestMetrics(checked, routes=MODEL_ROUTES)
        self.warmed = False
        self._warming: asyncio.Lock | None = None
        declare(MODEL_ROUTES)

    @cached_property
    def checks(self) -> ChatChecks:
        """Built on the first chat (the renderers start then), not while vLLM assembles its app."""
        src = Path(os.environ.get(Env.BENTO_DIR) or ".")
        spec = ModelSpec.read(src)
        model_dir = src / spec.file
        recorded = spec.metadata.get("hf")
        hf: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        renderer = None
        if (model_dir / "chat_template.jinja").exists() or "chat_template" in _tokenizer_config(model_dir):
            renderer = ChatTemplateRenderer(str(model_dir), trust_remote_code=hf.get("allow_code") is True,
                                            sanitize=False)
        return ChatChecks(control_tokens(model_dir), renderer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("path") in PROBES:
            scope = {**scope, "path": HEALTH, "raw_path": HEALTH.encode()}
        if scope["type"] == "http" and scope.get("path") == HEALTH and not self.warmed:
            await self._warm_up(scope, send)
            return
        if scope["type"] == "http" and scope.get("path", "") not in OPEN_ROUTES:
            await _answer(send, ApiError(404, f"{scope.get('path')} is not served here (Modelyard's vLLM engine "
                                              f"serves {', '.join(sorted(OPEN_ROUTES))})", kind="not_found"))
            return
        await self.app(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != CHAT_ROUTE or scope.get("method") != "POST":
            await self.vllm(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None  # vLLM answers a body that is not JSON
        checks = self.checks
        error = checks.forged_turn(body) or await checks.bounded_render(body)
        if error is not None:
            await _answer(send, error)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": raw, "more_body": False}

        await self.vllm(scope, replay, send)


    async def _warm_up(self, probe: Scope, send: Send) -> None:
        """Answer a probe before the first token: vLLM's health, then one token generated (once)."""
        self._warming = self._warming or asyncio.Lock()
        async with self._warming:
            status, body = await _call(self.vllm, probe, "GET", HEALTH)
            if status == 200 and not self.warmed:
                model = ModelSpec.read(Path(os.environ.get(Env.BENTO_DIR) or ".")).model
                status, body = await _call(self.vllm, probe, "POST", "/v1/completions",
                                           orjson.dumps({"model": model, **WARM_UP}))
                if status == 200:
                    self.warmed = True
                    log.info("warmed up: one token generated; ready")
                else:
                    log.error("warm-up failed (%d): %s", status, body[:1000].decode(errors="replace"))
                    status = 503
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


async def _call(app: ASGIApp, like: Scope, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """One request to ``app`` in this process (a scope made from ``like``, the probe's): (status, body)."""
    scope = {**like, "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent = False
    finished = asyncio.Event()
    status, chunks = 500, []

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def collect(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = int(message["status"])
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                finished.set()

    await app(scope, receive, collect)
    finished.set()
    return status, b"".join(chunks)


def _tokenizer_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text())
        return config if isinstance(config, dict) else {}
    except (OSError, ValueError):
        return {}


async def _answer(send: Send, error: ApiError) -> None:
    body = orjson.dumps(error.body())
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
