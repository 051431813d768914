"""The language-model path's pure parts: model-directory checks, the canonical archive, text
deltas and stop sequences, sampling, request checks, continuous batching against ``generate``,
and the operator's decisions on ``serving.engine`` / ``maxModelLen`` / GPUs."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import tarfile
from pathlib import Path

import pytest
import torch

from modelyard.bentos.llm.api.generation import sampling
from modelyard.bentos.llm.engine import GenerationEngine, Overloaded
from modelyard.bentos.llm.loading import max_model_len
from modelyard.bentos.llm.protocol import ApiError, ChatRequest, CompletionRequest, EmbeddingRequest, parse
from modelyard.bentos.llm.sampling import SamplingParams, choose
from modelyard.bentos.llm.text import TextStream
from modelyard.bentos.pod.failure import ModelLoadError
from modelyard.bentos.runtime import BentoRefused, extract
from modelyard.operator.spec import DeploymentSpec, SpecError
from modelyard.operator.status import Reason
from modelyard.operator.values import (
    OperatorDefaults, ResolvedVersion, memory_bytes, memory_warnings, model_server_values,
)
from modelyard.registry.model.formats import UnsupportedArtifact, hf_archive_facts, sniff_format
from modelyard.registry.model.hf_archive import DirectoryArchive
from modelyard.registry.model.hf_model import HfFacts, UnsafeModelDirectory, directory_tree, inspect
from tests.support.tiny_lm import make_tiny_lm, train_tokenizer


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_lm(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tokenizer():  # noqa: ANN201
    return train_tokenizer()


# -- model directories and their archive ----------------------------------------------------------


def safetensors_bytes(header: dict, data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_the_facts_come_from_config_and_safetensors_headers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                                       "n_positions": 1024}))
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(
        {"a": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 12]},
         "b": {"dtype": "F32", "shape": [1], "data_offsets": [12, 16]}}, bytes(16)))
    facts = inspect(directory_tree(tmp_path), allow_code=False, label="m")
    assert facts == HfFacts(architecture="GPT2LMHeadModel", model_type="gpt2", task="generate", parameters=7,
                            dtype="bfloat16", context_length=1024, chat_template=False, load_bytes=16,
                            needs_code=False, allow_code=False)


@pytest.mark.parametrize("header, data, why", [
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, bytes(8), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "header describes"),
    ({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, bytes(8), "damaged entry"),
    # negative dimensions whose product is positive, fractional ones, overlapping or gapped tensors
    ({"a": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}}, bytes(16), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [2.9, 1.5], "data_offsets": [0, 8]}}, bytes(8), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0.0, 8]}}, bytes(8), "damaged entry"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
      "b": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, bytes(16), "overlapping"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, bytes(12), "overlapping"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "after a gap"),
])
def test_damaged_safetensors_headers_are_refused(tmp_path: Path, header: dict, data: bytes, why: str) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(header, data))
    with pytest.raises(UnsafeModelDirectory, match=why):
        inspect(directory_tree(tmp_path), allow_code=False, label="m")


def test_a_header_length_past_the_file_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(UnsafeModelDirectory, match="header of"):
        inspect(directory_tree(tmp_path), allow_code=False, label="m")


def test_an_auto_map_needs_allow_code(tiny: Path, tmp_path: Path) -> None:
    config = json.loads((tiny / "config.json").read_text())
    for name in tiny.iterdir():
        (tmp_path / name.name).write_bytes(name.read_bytes())
    (tmp_path / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "x.Model"}}))
    with pytest.raises(UnsafeModelDirectory, match="auto_map"):
        inspect(directory_tree(tmp_path), allow_code=False, label="m")
    assert inspect(directory_tree(tmp_path), allow_code=True, label="m").needs_code


def test_the_archive_is_canonical_and_reads_back_as_the_directory(tiny: Path, tmp_path: Path) -> None:
    (tiny / ".hidden").write_text("left out")
    try:
        archive = DirectoryArchive(tiny)
        data = b"".join(archive.chunks())
        assert len(data) == archive.size and archive.sha256() == archive.sha256()
        with tarfile.open(fileobj=io.BytesIO(data)) as bundle:
            members = bundle.getmembers()
            assert [m.name for m in members] == sorted(p.name for p in tiny.iterdir() if p.name != ".hidden")
            assert {(m.mtime, m.mode, m.uid, m.uname) for m in members} == {(0, 0o644, 0, "")}
            for member in members:
                assert bundle.extractfile(member).read() == (tiny / member.name).read_bytes()  # type: ignore[union-attr]
        (tmp_path / "a.tar").write_bytes(data)
        assert sniff_format(tmp_path / "a.tar") == "hf"
        facts = hf_archive_facts(tmp_path / "a.tar", allow_code=False, label="a.tar")
        assert facts == inspect(directory_tree(tiny), allow_code=False, label="x")
    finally:
        (tiny / ".hidden").unlink()


def test_a_compressed_model_archive_is_refused_unexpanded(tiny: Path, tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as bundle:
        for path in sorted(tiny.iterdir()):
            bundle.add(path, path.name)
    with pytest.raises(UnsupportedArtifact, match="not a plain tar archive"):
        sniff_format(tmp_path / "m.tar.gz")


@pytest.mark.parametrize("member, why", [
    (dict(name="../config.json"), "not a clean relative path"),
    (dict(name="/etc/model.safetensors"), "not a clean relative path"),
    (dict(name="..config.json"), "not a clean relative path"),  # once counted as config.json
    (dict(name=".//config.json"), "not a clean relative path"),
    (dict(name="a/../config.json"), "not a clean relative path"),
    (dict(name="./config.json"), "appears twice"),
    (dict(name="tokenizer.json"), "appears twice"),
    (dict(name="extra.json", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "link or a special file"),
])
def test_an_archive_member_that_would_leave_the_directory_is_refused_on_upload(
        tiny: Path, tmp_path: Path, member: dict, why: str) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for path in sorted(tiny.iterdir()):
            bundle.add(path, path.name)
        info = tarfile.TarInfo(member["name"])
        info.type, info.linkname = member.get("type", tarfile.REGTYPE), member.get("linkname", "")
        info.size = 2 if info.type == tarfile.REGTYPE else 0
        bundle.addfile(info, io.BytesIO(b"{}") if info.size else None)
    (tmp_path / "m.tar").write_bytes(buffer.getvalue())
    with pytest.raises(UnsupportedArtifact, match=why):
        sniff_format(tmp_path / "m.tar")


@pytest.mark.parametrize("second", ["..config.json", "./config.json"])
def test_the_pod_extracts_only_what_the_registry_read(tiny: Path, tmp_path: Path, second: str) -> None:
    """A real config.json claiming one context and a second member that a careless reader would
    also call config.json: the registry refuses the archive, and so does the pod's extraction."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        for path in sorted(tiny.iterdir()):
            bundle.add(path, path.name)
        claim = json.dumps({**json.loads((tiny / "config.json").read_text()), "max_position_embeddings": 256}).encode()
        info = tarfile.TarInfo(second)
        info.size = len(claim)
        bundle.addfile(info, io.BytesIO(claim))
    (tmp_path / "m.tar").write_bytes(buffer.getvalue())
    with pytest.raises(UnsupportedArtifact, match="clean relative path|appears twice"):
        sniff_format(tmp_path / "m.tar")
    with pytest.raises(BentoRefused, match="clean relative path|appears twice"):
        extract(tmp_path / "m.tar", tmp_path / "out", limit=1 << 30)


