"""Modelyard on a real one-node cluster (tests/cluster/node.sh), beside a plain `modelyard serve` on the host.

  python benchmarks/cluster_bench.py [--replicas 2] [--only canary]

Starts the node, builds (or takes from the cache) both images, installs charts/modelyard with
them, pushes two versions of the digits CNN, then measures:
1. `kubectl apply` of a ModelDeployment → first correct prediction through its ClusterIP
   Service, with a cold image cache on the node (the runtime image imported first, as a pull
   would) and warm (image present; a second resource).
2. Alias move → every replica serving the new version (all old pods gone).
3. A model pod's start (created → Ready) and RSS (its containers' processes), beside the same
   figures for `modelyard serve` started on the host against the same registry (ratio).
4. Canary analysis closing the loop, under a request loop through the Service, with the settings the
   suite uses (5 s intervals, 3 samples) beside the defaults (30 s, 5): alias move → verdict and
   verdict → alias moved by the operator, for a version that fails a share of its requests (reverted)
   and one that passes (`production` promoted on its evidence).
Prints one table; these machines are noisy, so compare the ratios of one run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import urllib3
from kubernetes import client

# The test node's apiserver has a self-signed certificate (as in the suite, which filters this too).
urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from modelyard.registry.kernel.processes.children import free_port, stop_process  # noqa: E402
from tests.helpers import eventually  # noqa: E402
from tests.support.node import Node, build_images, image_sizes  # noqa: E402
from modelyard.registry.kernel.schemas import AliasProtection  # noqa: E402
from tests.support import behaviours  # noqa: E402
from tests.support.platform import (  # noqa: E402
    API_VERSION, GROUP, ML, MODEL, PLURAL, Platform, RequestLoop, install, predictions_match, push, push_program)

KUBECTL = ROOT / "tests" / "cluster" / "node.sh"


CPU = "500m"  # each model pod's request and limit: three fit beside the platform on two cores (a surge)


def kubectl_apply(node: Node, name: str, replicas: int) -> None:
    manifest = f"""apiVersion: modelyard.io/v1alpha1
kind: ModelDeployment
metadata: {{name: {name}, namespace: {ML}}}
spec:
  model: {{name: {MODEL}, alias: production}}
  replicas: {replicas}
  resources: {{cpu: "{CPU}", memory: 1Gi}}
