"""The registry store: every registry operation as one database transaction.

No HTTP here (that is ``server``) and no bytes (that is ``artifacts``): the store answers with
the API's shapes from ``kernel.schemas`` and raises the typed errors from ``kernel.errors``.
``RegistryStore`` is assembled from one class per concern, each over the shared transactions
of ``base.StoreBase`` and each with its documented contract in ``contracts``:

| module | concern | contract |
|---|---|---|
| ``catalog`` | models and versions (and their artifacts' and Bentos' records) | ``operations.RegistryOperations`` (shared with the client) and ``contracts.CatalogAdmin`` |
| ``aliases`` | aliases, their protection and their history | ``contracts.AliasGovernance`` |
| ``blobs`` | uploads in flight and the collection of unused blobs | ``contracts.BlobKeeping`` |
| ``events`` | the change feed and its retention | ``contracts.EventFeed`` |
| ``tokens`` | tokens and the authentication mode | ``contracts.TokenKeeping`` |
| ``deployments`` | what serves where, as operators report it | ``operations.RegistryOperations`` |
| ``evaluations`` | evidence measured on versions, and what alias rules read of it | ``contracts.EvidenceKeeping`` |
"""

from __future__ import annotations

from modelyard.registry.store.aliases import AliasRecords
from modelyard.registry.store.base import StoreBase, TagFilter, version_from_row
from modelyard.registry.store.blobs import PENDING_UPLOAD_TTL
from modelyard.registry.store.catalog import CatalogRecords
from modelyard.registry.store.events import EventRecords
from modelyard.registry.store.tokens import (
    SCOPES,
    TokenIdentity,
    TokenInfo,
    TokenRecords,
    hash_token,
    scope_allows,
)

__all__ = ["PENDING_UPLOAD_TTL", "SCOPES", "RegistryStore", "StoreBase", "TagFilter", "TokenIdentity", "TokenInfo",
           "hash_token", "scope_allows", "version_from_row"]


class RegistryStore(CatalogRecords, AliasRecords, EventRecords, TokenRecords):
    """Registry operations over a SQLAlchemy engine (SQLite or PostgreSQL)."""
