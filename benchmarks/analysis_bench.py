"""The cost of canary analysis to the operator: N canaries under analysis, each with a canary pod and a
stable pod whose ``/metrics`` the operator reads every interval.

  python benchmarks/analysis_bench.py [--canaries 50] [--rounds 20]

No pods here: 2×N small HTTP servers on 127.0.0.1 (a child process, so their CPU is not counted) answer
``/metrics`` with what a tensor server exports (Modelyard's families for three routes and BentoML's own,
about the size of a real server's page), counters growing every round.  This process runs the operator's
own code for each interval: ``scrape.read_pods`` (httpx, every pod at once, bounded), ``analysis.advance``
and the status the reconciler would write (``DeploymentStatus.to_dict`` → JSON).  Printed side by side:
CPU and wall time per round with the operator's client (a connection per read) beside one connection
kept per pod, the share of one core the analysis takes at 5 s and 30 s intervals, and the
process' RSS before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelyard.operator.analysis import advance, begin  # noqa: E402
from modelyard.operator.kube import PodTarget  # noqa: E402
from modelyard.operator.scrape import read_pods, scrape_client  # noqa: E402
from modelyard.operator.spec import CanaryAnalysis  # noqa: E402
from modelyard.operator.status import AnalysisRecord, DeploymentStatus  # noqa: E402


def page(round_: int, seed: int) -> bytes:
    """A tensor server's /metrics after ``round_`` intervals of traffic (prometheus_client's own text)."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from modelyard.registry.kernel import serving_metrics as contract

    registry = CollectorRegistry()
    requests = Counter(contract.REQUESTS, "r", ["route", "status"], registry=registry)
    duration = Histogram(contract.DURATION, "d", ["route"], buckets=contract.BUCKETS, registry=registry)
    bento_total = Counter("bentoml_service_request", "b", ["endpoint", "http_response_code", "runner_name",
                                                          "service_name", "service_version"], registry=registry)
    bento_seconds = Histogram("bentoml_service_request_duration_seconds", "b", [
        "endpoint", "http_response_code", "runner_name", "service_name", "service_version"], registry=registry)
    served = 100 * round_ + seed
    for route in ("/predict", "/predict_batch", "/v2/models/{model}/infer"):
        requests.labels(route, "200").inc(served)
        requests.labels(route, "500").inc(round_)
        requests.labels(route, "400").inc(1)
        for endpoint in (route, "/readyz", "/model"):
            bento_total.labels(endpoint, "200", "m", "m", "na").inc(served)
            bento_seconds.labels(endpoint, "200", "m", "m", "na").observe(0.01)
        for index in range(20 * round_ + 20):
            duration.labels(route).observe(0.004 + (index % 50) / 1000)
    return generate_latest(registry)


