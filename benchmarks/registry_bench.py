#!/usr/bin/env python3
"""Registry benchmark: a real server process, an async HTTP load generator on the same machine.

Phases: start-up, create models, create versions (concurrency 16), upload small
artifacts, set aliases, resolve aliases and get versions (concurrency 16 and 64,
beside /healthz as the framework's floor), filtered searches, and a large
artifact upload and download with the server's peak RSS growth.

Run on SQLite (always) and, with --postgres (a throwaway cluster) or --pg-dsn,
on PostgreSQL too; the backends are printed side by side with their ratios.

    python benchmarks/registry_bench.py                 # SQLite, 20 s phases, 1 GiB artifact
    python benchmarks/registry_bench.py --postgres      # + PostgreSQL, side by side
    python benchmarks/registry_bench.py --quick         # 2 s phases, 64 MiB: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import os
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loadgen import WARM_UP_REQUESTS, Phase, run_timed  # noqa: E402
MiB = 1 << 20


class Server:
    """The registry in its own process (as deployed), with its RSS readable."""

    def __init__(self, db_url: str, workdir: Path) -> None:
        from modelyard.registry.kernel.processes.children import RegistryProcess

        self.registry = RegistryProcess.on(db_url, workdir / "artifacts",
                                           {"MODELYARD_MIGRATE_ON_START": "true", "MODELYARD_HOME": str(workdir)})
        started = time.perf_counter()
        self.registry.start()
        self.startup = time.perf_counter() - started  # process start included
        self.url = self.registry.url
        self.ps = psutil.Process(self.registry.process.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def stop(self) -> None:
        self.registry.stop()


async def run_fixed(session: aiohttp.ClientSession, name: str, requests: list[tuple[str, str, dict]],
                    concurrency: int) -> Phase:
    """Send a fixed list of requests with ``concurrency`` workers."""
    phase = Phase(name)
    queue = list(reversed(requests))

    async def worker() -> None:
        while queue:
            method, url, kwargs = queue.pop()
            t0 = time.perf_counter()
            async with session.request(method, url, **kwargs) as response:
                await response.read()
                if response.status >= 400:
                    phase.errors += 1
            phase.latencies.append(time.perf_counter() - t0)
            phase.ops += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    phase.seconds = time.perf_counter() - started
    return phase


async def run_get(session: aiohttp.ClientSession, name: str, urls: list[str], concurrency: int,
                  seconds: float) -> Phase:
    """GET ``urls`` round-robin for ``seconds`` with ``concurrency`` workers."""
    return await run_timed(session, name, [("GET", url, {}) for url in urls], concurrency, seconds)


def digest_header(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


class _Sink(io.RawIOBase):
    """Collects what zipfile writes, so an archive can be streamed as it is made."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> Iterator[bytes]:
        parts, self.parts = self.parts, []
        yield from parts


def program_chunks(block: bytes, blocks: int) -> Iterator[bytes]:
    """A model program the registry accepts (the layout of a torch.export archive) whose one
    weight is ``blocks`` copies of ``block``, made and streamed in bounded memory."""
    sink = _Sink()
    stamp = (2026, 1, 1, 0, 0, 0)  # fixed: the bytes are made twice (hashed, then sent) and must match
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(zipfile.ZipInfo("model/archive_format", stamp), "pt2")
        with archive.open(zipfile.ZipInfo("model/data/weights/weight_0", stamp), "w", force_zip64=True) as entry:
            for _ in range(blocks):
                entry.write(block)
                yield from sink.drain()
    yield from sink.drain()


