"""Artifacts in a local directory: ``<root>/sha256/<2 hex>/<hex>``.

Uploads stream into ``<root>/tmp/`` and are renamed into place (atomic on one
file system) only after the digest matched and the data was fsynced, so a crash
at any point leaves either no artifact or a complete one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO
from urllib.parse import unquote, urlparse

from modelyard.registry.artifacts.base import ArtifactStore, StoredArtifact, check_expected, hash_blocks
from modelyard.registry.kernel.errors import InsufficientStorage

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)

READ_BLOCK = 1 << 20
STALE_TEMP_SECONDS = 24 * 3600


class LocalArtifactStore(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root.expanduser().resolve()
        self.blobs = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._sweep_stale_temps()

    @classmethod
    def from_url(cls, url: str) -> LocalArtifactStore:
        if url.startswith("file://"):
            url = unquote(urlparse(url).path)
        return cls(Path(url))

    def path_for(self, hex_digest: str) -> Path:
        return self.blobs / hex_digest[:2] / hex_digest

    def _sweep_stale_temps(self) -> None:
        """Remove uploads abandoned by a crash long ago (recent ones may belong to a live upload)."""
        cutoff = time.time() - STALE_TEMP_SECONDS
        for leftover in self.tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if leftover.stat().st_mtime < cutoff:
                    leftover.unlink()

    async def put(self, expected_hex: str, chunks: AsyncIterator[bytes]) -> StoredArtifact:
        temp = self.tmp / f"{uuid.uuid4().hex}.part"
        try:
            handle = open(temp, "wb")  # noqa: SIM115 - closed below on every path
        except OSError as exc:
            raise self._full(exc) from exc
        try:
            stored = await hash_blocks(chunks, handle.write)
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
            check_expected(expected_hex, stored)
            final = self.path_for(stored.digest)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
            _fsync_dir(final.parent)
            return stored
        except OSError as exc:
            raise self._full(exc) from exc
        finally:
            with contextlib.suppress(OSError):  # closing a file on a full disk may fail again
                handle.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def _full(self, error: OSError) -> OSError | InsufficientStorage:
        """A full disk is the client's 507, not the server's 500; other I/O errors stay errors."""
        if error.errno not in _FULL:
            return error
        free = self.free_bytes()
        return InsufficientStorage(f"the artifact store at {self.root} is full ({free} bytes free): nothing was "
                                   "stored; free space or move the artifacts to a larger volume, then retry")

    def size(self, hex_digest: str) -> int | None:
        try:
            return self.path_for(hex_digest).stat().st_size
        except FileNotFoundError:
            return None

    def open_range(self, hex_digest: str, start: int, end: int) -> Iterator[bytes]:
        with open(self.path_for(hex_digest), "rb") as handle:
            handle.seek(start)
            remaining = end - start + 1
            while remaining > 0:
                block = handle.read(min(READ_BLOCK, remaining))
                if not block:
                    break
                remaining -= len(block)
                yield block

    def open(self, hex_digest: str) -> BinaryIO:
        return open(self.path_for(hex_digest), "rb")

    def delete(self, hex_digest: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path_for(hex_digest).unlink()

    def list_blobs(self) -> Iterator[tuple[str, float]]:
        for shard in sorted(self.blobs.iterdir()):
            for path in shard.iterdir() if shard.is_dir() else ():
                if len(path.name) == 64 and path.name.startswith(shard.name):
                    with contextlib.suppress(FileNotFoundError):
                        yield path.name, path.stat().st_mtime

    def free_bytes(self) -> int | None:
        return shutil.disk_usage(self.tmp).free

    def check(self) -> None:
        if not os.access(self.tmp, os.W_OK):
            raise OSError(f"artifact directory {self.tmp} is not writable")

    def describe(self) -> str:
        return str(self.root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