"""
# No GPU: the node advertises GPUs it does not have, and a server given one it cannot see stops (issue 23).
    kubectl = subprocess.run(["bash", str(KUBECTL), "kubectl"], capture_output=True, text=True, check=True).stdout
    subprocess.run([kubectl.strip(), "apply", "-f", "-"], input=manifest, text=True, check=True,
                   capture_output=True, env={**os.environ, "KUBECONFIG": str(node.kubeconfig)})


def first_correct_prediction(platform: Platform, name: str, version: int, timeout: float = 600) -> float:
    started = time.monotonic()
    url = eventually(lambda: _service_url(platform, name), timeout=60, interval=0.2, what=f"Service {name}")
    eventually(lambda: predictions_match(platform, url, version), timeout=timeout, interval=0.2,
               what=f"{name} answering with v{version}")
    return time.monotonic() - started


def _service_url(platform: Platform, name: str) -> str | None:
    try:
        return platform.service_url(name)
    except client.ApiException:
        return None


def processes_rss_mib(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def pod_server_pids(pod: client.V1Pod) -> list[int]:
    """The model-server container's processes, from the pod's memory cgroup (cgroup v1, cgroupfs)."""
    container_id = pod.status.container_statuses[0].container_id.split("//")[-1]
    found = list(Path("/sys/fs/cgroup/memory/kubepods").rglob(f"pod{pod.metadata.uid}/{container_id}/cgroup.procs"))
    return [int(line) for line in found[0].read_text().split()] if found else []


def pod_phases(pod: client.V1Pod) -> dict[str, float]:
    """Seconds (the API's timestamps are whole seconds) from the pod's creation to: its init
    container's start and end (pull by digest), the server's start, and Ready."""
    created = pod.metadata.creation_timestamp
    pulled = pod.status.init_container_statuses[0].state.terminated
    running = pod.status.container_statuses[0].state.running
    ready = next(c for c in pod.status.conditions if c.type == "Ready")
    return {name: (moment - created).total_seconds() for name, moment in (
        ("init started", pulled.started_at), ("init done", pulled.finished_at), ("server started", running.started_at),
        ("Ready", ready.last_transition_time))}


def host_serve(platform: Platform, version: int, cache: Path) -> tuple[float, float]:
    """`modelyard serve` on this machine against the cluster's registry: seconds to the first
    correct prediction and the RSS of its process tree."""
    port = free_port()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "modelyard.cli", "serve", f"{MODEL}:{version}", "--port", str(port),
         "--host", "127.0.0.1", "--cache", str(cache)],
        env={**os.environ, "MODELYARD_REGISTRY_URL": platform.registry_url, "MODELYARD_TOKEN": platform.token},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        eventually(lambda: predictions_match(platform, f"http://127.0.0.1:{port}", version), timeout=300,
                   interval=0.2, what="host serve answering")
        seconds = time.monotonic() - started
        parent = psutil.Process(process.pid)
        return seconds, processes_rss_mib([parent.pid, *(c.pid for c in parent.children(recursive=True))])
    finally:
        stop_process(process)


def row(label: str, cluster: float, host: float | None, unit: str) -> str:
    ratio = f"{cluster / host:5.2f}×" if host else "     "
    other = f"{host:9.1f} {unit}" if host is not None else " " * (10 + len(unit))
    return f"  {label:<52} {cluster:9.1f} {unit}  {other}  {ratio}"


def _until(probe, timeout: float = 900) -> float:  # noqa: ANN001 - a predicate
    """Poll ``probe`` every 0.2 s; the monotonic time it first held."""
    eventually(probe, timeout=timeout, interval=0.2, what="a canary verdict or alias move")
    return time.monotonic()


def canary_loop(platform: Platform, work: Path, label: str, analysis: dict, seed: int) -> dict[str, float]:
    """Seconds from alias move to verdict and from verdict to the operator's alias move, failing and passing."""
    candidate, production, name = f"cand-{label}", f"prod-{label}", f"judged-{label}"
    made = [push_program(platform, maker) for maker in (
        behaviours.plain(work, platform.images, seed), behaviours.faulty(work, 0.5, platform.images, seed + 1),
        behaviours.plain(work, platform.images, seed + 2))]
    stable, failing, passing = made
    with platform.registry() as registry:
        registry.set_alias(MODEL, candidate, stable)
        registry.set_alias(MODEL, production, stable)
        registry.protect_alias(MODEL, production, AliasProtection(require=["canary@default.error_rate<=0.01"]))
    platform.create(name, {"model": {"name": MODEL, "alias": candidate}, "replicas": 1,
                           "resources": {"cpu": CPU, "memory": "1Gi"},
                           "rollout": {"strategy": "Canary", "progressDeadlineSeconds": 600, "canary": {
                               "weight": 50, "onFailure": "revertAlias", "promote": {"alias": production},
                               "analysis": analysis}}})
    platform.wait_status(name, lambda s: s.get("phase") == "Ready", f"{name} Ready", timeout=600)

    def verdict(version: int, state: str):  # noqa: ANN202
        return lambda: (a := platform.status(name).get("rollout", {}).get("analysis", {})).get(
            "version") == version and a.get("state") == state

    def alias_at(alias: str, version: int):  # noqa: ANN202
        def probe() -> bool:
            with platform.registry() as registry:
                return registry.get_alias(MODEL, alias).version == version
        return probe

    found: dict[str, float] = {}
    with RequestLoop(platform, platform.service_url(name), limit=1800):
        for version, state, alias, target, kind in ((failing, "Failed", candidate, stable, "revert"),
                                                     (passing, "Passed", production, passing, "promote")):
            platform.wait_status(name, lambda s: s.get("phase") == "Ready", f"{name} Ready", timeout=600)
            moved = time.monotonic()
            with platform.registry() as registry:
                registry.set_alias(MODEL, candidate, version)
            judged = _until(verdict(version, state))
            done = _until(alias_at(alias, target))
            found[f"{kind}: verdict"], found[f"{kind}: alias"] = judged - moved, done - judged
    platform.custom.delete_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, name)
    return found