async def big_artifact(session: aiohttp.ClientSession, server: Server, api: str, size: int) -> list[Phase]:
    block = os.urandom(MiB)
    blocks = size // MiB
    hasher = hashlib.sha256()
    size = 0
    for chunk in program_chunks(block, blocks):
        hasher.update(chunk)
        size += len(chunk)
    header = "sha-256=:" + base64.b64encode(hasher.digest()).decode() + ":"
    async with session.post(f"{api}/models", json={"name": "big-artifact"}) as r:
        await r.read()
    async with session.post(f"{api}/models/big-artifact/versions") as r:
        version = (await r.json())["version"]

    peak = {"rss": server.rss()}
    baseline = peak["rss"]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak["rss"] = max(peak["rss"], server.rss())
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    async def body():  # noqa: ANN202
        for chunk in program_chunks(block, blocks):
            yield chunk

    upload = Phase(f"upload {size // MiB} MiB")
    t0 = time.perf_counter()
    async with session.put(f"{api}/models/big-artifact/versions/{version}/artifact", data=body(),
                           headers={"Content-Digest": header},
                           timeout=aiohttp.ClientTimeout(total=1800)) as r:
        answer = await r.read()
        if r.status != 200:  # say why: a failed upload makes the download figure meaningless
            upload.errors += 1
            print(f"large upload answered {r.status}: {answer[:500]!r}", file=sys.stderr)
    upload.seconds, upload.ops = time.perf_counter() - t0, 1
    sampling.set()
    sampler.join()
    upload.extra = {"MB/s": size / 1e6 / upload.seconds, "rss_growth_MiB": (peak["rss"] - baseline) / MiB}

    download = Phase(f"download {size // MiB} MiB")
    check = hashlib.sha256()
    t0 = time.perf_counter()
    async with session.get(f"{api}/models/big-artifact/versions/{version}/artifact",
                           timeout=aiohttp.ClientTimeout(total=1800)) as r:
        async for chunk in r.content.iter_chunked(MiB):
            check.update(chunk)
    download.seconds, download.ops = time.perf_counter() - t0, 1
    download.errors += check.digest() != hasher.digest()
    download.extra = {"MB/s": size / 1e6 / download.seconds}
    return [upload, download]


async def many_versions(session: aiohttp.ClientSession, api: str, args: argparse.Namespace) -> list[Phase]:
    """One model with ``--versions`` versions (10,000 by default), 200 of them deployed in 20 clusters:
    what serves where, a model's newest page of versions, and the web UI's pages that show them."""
    n = args.versions
    seeds = [await run_fixed(session, "seed", [("POST", f"{api}/models", {"json": {"name": "big"}})], 1),
             await run_fixed(session, "seed", [("POST", f"{api}/models/big/versions",
                                                {"json": {"metrics": {"acc": 0.9}}}) for _ in range(n)], 16),
             await run_fixed(session, "seed", [
                 ("PUT", f"{api}/deployments/c{i % 20}/ns-{i}/big", {"json": {
                     "model": "big", "version": n - i % 50, "phase": "Ready", "ready_replicas": 2,
                     "desired_replicas": 2}}) for i in range(200)], 16)]
    if any(seed.errors for seed in seeds):
        raise RuntimeError("seeding the large model failed: its figures would mean nothing")
    return [
        await run_get(session, f"GET /deployments?model (c=16, {n} versions)",
                      [f"{api}/deployments?model=big&limit=100"], 16, args.duration),
        await run_get(session, "GET /deployments?cluster (c=16)",
                      [f"{api}/deployments?cluster=c{i}" for i in range(20)], 16, args.duration),
        await run_get(session, f"newest 50 of {n} versions (c=16)",
                      [f"{api}/models/big/versions?order=desc&limit=50"], 16, args.duration),
        await run_get(session, f"UI model page, {n} versions (c=4)",
                      [api.replace("/api/v1", "/ui/models/big")], 4, args.duration),
        await run_get(session, f"UI model page, {n} versions (c=16)",
                      [api.replace("/api/v1", "/ui/models/big")], 16, args.duration),
        await run_get(session, "UI deployments page (c=16)", [api.replace("/api/v1", "/ui/deployments")], 16,
                      args.duration),
    ]


