"""Load a model directory (format ``hf``) for serving, after checking it is what was pushed.

Before transformers reads a byte, the extracted files are checked against the manifest
the runtime wrote from the digest-checked archive (``bentos.pod.manifest``) and against the
same safety rules the registry applied (``registry.model.hf_model``: no pickles, no model code
unless the version allows it).  Loading is offline (no hub), from safetensors only, in
the dtype the weights were saved in, on the GPUs the pod was given (``resources.gpu``);
with more than one the layers are spread over them (accelerate's ``device_map="auto"``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.bentos.pod.settings import LLM_ENGINE, ServingSettings, gpus_to_use
from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.bentos.pod.manifest import MANIFEST_FILE, ManifestMismatch, check_manifest
from modelyard.bentos.pod.spec import ModelSpec
from modelyard.registry.kernel import defaults
from modelyard.registry.model.hf_model import HfFacts, UnsafeModelDirectory, directory_tree, inspect

log = logging.getLogger("bentoml.modelyard")
FALLBACK_CONTEXT = 2048
"""The longest sequence of a model whose configuration names none."""


@dataclass
class LoadedModel:
    """What the service serves: a causal language model (``generate``) or an encoder (``embed``)."""

    spec: ModelSpec
    facts: HfFacts
    device: str
    max_model_len: int
    tokenizer: Any
    model: Any = None  # transformers' model, for generate
    encoder: Any = None  # a SentenceTransformer, for embed
    chat: Any = None  # a ChatTemplateRenderer, for a model with a chat template

    @property
    def task(self) -> str:
        return "generate" if self.model is not None else "embed"


def check_files(spec: ModelSpec, src: Path) -> HfFacts:
    """The directory's facts, once its files match the manifest and the registry's rules."""
    root = src / spec.file
    try:
        check_manifest(root, src / MANIFEST_FILE)
        claimed = recorded if isinstance(recorded := spec.metadata.get("hf"), dict) else {}
        return inspect(directory_tree(root), allow_code=claimed.get("allow_code") is True,
                       label=f"{spec.model}:{spec.version}")
    except (ManifestMismatch, UnsafeModelDirectory) as exc:
        raise ModelLoadError(f"refusing to load {spec.model}:{spec.version}: {exc}") from None


def max_model_len(facts: HfFacts, asked: int | None) -> int:
    """The longest sequence served: the spec's ``maxModelLen``, at most the model's context; without
    one, the context capped by the server's ceiling (``LLM_MAX_MODEL_LEN``): a configuration may
    claim any length, and a claim of 2^40 must not become a 2^40-token default."""
    context = facts.context_length or FALLBACK_CONTEXT
    if asked and asked > context:
        raise ModelLoadError(f"maxModelLen {asked} is longer than the model's context of {context}")
    return asked or min(context, defaults.LLM_MAX_MODEL_LEN)


def load(spec: ModelSpec, src: Path, settings: ServingSettings) -> LoadedModel:
    if settings.engine not in ("auto", LLM_ENGINE):
        raise ModelLoadError(f"engine {settings.engine!r} cannot serve format hf: use {LLM_ENGINE} (or auto)")
    facts = check_files(spec, src)
    if facts.task is None:
        raise ModelLoadError(f"{spec.model}:{spec.version} is a {facts.architecture or facts.model_type}: "
                             "only causal language models and sentence encoders are served")
    os.environ["HF_HUB_OFFLINE"] = "1"  # nothing is fetched from a hub, whatever the config names
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import torch

    root = str(src / spec.file)
    gpus = gpus_to_use(settings.common.gpus, torch.cuda.device_count())
    device = "cuda" if gpus else "cpu"
    length = max_model_len(facts, settings.llm.max_model_len)
    common: dict[str, Any] = {"trust_remote_code": facts.allow_code, "local_files_only": True}
    if facts.task == "embed":
        from sentence_transformers import SentenceTransformer

        encoder = SentenceTransformer(root, device=device, model_kwargs={"use_safetensors": True}, **common)
        encoder.max_seq_length = min(encoder.max_seq_length or length, length)
        return LoadedModel(spec, facts, device, length, encoder.tokenizer, encoder=encoder)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement: dict[str, Any] = ({"device_map": "auto", "max_memory": {index: torch.cuda.mem_get_info(index)[1]
                                                                       for index in range(gpus)}}
                                 if gpus > 1 else {})
    model = AutoModelForCausalLM.from_pretrained(root, dtype="auto", use_safetensors=True, **placement, **common)
    if not placement:
        model = model.to(device)  # type: ignore[arg-type]  # transformers' stubs type .to() for its own wrapper
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(root, **common)
    chat = None
    if facts.chat_template and getattr(tokenizer, "chat_template", None):
        from modelyard.bentos.llm.chat_template import ChatTemplateRenderer

        chat = ChatTemplateRenderer(root, trust_remote_code=facts.allow_code)
    log.info("loaded %s:%s (%s, %s parameters) on %s, %d GPU(s), max_model_len %d", spec.model, spec.version,
             facts.architecture, f"{facts.parameters:,}", device, gpus, length)
    return LoadedModel(spec, facts, str(model.device), length, tokenizer, model=model, chat=chat)
