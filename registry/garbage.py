"""Removing artifact blobs nothing refers to.

Blobs are content-addressed, so the same bytes may belong to several versions,
to a version and a Bento, or to an upload still in flight.  Nothing deletes a
blob directly: deletes and refused uploads hand their digests to :func:`collect`,
and :func:`sweep` finds what crashes left behind.  Both decide through
``RegistryStore.collect_blobs``, which checks and deletes each blob under the
lock uploads take to claim their digest.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from modelyard.registry.artifacts import ArtifactStore
from modelyard.registry.store import RegistryStore

SWEEP_MIN_AGE_SECONDS = 3600.0
"""The sweep leaves younger blobs alone: belt and braces beside the upload claims."""


def collect(store: RegistryStore, artifacts: ArtifactStore, digests: Iterable[str]) -> list[str]:
    """Delete those of ``digests`` ("sha256:<hex>") that no version and no upload uses; returns them."""
    return store.collect_blobs(digests, artifacts.delete)


@dataclass(frozen=True)
class SweepResult:
    examined: int
    deleted: list[str]


def sweep(store: RegistryStore, artifacts: ArtifactStore, *, min_age_seconds: float = SWEEP_MIN_AGE_SECONDS,
          now: float | None = None) -> SweepResult:
    """Delete every stored blob older than ``min_age_seconds`` that nothing uses (and forget
    upload claims that outlived their server)."""
    store.prune_claims()
    cutoff = (time.time() if now is None else now) - min_age_seconds
    old = [f"sha256:{hex_digest}" for hex_digest, modified in artifacts.list_blobs() if modified <= cutoff]
    return SweepResult(examined=len(old), deleted=collect(store, artifacts, store.unused_blobs(old)))
