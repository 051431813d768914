"""Which kind of model artifact a file is, and whether it is safe to load.

A model version's artifact must be a self-contained program that loads without
user code: a ``torch.export`` archive (``.pt2``), TorchScript, a BentoML ``.bento``
archive, or a Hugging Face-style model directory pushed as a tar archive (``hf``:
config, safetensors weights and tokenizer, checked by ``hf_model``).  ``torch.save``
of a module or state dict is a pickle: loading it needs the defining code and runs
arbitrary code, so it is refused, as
are ``.pt2`` archives that would run code when loaded (``torch_export_check``).
The client checks before uploading and the registry again on the stored bytes.
Nothing here imports torch or unpickles anything.
"""

from __future__ import annotations

import contextlib
import struct
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from modelyard.registry.model.hf_model import (
    HfFacts, UnsafeModelDirectory, archive_tree, inspect, is_model_directory, unique_member_name,
)
from modelyard.registry.model.torch_export_check import UnsafeArchive, check_torch_export

FORMATS = ("torch-export", "torchscript", "bento", "hf")
MAX_ZIP_ENTRIES = 100_000
"""A zip's directory is read whole into memory: more entries than any model program has are refused first."""
MAX_TAR_MEMBERS = 100_000


class UnsupportedArtifact(ValueError):
    """A file that is not one of :data:`FORMATS`, or not safe to load, with what to do instead."""


@dataclass(frozen=True)
class Artifact:
    """What a file is: its kind, and for a model directory (``hf``) the facts read from it."""

    kind: str
    hf: HfFacts | None = None


def sniff_format(source: Path | BinaryIO, label: str | None = None) -> str:
    """Return ``torch-export``, ``torchscript``, ``bento`` or ``hf``; raise UnsupportedArtifact otherwise.

    ``source`` is a path or a seekable binary file (the registry reads stored blobs in place).
    """
    return read_artifact(source, label).kind


def read_artifact(source: Path | BinaryIO, label: str | None = None, *, allow_code: bool = True) -> Artifact:
    """The file's kind, read once with everything checked; for a model directory its facts too.
    ``allow_code``: whether a model directory may carry its own code (the registry passes what
    the version allows; without it, only pickles and damaged weights are refused)."""
    label = label or (source.name if isinstance(source, Path) else "the artifact")
    with _opened(source) as file:
        if zipfile.is_zipfile(file):
            _check_entry_count(file, label)
            try:
                with zipfile.ZipFile(file) as archive:
                    return Artifact(_zip_kind(archive, label))
            except UnsafeArchive as exc:
                raise UnsupportedArtifact(str(exc)) from None
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise UnsupportedArtifact(f"{label} is a damaged zip archive ({exc})") from None
        file.seek(0)
        found = _tar_kind(file, label, allow_code)
        if found is not None:
            return found
    raise UnsupportedArtifact(
        f"{label} is not a supported model artifact: push a torch.export archive (.pt2), "
        "TorchScript, an exported BentoML .bento archive or a Hugging Face model directory"
    )


def hf_archive_facts(source: Path | BinaryIO, *, allow_code: bool, label: str) -> HfFacts:
    """The facts of a model directory pushed as a tar archive; UnsupportedArtifact when it is not
    one or is refused (pickles, code that is not allowed, damaged weights)."""
    with _opened(source) as file:
        try:
            with tarfile.open(fileobj=file, mode="r:") as archive:  # uncompressed: no decompression bomb
                _bounded_members(archive, label)
                return inspect(archive_tree(archive), allow_code=allow_code, label=label)
        except UnsafeModelDirectory as exc:
            raise UnsupportedArtifact(str(exc)) from None
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise UnsupportedArtifact(f"{label} is not a plain tar archive of a model directory ({exc}): push the "
                                      "directory itself (modelyard push DIR), which sends it as one") from None


@contextlib.contextmanager
def _opened(source: Path | BinaryIO) -> Iterator[BinaryIO]:
    if isinstance(source, Path):
        with open(source, "rb") as file:
            yield file
    else:
        source.seek(0)
        yield source


def _zip_kind(archive: zipfile.ZipFile, label: str) -> str:
    entries = {name.split("/", 1)[1] for name in archive.namelist() if "/" in name}
    if "archive_format" in entries:
        check_torch_export(archive, label)
        return "torch-export"
    if "constants.pkl" in entries and any(entry.startswith("code/") for entry in entries):
        return "torchscript"
    if "data.pkl" in entries:
        raise UnsupportedArtifact(
            f"{label} is a pickle written by torch.save (a module or a state dict): loading it needs your "
            "model's code and can run arbitrary code, so it is refused. Export a self-contained program "
            "instead: torch.export.save(torch.export.export(model, example_inputs), 'model.pt2') "
            "(or torch.jit.save(torch.jit.script(model), 'model.pt'))"
        )
    raise UnsupportedArtifact(f"{label} is a zip archive but not a torch.export or TorchScript program")


def _check_entry_count(file: BinaryIO, label: str) -> None:
    """Refuse a zip whose directory lists more than MAX_ZIP_ENTRIES entries, from its end record."""
    file.seek(0, 2)
    size = file.tell()
    file.seek(max(0, size - (1 << 16) - 22))
    tail = file.read()
    end = tail.rfind(b"PK\x05\x06")
    if end < 0 or len(tail) < end + 22:
        return  # zipfile will refuse it
    (entries,) = struct.unpack_from("<H", tail, end + 10)
    locator = end - 20
    if entries == 0xFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
        (offset,) = struct.unpack_from("<Q", tail, locator + 8)
        file.seek(offset)
        record = file.read(56)
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            (entries,) = struct.unpack_from("<Q", record, 32)
    if entries > MAX_ZIP_ENTRIES:
        raise UnsupportedArtifact(f"{label} lists {entries} files, more than the {MAX_ZIP_ENTRIES} accepted")


def _bounded_members(archive: tarfile.TarFile, label: str) -> list[str]:
    """The members' names, read one header at a time and refused past MAX_TAR_MEMBERS."""
    names: list[str] = []
    seen: set[str] = set()
    for count, member in enumerate(archive):
        if count >= MAX_TAR_MEMBERS:
            raise UnsupportedArtifact(f"{label} holds more than {MAX_TAR_MEMBERS} files")
        try:
            names.append(unique_member_name(member, seen))
        except UnsafeModelDirectory as exc:
            raise UnsupportedArtifact(f"{label}: {exc}") from None
    return names


def _tar_kind(file: BinaryIO, label: str, allow_code: bool) -> Artifact | None:
    """``bento`` for an exported Bento (``bento.yaml`` at the root), ``hf`` with its facts for a
    model directory (``config.json`` at the root, checked by ``hf_archive_facts``), None for
    anything else."""
    try:
        with tarfile.open(fileobj=file) as archive:
            names = _bounded_members(archive, label)
    except UnsupportedArtifact:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return None
    if "bento.yaml" in names:
        return Artifact("bento")
    if is_model_directory(names):
        return Artifact("hf", hf_archive_facts(file, allow_code=allow_code, label=label))
    return None
