"""``modelyard quickstart``: the whole loop on one machine, no cluster.

Starts a registry on the embedded defaults (SQLite + local disk under
``MODELYARD_HOME``), trains a small CNN on scikit-learn's digits, exports it
with ``torch.export``, pushes it with its accuracy, points ``production`` at
it, packages it as a BentoML service, serves it, sends real test images,
prints the predictions and the served accuracy, prints the ModelDeployment
that would deploy it to a cluster, and shuts everything down.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from modelyard.registry.cli.common import console, reported_errors
from modelyard.registry.client import RegistryClient
from modelyard.registry.kernel.processes.children import RegistryProcess, free_port, stop_process, wait_ready
from modelyard.registry.kernel.defaults import Env
from modelyard.registry.settings import modelyard_home
from modelyard.registry.kernel.units import human_size

MODEL = "digits-cnn"


def quickstart(
    home: Annotated[Path | None, typer.Option(help="data directory [default: MODELYARD_HOME or ~/.modelyard]",
                                              show_default=False)] = None,
    port: Annotated[int, typer.Option(help="registry port (0: any free port)")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 15,
) -> None:
    """Train, push, alias, package, serve and query a model on this machine, then shut down."""
    home = (home or modelyard_home()).expanduser()
    # The embedded defaults under `home`, whatever a shell may have exported.
    registry = RegistryProcess({Env.HOME: str(home), Env.DB_URL: "", Env.ARTIFACTS: ""},
                               port=port)
    console.rule("[bold]Modelyard quickstart")
    console.print(f"registry data in {home} (SQLite + local artifacts)", highlight=False)
    started = time.monotonic()
    with reported_errors(), registry:
        console.print(f"[green]✓[/green] registry ready at {registry.url} in {registry.startup_seconds:.2f} s")
        version = _run_loop(registry.url, epochs, home)
    console.print("[green]✓[/green] registry stopped")
    _print_deployment(version)
    console.print(f"\ndone in {time.monotonic() - started:.0f} s. `MODELYARD_HOME={home} modelyard registry serve` "
                  f"serves this registry again.", highlight=False)


def _run_loop(url: str, epochs: int, home: Path) -> int:
    import torch

    from modelyard.bentos.examples import digits
    from modelyard.bentos.packager import package_version

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    trained = digits.train(epochs=epochs)
    console.print(f"[green]✓[/green] trained a CNN on scikit-learn digits in {trained.seconds:.1f} s: "
                  f"test accuracy {trained.accuracy:.3f}")
    with tempfile.TemporaryDirectory() as workdir, RegistryClient(url, token=os.environ.get(Env.TOKEN)) as rc:
        artifact = Path(workdir) / "digits-cnn.pt2"
        metadata = digits.export(trained.model, artifact)
        console.print(f"[green]✓[/green] exported with torch.export → {artifact.name} "
                      f"({human_size(artifact.stat().st_size)})")
        rc.ensure_model(MODEL)
        version = rc.create_version(MODEL, format="torch-export", metadata=metadata,
                                    metrics={"accuracy": round(trained.accuracy, 4)},
                                    tags={"dataset": "sklearn-digits"}, source="modelyard quickstart")
        version = rc.upload_artifact(MODEL, version.version, artifact)
        console.print(f"[green]✓[/green] pushed {MODEL}:{version.version} {version.digest}", highlight=False)
        rc.set_alias(MODEL, "production", version.version)
        console.print(f"[green]✓[/green] alias {MODEL}@production → {version.version}", highlight=False)
        t0 = time.monotonic()
        packaged = package_version(rc, f"{MODEL}@production").version
        console.print(f"[green]✓[/green] packaged as BentoML service {packaged.bento.tag} "  # type: ignore[union-attr]
                      f"in {time.monotonic() - t0:.1f} s", highlight=False)
    _serve_and_query(url, home, trained)
    return version.version


def _serve_and_query(url: str, home: Path, trained) -> None:  # noqa: ANN001 - digits.TrainedDigits
    port = free_port()
    server_url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "modelyard.bentos.cli", "serve", f"{MODEL}@production", "--port", str(port),
         "--cache", str(home / "cache")],
        env={**os.environ, Env.REGISTRY_URL: url}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_ready(server_url, server, timeout=120)
        except RuntimeError as exc:
            raise RuntimeError(f"model server: {exc}: {(server.stderr.read() if server.stderr else '')[-2000:]}") \
                from None
        console.print(f"[green]✓[/green] serving {MODEL}@production at {server_url} "
                      f"(first prediction possible after {time.monotonic() - t0:.1f} s)", highlight=False)
        images, labels = trained.test_images.numpy(), trained.test_labels.tolist()
        answer = httpx.post(f"{server_url}/predict", json={"inputs": images[:8].tolist()}, timeout=60)
        answer.raise_for_status()
        predicted = [max(range(10), key=row.__getitem__) for row in answer.json()]
        console.print(f"[green]✓[/green] served predictions {predicted} for labels {labels[:8]}", highlight=False)
        everything = httpx.post(f"{server_url}/predict_batch", json={"inputs": images.tolist()}, timeout=60)
        everything.raise_for_status()
        hits = sum(max(range(10), key=row.__getitem__) == label for row, label in zip(everything.json(), labels,
                                                                                      strict=True))
        console.print(f"[green]✓[/green] served accuracy on {len(labels)} test images: {hits / len(labels):.3f} "
                      f"(in process: {trained.accuracy:.3f})", highlight=False)
    finally:
        stop_process(server, timeout=30)
    console.print("[green]✓[/green] model server stopped")


def deployment_yaml(version: int) -> str:
    """The ModelDeployment the quickstart suggests (tests check the CRD accepts it)."""
    return f"""apiVersion: modelyard.io/v1alpha1
kind: ModelDeployment
metadata: {{name: digits, namespace: ml}}
spec:
  model: {{name: {MODEL}, alias: production}}   # version {version} today; moving the alias rolls out
  replicas: 2
  resources: {{cpu: "1", memory: 1Gi}}           # add gpu: 1 for a GPU node
  serving: {{maxBatchSize: 32, maxLatencyMs: 1000}}
"""


def _print_deployment(version: int) -> None:
    console.print("\nTo run it on a cluster, point a ModelDeployment at the alias:\n")
    console.print(deployment_yaml(version), highlight=False, markup=False, soft_wrap=True)
    console.print("""No Modelyard image is published yet: the chart needs the two images built from this repository.
On kind, minikube or k3d one command builds and loads them, installs the chart, pushes this model
and serves it:

make local-cluster

(README: "Run it on a local cluster" has the same steps one by one, for any cluster.)""",
                  highlight=False, markup=False, soft_wrap=True)
