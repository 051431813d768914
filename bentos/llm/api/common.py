"""What every route shares: the served model, OpenAI-shaped answers and errors, and the checks
that refuse a request before it reaches the engine."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from starlette.responses import Response

from modelyard.bentos.llm.engine_client import EngineClient
from modelyard.bentos.llm.loading import LoadedModel
from modelyard.bentos.llm.protocol import CHARS_PER_TOKEN_BOUND, ApiError
from modelyard.bentos.pod.batcher import MicroBatcher

EMBED_BATCH = 64
"""Texts encoded in one forward pass; concurrent requests fill it together."""


class Served:
    """The loaded model with its engine or batcher, once the service has loaded it."""

    def __init__(self, loaded: LoadedModel, engine: EngineClient | None) -> None:
        self.loaded = loaded
        self.engine = engine
        self.created = int(time.time())
        self.names = {loaded.spec.model, f"{loaded.spec.model}:{loaded.spec.version}"}
        self.embedder = MicroBatcher(self._encode, EMBED_BATCH) if loaded.encoder is not None else None

    def _encode(self, texts: np.ndarray) -> np.ndarray:
        vectors = self.loaded.encoder.encode(list(texts), batch_size=EMBED_BATCH, convert_to_numpy=True,
                                             show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


def json_response(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def error_response(exc: ApiError) -> Response:
    return json_response(exc.body(), exc.status)


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
