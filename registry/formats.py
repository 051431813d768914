"""Which kind of model artifact a file is, and whether it is safe to load.

A model version's artifact must be a self-contained program that loads without
user code: a ``torch.export`` archive (``.pt2``), TorchScript, or a BentoML
``.bento`` archive.  ``torch.save`` of a module or state dict is a pickle:
loading it needs the defining code and runs arbitrary code, so it is refused, as
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
from pathlib import Path
from typing import BinaryIO

from modelyard.registry.torch_export_check import UnsafeArchive, check_torch_export

FORMATS = ("torch-export", "torchscript", "bento")
MAX_ZIP_ENTRIES = 100_000
"""A zip's directory is read whole into memory: more entries than any model program has are refused first."""
MAX_TAR_MEMBERS = 100_000


class UnsupportedArtifact(ValueError):
    """A file that is not one of :data:`FORMATS`, or not safe to load, with what to do instead."""


def sniff_format(source: Path | BinaryIO, label: str | None = None) -> str:
    """Return ``torch-export``, ``torchscript`` or ``bento``; raise UnsupportedArtifact otherwise.

    ``source`` is a path or a seekable binary file (the registry reads stored blobs in place).
    """
    label = label or (source.name if isinstance(source, Path) else "the artifact")
    with _opened(source) as file:
        if zipfile.is_zipfile(file):
            _check_entry_count(file, label)
            try:
                with zipfile.ZipFile(file) as archive:
                    return _zip_kind(archive, label)
            except UnsafeArchive as exc:
                raise UnsupportedArtifact(str(exc)) from None
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                raise UnsupportedArtifact(f"{label} is a damaged zip archive ({exc})") from None
        file.seek(0)
        if _is_bento_archive(file):
            return "bento"
    raise UnsupportedArtifact(
        f"{label} is not a supported model artifact: push a torch.export archive (.pt2), "
        "TorchScript, or an exported BentoML .bento archive"
    )


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


def _is_bento_archive(file: BinaryIO) -> bool:
    """An exported Bento: a tar archive with a ``bento.yaml`` at its root."""
    try:
        with tarfile.open(fileobj=file) as archive:
            for count, member in enumerate(archive):
                if member.name.lstrip("./") == "bento.yaml":
                    return True
                if count >= MAX_TAR_MEMBERS:
                    return False
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return False
    return False
