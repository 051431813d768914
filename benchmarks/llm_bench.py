#!/usr/bin/env python3
"""Language-model serving benchmark: the served OpenAI API against in-process ``generate``, side by side.

One model (a Llama made in code, random weights, no hub), in one run:
  1. in-process: transformers' batched ``generate`` (greedy, left-padded) at batch 1, 8 and 32:
     generated tokens per second, the best a Python caller of the same model gets;
  2. served: ``modelyard serve`` of the same weights pushed to a registry, at concurrency
     1, 8 and 32 streaming ``/v1/completions`` clients (httpx, in this process): tokens per
     second (from ``usage``), time to first token p50/p99 and inter-token latency p99 (the
     gap between streamed chunks);
and the served/in-process ratio per concurrency.  On a machine with a GPU both sides run on
it and the device is printed; on CPU both use the same cores.

With ``--engines transformers,vllm`` the same model is served by each engine in turn (one server at
a time, the same client) and a second table puts them side by side: tokens per second, our engine's
over vLLM's, time to first token, and how long each took to become ready.  vLLM runs from its own
virtualenv (``benchmarks/vllm_env.sh`` makes it once: vLLM pins an older transformers), through
``modelyard serve --engine vllm``, so the guard in front of it is measured too.

    python benchmarks/llm_bench.py                      # the defaults below
    python benchmarks/llm_bench.py --engines transformers,vllm --concurrency 1,8,32
    python benchmarks/llm_bench.py --tokens 16 --rounds 1 --hidden 64 --layers 2   # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelyard.registry.client import RegistryClient  # noqa: E402
from modelyard.registry.kernel.processes.children import RegistryProcess, free_port, stop_process, wait_ready  # noqa: E402
from tests.support.tiny_lm import CORPUS, make_tiny_lm  # noqa: E402

PROMPTS = [line.strip() for line in CORPUS.splitlines() if line.strip()]


def device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"


def in_process(model_dir: Path, batch: int, tokens: int, rounds: int) -> float:
    """Generated tokens per second of batched greedy ``generate`` (every row makes ``tokens``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device).eval()
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True).to(device)
    settings = dict(max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                    pad_token_id=tokenizer.pad_token_id)
    with torch.inference_mode():
        model.generate(**inputs, **settings)  # warm-up
        started = time.perf_counter()
        for _ in range(rounds):
            model.generate(**inputs, **settings)
        elapsed = time.perf_counter() - started
    return batch * tokens * rounds / elapsed


async def served(url: str, concurrency: int, tokens: int, rounds: int, model: str = "bench") -> dict[str, float]:
    """``concurrency`` streaming clients, each sending ``rounds`` requests one after another."""
    ttft: list[float] = []
    gaps: list[float] = []
    completion = 0
    failures = 0

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal completion, failures
        for round_ in range(rounds):
            body = {"model": model, "prompt": PROMPTS[(index + round_) % len(PROMPTS)], "max_tokens": tokens,
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            sent = time.perf_counter()
            last = None
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    failures += 1
                    await response.aread()
                    continue
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = orjson.loads(line[6:])
                    if event.get("usage"):
                        completion += event["usage"]["completion_tokens"]
                    if event["choices"] and event["choices"][0]["text"]:
                        now = time.perf_counter()
                        if last is None:
                            ttft.append(now - sent)
                        else:
                            gaps.append(now - last)
                        last = now

    limits = httpx.Limits(max_connections=concurrency + 8)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:
        await client_loop(client, 0)  # warm-up (not counted below)
        ttft.clear(), gaps.clear()
        completion = 0
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client, i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"tokens_per_s": completion / elapsed, "ttft_p50": _quantile(ttft, 0.5), "ttft_p99": _quantile(ttft, 0.99),
            "itl_p99": _quantile(gaps, 0.99), "failures": failures}


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, int(q * 100) - 1)]


