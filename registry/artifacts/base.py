"""The artifact store interface and the streaming-hash loop the backends share."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import anyio.to_thread

from modelyard.registry.errors import DigestMismatch

WRITE_BLOCK = 1 << 20
"""Bytes gathered before each write: few thread hops, bounded memory."""


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

    @abstractmethod
    def delete(self, hex_digest: str) -> None:
        """Remove an artifact no version refers to any more (absent is fine)."""

    @abstractmethod
    def check(self) -> None:
        """Raise if the store is unusable (``/readyz``)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the bytes live, for logs."""


async def hash_blocks(chunks: AsyncIterator[bytes], sink: Callable[[bytes], None]) -> StoredArtifact:
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
