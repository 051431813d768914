"""MLflow's model registry as the peer of benchmarks/registry_bench.py (``--peer mlflow``).

MLflow's tracking server (``mlflow server``, in the virtualenv benchmarks/mlflow_env.sh makes) on the same
backend as ours (a SQLite file, or a database of its own on the same PostgreSQL cluster), driven by the same
load generator through its REST API, phase for phase:

    create models        POST registered-models/create          ours: POST /models
    create versions      POST model-versions/create             ours: POST /models/{m}/versions
    set aliases          POST registered-models/alias           ours: PUT /models/{m}/aliases/production
    resolve alias        GET registered-models/alias            ours: GET /models/{m}/aliases/production
    get version          GET model-versions/get                 ours: GET /models/{m}/versions/5
    search versions      GET model-versions/search name='m'     ours: GET /models/{m}/versions?limit=50

MLflow runs as its ``mlflow server`` command starts it (its default workers) on loopback, with its
per-request access log as it comes.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import aiohttp
import httpx
import psutil

from loadgen import WARM_UP_REQUESTS, Phase
from modelyard.registry.kernel.processes.children import free_port

API = "/api/2.0/mlflow"
KEYS = ("create models (c=16)", "create versions (c=16)", "set aliases (c=16)", "resolve alias (c=16)",
        "get version (c=16)", "resolve alias (c=64)", "get version (c=64)", "search versions (c=16)")
"""The phases both registries run, in order."""



def ours(name: str) -> str | None:
    """The peer phase an ours phase stands beside (registry_bench names it with its count), or None."""
    key = re.sub(r"^(create|set) \d+ ", r"\1 ", name)
    return key if key in KEYS else None


class MlflowServer:
    """``mlflow server`` on ``backend_uri``, stopped with its worker processes."""

    def __init__(self, python: str, backend_uri: str, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [python, "-m", "mlflow", "server", "--backend-store-uri", backend_uri, "--default-artifact-root",
             str(workdir / "mlflow-artifacts"), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=open(workdir / "mlflow.log", "w"), cwd=workdir)  # noqa: SIM115
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.process.returncode}: "
                                   f"{(workdir / 'mlflow.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError("mlflow server was not ready after 120 s")

    def stop(self) -> None:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for process in [*children, psutil.Process(self.process.pid)] if self.process.poll() is None else children:
            try:
                process.terminate()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(children, timeout=15)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def bench(url: str, n_models: int, duration: float, run_fixed, run_get) -> dict[str, Phase]:  # noqa: ANN001
    """The shared phases against MLflow at ``url``: {key: Phase}."""
    api = f"{url}{API}"
    names = [f"model-{i:04d}" for i in range(n_models)]
    found: dict[str, Phase] = {}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        # Warm every worker up first (imports, database pools): the first phase then measures creation.
        await run_fixed(session, "warm-up", [("GET", f"{api}/registered-models/search", {"params": {
            "max_results": "1"}})] * WARM_UP_REQUESTS, 16)
        found[KEYS[0]] = await run_fixed(session, KEYS[0], [
            ("POST", f"{api}/registered-models/create", {"json": {"name": n, "tags": [
                {"key": "team", "value": f"t{i % 10}"}]}}) for i, n in enumerate(names)], 16)
        found[KEYS[1]] = await run_fixed(session, KEYS[1], [
            ("POST", f"{api}/model-versions/create", {"json": {"name": n, "source": f"s3://bench/{n}"}})
            for _ in range(5) for n in names], 16)
        found[KEYS[2]] = await run_fixed(session, KEYS[2], [
            ("POST", f"{api}/registered-models/alias", {"json": {"name": n, "alias": "production", "version": "5"}})
            for n in names], 16)
        for concurrency in (16, 64):
            found[f"resolve alias (c={concurrency})"] = await run_get(
                session, "", [f"{api}/registered-models/alias?name={n}&alias=production" for n in names],
                concurrency, duration)
            found[f"get version (c={concurrency})"] = await run_get(
                session, "", [f"{api}/model-versions/get?name={n}&version=5" for n in names], concurrency, duration)
        found[KEYS[7]] = await run_fixed(session, KEYS[7], [
            ("GET", f"{api}/model-versions/search", {"params": {"filter": f"name='{names[i % n_models]}'",
                                                                "max_results": "50"}}) for i in range(200)], 16)
    return found


def rows(label: str, ours_phases: list[Phase], theirs: dict[str, Phase]) -> list[str]:
    """Ours beside MLflow's, phase by phase, with the ratio."""
    mine = {key: phase for phase in ours_phases if (key := ours(phase.name))}
    lines = [f"\n[{label}] Modelyard beside MLflow's registry on the same backend",
             f"{'phase':26}{'Modelyard ops/s (p99 ms)':>28}{'MLflow ops/s (p99 ms)':>26}{'ratio':>9}"]
    for key in KEYS:
        a, b = mine.get(key), theirs.get(key)
        if a is None or b is None:
            continue
        errors = f"  errors {a.errors}/{b.errors}" if a.errors or b.errors else ""
        lines.append(f"{key:26}{a.rate:>16,.0f} ({a.pct(.99):7.1f}){b.rate:>14,.0f} ({b.pct(.99):7.1f})"
                     f"{a.rate / b.rate if b.rate else float('nan'):>8.1f}x{errors}")
    return lines
