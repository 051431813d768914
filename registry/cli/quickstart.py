"""``modelyard quickstart``: the whole registry loop on one machine, no cluster.

Starts a registry on the embedded defaults (SQLite + local disk under
``MODELYARD_HOME``), trains a small CNN on scikit-learn's digits, exports it
with ``torch.export``, pushes it with its accuracy, points ``production`` at it,
pulls it back by alias (digest-verified), checks the pulled program predicts
like the trained one, and stops the registry.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import httpx
import typer

from modelyard.registry.cli.common import console, human_size, reported_errors
from modelyard.registry.client import RegistryClient
from modelyard.registry.settings import modelyard_home

MODEL = "digits-cnn"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> float:
    """Poll ``/readyz`` until it answers 200; return the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"the registry exited with status {process.returncode} before it was ready")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the registry at {url} was not ready after {timeout:.0f} s")


def quickstart(
    home: Annotated[Path | None, typer.Option(help="data directory [default: MODELYARD_HOME or ~/.modelyard]",
                                              show_default=False)] = None,
    port: Annotated[int, typer.Option(help="registry port (0: any free port)")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 15,
) -> None:
    """Run the registry loop end to end on this machine and shut down cleanly."""
    home = (home or modelyard_home()).expanduser()
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MODELYARD_HOME": str(home)}
    env.pop("MODELYARD_DB_URL", None)
    env.pop("MODELYARD_ARTIFACTS", None)
    console.rule("[bold]Modelyard quickstart")
    console.print(f"registry data in {home} (SQLite + local artifacts)", highlight=False)
    server = subprocess.Popen(
        [sys.executable, "-m", "modelyard.registry.cli.main", "registry", "serve", "--port", str(port),
         "--log-level", "warning"], env=env,
    )
    with reported_errors():
        try:
            took = wait_ready(url, server)
            console.print(f"[green]✓[/green] registry ready at {url} in {took:.2f} s")
            _run_loop(url, epochs)
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
    console.print("[green]✓[/green] registry stopped; done")


def _run_loop(url: str, epochs: int) -> None:
    import torch

    from modelyard.bentos.examples import digits

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    trained = digits.train(epochs=epochs)
    console.print(f"[green]✓[/green] trained a CNN on scikit-learn digits in {trained.seconds:.1f} s: "
                  f"test accuracy {trained.accuracy:.3f}")
    with tempfile.TemporaryDirectory() as workdir, RegistryClient(url, token=os.environ.get("MODELYARD_TOKEN")) as rc:
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
        resolved = rc.resolve(f"{MODEL}@production")
        pulled = Path(workdir) / "pulled.pt2"
        rc.download_artifact(MODEL, resolved.version, pulled)
        console.print(f"[green]✓[/green] pulled {MODEL}@production (digest verified)", highlight=False)
        program = torch.export.load(str(pulled)).module()
        sample = trained.test_images[:8]
        with torch.no_grad():
            predicted = program(sample).argmax(1).tolist()
            expected = trained.model(sample).argmax(1).tolist()
        if predicted != expected:
            raise RuntimeError(f"the pulled model predicts {predicted}, the trained one {expected}")
        console.print(f"[green]✓[/green] pulled model predicts {predicted} for labels "
                      f"{trained.test_labels[:8].tolist()}", highlight=False)
        console.print(f"\nNext: `modelyard versions ls {MODEL} --registry {url}` while a registry runs "
                      "(`modelyard registry serve`).", highlight=False)