def test_push_refuses_symbolic_links_instead_of_following_them(tiny: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for path in tiny.iterdir():
        (model / path.name).write_bytes(path.read_bytes())
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2")
    (model / "README.md").symlink_to(secret)
    with pytest.raises(UnsafeModelDirectory, match="README.md is a symbolic link .*outside the directory"):
        DirectoryArchive(model)
    (model / "README.md").unlink()
    (model / "copy.json").symlink_to(model / "config.json")
    with pytest.raises(UnsafeModelDirectory, match="copy.json is a symbolic link .*inside the directory"):
        directory_tree(model)
    (model / "copy.json").unlink()
    assert "password" not in b"".join(DirectoryArchive(model).chunks()).decode("latin-1")


def test_an_archive_with_pickles_is_not_a_model(tiny: Path, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as bundle:
        bundle.add(tiny / "config.json", "config.json")
        info = tarfile.TarInfo("pytorch_model.bin")
        info.size = 4
        bundle.addfile(info, io.BytesIO(b"\x80\x04K."))
    (tmp_path / "m.tar").write_bytes(buffer.getvalue())
    with pytest.raises(UnsupportedArtifact, match="pickled files"):
        sniff_format(tmp_path / "m.tar")


# -- text, sampling and requests --------------------------------------------------------------------


def deltas(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], TextStream]:  # noqa: ANN001
    stream = TextStream(tokenizer, stop)
    out = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        out.append(stream.add(token))
        if stream.stopped:
            break
    out.append(stream.finish())
    return out, stream


def test_deltas_add_up_to_the_decoded_text_even_across_split_characters(tokenizer) -> None:  # noqa: ANN001
    text = "The quick brown fox ✓ jumps — ünïcödé 🦊 over the lazy dog"
    parts, _ = deltas(tokenizer, text)
    assert "".join(parts) == text
    assert not any("\ufffd" in part for part in parts)


@pytest.mark.parametrize("stop, expected", [
    (("lazy",), "The quick brown fox jumps over the "),
    (("fox", "quick"), "The "),
    (("ju", "zz"), "The quick brown fox "),
    (("not there",), "The quick brown fox jumps over the lazy dog"),
])
def test_stop_sequences_end_the_text_before_them(tokenizer, stop: tuple[str, ...], expected: str) -> None:  # noqa: ANN001
    parts, stream = deltas(tokenizer, "The quick brown fox jumps over the lazy dog", stop)
    assert "".join(parts) == expected
    assert stream.stopped == (expected != "The quick brown fox jumps over the lazy dog")


def test_a_seed_makes_sampling_repeatable_and_temperature_zero_is_argmax() -> None:
    logits = torch.randn(3, 50)
    params = [SamplingParams(10, temperature=1.0, seed=5), SamplingParams(10, temperature=0),
              SamplingParams(10, temperature=1.0, top_p=1e-6, seed=1)]
    first = choose(logits.clone(), params, [p.generator("cpu") for p in params])
    again = choose(logits.clone(), params, [p.generator("cpu") for p in params])
    assert first.tolist() == again.tolist()
    assert first[1] == logits[1].argmax() and first[2] == logits[2].argmax()  # top_p → the single likeliest


def test_a_temperature_near_zero_picks_the_likeliest_token_without_overflow() -> None:
    logits = torch.randn(2, 50) * 30
    params = [SamplingParams(10, temperature=1e-300, seed=3), SamplingParams(10, temperature=1e-30, top_p=0.5, seed=3)]
    chosen = choose(logits.clone(), params, [p.generator("cpu") for p in params])
    assert chosen.tolist() == logits.argmax(dim=-1).tolist()


def test_requests_are_checked_with_openais_error_shape() -> None:
    chat = parse(ChatRequest, b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", '
                              b'"text": "a"}, {"type": "text", "text": "b"}]}], "max_completion_tokens": 3}')
    assert chat.messages[0].text() == "ab" and chat.token_limit == 3
    assert parse(CompletionRequest, b'{"model": "m", "prompt": ["x"]}').text == "x"
    assert parse(EmbeddingRequest, b'{"model": "m", "input": "x"}').texts == ["x"]
    for body, param in [(b'{"model": "m", "prompt": ["x", "y"]}', "prompt"),
                        (b'{"model": "m", "prompt": "x", "top_p": 0}', "top_p"),
                        (b'{"model": "m", "prompt": "x", "presence_penalty": 1}', "presence_penalty"),
                        (b'{"model": "", "prompt": "x"}', "model"),
                        (b'{"model": "m", "input": []}', "input")]:
        kind = EmbeddingRequest if b"input" in body else CompletionRequest
        with pytest.raises(ApiError) as raised:
            parse(kind, body)
        assert raised.value.status == 400 and raised.value.body()["error"]["param"] == param


def test_max_model_len_is_the_context_unless_the_spec_shortens_it() -> None:
    facts = HfFacts("LlamaForCausalLM", "llama", "generate", 1, "float32", 256, True, 4, False)
    assert max_model_len(facts, None) == 256
    assert max_model_len(facts, 100) == 100
    with pytest.raises(ModelLoadError, match="longer than the model's context"):
        max_model_len(facts, 257)


def test_the_context_is_what_the_weights_hold_and_the_server_caps_an_unbounded_claim(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_positions": 2**40}))
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(
        {"transformer.wpe.weight": {"dtype": "F32", "shape": [256, 2], "data_offsets": [0, 2048]}}, bytes(2048)))
    assert inspect(directory_tree(tmp_path), allow_code=False, label="m").context_length == 256
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "max_position_embeddings": 2**40,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}}))
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes(
        {"lm_head.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(8)))
    assert inspect(directory_tree(tmp_path), allow_code=False, label="m").context_length == 16384
    claims = HfFacts("LlamaForCausalLM", "llama", "generate", 1, "float32", 2**40, True, 4, False)
    assert max_model_len(claims, None) == 32768  # the server's ceiling
    assert max_model_len(claims, 65536) == 65536  # asked for explicitly
    request = parse(CompletionRequest, b'{"model": "m", "prompt": "x"}')
    assert sampling(request, [1, 2, 3], 32768).max_tokens == 4096  # no max_tokens: a bounded default
    assert sampling(request, [1, 2, 3], 100).max_tokens == 97


# -- continuous batching ------------------------------------------------------------------------------


def test_rows_that_join_and_leave_mid_batch_get_exactly_generates_tokens(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    prompts = ["Modelyard", "The quick brown fox jumps over", "Tokens", "an operator rolls them out with Helm"]
    lengths = [12, 30, 5, 20]  # rows leave at different steps
    ids = [tokenizer(p)["input_ids"] for p in prompts]
    expected, generated = [], 0
    for prompt, length in zip(ids, lengths, strict=True):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=length, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True))
        generated += out.shape[1] - len(prompt)  # fewer than `length` where the model chose its end token
    engine = GenerationEngine(model, tokenizer, max_running=3, max_model_len=256, max_waiting=len(prompts))

    async def run(prompt: list[int], length: int) -> str:
        return "".join([d.text async for d in engine.generate(prompt, SamplingParams(length, temperature=0))])

    async def main() -> list[str]:
        """Every row queued before the engine starts: three share the batch from the first step, and
        the fourth joins it mid-way, when the shortest leaves.  No timing decides the overlap."""
        rows = [asyncio.ensure_future(run(p, n)) for p, n in zip(ids, lengths, strict=True)]
        while engine.stats()["waiting"] < len(prompts):
            await asyncio.sleep(0.01)
        engine.start()
        return await asyncio.gather(*rows)

    try:
        assert asyncio.run(main()) == expected
        stats = engine.stats()
        assert stats["tokens"] == generated and stats["steps"] < generated
    finally:
        engine.stop()


def test_long_prompts_join_over_several_steps_with_the_same_tokens(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    ids = [tokenizer("The quick brown fox jumps over the lazy dog " * (i + 2))["input_ids"] for i in range(4)]
    engine = GenerationEngine(model, tokenizer, max_running=4, max_model_len=256)
    engine.prefill_tokens = max(len(p) for p in ids) + 1  # one prompt per prefill
    expected = []
    for prompt in ids:
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        expected.append(tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True))

    admitted: list[int] = []
    admit = engine._admit

    def counted_admit():  # noqa: ANN202
        joining = admit()
        if joining:
            admitted.append(len(joining))
        return joining

    engine._admit = counted_admit  # type: ignore[method-assign]

    async def main() -> list[str]:
        async def run(prompt: list[int]) -> str:
            return "".join([d.text async for d in engine.generate(prompt, SamplingParams(8, temperature=0))])
        tasks = [asyncio.ensure_future(run(p)) for p in ids]
        await asyncio.sleep(0.1)  # all four wait before the engine starts
        engine.start()
        return await asyncio.gather(*tasks)

    try:
        assert asyncio.run(main()) == expected
        assert admitted == [1, 1, 1, 1]  # one long prompt per prefill, each joining the running batch
    finally:
        engine.stop()


def test_a_full_queue_is_refused_at_once(tiny: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    model = AutoModelForCausalLM.from_pretrained(tiny).eval()
    engine = GenerationEngine(model, tokenizer, max_running=1, max_model_len=256, max_waiting=1)  # not started

    async def main() -> None:
        first = engine.generate([1, 2, 3], SamplingParams(5, temperature=0))
        waiting = asyncio.ensure_future(anext(first))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded):
            await anext(engine.generate([1, 2, 3], SamplingParams(5, temperature=0)))
        waiting.cancel()

    asyncio.run(main())


# -- the operator -------------------------------------------------------------------------------------

LLM = ResolvedVersion("llm", 3, "sha256:" + "a" * 64, format="hf",
                      facts={"context_length": 4096, "load_bytes": 3 << 30})
PROGRAM = ResolvedVersion("digits", 1, "sha256:" + "b" * 64, format="torch-export")


def values(spec: dict, resolved: ResolvedVersion) -> dict:
    return model_server_values(DeploymentSpec.parse({"model": {"name": resolved.name, "version": resolved.version},
                                                     **spec}), resolved)


def test_each_engine_gets_only_its_own_settings_in_the_chart() -> None:
    """The operator names the engine that serves the version and passes that server's settings only
    (with its defaults), so the pod's server never receives a setting it would ignore."""
    assert values({}, LLM)["serving"] == {"engine": "transformers", "maxRequestBytes": 32 << 20, "llm": {
        "maxRunning": 32, "maxWaiting": 512, "prefillTokens": 8192}}
    serving = values({"serving": {"engine": "transformers", "maxModelLen": 2048,
                                  "llm": {"maxRunning": 3, "maxWaiting": 9, "prefillTokens": 1024}},
                      "resources": {"gpu": 2}}, LLM)["serving"]
    assert serving["llm"] == {"maxRunning": 3, "maxWaiting": 9, "prefillTokens": 1024, "maxModelLen": 2048}
    assert "tensor" not in serving
    program = values({"serving": {"maxBatchSize": 8, "batching": False}}, PROGRAM)["serving"]
    assert program == {"engine": "torch", "maxRequestBytes": 32 << 20, "tensor": {
        "maxBatchSize": 8, "maxLatencyMs": 1000, "workers": 1, "batching": False}}
    with_grpc = values({"serving": {"grpc": True}}, PROGRAM)["serving"]["tensor"]
    assert with_grpc["grpc"] is True  # the chart opens the gRPC port for it
    own = ResolvedVersion("own", 1, "sha256:" + "c" * 64, format="bento")
    assert values({}, own)["serving"] == {"engine": "auto", "maxRequestBytes": 32 << 20}
    # A user's own service may read any of them (bentos/examples/embedding reads the tensor server's):
    # what the spec sets is passed on as set, without defaults.
    assert values({"serving": {"maxBatchSize": 16, "llm": {"maxRunning": 2}}}, own)["serving"] == {
        "engine": "auto", "maxRequestBytes": 32 << 20, "tensor": {"maxBatchSize": 16}, "llm": {"maxRunning": 2}}


@pytest.mark.parametrize("spec, resolved, message", [
    ({"serving": {"engine": "torch"}}, LLM, "does not serve llm:3 \\(format hf\\)"),
    ({"serving": {"engine": "transformers"}}, PROGRAM, "format torch-export"),
    ({"serving": {"maxModelLen": 8192}}, LLM, "longer than llm:3's context of 4096"),
    ({"serving": {"maxModelLen": 16}}, PROGRAM, "serving.maxModelLen is read only by the language-model server"),
    ({"serving": {"llm": {"maxRunning": 4}}}, PROGRAM, "serving.llm.maxRunning is read only by the language-model"),
    ({"serving": {"maxBatchSize": 32}}, LLM, "serving.maxBatchSize is read only by the tensor server .* llm:3 "
                                             "\\(format hf\\) is served by the language-model server"),
    ({"serving": {"workers": 2}}, LLM, "serving.workers is read only by the tensor server"),
    ({"serving": {"batching": True}}, LLM, "serving.batching is read only by the tensor server"),
    ({"serving": {"grpc": True}}, LLM, "serving.grpc is read only by the tensor server"),
    ({"resources": {"gpu": 2}}, PROGRAM, "runs on one GPU"),
])
def test_serving_that_cannot_work_is_refused_with_a_reason(spec: dict, resolved: ResolvedVersion,
                                                          message: str) -> None:
    with pytest.raises(SpecError, match=message) as raised:
        values(spec, resolved)
    assert raised.value.reason == Reason.INVALID_SERVING


VLLM_IMAGE = OperatorDefaults(vllm_runtime_image="registry.local/modelyard-runtime-vllm:1")


def test_vllm_gets_its_image_its_settings_and_maxmodellen_only() -> None:
    spec = {"serving": {"engine": "vllm", "maxModelLen": 2048, "vllm": {
        "maxNumSeqs": 64, "enablePrefixCaching": True, "toolCallParser": "hermes", "compactJson": True}}}
    rendered = model_server_values(DeploymentSpec.parse({"model": {"name": "llm", "version": 3}, **spec}), LLM,
                                   VLLM_IMAGE)
    assert rendered["image"]["repository"] == "registry.local/modelyard-runtime-vllm"
    assert rendered["serving"] == {"engine": "vllm", "maxRequestBytes": 32 << 20, "llm": {"maxModelLen": 2048},
                                   "vllm": {"maxNumSeqs": 64, "enablePrefixCaching": True,
                                            "toolCallParser": "hermes", "compactJson": True}}
    gpus = {"model": {"name": "llm", "version": 3}, "resources": {"gpu": 2},
            "serving": {"vllm": {"gpuMemoryUtilization": 0.85}}}
    auto = model_server_values(DeploymentSpec.parse(gpus), LLM, VLLM_IMAGE)  # auto: vLLM on GPUs where there is one
    assert auto["serving"]["engine"] == "vllm" and auto["serving"]["vllm"] == {"gpuMemoryUtilization": 0.85}
    on_cpu = model_server_values(DeploymentSpec.parse({"model": {"name": "llm", "version": 3}}), LLM, VLLM_IMAGE)
    assert on_cpu["serving"]["engine"] == "transformers"  # defaults.VLLM_ON_CPU
    assert on_cpu["image"]["repository"] == "ghcr.io/modelyard/modelyard-runtime"
    encoder = ResolvedVersion("enc", 2, "sha256:" + "d" * 64, format="hf", facts={"task": "embed"})
    assert model_server_values(DeploymentSpec.parse({**gpus, "model": {"name": "enc", "version": 2}, "serving": {}}),
                               encoder, VLLM_IMAGE)["serving"]["engine"] == "transformers"  # encoders stay on ours
    no_image = model_server_values(DeploymentSpec.parse(gpus | {"serving": {}}), LLM)
    assert no_image["serving"]["engine"] == "transformers"  # no vLLM image: auto keeps our engine
    own = {"model": {"name": "llm", "version": 3}, "image": "mine/vllm:2", "serving": {"engine": "vllm"}}
    assert model_server_values(DeploymentSpec.parse(own), LLM)["image"] == {  # the spec's own image may carry it
        "repository": "mine/vllm", "tag": "2", "pullPolicy": "IfNotPresent"}


@pytest.mark.parametrize("spec, resolved, message", [
    ({"serving": {"engine": "vllm"}}, PROGRAM, "serving.engine vllm does not serve digits:1 \\(format torch-export\\)"),
    ({"serving": {"engine": "vllm", "llm": {"maxRunning": 4}}}, LLM,
     "serving.llm.maxRunning is read only by the language-model server .* served by vLLM"),
    ({"serving": {"engine": "vllm", "maxBatchSize": 4}}, LLM, "serving.maxBatchSize is read only by the tensor server"),
    ({"serving": {"engine": "transformers", "vllm": {"maxNumSeqs": 8}}}, LLM,
     "serving.vllm.maxNumSeqs is read only by vLLM .* served by the language-model server"),
    ({"serving": {"vllm": {"toolCallParser": "hermes"}}}, PROGRAM, "serving.vllm.toolCallParser is read only by vLLM"),
    ({"serving": {"engine": "vllm", "vllm": {"gpuMemoryUtilization": 0.5}}}, LLM, "applies to GPUs and resources.gpu"),
    ({"serving": {"engine": "vllm", "vllm": {"cpuKvCacheGiB": 2}}, "resources": {"gpu": 1}}, LLM,
     "applies on the CPU and resources.gpu is 1"),
    ({"serving": {"engine": "vllm"}}, ResolvedVersion("enc", 2, "sha256:" + "d" * 64, format="hf",
                                                      facts={"task": "embed", "architecture": "BertModel"}),
     "enc:2 is a BertModel \\(embed\\): engine vllm serves causal language models"),
])
def test_vllm_settings_that_cannot_work_are_refused(spec: dict, resolved: ResolvedVersion, message: str) -> None:
    with pytest.raises(SpecError, match=message) as raised:
        model_server_values(DeploymentSpec.parse({"model": {"name": resolved.name, "version": resolved.version},
                                                  **spec}), resolved, VLLM_IMAGE)
    assert raised.value.reason == Reason.INVALID_SERVING


def test_vllm_without_an_image_for_it_is_refused() -> None:
    with pytest.raises(SpecError, match="needs a runtime image with vLLM, and this operator has none"):
        values({"serving": {"engine": "vllm"}}, LLM)


def test_the_cache_volume_holds_a_large_model_twice() -> None:
    assert values({}, PROGRAM)["cache"]["sizeLimit"] == "10Gi"
    big = ResolvedVersion("llm", 3, "sha256:" + "a" * 64, format="hf", facts={"load_bytes": 140 << 30})
    assert values({}, big)["cache"]["sizeLimit"] == "350Gi"


def test_memory_below_the_weights_is_a_warning() -> None:
    def spec(memory: str, gpu: int = 0) -> DeploymentSpec:
        return DeploymentSpec.parse({"model": {"name": "llm", "version": 3},
                                     "resources": {"memory": memory, "gpu": gpu}})

    assert memory_bytes("2Gi") == 2 << 30 and memory_bytes("1.5G") == 1_500_000_000 and memory_bytes("x") is None
    assert "needs 3,221,225,472 bytes" in memory_warnings(spec("2Gi"), LLM)[0]
    assert memory_warnings(spec("4Gi"), LLM) == []
    assert memory_warnings(spec("2Gi", gpu=1), LLM) == []  # GPU memory is not a resource the spec names
    assert memory_warnings(spec("1Mi"), PROGRAM) == []


def test_the_server_uses_the_gpus_the_pod_was_given() -> None:
    from modelyard.bentos.pod.settings import gpus_to_use

    assert gpus_to_use(None, 4) == 4  # a local `modelyard serve`: every visible GPU
    assert gpus_to_use(0, 4) == 0  # a pod without GPUs serves on the CPU, even where one is visible
    assert gpus_to_use(2, 4) == 2  # only what it was given: the other replicas' GPUs are not its own
    with pytest.raises(ModelLoadError, match="given 2 GPU\\(s\\) \\(resources.gpu\\) but sees 1"):
        gpus_to_use(2, 1)
