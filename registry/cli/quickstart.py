"""``modelyard quickstart``: the whole registry loop on one machine, no cluster.

Starts a registry on the embedded defaults (SQLite + local disk under
``MODELYARD_HOME``), trains a small CNN on scikit-learn's digits, exports it
with ``torch.export``, pushes it with its accuracy, points ``production`` at it,
pulls it back by alias (digest-verified), checks the pulled program predicts
like the trained one, and stops the registry.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from modelyard.registry.cli.common import console, human_size, reported_errors
from modelyard.registry.client import RegistryClient
from modelyard.registry.local import RegistryProcess
from modelyard.registry.settings import modelyard_home

MODEL = "digits-cnn"


def quickstart(
    home: Annotated[Path | None, typer.Option(help="data directory [default: MODELYARD_HOME or ~/.modelyard]",
                                              show_default=False)] = None,
    port: Annotated[int, typer.Option(help="registry port (0: any free port)")] = 0,
    epochs: Annotated[int, typer.Option(min=1, help="training epochs")] = 15,
) -> None:
    """Run the registry loop end to end on this machine and shut down cleanly."""
    home = (home or modelyard_home()).expanduser()
    # The embedded defaults under `home`, whatever a shell may have exported.
    server = RegistryProcess({"MODELYARD_HOME": str(home), "MODELYARD_DB_URL": "", "MODELYARD_ARTIFACTS": ""},
                             port=port)
    console.rule("[bold]Modelyard quickstart")
    console.print(f"registry data in {home} (SQLite + local artifacts)", highlight=False)
    with reported_errors(), server:
        console.print(f"[green]✓[/green] registry ready at {server.url} in {server.startup_seconds:.2f} s")
        _run_loop(server.url, epochs, home)
    console.print("[green]✓[/green] registry stopped; done")


def _run_loop(url: str, epochs: int, home: Path) -> None:
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
        console.print(f"\nNext: `MODELYARD_HOME={home} modelyard registry serve` serves this registry again; "
                      f"then `modelyard versions ls {MODEL}`.", highlight=False)
