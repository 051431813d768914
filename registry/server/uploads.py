"""The life of an uploaded blob: claimed, stored, inspected, recorded, or collected.

An upload claims its declared digest before storing a byte, so the garbage
collector cannot delete the blob between its publication and the transaction
that records it on the version (which consumes the claim).  An upload that fails
anywhere after storing (refused content, a lost race, a model deleted meanwhile,
a client gone) releases its claim and hands the digest to the collector, which
deletes the blob unless something else uses the same bytes.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import anyio

from modelyard.registry import garbage
from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.server.calls import run_write
from modelyard.registry.store import RegistryStore

log = logging.getLogger("modelyard.registry")


async def collect_garbage(store: RegistryStore, artifacts: ArtifactStore, digests: Iterable[str]) -> None:
    """Delete the blobs of ``digests`` that nothing uses any more (after a delete or a failed upload)."""
    digests = list(digests)
    if digests:
        await run_write(store, garbage.collect, store, artifacts, digests)


@asynccontextmanager
async def claimed(store: RegistryStore, artifacts: ArtifactStore, hex_digest: str) -> AsyncIterator[int]:
    """Claim ``hex_digest`` for the upload in the block; yields the claim for ``mark_ready``/``mark_packaged``."""
    digest = f"sha256:{hex_digest}"
    claim = await run_write(store, store.begin_upload, digest)
    try:
        yield claim
    except BaseException:
        with anyio.CancelScope(shield=True):  # a disconnected client must not leave the blob behind
            try:
                await run_write(store, store.end_upload, claim)
                await collect_garbage(store, artifacts, [digest])
            except Exception:  # noqa: BLE001 - the upload's own error is the answer; the sweep collects later
                log.warning("could not release the claim on %s after a failed upload", digest, exc_info=True)
        raise