def serve_pages(count: int) -> None:
    """The child: ``count`` servers; prints their ports, then serves until stdin closes."""
    rounds = [0]
    pages: dict[tuple[int, int], bytes] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keeps connections, as the model servers (uvicorn) do

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            port = self.server.server_address[1]
            key = (rounds[0], port)
            if key not in pages:
                pages[key] = page(rounds[0], port % 97)
            body = pages[key]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    servers = [ThreadingHTTPServer(("127.0.0.1", 0), Handler) for _ in range(count)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(json.dumps([s.server_address[1] for s in servers]), flush=True)
    for line in sys.stdin:  # one line per round: the counters grow
        rounds[0] = int(line)
        pages.clear()
        print("ok", flush=True)
    for server in servers:
        server.shutdown()


async def one_round(http: httpx.AsyncClient, pods: list[list[PodTarget]], records: list[AnalysisRecord],
                    now: float, settings: CanaryAnalysis) -> tuple[list[AnalysisRecord], int]:
    """Every canary's interval, as the reconciler runs them (concurrently, one check per resource)."""
    readings = await asyncio.gather(*(read_pods(http, targets) for targets in pods))
    written = 0
    for index, reading in enumerate(readings):
        records[index] = advance(records[index], reading, now, settings, 600).record
        status = DeploymentStatus(rollout={"state": "Canary", "version": 8, "analysis": records[index]})
        written += len(json.dumps(status.to_dict()))
    return records, written


async def rounds_of(http: httpx.AsyncClient, pods: list[list[PodTarget]], child: subprocess.Popen[str],
                    first: int, rounds: int, settings: CanaryAnalysis) -> tuple[float, float, int, AnalysisRecord]:
    """``rounds`` intervals of every canary: (median CPU s, median wall s, status bytes written, a record)."""
    readings = await asyncio.gather(*(read_pods(http, targets) for targets in pods))
    records = [begin(8, reading, 30.0 * first, settings) for reading in readings]
    cpu, wall, written = [], [], 0
    for index in range(first + 1, first + rounds + 1):
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(f"{index}\n")
        child.stdin.flush()
        child.stdout.readline()
        started_cpu, started = time.process_time(), time.perf_counter()
        records, written = await one_round(http, pods, records, 30.0 * index, settings)
        cpu.append(time.process_time() - started_cpu)
        wall.append(time.perf_counter() - started)
    return sorted(cpu)[len(cpu) // 2], sorted(wall)[len(wall) // 2], written, records[0]


async def measure(ports: list[int], rounds: int, child: subprocess.Popen[str]) -> None:
    canaries = len(ports) // 2
    pods = [[PodTarget(f"md{i}-canary", "canary", "127.0.0.1", ports[2 * i]),
             PodTarget(f"md{i}-stable", "stable", "127.0.0.1", ports[2 * i + 1])] for i in range(canaries)]
    settings = CanaryAnalysis(interval_seconds=30, samples=10_000, min_requests=1)
    process = psutil.Process()
    rss_before = process.memory_info().rss
    async with httpx.AsyncClient(timeout=5, limits=httpx.Limits(max_keepalive_connections=64)) as http:
        await rounds_of(http, pods, child, 0, 2, settings)  # warm up (imports, caches): measured by neither
        kept_cpu, kept_wall, _, _ = await rounds_of(http, pods, child, 3, rounds, settings)
    async with scrape_client() as http:  # the operator's: a connection per read
        fresh_cpu, fresh_wall, written, record = await rounds_of(http, pods, child, rounds + 4, rounds, settings)
    rss_after = process.memory_info().rss
    judged = record.intervals[-1]
    assert judged.canary.requests > 0 and judged.verdict in ("pass", "fail"), judged
    print(f"\n{canaries} canaries under analysis ({2 * canaries} pods' /metrics, "
          f"{len(page(1, 0)) / 1024:.1f} KiB each), {rounds} rounds each way; this process (the operator's code):")
    print(f"  {'':<46} {'operator':>10}  {'kept':>10}  ratio   (operator: a connection per read; "
          "kept: one kept per pod)")
    print(f"  {'CPU per round (median)':<46} {fresh_cpu * 1000:7.1f} ms  {kept_cpu * 1000:7.1f} ms  "
          f"{fresh_cpu / kept_cpu:5.2f}×")
    print(f"  {'wall time per round (median)':<46} {fresh_wall * 1000:7.1f} ms  {kept_wall * 1000:7.1f} ms  "
          f"{fresh_wall / kept_wall:5.2f}×")
    for interval in (5, 30):
        print(f"  {f'share of one core at intervalSeconds={interval}':<46} {100 * fresh_cpu / interval:8.2f} %  "
              f"{100 * kept_cpu / interval:8.2f} %")
    print(f"  {'status written per round (all resources)':<46} {written / 1024:7.1f} KiB")
    print(f"  {'RSS before → after':<46} {rss_before / 2**20:7.1f} → {rss_after / 2**20:.1f} MiB "
          f"({(rss_after - rss_before) / 2**20:+.1f} MiB)")
    print(f"  (last interval: canary {judged.canary.requests} requests, p99 {judged.canary.p99_ms} ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--canaries", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_pages(args.serve)
        return
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(2 * args.canaries)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())
        asyncio.run(measure(ports, args.rounds, child))
    finally:
        if child.stdin is not None:
            child.stdin.close()
        child.wait(timeout=30)


if __name__ == "__main__":
    main()
