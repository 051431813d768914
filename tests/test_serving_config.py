"""Pure parts of the serving runtime: settings, CPU limits, the input contract, Bento tags."""

from __future__ import annotations


from pathlib import Path

import numpy as np
import pytest

from modelyard.bentos.pod.settings import (
    CommonSettings, ServingSettings, VllmSettings, cpu_limit, engine_for, ignored, served_settings, torch_threads,
)
from modelyard.bentos.packager import bento_tag
from modelyard.bentos.pod.signature import InputSpec, coerce
from modelyard.registry.kernel.schemas import BENTO_TAG_PATTERN


def test_settings_from_env_and_back() -> None:
    settings = ServingSettings.from_env({
        "MODELYARD_MAX_BATCH_SIZE": "64", "MODELYARD_MAX_LATENCY_MS": "5", "MODELYARD_BATCHING": "off",
        "MODELYARD_SERVE_WORKERS": "2", "MODELYARD_GPUS": "1", "MODELYARD_ENGINE": "transformers",
        "MODELYARD_LLM_MAX_RUNNING": "3", "MODELYARD_LLM_MAX_WAITING": "7", "MODELYARD_LLM_PREFILL_TOKENS": "99",
        "MODELYARD_MAX_MODEL_LEN": "128", "MODELYARD_ACCESS_LOG": "on"})
    tensor, llm = settings.tensor, settings.llm
    assert (tensor.max_batch_size, tensor.max_latency_ms, tensor.batching, tensor.workers) == (64, 5, False, 2)
    assert (llm.max_running, llm.max_waiting, llm.prefill_tokens, llm.max_model_len) == (3, 7, 99, 128)
    assert (settings.engine, settings.common.gpus, settings.common.access_log) == ("transformers", 1, True)
    assert settings.bentoml_resources() == {"gpu": 1}
    assert ServingSettings.from_env(settings.to_env()) == settings
    assert ServingSettings.from_env({}) == ServingSettings()
    assert ServingSettings().common.gpus is None  # no count given: every visible GPU (a pod always gives one)
    assert ServingSettings.from_env({"MODELYARD_GPUS": "0"}).common.gpus == 0  # a pod without GPUs: the CPU
    assert ServingSettings().bentoml_resources() == {}
    for env, message in [({"MODELYARD_MAX_BATCH_SIZE": "0"}, "MODELYARD_MAX_BATCH_SIZE=0 must be at least 1"),
                         ({"MODELYARD_GPUS": "two"}, "not an integer"),
                         ({"MODELYARD_BATCHING": "maybe"}, "not on or off"),
                         ({"MODELYARD_LLM_MAX_RUNNING": "0"}, "MODELYARD_LLM_MAX_RUNNING"),
                         ({"MODELYARD_ENGINE": "tensorrt"}, "not one of"),
                         ({"MODELYARD_VLLM_GPU_MEMORY_UTILIZATION": "1.5"}, "at most 1"),
                         ({"MODELYARD_VLLM_GPU_MEMORY_UTILIZATION": "nan"}, "at least"),
                         ({"MODELYARD_VLLM_GPU_MEMORY_UTILIZATION": "most"}, "not a number"),
                         ({"MODELYARD_VLLM_TOOL_CALL_PARSER": "--trust-remote-code"}, "not one of"),
                         ({"MODELYARD_VLLM_CPU_KV_CACHE_GIB": "0"}, "at least 1")]:
        with pytest.raises(ValueError, match=message):
            ServingSettings.from_env(env)


def test_vllm_settings_round_trip_through_the_environment() -> None:
    settings = ServingSettings(engine="vllm", vllm=VllmSettings(gpu_memory_utilization=0.85, max_num_seqs=64,
                                                                enable_prefix_caching=False, cpu_kv_cache_gib=2,
                                                                tool_call_parser="hermes"))
    assert settings.to_env()["MODELYARD_VLLM_GPU_MEMORY_UTILIZATION"] == "0.85"
    assert ServingSettings.from_env(settings.to_env()) == settings


def test_each_engine_reads_its_own_section() -> None:
    assert engine_for("hf", "auto") == "transformers" and engine_for("torchscript", "auto") == "torch"
    assert engine_for("torch-export", "torch") == "torch"
    assert engine_for("hf", "vllm") == "vllm"
    with pytest.raises(ValueError, match="engine transformers does not serve format torchscript"):
        engine_for("torchscript", "transformers")
    with pytest.raises(ValueError, match="engine vllm does not serve format torch-export: use torch"):
        engine_for("torch-export", "vllm")
    shown = served_settings(ServingSettings(), "transformers")
    assert set(shown) == {"engine", "common", "llm"} and shown["llm"]["max_running"] == 32
    assert set(served_settings(ServingSettings(), "torch")) == {"engine", "common", "tensor"}
    shown = served_settings(ServingSettings(), "vllm")
    assert set(shown) == {"engine", "common", "vllm", "llm"} and set(shown["llm"]) == {"max_model_len"}
    tuned = ServingSettings().with_values("llm", max_running=4, max_model_len=64).with_values("tensor", workers=2)
    assert ignored(tuned, "vllm") == ["tensor.workers", "llm.max_running"]  # maxModelLen: vLLM reads it
    assert ignored(tuned, "transformers") == ["tensor.workers"]
    assert ignored(ServingSettings().with_values("vllm", max_num_seqs=8), "transformers") == ["vllm.max_num_seqs"]


