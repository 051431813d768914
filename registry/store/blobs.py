"""Blobs: uploads in flight and the collection of what nothing uses.

Deletes never unlink blobs themselves: content-addressed bytes may be claimed again by an upload
of the same content at any moment.  Uploads claim their digest before the first byte is stored;
the collector deletes a blob only while holding the blob lock and after one consistent check that
no version and no live claim refers to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import timedelta
from typing import cast

from sqlalchemy import Connection, Table, bindparam, delete, exists, insert, or_, select, text
from sqlalchemy.orm import Session

from modelyard.registry.db import models as db
from modelyard.registry.store.base import StoreBase

BLOB_LOCK_KEY = 0x626C6F62  # "blob": serializes garbage collection against uploads being registered
PENDING_UPLOAD_TTL = timedelta(hours=24)
"""How long an upload in flight protects its blob; a crashed upload's claim lapses after this."""
_INSERT_CLAIM = insert(cast(Table, db.PendingBlob.__table__)).returning(db.PendingBlob.id)
# One statement, so one snapshot: a blob is in use while a version (as artifact or Bento) or an
# unexpired upload claims it.  Two separate reads could straddle the commit that swaps the claim.
_BLOB_IN_USE = select(or_(
    exists().where(db.ModelVersion.digest == bindparam("digest")),
    exists().where(db.ModelVersion.bento_digest == bindparam("digest")),
    exists().where(db.PendingBlob.digest == bindparam("digest"), db.PendingBlob.started_at > bindparam("since")),
))


class BlobRecords(StoreBase):
    """See the module's docstring; its contract is ``contracts.BlobKeeping``."""

    # -- blobs: uploads in flight and garbage -------------------------------------------
    #
    # Deletes never unlink blobs themselves: content-addressed bytes may be claimed again by
    # an upload of the same content at any moment.  Uploads claim their digest before the
    # first byte is stored; the collector deletes a blob only while holding the blob lock and
    # after one consistent check that no version and no live claim refers to it.

    def _lock_blobs(self, session: Session | Connection) -> None:
        """The blob lock, inside a write transaction.  SQLite's write transactions exclude each
        other already (BEGIN IMMEDIATE); PostgreSQL takes a transaction-scoped advisory lock."""
        if self._ordered_events:
            session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": BLOB_LOCK_KEY})

    @staticmethod
    def _consume_claim(session: Session, claim: int | None) -> None:
        if claim is not None:
            session.execute(delete(db.PendingBlob).where(db.PendingBlob.id == claim))

    def begin_upload(self, digest: str) -> int:
        """Claim ``digest`` for an upload about to store it; returns the claim.

        While the claim lives (until :meth:`mark_ready`/:meth:`mark_packaged` consume it,
        :meth:`end_upload` releases it, or ``PENDING_UPLOAD_TTL`` passes) the collector
        leaves the blob alone, even when no version refers to it yet.
        """
        with self._write_core() as connection:
            self._changes(connection, None)
            self._lock_blobs(connection)
            return int(connection.execute(_INSERT_CLAIM, {"digest": digest, "started_at": db.utcnow()}).scalar_one())

    def end_upload(self, claim: int) -> None:
        """Release an upload's claim (a no-op once it was consumed)."""
        with self._write_core() as connection:
            self._changes(connection, None)
            connection.execute(delete(db.PendingBlob).where(db.PendingBlob.id == claim))

    def collect_blobs(self, digests: Iterable[str], delete_blob: Callable[[str], None]) -> list[str]:
        """Delete, through ``delete_blob(hex)``, those of ``digests`` that nothing uses; returns them.

        Each check and its delete run in one write transaction under the blob lock, so an
        upload claiming the same digest waits for the delete to finish (and then stores
        the bytes anew) or is seen by the check (and the blob is kept).
        """
        deleted = []
        for digest in sorted(set(digests)):
            with self._write_core() as connection:
                self._changes(connection, None)
                self._lock_blobs(connection)
                in_use = connection.scalar(_BLOB_IN_USE, {"digest": digest,
                                                          "since": db.utcnow() - PENDING_UPLOAD_TTL})
                if not in_use:
                    delete_blob(digest.removeprefix("sha256:"))
                    deleted.append(digest)
        return deleted

    def unused_blobs(self, digests: Sequence[str]) -> list[str]:
        """Those of ``digests`` that nothing used at the moment of reading: candidates for
        :meth:`collect_blobs`, which checks each again under the lock."""
        since = db.utcnow() - PENDING_UPLOAD_TTL
        used: set[str] = set()
        with self.engine.connect() as connection:
            for start in range(0, len(digests), 500):
                chunk = list(digests[start:start + 500])
                used.update(connection.scalars(select(db.ModelVersion.digest).where(db.ModelVersion.digest.in_(chunk))))
                used.update(connection.scalars(
                    select(db.ModelVersion.bento_digest).where(db.ModelVersion.bento_digest.in_(chunk))))
                used.update(connection.scalars(select(db.PendingBlob.digest).where(
                    db.PendingBlob.digest.in_(chunk), db.PendingBlob.started_at > since)))
        return [digest for digest in digests if digest not in used]

    def prune_claims(self) -> int:
        """Forget claims older than ``PENDING_UPLOAD_TTL`` (uploads that died with their server)."""
        with self._write_core() as connection:
            self._changes(connection, None)
            return connection.execute(delete(db.PendingBlob).where(
                db.PendingBlob.started_at <= db.utcnow() - PENDING_UPLOAD_TTL)).rowcount or 0

    @staticmethod
    def _orphaned(session: Session, digests: set[str]) -> list[str]:
        """Those of ``digests`` that no version refers to any more, as artifact or as Bento."""
        if not digests:
            return []
        still_used = set(session.scalars(
            select(db.ModelVersion.digest).where(db.ModelVersion.digest.in_(digests))
        )) | set(session.scalars(
            select(db.ModelVersion.bento_digest).where(db.ModelVersion.bento_digest.in_(digests))
        ))
        return sorted(digests - still_used)
