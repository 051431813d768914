"""The registry's tables, as SQLAlchemy 2 typed ORM classes.

Alembic migrations under ``migrations/`` create exactly these tables; a test
compares the two so they cannot drift apart.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text,
                        UniqueConstraint)
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite hands back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None:  # an instant in UTC: SQLite would drop any other offset unconverted
            value = value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime}


class RegisteredModel(Base):
    __tablename__ = "registered_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Last version number handed out.  Incremented with UPDATE … RETURNING inside the
    # version-creating transaction, so numbers are consecutive and never reused, even
    # after deletes, on both SQLite (one writer) and PostgreSQL (row lock).
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    versions: Mapped[list[ModelVersion]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True
    )


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version", name="uq_model_versions_model_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    digest: Mapped[str | None] = mapped_column(String(71), default=None, index=True)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    format: Mapped[str | None] = mapped_column(String(32), default=None)
    description: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str | None] = mapped_column(Text, default=None)
    # The version packaged as a BentoML service (an exported .bento in the artifact store).
    bento_tag: Mapped[str | None] = mapped_column(String(128), default=None)
    bento_digest: Mapped[str | None] = mapped_column(String(71), default=None, index=True)
    bento_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    created_by: Mapped[str | None] = mapped_column(String(128), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    model: Mapped[RegisteredModel] = relationship(back_populates="versions")


class Alias(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_aliases_model_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(63))
    # RESTRICT: a version an alias points at cannot disappear underneath it.
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"), index=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """The ordered change feed behind ``GET /events``; ids only grow.

    ``model`` is empty for registry-wide events (authentication turned on or opened)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_model", "model"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    alias: Mapped[str | None] = mapped_column(String(63), default=None)
    time: Mapped[datetime] = mapped_column(default=utcnow)


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored (tokens are random, so no slow hash is needed)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    cluster: Mapped[str | None] = mapped_column(String(63), default=None)
    """For a ``report`` token: the only cluster whose deployments it may report (None: any)."""
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class PendingBlob(Base):
    """An upload in flight: its declared digest must not be collected as garbage.

    Registered (under the collector's lock) before the first byte is stored and removed
    in the transaction that records the blob on its version, so at every moment a
    published blob is protected by a pending row, a version row, or neither (garbage).
    """

    __tablename__ = "pending_blobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    digest: Mapped[str] = mapped_column(String(71), index=True)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegistryState(Base):
    """Registry-wide settings that must survive restarts, such as whether authentication is on."""

    __tablename__ = "registry_state"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Evaluation(Base):
    """Evidence measured on a version: a canary's live numbers or an offline evaluation's.  Immutable;
    the oldest of a (version, kind, source) beyond ``defaults.EVALUATIONS_PER_SOURCE`` are pruned."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_version_kind_source", "version_id", "kind", "source", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(381))
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    verdict: Mapped[str] = mapped_column(String(8))
    window_start: Mapped[datetime | None] = mapped_column(default=None)
    window_end: Mapped[datetime | None] = mapped_column(default=None)
    requests: Mapped[int | None] = mapped_column(BigInteger, default=None)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recorded_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """What a cluster serves, as its operator last reported it (``PUT /deployments/…``).

    Keyed by where it runs, not by model: a report names the model and version it serves,
    which may be one the registry no longer has (the report says so; nothing cascades).
    ``reported_at`` is the registry's clock, so a silent operator shows as stale."""

    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("cluster", "namespace", "name", name="uq_deployments_where"),
                      Index("ix_deployments_model_version", "model", "version"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cluster: Mapped[str] = mapped_column(String(63))
    namespace: Mapped[str] = mapped_column(String(63))
    name: Mapped[str] = mapped_column(String(253))
    model: Mapped[str] = mapped_column(String(63))
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    digest: Mapped[str | None] = mapped_column(String(71), default=None)
    phase: Mapped[str] = mapped_column(String(16))
    ready_replicas: Mapped[int] = mapped_column(Integer, default=0)
    desired_replicas: Mapped[int] = mapped_column(Integer, default=0)
    helm_revision: Mapped[int | None] = mapped_column(Integer, default=None)
    url: Mapped[str | None] = mapped_column(String(512), default=None)
    last_transition_time: Mapped[datetime | None] = mapped_column(default=None)
    rollout_result: Mapped[str | None] = mapped_column(String(64), default=None)
    rollout_reason: Mapped[str | None] = mapped_column(String(1024), default=None)
    reporter: Mapped[str] = mapped_column(String(128))
    reported_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasRule(Base):
    """A protected alias: moving it needs admin scope, or a version whose metrics meet ``rules``."""

    __tablename__ = "alias_rules"
    __table_args__ = (UniqueConstraint("model_id", "alias", name="uq_alias_rules_model_alias"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("registered_models.id", ondelete="CASCADE"))
    alias: Mapped[str] = mapped_column(String(63))
    rules: Mapped[dict[str, Any]] = mapped_column(default=dict)
    """{"require": ["accuracy>=0.95", …]}: every rule must hold."""
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AliasMove(Base):
    """One alias change, for the audit trail: who moved it from which version to which, when, and
    what a protected alias judged the move on.

    Kept by model name: the trail outlives the model (``model_id`` turns NULL when it is deleted,
    which is how a re-created model's history tells the old model's moves apart)."""

    __tablename__ = "alias_history"
    __table_args__ = (Index("ix_alias_history_model_alias", "model", "alias", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int | None] = mapped_column(ForeignKey("registered_models.id", ondelete="SET NULL"),
                                                 default=None, index=True)
    model: Mapped[str] = mapped_column(String(63))
    alias: Mapped[str] = mapped_column(String(63))
    from_version: Mapped[int | None] = mapped_column(Integer, default=None)
    to_version: Mapped[int | None] = mapped_column(Integer, default=None)
    """None: the alias was deleted."""
    actor: Mapped[str] = mapped_column(String(128))
    judged: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    """{"require": [...], "metrics": {...}}: the rules a protected alias checked and the values it read
    (None: the alias was not protected, or an admin moved it past its rules)."""
    time: Mapped[datetime] = mapped_column(default=utcnow)


class TrustRoot(Base):
    """A signer the registry trusts: its public key, or the CA that issues its signing certificates
    (``identity``: the one name its certificates must carry).  Public material only."""

    __tablename__ = "trust_roots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63), unique=True)
    method: Mapped[str] = mapped_column(String(16))
    material: Mapped[str] = mapped_column(Text)
    fingerprint: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str | None] = mapped_column(String(256), default=None)
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Signature(Base):
    """A verified OpenSSF model signature of a version, one per signer.  ``fingerprint`` is the trust
    material that verified it: the signature counts only while the signer's entry still holds it."""

    __tablename__ = "signatures"
    __table_args__ = (UniqueConstraint("version_id", "signer", name="uq_signatures_version_signer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    signer: Mapped[str] = mapped_column(String(63))
    method: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(64))
    identity: Mapped[str | None] = mapped_column(String(256), default=None)
    bundle: Mapped[bytes] = mapped_column(LargeBinary)
    bundle_digest: Mapped[str] = mapped_column(String(71))
    uploaded_by: Mapped[str] = mapped_column(String(128))
    verified_at: Mapped[datetime] = mapped_column(default=utcnow)