def canary_timings(platform: Platform, work: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Part 4 with the suite's settings and with the defaults."""
    suite = canary_loop(platform, work, "suite", {"intervalSeconds": 5, "samples": 3, "minRequests": 3,
                                                 "maxErrorRate": 0.05, "maxP99LatencyMs": 400}, 400)
    stock = canary_loop(platform, work, "defaults", {"maxErrorRate": 0.01}, 500)  # every other field its default
    return suite, stock


def print_canary_table(timings: tuple[dict[str, float], dict[str, float]]) -> None:
    suite, stock = timings
    print(f"\n  canary analysis {'':<36} {'suite':>12}  {'defaults':>12}  ratio")
    print("  (suite: 5 s intervals, 3 samples, minRequests 3; defaults: 30 s, 5, 20; a request loop through the "
          "Service; a version failing half its requests, then a good one)")
    for key, label in (("revert: verdict", "alias move → verdict (failing version)"),
                       ("revert: alias", "verdict → alias reverted by the operator"),
                       ("promote: verdict", "alias move → verdict (passing version)"),
                       ("promote: alias", "verdict → production promoted on its evidence")):
        print(row(label, suite[key], stock[key], "s"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, default=2, help="replicas for the alias-move measurement")
    parser.add_argument("--only", choices=["canary"], help="measure only the canary analysis (part 4)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    subprocess.run(["bash", str(ROOT / "tests/cluster/node.sh"), "build"], check=True, stdout=subprocess.DEVNULL)
    started = time.monotonic()
    images = build_images()
    build_seconds = time.monotonic() - started
    node = Node(work / "node").start()
    try:
        platform_import = node.load(images["modelyard"])
        platform = install(node, images, work)
        if args.only == "canary":
            node.load(images["modelyard-runtime"])
            print_canary_table(canary_timings(platform, work))
            return
        v1 = push(platform, platform.candidates[0], package=False)
        v2 = push(platform, platform.candidates[1], package=False)
        with platform.registry() as registry:
            registry.set_alias(MODEL, "production", v1)

        started = time.monotonic()
        runtime_import = node.load(images["modelyard-runtime"])  # what a pull would take on a cold node
        kubectl_apply(node, "cold", 1)
        first_correct_prediction(platform, "cold", v1)
        cold = time.monotonic() - started  # import + apply → first correct answer
        (cold_pod,) = platform.serving("cold")
        # Room for the warm replicas and their surge (two cores): the cold resource goes first.
        platform.custom.delete_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, "cold")
        eventually(lambda: not platform.serving("cold", terminating=True), timeout=120, interval=0.5,
                   what="the cold pods gone")
        kubectl_apply(node, "warm", args.replicas)
        warm = first_correct_prediction(platform, "warm", v1)
        eventually(lambda: len([p for p in platform.serving("warm") if p.status.container_statuses and all(
            c.ready for c in p.status.container_statuses)]) == args.replicas, timeout=600, interval=0.5,
            what="all warm replicas Ready")
        pods = platform.serving("warm")
        phases = max((pod_phases(p) for p in pods), key=lambda p: p["Ready"])
        pod_rss = max(processes_rss_mib(pod_server_pids(p)) for p in pods)

        moved = time.monotonic()
        with platform.registry() as registry:
            registry.set_alias(MODEL, "production", v2)
        eventually(lambda: (pods := platform.serving("warm", terminating=True)) and len(pods) == args.replicas
                   and all(p.metadata.labels.get("modelyard.io/version") == str(v2) and p.status.container_statuses
                           and all(c.ready for c in p.status.container_statuses) for p in pods),
                   timeout=900, interval=0.5, what="every replica on v2")
        alias_move = time.monotonic() - moved

        host_seconds, host_rss = host_serve(platform, v2, work / "host-cache")
        platform.custom.delete_namespaced_custom_object(GROUP, API_VERSION, ML, PLURAL, "warm")
        eventually(lambda: not platform.serving("warm", terminating=True), timeout=120, interval=0.5,
                   what="the warm pods gone")
        canary = canary_timings(platform, work)

        print(f"\nnode Ready in {node.start_seconds:.1f} s; images built/cached in {build_seconds:.1f} s; "
              f"imported in {platform_import:.1f} s (modelyard) and {runtime_import:.1f} s (runtime)")
        print(image_sizes().rstrip())
        print(f"\n  {'':<52} {'cluster':>12}  {'host serve':>12}  ratio")
        print(row("apply → first correct prediction, cold image cache", cold, host_seconds, "s"))
        print(row("apply → first correct prediction, warm image cache", warm, host_seconds, "s"))
        print(row(f"model pod created → Ready (slowest of {args.replicas})", phases["Ready"], None, "s"))
        print("    " + ", ".join(f"{name} at {seconds:.0f} s" for name, seconds in phases.items())
              + f" (CPU limit {CPU}; readiness waits for the startup probe, every 5 s)")
        print(row(f"alias move → all {args.replicas} replicas on the new version", alias_move, None, "s"))
        print(row("model server RSS (pod's container vs host process tree)", pod_rss, host_rss, "MiB"))
        print(f"  (cold pod: {cold_pod.metadata.name}; host serve: `modelyard serve {MODEL}:{v2}` from an empty "
              "cache against the same registry)")
        print_canary_table(canary)
    finally:
        node.stop()


if __name__ == "__main__":
    main()
