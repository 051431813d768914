"""``POST /v1/chat/completions``: the chat rendered by the model's own template (in a bounded child
process), then generated like a completion."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from modelyard.bentos.llm.api.common import Served, bounded, generating
from modelyard.bentos.llm.api.generation import complete
from modelyard.bentos.llm.protocol import ApiError, ChatRequest, parse


async def create_chat_completion(request: Request, served: Served) -> Response:
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
