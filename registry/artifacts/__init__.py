"""Artifact stores: content-addressed (sha256) bytes, written atomically.

``open_artifact_store(url)`` picks the backend: a path or ``file://`` URL for a
local directory (the default), ``s3://bucket/prefix`` for S3-compatible storage.
"""

from __future__ import annotations

from modelyard.registry.artifacts.base import ArtifactStore, StoredArtifact
from modelyard.registry.kernel.digests import (
    format_content_digest,
    parse_content_digest,
    parse_digest,
)


def open_artifact_store(url: str) -> ArtifactStore:
    if url.startswith("s3://"):
        from modelyard.registry.artifacts.s3 import S3ArtifactStore

        return S3ArtifactStore.from_url(url)
    from modelyard.registry.artifacts.local import LocalArtifactStore

    return LocalArtifactStore.from_url(url)


__all__ = [
    "ArtifactStore", "StoredArtifact", "open_artifact_store",
    "format_content_digest", "parse_content_digest", "parse_digest",
]
