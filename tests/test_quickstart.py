"""The README's main command, end to end (torch and scikit-learn come with `make test`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelyard.registry.db.engine import create_db_engine
from modelyard.registry.store import RegistryStore


@pytest.mark.slow
def test_quickstart_trains_pushes_aliases_pulls_and_stops(tmp_path: Path) -> None:
    home = tmp_path / "home"
    answer = subprocess.run([sys.executable, "-m", "modelyard.cli", "quickstart", "--home", str(home),
                             "--epochs", "5"], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "COLUMNS": "200"})
    assert answer.returncode == 0, answer.stderr + answer.stdout
    for step in ("registry ready", "trained a CNN", "exported with torch.export", "pushed digits-cnn:1",
                 "alias digits-cnn@production → 1", "packaged as BentoML service digits-cnn:v1-",
                 "serving digits-cnn@production", "served predictions", "served accuracy", "model server stopped",
                 "registry stopped", "kind: ModelDeployment", "make local-cluster", "Run it on a local cluster"):
        assert step in answer.stdout, answer.stdout
    store = RegistryStore(create_db_engine(f"sqlite:///{home / 'registry.db'}"))
    version = store.get_version("digits-cnn", 1)
    assert version.status.value == "ready" and version.format.value == "torch-export"
    assert version.aliases == ["production"] and 0.5 < version.metrics["accuracy"] <= 1.0
    assert version.bento is not None and version.bento.tag.startswith("digits-cnn:v1-")
    served = float(answer.stdout.split("served accuracy on ")[1].split(": ")[1].split(" ")[0])
    assert abs(served - version.metrics["accuracy"]) < 0.01  # the served model is the trained one
    assert version.metadata["input"] == {"shape": [-1, 1, 8, 8], "dtype": "float32"}
    assert (home / "artifacts" / "sha256" / version.digest[7:9] / version.digest[7:]).stat().st_size == version.size
