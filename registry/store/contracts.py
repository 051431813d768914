"""The store's own contracts, one per concern, beside the one it shares with the client.

``operations.RegistryOperations`` is what the store and the HTTP client both do (models, versions,
aliases, deployments).  What only the server's process does is here, sectioned as MLflow's
``abstract_store.py`` is: the records of stored bytes, the protection and history of aliases,
blob keeping, the event feed, tokens, and the store's own health.  Every public method of
``RegistryStore`` belongs to one of these or to ``RegistryOperations``
(``tests/test_contract.py`` checks both that and, with mypy, that the store satisfies each).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from modelyard.registry.kernel import schemas

if TYPE_CHECKING:
    from modelyard.registry.signing.bundles import TrustRoot
    from modelyard.registry.store.tokens import TokenIdentity, TokenInfo


class CatalogAdmin(Protocol):
    """What the server does with versions beyond the shared contract: it records bytes it stored and
    checked, and deletes while telling which blobs that freed."""

    def check_uploadable(self, name: str, version: int) -> schemas.Version:
        """The version an upload targets.  Raises ``NotFound`` or ``Conflict`` (its artifact is in place:
        artifacts are immutable)."""
        ...

    def mark_ready(self, name: str, version: int, digest: str, size: int, *, format: str | None = None,
                   claim: int | None = None, facts: Mapping[str, Any] | None = None) -> schemas.Version:
        """Record a verified artifact and make the version ``ready`` (``version.ready``), consuming the
        upload's ``claim`` in the same transaction; ``facts`` (read from the bytes) replace the same keys
        of its metadata.  Raises ``Conflict`` when it became ready with other bytes meanwhile."""
        ...

    def mark_packaged(self, name: str, version: int, tag: str, digest: str, size: int, *,
                      claim: int | None = None) -> schemas.Version:
        """Record the version's verified Bento (``version.packaged``); an identical second upload is a no-op.
        Raises ``Conflict`` (not ready, or another Bento is recorded)."""
        ...

    def clear_bento(self, name: str, version: int) -> list[str]:
        """Forget the version's Bento (``version.unpackaged``); returns its digest when nothing else uses it."""
        ...

    def remove_model(self, name: str, *, force: bool = False) -> list[str]:
        """``delete_model``, returning the digests no remaining version uses (for ``collect_blobs``)."""
        ...

    def remove_version(self, name: str, version: int, *, force: bool = False) -> list[str]:
        """``delete_version``, returning the digests no other version shares (for ``collect_blobs``)."""
        ...


class AliasGovernance(Protocol):
    """Who and which evidence may move an alias, and the record of every move."""

    def protect_alias(self, name: str, alias: str, protection: schemas.AliasProtection) -> schemas.AliasProtection:
        """Set the alias's rules (metric thresholds a target must meet unless the caller is an admin)."""
        ...

    def unprotect_alias(self, name: str, alias: str) -> None:
        """Remove the alias's rules.  Raises ``NotFound`` when it has none."""
        ...

    def alias_protection(self, name: str, alias: str) -> schemas.AliasProtection | None:
        """The alias's rules, or None."""
        ...

    def alias_history(self, name: str, alias: str, *, limit: int = 100,
                      cursor: str | None = None) -> schemas.Page[schemas.AliasMove]:
        """Every move of the alias, newest first, with who moved it and what was judged; it outlives the model."""
        ...


class BlobKeeping(Protocol):
    """Uploads in flight protect their blob; the collector deletes only what nothing uses."""

    def begin_upload(self, digest: str) -> int:
        """Claim ``digest`` before its first byte is stored; returns the claim."""
        ...

    def end_upload(self, claim: int) -> None:
        """Release an upload's claim (a no-op once consumed)."""
        ...

    def collect_blobs(self, digests: Iterable[str], delete_blob: Callable[[str], None]) -> list[str]:
        """Delete, through ``delete_blob(hex)``, those of ``digests`` nothing uses, each under the blob lock."""
        ...

    def unused_blobs(self, digests: Sequence[str]) -> list[str]:
        """Those of ``digests`` nothing used when read: candidates for ``collect_blobs``."""
        ...

    def prune_claims(self) -> int:
        """Forget claims of uploads that died with their server; returns how many."""
        ...


class EventFeed(Protocol):
    """The ordered change feed (``GET /events``) and its retention."""

    def events_after(self, after: int, limit: int = 1000) -> list[schemas.Event]:
        """Events with an id above ``after``, in id order."""
        ...

    def prune_events(self, *, older_than: timedelta, keep: int) -> int:
        """Remove events older than ``older_than`` or beyond the newest ``keep``; returns how many."""
        ...

    def events_truncated(self, after: int) -> bool:
        """Whether events after ``after`` were pruned (a follower there must re-list)."""
        ...

    def last_event_id(self) -> int:
        """The newest event's id (0 when none)."""
        ...


class TokenKeeping(Protocol):
    """Tokens (stored as hashes) and the authentication mode."""

    def create_token(self, name: str, scope: str, *, cluster: str | None = None) -> tuple[str, TokenInfo]:
        """A new token (shown once) and its record; a ``report`` token names its cluster.  Turns auth on."""
        ...

    def ensure_token(self, name: str, scope: str, token: str, *, cluster: str | None = None) -> bool:
        """Register a token given from outside (the chart's seeded ones); returns whether it was new."""
        ...

    def token_identity(self, token: str) -> TokenIdentity | None:
        """Who a live token is, or None."""
        ...

    def list_tokens(self) -> list[TokenInfo]:
        """Every token's record, revoked ones included."""
        ...

    def revoke_token(self, token_id: int, *, last_admin: bool = False) -> None:
        """Revoke a token; the last live admin token only with ``last_admin``."""
        ...

    def auth_enabled(self) -> bool:
        """Whether requests need a token (on once a token has existed, until ``open_registry``)."""
        ...

    def open_registry(self) -> bool:
        """Turn authentication off explicitly; returns whether it was on."""
        ...