async def bench_backend(label: str, db_url: str, args: argparse.Namespace) -> tuple[list[Phase], dict[str, float]]:
    workdir = Path(tempfile.mkdtemp(prefix=f"modelyard-bench-{label}-"))
    server = Server(db_url, workdir)
    facts = {"startup_s": server.startup}
    time.sleep(0.5)
    facts["idle_rss_MiB"] = server.rss() / MiB
    api = f"{server.url}/api/v1"
    phases: list[Phase] = []
    n_models = args.models
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            names = [f"model-{i:04d}" for i in range(n_models)]
            await run_fixed(session, "warm-up", [("GET", f"{api}/models", {"params": {"limit": "1"}})]
                            * WARM_UP_REQUESTS, 16)  # as the MLflow peer is warmed up (unmeasured)
            phases.append(await run_fixed(session, f"create {n_models} models (c=16)", [
                ("POST", f"{api}/models", {"json": {"name": n, "tags": {"team": f"t{i % 10}"}}})
                for i, n in enumerate(names)], 16))
            phases.append(await run_fixed(session, f"create {n_models * 5} versions (c=16)", [
                ("POST", f"{api}/models/{n}/versions", {"json": {"metrics": {"acc": 0.9}}})
                for _ in range(5) for n in names], 16))
            payload = b"".join(program_chunks(b"small-model-weights", 1))
            phases.append(await run_fixed(session, f"upload {n_models} small artifacts (c=16)", [
                ("PUT", f"{api}/models/{n}/versions/5/artifact",
                 {"data": payload, "headers": {"Content-Digest": digest_header(payload)}}) for n in names], 16))
            phases.append(await run_fixed(session, f"set {n_models} aliases (c=16)", [
                ("PUT", f"{api}/models/{n}/aliases/production", {"json": {"version": 5}}) for n in names], 16))
            alias_urls = [f"{api}/models/{n}/aliases/production" for n in names]
            version_urls = [f"{api}/models/{n}/versions/5" for n in names]
            for concurrency in (16, 64):
                phases.append(await run_get(session, f"resolve alias (c={concurrency})", alias_urls,
                                              concurrency, args.duration))
                phases.append(await run_get(session, f"get version (c={concurrency})", version_urls,
                                              concurrency, args.duration))
            phases.append(await run_get(session, "floor: GET /healthz (c=64)", [f"{server.url}/healthz"], 64,
                                          args.duration / 2))
            phases.append(await run_fixed(session, "200 filtered searches (c=16)", [
                ("GET", f"{api}/models", {"params": {"prefix": "model-0", "tag": f"team=t{i % 10}", "limit": "50"}})
                for i in range(200)], 16))
            phases.append(await run_fixed(session, "search versions (c=16)", [
                ("GET", f"{api}/models/{names[i % n_models]}/versions", {"params": {"limit": "50"}})
                for i in range(200)], 16))
            phases += await many_versions(session, api, args)
            facts["rss_after_load_MiB"] = server.rss() / MiB
            phases += await big_artifact(session, server, api, args.artifact_mib * MiB)
            if label == "postgres":  # after the shared phases, which the table lines up by position
                replicas, coherence_facts = await two_replicas(session, server, db_url, workdir, names, args)
                facts.update(coherence_facts)
                phases += replicas
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return phases, facts


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def postgres_processes(db_url: str) -> list[psutil.Process]:
    """The PostgreSQL server's processes (the postmaster and its backends) listening on the URL's port."""
    from sqlalchemy.engine import make_url

    port = make_url(db_url).port or 5432
    for process in psutil.process_iter(["name"]):
        if process.info["name"] == "postgres":
            try:
                if any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in process.net_connections()):
                    return [process, *process.children()]
            except (psutil.AccessDenied, psutil.NoSuchProcess):
                continue
    return []


async def two_replicas(session: aiohttp.ClientSession, first: Server, db_url: str, workdir: Path, names: list[str],
                       args: argparse.Namespace) -> tuple[list[Phase], dict[str, float]]:
    """A second replica on the same PostgreSQL: read throughput with one and with two (all three share
    the machine's cores, the database's CPU per request beside it), then the coherence bound: how long
    after an alias move returns on one replica the other answers with it."""
    second = Server(db_url, workdir / "second")
    phases: list[Phase] = []
    facts: dict[str, float] = {}
    try:
        alias_urls = [f"{api}/models/{n}/aliases/production" for api in (f"{first.url}/api/v1",) for n in names]
        both = [url for n in names for url in (f"{first.url}/api/v1/models/{n}/aliases/production",
                                               f"{second.url}/api/v1/models/{n}/aliases/production")]
        database = postgres_processes(db_url)
        for label, urls, servers in (("1 replica", alias_urls, [first]), ("2 replicas", both, [first, second])):
            before = cpu_seconds(database), cpu_seconds([s.ps for s in servers])
            phase = await run_get(session, f"resolve alias, {label} (c=64)", urls, 64, args.duration)
            after = cpu_seconds(database), cpu_seconds([s.ps for s in servers])
            phase.extra["db_cpu_ms_per_req"] = (after[0] - before[0]) * 1000 / max(phase.ops, 1)
            phase.extra["registry_cpu_ms_per_req"] = (after[1] - before[1]) * 1000 / max(phase.ops, 1)
            phases.append(phase)
        facts["second_rss_MiB"] = second.rss() / MiB
        facts.update(await coherence(session, first.url, second.url, names[0]))
    finally:
        second.stop()
    return phases, facts