def serve_and_measure(work: Path, registry_url: str, ref: str, engine: str, python: str, levels: list[int],
                      tokens: int, rounds: int) -> tuple[float, dict[int, dict[str, float]]]:
    """Serve ``ref`` with ``engine`` (``python``'s environment), measure every concurrency, stop it:
    (seconds until ready, results by concurrency)."""
    port = free_port()
    log_path = work / f"serve-{engine}.log"
    log = open(log_path, "w")  # noqa: SIM115 - the child keeps it
    server = subprocess.Popen(
        [python, "-m", "modelyard.cli", "serve", ref, "--port", str(port), "--cache", str(work / f"cache-{engine}"),
         "--engine", engine],
        env={**os.environ, "MODELYARD_REGISTRY_URL": registry_url}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        started = time.perf_counter()
        wait_ready(url, server, timeout=600)
        ready = time.perf_counter() - started
        print(f"modelyard serve --engine {engine} → ready: {ready:.1f} s", flush=True)
        return ready, {level: asyncio.run(served(url, level, tokens, rounds)) for level in levels}
    except RuntimeError:
        print(log_path.read_text()[-3000:], file=sys.stderr)
        raise
    finally:
        stop_process(server, timeout=60)


def vllm_python() -> str:
    made = subprocess.run(["bash", str(ROOT / "benchmarks" / "vllm_env.sh")], capture_output=True, text=True,
                          timeout=1800)
    if made.returncode != 0:
        raise RuntimeError(f"benchmarks/vllm_env.sh failed:\n{made.stderr[-3000:]}")
    return made.stdout.strip().splitlines()[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client (in-process: batches)")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                        help="the weights' dtype (vLLM computes a float32 model in bfloat16 on CPU; ours in the saved one)")
    parser.add_argument("--engines", default="transformers", help="transformers, vllm, or both (comma-separated)")
    parser.add_argument("--vllm-python", default=None,
                        help="an interpreter with vLLM and this checkout (default: benchmarks/vllm_env.sh makes one)")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]
    engines = [engine.strip() for engine in args.engines.split(",") if engine.strip()]
    if not set(engines) <= {"transformers", "vllm"} or not engines:
        parser.error("--engines: transformers, vllm, or both")
    pythons = {"transformers": sys.executable}
    if "vllm" in engines:
        pythons["vllm"] = args.vllm_python or vllm_python()

    with tempfile.TemporaryDirectory(prefix="llm-bench-") as scratch:
        work = Path(scratch)
        model_dir = make_tiny_lm(work / "model", hidden=args.hidden, layers=args.layers, context=1024,
                                 dtype=args.dtype)
        print(f"device: {device_name()}; model: Llama, hidden {args.hidden}, {args.layers} layers, {args.dtype}, "
              f"{args.tokens} tokens per request, {args.rounds} rounds", flush=True)
        raw = {level: in_process(model_dir, level, args.tokens, args.rounds) for level in levels}
        registry = RegistryProcess.on(f"sqlite:///{work / 'r.db'}", work / "artifacts")
        measured: dict[str, tuple[float, dict[int, dict[str, float]]]] = {}
        with registry:
            with RegistryClient(registry.url) as client:
                client.ensure_model("bench")
                version = client.create_version("bench", format="hf")
                client.upload_artifact("bench", version.version, model_dir)
            for engine in engines:  # one server at a time: each gets the machine to itself
                measured[engine] = serve_and_measure(work, registry.url, f"bench:{version.version}", engine,
                                                     pythons[engine], levels, args.tokens, args.rounds)

    first = engines[0]
    results = measured[first][1]
    print(f"\n{first}: {'concurrency':>11} {'in-process tok/s':>17} {'served tok/s':>13} {'ratio':>6} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p99':>8}")
    failed = sum(int(r["failures"]) for _, by_level in measured.values() for r in by_level.values())
    for level in levels:
        result = results[level]
        print(f"{level:>11} {raw[level]:>17.0f} {result['tokens_per_s']:>13.0f} "
              f"{result['tokens_per_s'] / raw[level]:>6.2f} {result['ttft_p50'] * 1000:>7.0f}ms "
              f"{result['ttft_p99'] * 1000:>7.0f}ms {result['itl_p99'] * 1000:>6.0f}ms")
    if len(engines) == 2:
        ours, theirs = (measured["transformers"], measured["vllm"])
        print(f"\nside by side (ready: transformers {ours[0]:.0f} s, vllm {theirs[0]:.0f} s)")
        print(f"{'concurrency':>11} {'ours tok/s':>11} {'vLLM tok/s':>11} {'ours/vLLM':>9} "
              f"{'ours TTFT p50/p99':>18} {'vLLM TTFT p50/p99':>18}")
        for level in levels:
            a, b = ours[1][level], theirs[1][level]
            print(f"{level:>11} {a['tokens_per_s']:>11.0f} {b['tokens_per_s']:>11.0f} "
                  f"{a['tokens_per_s'] / b['tokens_per_s']:>9.2f} "
                  f"{a['ttft_p50'] * 1000:>8.0f}/{a['ttft_p99'] * 1000:<6.0f}ms "
                  f"{b['ttft_p50'] * 1000:>8.0f}/{b['ttft_p99'] * 1000:<6.0f}ms")
    if failed:
        print(f"{failed} requests failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
