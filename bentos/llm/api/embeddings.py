"""``POST /v1/embeddings``: texts checked against the context, then encoded through the shared
micro-batcher one slice at a time."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from modelyard.bentos.llm.api.common import EMBED_BATCH, Served, json_response, bounded, known
from modelyard.bentos.llm.protocol import MAX_EMBEDDING_TOKENS, ApiError, EmbeddingRequest, parse
from modelyard.bentos.pod.batcher import MicroBatcher


async def create_embeddings(request: Request, served: Served) -> Response:
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
    return json_response({"object": "list", "data": data, "model": body.model,
                  "usage": {"prompt_tokens": total, "total_tokens": total}})


async def _embed_in_slices(embedder: MicroBatcher, texts: list[str]) -> np.ndarray:
    """Embed ``texts`` one batch-sized slice at a time: each slice joins the batcher's queue behind
    what other requests queued meanwhile, so a request of 2,048 inputs holds the model for one
    slice at a time, never for all of them, and a one-word request waits at most a slice."""
    slices = [await embedder.submit(np.array(texts[start:start + EMBED_BATCH], dtype=object))
              for start in range(0, len(texts), EMBED_BATCH)]
    return slices[0] if len(slices) == 1 else np.concatenate(slices)


def _token_counts(tokenizer: Any, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts)["input_ids"]]
