"""``modelyard-model.json``: what a model Bento carries besides the program itself.

The file's name and layout are the registry's contract (``registry.model.bento_source``
checks uploaded Bentos against it); this is the packager's and server's view of it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelyard.registry.model.bento_source import MODEL_DIR, SPEC_FILE

__all__ = ["MODEL_DIR", "SPEC_FILE", "ModelSpec"]


@dataclass(frozen=True)
class ModelSpec:
    model: str
    version: int
    digest: str  # of the model program, "sha256:<hex>"
    format: str  # torch-export | torchscript
    file: str  # relative to the Bento's src dir
    metadata: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> Path:
        path = directory / SPEC_FILE
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def read(cls, directory: Path) -> ModelSpec:
        path = directory / SPEC_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: this is not a Modelyard model Bento")
        return cls(**json.loads(path.read_text()))
