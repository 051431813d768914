"""Small artifacts in the registry's formats, made in code (no torch needed).

The registry reads every upload's container before accepting it, so tests that
only move bytes around upload these instead of random bytes: a minimal
``torch.export`` archive carrying a payload, and a model Bento recording its source.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from typing import Any


def program_bytes(payload: bytes = b"", name: str = "model") -> bytes:
    """A zip laid out like a ``torch.export`` archive, with ``payload`` as its one weight."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{name}/archive_format", b"pt2")
        archive.writestr(f"{name}/archive_version", b"0")
        archive.writestr(f"{name}/data/weights/model_weights_config.json", json.dumps({"config": {}}))
        archive.writestr(f"{name}/data/constants/model_constants_config.json", json.dumps({"config": {}}))
        archive.writestr(f"{name}/data/weights/weight_0", payload)
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(files: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:  # type: ignore[call-overload]
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def model_bento(model: str, version: int, program: bytes, *, format: str | None = "torch-export",
                metadata: dict[str, Any] | None = None, recorded: tuple[str, int] | None = None,
                extra: dict[str, bytes] | None = None) -> bytes:
    """An archive laid out like ``modelyard package``'s Bento of ``model:version`` (or claiming
    to be that of ``recorded``), carrying ``program``."""
    source_model, source_version = recorded or (model, version)
    spec = {"model": source_model, "version": source_version, "digest": sha256(program), "format": format,
            "file": "model/model.pt2", "metadata": metadata or {}}
    return tar_bytes({
        "bento.yaml": f"service: service:ModelService\nname: {model}\n".encode(),
        "src/service.py": b"from modelyard.bentos.tensor.service import ModelService\n",
        "src/modelyard-model.json": json.dumps(spec).encode(),
        "src/model/model.pt2": program,
        **(extra or {}),
    })
