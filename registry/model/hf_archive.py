"""A model directory as one tar stream, made the same way every time, without a temporary file.

A directory of weights can be larger than the free disk beside it, so it is not packed to
a file first: the archive is produced twice from the files, once to hash it (the upload
declares its sha256 up front) and once to send it.  Both passes must yield the same
bytes, so the archive is canonical: sorted names, no owners, mtime 0, mode 0644, PAX
headers (long and non-ASCII names) and the two zero blocks that end a tar.  A file that
changes between the passes changes the digest, and the registry refuses the upload.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

from modelyard.registry.model.hf_model import directory_tree

BLOCK = tarfile.BLOCKSIZE
CHUNK = 1 << 20


class DirectoryChanged(OSError):
    """A file changed size while the archive was being read."""


def _no_follow(path: str, flags: int) -> int:
    """Open without following a link: a file swapped for a link after the listing is not read."""
    return os.open(path, flags | os.O_NOFOLLOW)


class DirectoryArchive:
    """The canonical tar stream of ``root``'s regular files (hidden ones left out)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files = directory_tree(root).files
        self._headers = {name: self._header(name, size) for name, size in self.files.items()}
        self.size = sum(len(header) + _padded(self.files[name]) for name, header in self._headers.items()) + 2 * BLOCK

    @staticmethod
    def _header(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.type = size, 0, 0o644, tarfile.REGTYPE
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")

    def chunks(self, progress: Callable[[int], None] | None = None) -> Iterator[bytes]:
        for name, header in sorted(self._headers.items()):
            yield header
            expected, sent = self.files[name], 0
            with open(self.root / name, "rb", opener=_no_follow) as handle:
                while sent < expected and (block := handle.read(min(CHUNK, expected - sent))):
                    sent += len(block)
                    if progress:
                        progress(len(block))
                    yield block
                if sent != expected or handle.read(1):
                    raise DirectoryChanged(f"{name} changed while it was being archived: push again")
            if remainder := expected % BLOCK:
                yield bytes(BLOCK - remainder)
        yield bytes(2 * BLOCK)

    def sha256(self, progress: Callable[[int], None] | None = None) -> str:
        hasher = hashlib.sha256()
        for block in self.chunks(progress):
            hasher.update(block)
        return hasher.hexdigest()


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK
