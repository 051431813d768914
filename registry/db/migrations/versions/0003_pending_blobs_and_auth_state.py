"""Uploads in flight (the garbage collector leaves their blobs alone) and persistent
registry state (authentication stays on once a token has existed).

Revision ID: 0003
Revises: 0002
"""
from datetime import datetime, timezone

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pending_blobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=71), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_pending_blobs_digest"), "pending_blobs", ["digest"], unique=False)
    state = op.create_table(
        "registry_state",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    # A registry that ever had a token keeps authentication on, revoked tokens included:
    # before this revision, revoking the last live token silently opened it.
    had_tokens = op.get_bind().execute(sa.text("SELECT 1 FROM api_tokens LIMIT 1")).first() is not None
    if had_tokens:
        op.bulk_insert(state, [{"key": "auth", "value": "on", "updated_at": datetime.now(timezone.utc)}])


def downgrade() -> None:
    op.drop_table("registry_state")
    op.drop_index(op.f("ix_pending_blobs_digest"), table_name="pending_blobs")
    op.drop_table("pending_blobs")
