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

    python benchmarks/llm_bench.py                      # the defaults below
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


async def served(url: str, concurrency: int, tokens: int, rounds: int) -> dict[str, float]:
    """``concurrency`` streaming clients, each sending ``rounds`` requests one after another."""
    ttft: list[float] = []
    gaps: list[float] = []
    completion = 0
    failures = 0

    async def client_loop(client: httpx.AsyncClient, index: int) -> None:
        nonlocal completion, failures
        for round_ in range(rounds):
            body = {"model": "bench", "prompt": PROMPTS[(index + round_) % len(PROMPTS)], "max_tokens": tokens,
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client (in-process: batches)")
    parser.add_argument("--concurrency", default="1,8,32")
    args = parser.parse_args()
    levels = [int(level) for level in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory(prefix="llm-bench-") as scratch:
        work = Path(scratch)
        model_dir = make_tiny_lm(work / "model", hidden=args.hidden, layers=args.layers, context=1024)
        print(f"device: {device_name()}; model: Llama, hidden {args.hidden}, {args.layers} layers, "
              f"{args.tokens} tokens per request, {args.rounds} rounds", flush=True)
        raw = {level: in_process(model_dir, level, args.tokens, args.rounds) for level in levels}
        registry = RegistryProcess.on(f"sqlite:///{work / 'r.db'}", work / "artifacts")
        with registry:
            with RegistryClient(registry.url) as client:
                client.ensure_model("bench")
                version = client.create_version("bench", format="hf")
                client.upload_artifact("bench", version.version, model_dir)
            port = free_port()
            log = open(work / "serve.log", "w")  # noqa: SIM115 - the child keeps it
            server = subprocess.Popen(
                [sys.executable, "-m", "modelyard.cli", "serve", f"bench:{version.version}", "--port", str(port),
                 "--cache", str(work / "cache")],
                env={**os.environ, "MODELYARD_REGISTRY_URL": registry.url}, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}"
            try:
                started = time.perf_counter()
                wait_ready(url, server, timeout=300)
                print(f"modelyard serve → /readyz: {time.perf_counter() - started:.1f} s", flush=True)
                results = {level: asyncio.run(served(url, level, args.tokens, args.rounds)) for level in levels}
            except RuntimeError:
                print((work / "serve.log").read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                stop_process(server, timeout=30)

    print(f"\n{'concurrency':>11} {'in-process tok/s':>17} {'served tok/s':>13} {'ratio':>6} "
          f"{'TTFT p50':>9} {'TTFT p99':>9} {'ITL p99':>8}")
    failed = 0
    for level in levels:
        result = results[level]
        failed += int(result["failures"])
        print(f"{level:>11} {raw[level]:>17.0f} {result['tokens_per_s']:>13.0f} "
              f"{result['tokens_per_s'] / raw[level]:>6.2f} {result['ttft_p50'] * 1000:>7.0f}ms "
              f"{result['ttft_p99'] * 1000:>7.0f}ms {result['itl_p99'] * 1000:>6.0f}ms")
    if failed:
        print(f"{failed} requests failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
