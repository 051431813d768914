"""A version's packaged Bento: tag, digest and size.

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bento_tag", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("bento_digest", sa.String(length=71), nullable=True))
        batch_op.add_column(sa.Column("bento_size", sa.BigInteger(), nullable=True))
        batch_op.create_index(batch_op.f("ix_model_versions_bento_digest"), ["bento_digest"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_model_versions_bento_digest"))
        batch_op.drop_column("bento_size")
        batch_op.drop_column("bento_digest")
        batch_op.drop_column("bento_tag")