def test_auto_picks_vllm_on_gpus_where_it_is_available() -> None:
    assert engine_for("hf", "auto", gpus=1, vllm_available=True) == "vllm"
    assert engine_for("hf", "auto", gpus=0, vllm_available=True) == "transformers"  # defaults.VLLM_ON_CPU
    assert engine_for("hf", "auto", gpus=2, vllm_available=False) == "transformers"
    assert engine_for("torchscript", "auto", gpus=1, vllm_available=True) == "torch"
    assert engine_for("hf", "auto", gpus=1, vllm_available=True, task="embed") == "transformers"  # encoders: ours
    changed = ServingSettings().with_values("llm", max_running=4, max_waiting=None)
    assert (changed.llm.max_running, changed.llm.max_waiting) == (4, ServingSettings().llm.max_waiting)


def test_cpu_limit_follows_the_cgroup_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("200000 100000\n")
    assert cpu_limit(cpu_max) == 2
    cpu_max.write_text("50000 100000\n")
    assert cpu_limit(cpu_max) == 1
    cpu_max.write_text("max 100000\n")
    assert cpu_limit(cpu_max, fallback=16) == 16
    assert cpu_limit(tmp_path / "missing", fallback=3) == 3
    assert torch_threads(CommonSettings(threads=5)) == 5


def test_input_spec_checks_shape_exactly() -> None:
    spec = InputSpec.from_metadata({"input": {"shape": [-1, 1, 8, 8], "dtype": "float32"}})
    assert spec is not None
    good = np.zeros((3, 1, 8, 8), dtype="float32")
    assert spec.check(good) is good
    for bad in (np.zeros((64,)), np.zeros((1, 64)), np.zeros((1, 8, 8)), np.zeros((0, 1, 8, 8))):
        with pytest.raises(ValueError, match=r"\[-1, 1, 8, 8\]|empty"):
            spec.check(bad)
    assert spec.example(2).shape == (2, 1, 8, 8) and spec.example().dtype == np.float32
    assert InputSpec.from_metadata({}) is None


def test_bento_tags_are_deterministic_and_accepted_by_the_registry() -> None:
    import re

    tag = bento_tag("digits-cnn", 7, "sha256:" + "ab" * 32)
    assert tag == "digits-cnn:v7-abababababab"
    assert re.match(BENTO_TAG_PATTERN, tag)


@pytest.mark.parametrize("values,dtype,message", [
    ([[True, 1.0]], "float32", "got bool"),
    ([["1.5"]], "float32", "got str"),
    ([[None]], "float32", "null"),
    ([[{}]], "float32", "got dict"),
    ([[1.5]], "int64", "integers"),
    ([[300]], "int8", "outside the range of int8"),
    ([[-1]], "uint8", "outside the range of uint8"),
    ([[2 ** 70]], "int64", "beyond 64 bits"),
    ([[1e39]], "float32", "outside the range of float32"),
    ([[1, [2]]], "float32", "got list"),
    ([[1, 2], [3]], "float32", "rectangular"),
    ([[1, 0]], "bool", "booleans"),
    (np.zeros((2, 2), np.complex64), "float32", "complex64"),
    (np.array([["a"]]), "float32", "<U1"),
    # integers a float dtype would round, and non-finite numbers: one rule on every route
    (np.array([2 ** 40 + 1], np.int64), "float32", "cannot be represented exactly in float32"),
    (np.array([2 ** 63 - 1], np.int64), "float32", "cannot be represented exactly"),
    (np.array([2 ** 64 - 1], np.uint64), "float32", "cannot be represented exactly"),
    (np.array([2 ** 63 - 1], np.int64), "float64", "cannot be represented exactly in float64"),
    ([[2 ** 40 + 1]], "float32", "cannot be represented exactly"),
    ([[float("nan")]], "float32", "finite"),
    ([[float("inf")]], "float64", "finite"),
    (np.array([[np.nan]], np.float32), "float32", "finite"),
])
def test_inputs_are_never_converted_silently(values: object, dtype: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        coerce(values, dtype)


def test_inputs_that_convert_without_loss_pass() -> None:
    assert coerce([[1, 2.5]], "float32").dtype == np.float32
    assert coerce([[1, 2]], "int8").tolist() == [[1, 2]]
    assert coerce([[True, False]], "bool").dtype == np.bool_
    assert coerce(np.ones((2, 3), np.float64), "float32").dtype == np.float32
    assert coerce(np.ones((2, 3), np.int32), "float32").dtype == np.float32
    assert coerce([[2 ** 24, 2 ** 40, -(2 ** 63)]], "float64").tolist() == [[2 ** 24, 2 ** 40, -(2 ** 63)]]
    assert coerce(np.array([2 ** 40], np.int64), "float32").tolist() == [2 ** 40]  # exact: a power of two


def test_a_program_runs_where_the_pod_says() -> None:
    import torch

    from modelyard.bentos.pod.failure import ModelLoadError
    from modelyard.bentos.tensor.loader import pick_device

    assert pick_device(0) == "cpu"
    assert pick_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="given 1 GPU\\(s\\) \\(resources.gpu\\) but sees none"):
            pick_device(1)
