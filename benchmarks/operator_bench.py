"""The operator against a real kube-apiserver (tests/cluster/kube-apiserver.sh) and a real registry.

  python benchmarks/operator_bench.py [--resources 200] [--moves 50]

1. Applies N ModelDeployments at once; times until every one has a resolved version and a Helm
   revision.  Side by side: the same N releases installed straight through the Helm SDK from
   16 threads (the floor the operator's Helm work cannot beat), as a ratio.
2. Moves an alias M times; alias PUT → new Helm revision recorded in status (an upper bound on
   "upgrade started"), p50/p99, beside the operator's own event→upgrade histogram.
3. The operator process's RSS, and its CPU over 10 idle seconds.
No pods run (no kubelet): readiness is not part of these numbers.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import helm_python as helm
import psutil
from kubernetes import client

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from loadgen import percentile  # noqa: E402
from modelyard.registry.client import RegistryClient  # noqa: E402
from modelyard.registry.kernel.processes.children import RegistryProcess  # noqa: E402
from tests.helpers import eventually  # noqa: E402
from tests.support.kube import KubeApiServer, crd_established, unique_namespace  # noqa: E402
from tests.support.operator import OperatorProcess, push_versions  # noqa: E402

CHARTS = ROOT / "charts"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=200)
    parser.add_argument("--moves", type=int, default=50)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    subprocess.run(["bash", str(ROOT / "tests/cluster/kube-apiserver.sh"), "build"], check=True,
                   stdout=subprocess.DEVNULL)
    kube = KubeApiServer(work / "apiserver").start()
    registry = RegistryProcess.on(f"sqlite:///{work / 'registry.db'}", work / "artifacts").start()
    operator: OperatorProcess | None = None
    try:
        print(f"kube-apiserver started in {kube.start_seconds:.1f} s")
        kube.helm("modelyard").install(CHARTS / "modelyard", "modelyard", {}, namespace="modelyard",
                                       create_namespace=True)
        api = kube.api()
        eventually(lambda: crd_established(api), what="CRD")
        custom = client.CustomObjectsApi(api)
        registry_client = RegistryClient(registry.url, "")
        v1, v2 = push_versions(registry_client, "digits-cnn", 2)
        registry_client.set_alias("digits-cnn", "production", v1)
        registry_client.set_alias("digits-cnn", "bench", v1)

        # -- the floor: N releases straight through the Helm SDK -------------------------------
        floor_ns = unique_namespace(api, "floor")
        config = helm.Config(kubeconfig_path=str(kube.kubeconfig), namespace=floor_ns, qps=50, burst_limit=100)
        chart = helm.Chart.load(str(CHARTS / "model-server"))
        values = {"model": {"name": "digits-cnn", "version": v1}}
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: config.install(chart, f"m{i}", values, namespace=floor_ns),
                          range(args.resources)))
        floor = time.perf_counter() - started

        # -- the operator: N ModelDeployments applied at once ----------------------------------
        namespace = unique_namespace(api, "bench")
        operator = OperatorProcess(kube.kubeconfig, registry.url, [namespace], work / "operator.log").start()
        eventually(operator.metrics, timeout=30, what="operator up")
        created: dict[str, float] = {}

        def create(i: int) -> None:
            created[f"m{i}"] = time.perf_counter()
            custom.create_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments", {
                "apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": f"m{i}"},
                "spec": {"model": {"name": "digits-cnn", "alias": "production"}}})

        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(args.resources)))
        done: dict[str, float] = {}
        deadline = time.monotonic() + 600
        while len(done) < args.resources and time.monotonic() < deadline:
            items = custom.list_namespaced_custom_object("modelyard.io", "v1alpha1", namespace,
                                                         "modeldeployments")["items"]
            now = time.perf_counter()
            for item in items:
                status = item.get("status") or {}
                if status.get("helm", {}).get("revision") and status.get("model", {}).get("version"):
                    done.setdefault(item["metadata"]["name"], now)
            time.sleep(0.1)
        total = time.perf_counter() - started
        latencies = [done[n] - created[n] for n in done]
        reconcile_sum, reconcile_count = _histogram(operator, "modelyard_operator_reconcile_duration_seconds")
        print(f"\n{len(done)}/{args.resources} ModelDeployments resolved + Helm revision in {total:.1f} s "
              f"(target < 60 s)")
        print(f"  per resource, create → revision in status: p50 {percentile(latencies, .5):.2f} s, "
              f"p99 {percentile(latencies, .99):.2f} s")
        print(f"  reconcile handler: mean {reconcile_sum / max(reconcile_count, 1) * 1000:.0f} ms over "
              f"{reconcile_count:.0f} calls")
        print(f"  floor, {args.resources} raw Helm SDK installs from 16 threads: {floor:.1f} s → "
              f"operator/floor = {total / floor:.2f}×")

        # -- alias move → upgrade -------------------------------------------------------------------
        custom.create_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments", {
            "apiVersion": "modelyard.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "follower"},
            "spec": {"model": {"name": "digits-cnn", "alias": "bench"}}})
        eventually(lambda: _revision(custom, namespace, "follower"), timeout=60, what="follower installed")
        moves: list[float] = []
        for i in range(args.moves):
            before = _revision(custom, namespace, "follower")
            started = time.perf_counter()
            registry_client.set_alias("digits-cnn", "bench", v2 if i % 2 == 0 else v1)
            eventually(lambda: _revision(custom, namespace, "follower") > before, timeout=30, interval=0.01,
                       what="upgrade")
            moves.append(time.perf_counter() - started)
        event_sum, event_count = _histogram(operator, "modelyard_operator_event_to_upgrade_seconds")
        print(f"\nalias move → new Helm revision in status ({args.moves} moves): p50 {percentile(moves, .5):.2f} s, "
              f"p99 {percentile(moves, .99):.2f} s, mean {statistics.mean(moves):.2f} s (target p50 < 2 s)")
        print(f"  operator's own registry event → upgrade start: mean {event_sum / max(event_count, 1) * 1000:.0f}"
              f" ms over {event_count:.0f}")

        # -- footprint ----------------------------------------------------------------------------
        assert operator.process is not None
        process = psutil.Process(operator.process.pid)
        rss = process.memory_info().rss / 2**20
        time.sleep(3)
        before_cpu = process.cpu_times()
        time.sleep(10)
        after_cpu = process.cpu_times()
        idle = (after_cpu.user + after_cpu.system - before_cpu.user - before_cpu.system) / 10 * 100
        print(f"\noperator RSS with {args.resources + 1} resources: {rss:.0f} MiB (target < 250 MiB); "
              f"idle CPU {idle:.2f} % of one core (target < 1 %)")
    finally:
        if operator:
            operator.stop()
        registry.stop()
        kube.stop()


def _histogram(operator: OperatorProcess, name: str) -> tuple[float, float]:
    values = {}
    for line in operator.metrics().splitlines():
        if line.startswith(f"{name}_sum") or line.startswith(f"{name}_count"):
            key, value = line.rsplit(" ", 1)
            values[key.split("{")[0]] = float(value)
    return values.get(f"{name}_sum", 0.0), values.get(f"{name}_count", 0.0)


def _revision(custom: client.CustomObjectsApi, namespace: str, name: str) -> int:
    item = custom.get_namespaced_custom_object("modelyard.io", "v1alpha1", namespace, "modeldeployments", name)
    return int(((item.get("status") or {}).get("helm") or {}).get("revision") or 0)


if __name__ == "__main__":
    main()
