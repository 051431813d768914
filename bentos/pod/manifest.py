"""Each file's sha256 in an extracted model directory, written from the digest-checked archive.

A model directory is pushed as one archive whose digest the registry records; once
extracted, that digest can no longer be checked against the files.  The runtime writes
this manifest right after extracting the verified archive, and the service checks every
file against it (and that no file was added) before the weights are loaded, so what
loads is what the registry holds even when the cache volume outlives the pod.
"""

from __future__ import annotations

import json
from pathlib import Path

from modelyard.registry.kernel.digests import file_sha256

MANIFEST_FILE = "modelyard-files.json"


class ManifestMismatch(ValueError):
    """The files differ from the manifest; the message names the first difference."""


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() or p.is_symlink())


def write_manifest(root: Path, manifest: Path) -> None:
    manifest.write_text(json.dumps({name: file_sha256(root / name) for name in _files(root)}, indent=1))


def check_manifest(root: Path, manifest: Path) -> None:
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise ManifestMismatch(f"the model's file manifest is unreadable ({exc})") from None
    present = _files(root)
    if sorted(expected) != present:
        extra = sorted(set(present) - set(expected))
        missing = sorted(set(expected) - set(present))
        raise ManifestMismatch(f"the model directory differs from the pushed archive (added: {extra[:5]}, "
                               f"missing: {missing[:5]})")
    for name in present:
        path = root / name
        if path.is_symlink() or file_sha256(path) != expected[name]:
            raise ManifestMismatch(f"{name} differs from the pushed archive")