async def coherence(session: aiohttp.ClientSession, writer: str, reader: str, model: str,
                    moves: int = 200) -> dict[str, float]:
    """Move an alias back and forth on ``writer``; after each move returns, read it on ``reader`` until
    it shows the move.  The delay from the write's response to the first such answer, in ms."""
    api = f"/api/v1/models/{model}"
    payload = b"".join(program_chunks(b"small-model-weights", 1))
    async with session.put(f"{writer}{api}/versions/4/artifact", data=payload,
                           headers={"Content-Digest": digest_header(payload)}) as response:
        assert response.status in (200, 201, 409), await response.text()
    delays: list[float] = []
    for i in range(moves):
        target = 4 + i % 2
        async with session.put(f"{writer}{api}/aliases/coherence", json={"version": target}) as response:
            assert response.status == 200, await response.text()
        written = time.perf_counter()
        for _ in range(100_000):
            async with session.get(f"{reader}{api}/aliases/coherence") as response:
                if response.status == 200 and (await response.json())["version"] == target:
                    break
        delays.append(time.perf_counter() - written)
    delays.sort()
    return {"coherence_p50_ms": delays[len(delays) // 2] * 1000, "coherence_p99_ms": delays[int(len(delays) * .99)] * 1000,
            "coherence_max_ms": delays[-1] * 1000}


def print_table(results: dict[str, tuple[list[Phase], dict[str, float]]]) -> None:
    labels = list(results)
    print()
    header = f"{'phase':38}" + "".join(f"{lab + ' ops/s':>16}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'err':>5}"
                                       for lab in labels)
    if len(labels) == 2:
        header += f"{labels[1] + '/' + labels[0]:>14}"
    print(header)
    print("-" * len(header))
    for i, phase in enumerate(results[labels[0]][0]):
        row = f"{phase.name:38}"
        for lab in labels:
            p = results[lab][0][i]
            if p.extra.get("MB/s"):
                row += f"{p.extra['MB/s']:>12.0f} MB/s{'':>9}{'':>9}{'':>9}{p.errors:>5}"
            else:
                row += f"{p.rate:>16.0f}{p.pct(.5):>9.1f}{p.pct(.95):>9.1f}{p.pct(.99):>9.1f}{p.errors:>5}"
        if len(labels) == 2:
            a, b = results[labels[0]][0][i], results[labels[1]][0][i]
            ra = a.extra.get("MB/s", a.rate)
            rb = b.extra.get("MB/s", b.rate)
            row += f"{(rb / ra if ra else float('nan')):>13.2f}x"
        print(row)
    print()
    for lab in labels:
        phases, facts = results[lab]
        by_name = {p.name: p for p in phases}
        floor = by_name["floor: GET /healthz (c=64)"].rate
        resolve = by_name["resolve alias (c=64)"]
        upload = next(p for p in phases if p.name.startswith("upload ") and "MiB" in p.name)
        print(f"[{lab}] start→/readyz {facts['startup_s']:.2f} s · idle RSS {facts['idle_rss_MiB']:.0f} MiB · "
              f"RSS after load {facts['rss_after_load_MiB']:.0f} MiB · "
              f"RSS growth during upload {upload.extra['rss_growth_MiB']:.1f} MiB")
        print(f"[{lab}] resolve alias at c=64: {resolve.rate:.0f} ops/s = {resolve.rate / floor:.2f}x "
              f"the framework floor ({floor:.0f} req/s on /healthz), p99 {resolve.pct(.99):.1f} ms")
        for phase in phases:
            if "db_cpu_ms_per_req" in phase.extra:
                print(f"[{lab}] {phase.name}: {phase.rate:.0f} ops/s, CPU per request: PostgreSQL "
                      f"{phase.extra['db_cpu_ms_per_req']:.3f} ms, registries {phase.extra['registry_cpu_ms_per_req']:.3f} ms")
        if "coherence_p50_ms" in facts:
            print(f"[{lab}] second replica RSS {facts['second_rss_MiB']:.0f} MiB · an alias moved on one replica is "
                  f"read on the other after p50 {facts['coherence_p50_ms']:.1f} ms, p99 {facts['coherence_p99_ms']:.1f} ms,"
                  f" max {facts['coherence_max_ms']:.1f} ms (from the write's response)")
    print()


def run_peer(python: str, label: str, backend_uri: str, workdir: Path,
             results: dict[str, tuple[list[Phase], dict[str, float]]], args: argparse.Namespace) -> list[str]:
    """MLflow's registry on the same backend, its shared phases beside ours."""
    import mlflow_peer

    server = mlflow_peer.MlflowServer(python, backend_uri, workdir)
    try:
        theirs = asyncio.run(mlflow_peer.bench(server.url, args.models, args.duration, run_fixed, run_get))
    finally:
        server.stop()
    return mlflow_peer.rows(label, results[label][0], theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, help="seconds per timed phase [20]")
    parser.add_argument("--models", type=int, help="models to create [200]")
    parser.add_argument("--versions", type=int, help="versions of the one large model [10000]")
    parser.add_argument("--artifact-mib", type=int, help="size of the large artifact [1024]")
    parser.add_argument("--postgres", action="store_true", help="also run on a throwaway PostgreSQL cluster")
    parser.add_argument("--pg-dsn", help="also run on this (empty) PostgreSQL database")
    parser.add_argument("--quick", action="store_true", help="2 s phases, 40 models, 500 versions, 64 MiB artifact")
    parser.add_argument("--peer", choices=["mlflow"], help="also run MLflow's registry on each backend, side by side "
                        "(benchmarks/mlflow_env.sh makes its virtualenv)")
    args = parser.parse_args()
    defaults = (2.0, 40, 500, 64) if args.quick else (20.0, 200, 10_000, 1024)
    for name, default in zip(("duration", "models", "versions", "artifact_mib"), defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(f"registry benchmark · {os.cpu_count()} CPUs · load generator in this process (aiohttp)")
    results: dict[str, tuple[list[Phase], dict[str, float]]] = {}
    peer_rows: list[str] = []
    peer_python = None
    if args.peer:
        import subprocess

        peer_python = subprocess.run(["bash", str(ROOT / "benchmarks/mlflow_env.sh")], check=True,
                                     capture_output=True, text=True).stdout.strip().splitlines()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = asyncio.run(bench_backend("sqlite", f"sqlite:///{tmp}/registry.db", args))
        if peer_python:
            peer_rows += run_peer(peer_python, "sqlite", f"sqlite:///{tmp}/mlflow.db", Path(tmp), results, args)
    cluster = None
    if args.postgres and not args.pg_dsn:
        from tests.support.postgres import PostgresCluster, find_pg_bin

        bin_dir = find_pg_bin()
        if bin_dir is None:
            sys.exit("PostgreSQL not found: run scripts/system-deps.sh")
        cluster = PostgresCluster(bin_dir)
        cluster.init()
        cluster.start()
        args.pg_dsn = cluster.create_database()
    try:
        if args.pg_dsn:
            results["postgres"] = asyncio.run(bench_backend("postgres", args.pg_dsn, args))
            if peer_python:
                if cluster is None:
                    sys.exit("--peer with --pg-dsn: give --postgres instead (MLflow needs a database of its own)")
                with tempfile.TemporaryDirectory() as tmp:
                    dsn = cluster.create_database()
                    peer_rows += run_peer(peer_python, "postgres", dsn, Path(tmp), results, args)
    finally:
        if cluster:
            cluster.destroy()
    print_table(results)
    print("\n".join(peer_rows))
    failed = [f"{label}: {p.name} ({p.errors})" for label, (phases, _) in results.items() for p in phases if p.errors]
    if failed:
        sys.exit("requests failed in: " + "; ".join(failed))


if __name__ == "__main__":
    main()
