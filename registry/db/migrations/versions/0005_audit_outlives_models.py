"""The alias audit trail outlives its model and records what each move was judged on; report
tokens are bound to a cluster.

``alias_history`` keeps the model's name and loses its cascading foreign key (a deleted model's
moves stay readable, marked as belonging to a deleted model), and gains ``judged``: the rules a
protected alias checked and the metric values it read.  The table is rebuilt (copy, drop, rename)
because SQLite cannot alter a foreign key in place.

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alias_history_new",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=63), nullable=False),
        sa.Column("alias", sa.String(length=63), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("to_version", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("judged", sa.JSON(), nullable=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["model_id"], ["registered_models.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO alias_history_new (id, model_id, model, alias, from_version, to_version, actor, time) "
               "SELECT h.id, h.model_id, m.name, h.alias, h.from_version, h.to_version, h.actor, h.time "
               "FROM alias_history h JOIN registered_models m ON m.id = h.model_id")
    op.drop_index("ix_alias_history_model_alias", table_name="alias_history")
    op.drop_table("alias_history")
    op.rename_table("alias_history_new", "alias_history")
    if op.get_bind().dialect.name == "postgresql":  # the copied ids must not be handed out again
        op.execute("SELECT setval(pg_get_serial_sequence('alias_history', 'id'), "
                   "COALESCE((SELECT MAX(id) FROM alias_history), 0) + 1, false)")
    op.create_index("ix_alias_history_model_alias", "alias_history", ["model", "alias", "id"], unique=False)
    op.create_index("ix_alias_history_model_id", "alias_history", ["model_id"], unique=False)
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("cluster", sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("cluster")
    op.drop_index("ix_alias_history_model_id", table_name="alias_history")
    op.drop_index("ix_alias_history_model_alias", table_name="alias_history")
    op.execute("DELETE FROM alias_history WHERE model_id IS NULL")
    with op.batch_alter_table("alias_history") as batch:
        batch.drop_column("judged")
        batch.drop_column("model")
    op.create_index("ix_alias_history_model_alias", "alias_history", ["model_id", "alias", "id"], unique=False)
