"""``POST /v1/completions``: a text prompt, tokenized off the event loop, then generated."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from modelyard.bentos.llm.api.common import Served, bounded, generating
from modelyard.bentos.llm.api.generation import complete
from modelyard.bentos.llm.protocol import CompletionRequest, parse


async def create_completion(request: Request, served: Served) -> Response:
    body = parse(CompletionRequest, await request.body())
    generating(served, body.model)
    bounded(served, len(body.text), "prompt")
    prompt = await asyncio.to_thread(lambda: list(served.loaded.tokenizer(body.text)["input_ids"]))
    return await complete(served, body, prompt, chat=False)
