"""Which version a model Bento was built from, read from the archive itself.

``modelyard package`` writes ``src/modelyard-model.json`` (model, version, the
program's digest, its file, format and metadata) beside the program under
``src/model/``.  A Bento is only ever recorded for, and served as, the version it
names, carrying that version's exact program: otherwise a write token could swap
what an aliased version serves by uploading another version's Bento.  The model
server checks the same record again before serving (``modelyard.bentos.runtime``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from collections.abc import Mapping
from typing import Any, BinaryIO

SPEC_FILE = "modelyard-model.json"
"""The record a model Bento carries in its ``src/`` directory."""
MODEL_DIR = "model"
"""Where the program lies inside ``src/``."""
MAX_SPEC_BYTES = 1 << 20
MAX_MEMBERS = 100_000
_BLOCK = 1 << 20


class ForeignBento(ValueError):
    """The Bento was not built from this version's artifact."""


def check_bento_source(file: BinaryIO, *, model: str, version: int, digest: str, format: str | None,
                       metadata: dict[str, Any], label: str) -> None:
    """Raise ForeignBento unless the Bento in ``file`` records exactly this version as its source
    and the program it carries has the version's digest.  One streaming pass over the tar."""
    spec: Any = None
    programs: dict[str, str] = {}
    try:
        with tarfile.open(fileobj=file, mode="r:*") as archive:
            for count, member in enumerate(archive):
                if count >= MAX_MEMBERS:
                    raise ForeignBento(f"{label} has more than {MAX_MEMBERS} files")
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if name == f"src/{SPEC_FILE}":
                    if member.size > MAX_SPEC_BYTES:
                        raise ForeignBento(f"{label}: {name} is larger than {MAX_SPEC_BYTES} bytes")
                    spec = json.loads(_read(archive, member))
                elif name.startswith(f"src/{MODEL_DIR}/"):
                    programs[name.removeprefix("src/")] = _sha256(archive, member)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        if isinstance(exc, ForeignBento):
            raise
        raise ForeignBento(f"{label} is not a readable Bento archive ({exc})") from None
    if not isinstance(spec, dict):
        raise ForeignBento(f"{label} has no src/{SPEC_FILE}: a model version's Bento is the one "
                           f"`modelyard package {model}:{version}` builds")
    if why := source_mismatch(spec, model=model, version=version, digest=digest, format=format, metadata=metadata):
        raise ForeignBento(f"{label} {why}: refused")
    if programs.get(str(spec.get("file"))) != digest:
        raise ForeignBento(f"{label} does not carry the program of {model}:{version} ({digest}) at "
                           f"src/{spec.get('file')}: refused")


def source_mismatch(record: Mapping[str, Any], *, model: str, version: int, digest: str | None,
                    format: str | None, metadata: Mapping[str, Any]) -> str | None:
    """Why a model Bento's record (its ``modelyard-model.json``) is not this version's, or None.

    The one rule the registry applies on upload and the model server before serving."""
    recorded = (record.get("model"), record.get("version"), record.get("digest"))
    if recorded != (model, version, digest):
        return f"was built from {recorded[0]}:{recorded[1]} ({recorded[2]}), not from {model}:{version} ({digest})"
    if record.get("format") != format or record.get("metadata") != metadata:
        return f"records another format or metadata than {model}:{version}"
    return None


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    return handle.read(MAX_SPEC_BYTES + 1) if handle else b""


def _sha256(archive: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    hasher = hashlib.sha256()
    handle = archive.extractfile(member)
    while handle and (block := handle.read(_BLOCK)):
        hasher.update(block)
    return f"sha256:{hasher.hexdigest()}"