class EvidenceKeeping(Protocol):
    """Evaluations: immutable evidence measured on a version, the newest of each source kept."""

    def record_evaluation(self, name: str, version: int, evaluation: schemas.EvaluationCreate, *,
                          recorded_by: str) -> schemas.Evaluation:
        """Record evidence on a version (``version.evaluated``); prunes the oldest of its kind and source
        beyond ``defaults.EVALUATIONS_PER_SOURCE``.  Who may record which kind is the server's to check."""
        ...

    def list_evaluations(self, name: str, version: int, *, kind: str | None = None, source: str | None = None,
                         verdict: str | None = None, limit: int = 100,
                         cursor: str | None = None) -> schemas.Page[schemas.Evaluation]:
        """A version's evaluations, newest first.  Raises ``NotFound`` or ``BadRequest`` (a foreign cursor)."""
        ...


class SignatureKeeping(Protocol):
    """The trust store and the verified signatures of versions (``store.signatures``); the server verifies a
    bundle (``signing.bundles``) before it records it."""

    def add_trust_root(self, name: str, body: schemas.TrustRootCreate, *, created_by: str) -> schemas.TrustRoot:
        """Trust a signer's key or CA (``trust.added``).  Raises ``Invalid`` or ``Conflict`` (name taken, store full)."""
        ...

    def remove_trust_root(self, name: str) -> None:
        """Stop trusting a signer (``trust.removed``); its signatures stay, untrusted.  Raises ``NotFound``."""
        ...

    def list_trust_roots(self) -> list[schemas.TrustRoot]:
        """The trusted signers, by name, with their public material."""
        ...

    def trust_roots(self) -> list[TrustRoot]:
        """The trust store as ``signing.bundles.verify_bundle`` takes it."""
        ...

    def record_signature(self, name: str, version: int, *, digest: str, signers: Sequence[TrustRoot], bundle: bytes,
                         bundle_digest: str, uploaded_by: str) -> schemas.Version:
        """Record a verified bundle, one row per signer (``version.signed``).  Raises ``Conflict`` when a
        signer's material or the version's bytes changed meanwhile."""
        ...

    def signature_bundle(self, name: str, version: int, signer: str) -> bytes:
        """A signer's bundle as uploaded.  Raises ``NotFound``."""
        ...


class StoreHealth(Protocol):
    """Whether the database can answer and may be written."""

    def ping(self) -> None:
        """Raise if the database cannot answer (``/readyz``)."""
        ...

    def problem(self) -> str | None:
        """Why the database must not be written to (deleted, replaced, damaged), or None."""
        ...


class ReadCaching(Protocol):
    """Hot answers held in the process (``store.read_cache``) and read without I/O, so that a server
    answers them on its event loop; each is what the uncached read (``get_alias``...) would answer,
    as of the last change this process heard of."""

    def listen_for_changes(self, ping_seconds: float = ...) -> None:
        """PostgreSQL: start hearing every replica's committed changes, and serve from the cache while
        heard (SQLite's cache serves from the start)."""
        ...

    def stop_listening(self) -> None:
        """Stop hearing changes; the cache stops serving."""
        ...

    def cached_alias(self, name: str, alias: str) -> schemas.Alias | None:
        """``get_alias``'s answer if held, else None."""
        ...

    def cached_version(self, name: str, version: int) -> schemas.Version | None:
        """``get_version``'s answer if held, else None."""
        ...

    def cached_token_identity(self, token: str) -> tuple[TokenIdentity | None] | None:
        """``(token_identity(token),)`` if held, else None."""
        ...

    def cached_auth_enabled(self) -> bool | None:
        """``auth_enabled()`` if held, else None."""
        ...


STORE_CONTRACTS: tuple[type, ...] = (CatalogAdmin, AliasGovernance, BlobKeeping, EventFeed, TokenKeeping,
                                     EvidenceKeeping, SignatureKeeping, StoreHealth, ReadCaching)


if TYPE_CHECKING:  # checked by mypy (tests/test_contract.py); never run
    from modelyard.registry.store import RegistryStore

    def _the_store_keeps_its_catalog(store: RegistryStore) -> CatalogAdmin:
        return store

    def _the_store_governs_aliases(store: RegistryStore) -> AliasGovernance:
        return store

    def _the_store_keeps_blobs(store: RegistryStore) -> BlobKeeping:
        return store

    def _the_store_keeps_the_feed(store: RegistryStore) -> EventFeed:
        return store

    def _the_store_keeps_tokens(store: RegistryStore) -> TokenKeeping:
        return store

    def _the_store_keeps_evidence(store: RegistryStore) -> EvidenceKeeping:
        return store

    def _the_store_keeps_signatures(store: RegistryStore) -> SignatureKeeping:
        return store

    def _the_store_reports_its_health(store: RegistryStore) -> StoreHealth:
        return store

    def _the_store_caches_hot_reads(store: RegistryStore) -> ReadCaching:
        return store
