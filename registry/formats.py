"""Which kind of model artifact a file is, decided from its container listing alone.

A model version's artifact must be a self-contained program that loads without
user code: a ``torch.export`` archive (``.pt2``), TorchScript, or a BentoML
``.bento`` archive.  ``torch.save`` of a module or state dict is a pickle:
loading it needs the defining code and runs arbitrary code, so it is refused.
Nothing here imports torch or unpickles anything.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

FORMATS = ("torch-export", "torchscript", "bento")


class UnsupportedArtifact(ValueError):
    """A file that is not one of :data:`FORMATS`, with what to do instead."""


def sniff_format(path: Path) -> str:
    """Return ``torch-export``, ``torchscript`` or ``bento``; raise UnsupportedArtifact otherwise."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        entries = {name.split("/", 1)[1] for name in names if "/" in name}
        if "archive_format" in entries:
            return "torch-export"
        if "constants.pkl" in entries and any(entry.startswith("code/") for entry in entries):
            return "torchscript"
        if "data.pkl" in entries:
            raise UnsupportedArtifact(
                f"{path.name} is a pickle written by torch.save (a module or a state dict): loading it needs your "
                "model's code and can run arbitrary code, so it is refused. Export a self-contained program "
                "instead: torch.export.save(torch.export.export(model, example_inputs), 'model.pt2') "
                "(or torch.jit.save(torch.jit.script(model), 'model.pt'))"
            )
        raise UnsupportedArtifact(f"{path.name} is a zip archive but not a torch.export or TorchScript program")
    if _is_bento_archive(path):
        return "bento"
    raise UnsupportedArtifact(
        f"{path.name} is not a supported model artifact: push a torch.export archive (.pt2), "
        "TorchScript, or an exported BentoML .bento archive"
    )


def _is_bento_archive(path: Path) -> bool:
    """An exported Bento: a tar archive with a ``bento.yaml`` at its root."""
    try:
        if not tarfile.is_tarfile(path):
            return False
        with tarfile.open(path) as archive:
            for member in archive:
                if member.name.lstrip("./") == "bento.yaml":
                    return True
    except (tarfile.TarError, OSError, EOFError):
        return False
    return False


DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")


def parse_shape(text: str) -> list[int]:
    """``-1,1,8,8`` → ``[-1, 1, 8, 8]``; the first dimension is the batch and must be -1."""
    try:
        shape = [int(part) for part in text.replace(" ", "").split(",") if part]
    except ValueError:
        raise ValueError(f"invalid input shape {text!r}: expected integers such as -1,1,8,8") from None
    if len(shape) < 2 or shape[0] != -1 or any(d < 1 for d in shape[1:]):
        raise ValueError(f"invalid input shape {text!r}: the first dimension is the batch (-1), "
                         "the others positive, e.g. -1,1,8,8")
    return shape


def signature_metadata(input_shape: str | None, input_dtype: str | None,
                       labels: list[str] | None) -> dict[str, object]:
    """The metadata a generic serving runtime needs to validate requests without user code."""
    metadata: dict[str, object] = {}
    if input_shape or input_dtype:
        if not input_shape:
            raise ValueError("--input-dtype needs --input-shape too")
        dtype = input_dtype or "float32"
        if dtype not in DTYPES:
            raise ValueError(f"unknown input dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        metadata["input"] = {"shape": parse_shape(input_shape), "dtype": dtype}
    if labels:
        metadata["output"] = {"kind": "logits", "labels": labels}
    return metadata
