"""The BentoML service for format ``hf``: OpenAI's API under ``/v1`` over one model directory.

The runtime starts it (``modelyard serve`` on an ``hf`` version) with the extracted
directory in ``MODELYARD_BENTO_DIR``.  The weights load in ``__init__``, so BentoML's
readiness probe (``/readyz``) answers only once they are loaded and checked; a model that
cannot load stops the server with the reason (``loader.report_failure``) instead of being
restarted forever.  One worker holds the model: continuous batching shares its forward
passes among all requests, which a second copy of the weights would not.
"""

# No `from __future__ import annotations`: BentoML reads these annotations at runtime.

import importlib.metadata
import logging
import os
from pathlib import Path
from typing import Any

import bentoml

from modelyard.bentos.pod.settings import LLM_ENGINE, ServingSettings, served_settings, torch_threads
from modelyard.bentos.pod.limits import BodyLimit
from modelyard.bentos.pod.request_metrics import RequestMetrics, declare
from modelyard.bentos.pod.timeouts import cancel_request_timers
from modelyard.bentos.llm.api.common import Served
from modelyard.bentos.llm.api.server import build_llm_app
from modelyard.bentos.oip.rest import Dispatch, oip_router
from modelyard.bentos.oip.tensors import ModelMeta
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.registry.kernel.defaults import Env

log = logging.getLogger("bentoml.modelyard")

BENTO_DIR = Path(os.environ.get(Env.BENTO_DIR) or Path.cwd())
SPEC = ModelSpec.read(BENTO_DIR)
SETTINGS = ServingSettings.from_env()
cancel_request_timers()

_SERVED: list[Served] = []


def _served() -> "Served | None":
    return _SERVED[0] if _SERVED else None


OPENAI_APP = build_llm_app(_served)
MODEL_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
OPENAI_APP.add_middleware(BodyLimit, max_bytes=SETTINGS.common.max_request_bytes)


class _ProtocolView:
    """The language model as the Open Inference Protocol's health and metadata routes show it: it has
    no tensor interface, so infer says where its API is."""

    check: Any = None

    def __init__(self) -> None:
        self.meta = ModelMeta(name=SPEC.model, version=str(SPEC.version), platform="hf", inputs=(), outputs=())

    def ready(self) -> bool:
        return bool(_SERVED)

    async def infer(self, array: Any) -> Any:
        raise NotImplementedError


_PROTOCOL_VIEW = _ProtocolView()
PROTOCOL_ROUTES = oip_router(lambda: _PROTOCOL_VIEW, server="modelyard",
                             server_version=importlib.metadata.version("modelyard"),
                             infer_note="a language model is served by OpenAI's API: POST /v1/chat/completions, "
                                        "/v1/completions or /v1/embeddings")


@bentoml.asgi_app(OPENAI_APP, path="/v1")
@bentoml.service(
    name="modelyard-llm",
    workers=1,
    resources=SETTINGS.bentoml_resources(),
    traffic={"timeout": 600},
    logging={"access": {"enabled": SETTINGS.common.access_log}},
)
class LLMService:
    """Serves one model version behind OpenAI's API (``/v1/chat/completions`` …)."""

    def __init__(self) -> None:
        import torch

        from modelyard.bentos.llm.engine import GenerationEngine
        from modelyard.bentos.llm.loading import load
        from modelyard.bentos.pod.failure import report_failure

        torch.set_num_threads(torch_threads(SETTINGS.common))
        try:
            loaded = load(SPEC, BENTO_DIR, SETTINGS)
        except Exception as exc:
            report_failure(exc)  # BentoML would restart the worker forever; the runtime stops instead
            raise
        engine = None
        if loaded.task == "generate":
            llm = SETTINGS.llm
            engine = GenerationEngine(loaded.model, loaded.tokenizer, max_running=llm.max_running,
                                      max_model_len=loaded.max_model_len, max_waiting=llm.max_waiting,
                                      prefill_tokens=llm.prefill_tokens)
            engine.start()
        self.served = Served(loaded, engine)
        _SERVED.append(self.served)
        declare(MODEL_ROUTES, generates=engine is not None)

    @bentoml.api(route="/model")
    def model(self) -> dict[str, Any]:
        """Which version is served, on which device, with the facts the registry recorded."""
        loaded = self.served.loaded
        return {"model": SPEC.model, "version": SPEC.version, "digest": SPEC.digest, "format": SPEC.format,
                "task": loaded.task, "device": loaded.device, "max_model_len": loaded.max_model_len,
                "metadata": SPEC.metadata, "serving": served_settings(SETTINGS, LLM_ENGINE)}


# BentoML's service decorator adds the method at run time; its stubs do not show it.
LLMService.add_asgi_middleware(RequestMetrics, routes=MODEL_ROUTES)  # type: ignore[attr-defined]
LLMService.add_asgi_middleware(Dispatch, routes=PROTOCOL_ROUTES)  # type: ignore[attr-defined]
