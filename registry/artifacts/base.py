"""The artifact store interface and the streaming-hash loop the backends share."""

from __future__ import annotations

import hashlib
import io
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import anyio.to_thread

from modelyard.registry.kernel.errors import DigestMismatch

WRITE_BLOCK = 1 << 20
"""Bytes gathered before each write: few thread hops, bounded memory."""
READ_AHEAD = 256 << 10
"""Read size of :meth:`ArtifactStore.open` (each read is a ranged request on S3)."""


@dataclass(frozen=True)
class StoredArtifact:
    digest: str  # hex sha256
    size: int


class ArtifactStore(ABC):
    """Content-addressed storage: an artifact is visible under its digest only
    once all its bytes are in place and their sha256 matched the one declared."""

    @abstractmethod
    async def put(self, expected_hex: str, chunks: AsyncIterator[bytes]) -> StoredArtifact:
        """Stream ``chunks`` in; publish under ``expected_hex`` only if it matches, else raise DigestMismatch."""

    @abstractmethod
    def size(self, hex_digest: str) -> int | None:
        """The artifact's size, or None when absent."""

    @abstractmethod
    def open_range(self, hex_digest: str, start: int, end: int) -> Iterator[bytes]:
        """Bytes ``start..end`` (inclusive), in blocks."""

    def open(self, hex_digest: str) -> BinaryIO:
        """The artifact as a seekable, buffered file (for inspecting archives in place)."""
        size = self.size(hex_digest)
        if size is None:
            raise FileNotFoundError(f"sha256:{hex_digest} is not in the artifact store")
        return io.BufferedReader(_RangeReader(self, hex_digest, size), buffer_size=READ_AHEAD)

    @abstractmethod
    def delete(self, hex_digest: str) -> None:
        """Remove an artifact (absent is fine).  Only the garbage collector calls this
        (``RegistryStore.collect_blobs``), under the lock that keeps uploads out."""

    @abstractmethod
    def list_blobs(self) -> Iterator[tuple[str, float]]:
        """Every stored artifact: (hex digest, last-modified time in epoch seconds)."""

    @abstractmethod
    def check(self) -> None:
        """Raise if the store is unusable (``/readyz``)."""

    def free_bytes(self) -> int | None:
        """Room left for uploads, where the backend has a limit it can tell (a local disk)."""
        return None

    @abstractmethod
    def describe(self) -> str:
        """Where the bytes live, for logs."""


async def hash_blocks(chunks: AsyncIterator[bytes], sink: Callable[[bytes], object]) -> StoredArtifact:
    """Feed ``chunks`` to ``sink`` in blocks of about WRITE_BLOCK bytes, hashing as they pass.

    ``sink`` runs in a worker thread (file or network I/O), and so does the hash
    update (hashlib releases the GIL on large buffers), keeping the event loop free.
    """
    hasher = hashlib.sha256()
    size = 0
    pending: list[bytes] = []
    pending_size = 0

    def flush_block(block: bytes) -> None:
        hasher.update(block)
        sink(block)

    async for chunk in chunks:
        if not chunk:
            continue
        pending.append(chunk)
        pending_size += len(chunk)
        if pending_size >= WRITE_BLOCK:
            block = b"".join(pending)
            pending, pending_size = [], 0
            size += len(block)
            await anyio.to_thread.run_sync(flush_block, block)
    if pending:
        block = b"".join(pending)
        size += len(block)
        await anyio.to_thread.run_sync(flush_block, block)
    return StoredArtifact(hasher.hexdigest(), size)


def check_expected(expected_hex: str, got: StoredArtifact) -> None:
    if got.digest != expected_hex:
        raise DigestMismatch(
            f"artifact digest mismatch: declared sha256:{expected_hex}, received {got.size} bytes "
            f"with sha256:{got.digest}; nothing was stored",
            extra={"expected": f"sha256:{expected_hex}", "actual": f"sha256:{got.digest}", "size": got.size},
        )


class _RangeReader(io.RawIOBase):
    """A seekable file over ``ArtifactStore.open_range``: one ranged read per buffer fill."""

    def __init__(self, store: ArtifactStore, hex_digest: str, size: int) -> None:
        self._store, self._digest, self._size, self._position = store, hex_digest, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        end = min(self._size, self._position + len(buffer)) - 1
        if end < self._position:
            return 0
        filled = 0
        for block in self._store.open_range(self._digest, self._position, end):
            buffer[filled:filled + len(block)] = block
            filled += len(block)
        self._position += filled
        return filled
