"""Alembic migrations create exactly the ORM's schema, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from modelyard.registry.db.engine import create_db_engine
from modelyard.registry.db.migrate import current_revision, head_revision, upgrade
from modelyard.registry.db.models import Base


def test_migrations_match_models(db_url: str) -> None:
    engine = create_db_engine(db_url)
    assert current_revision(engine) is None
    upgrade(engine)
    upgrade(engine)  # idempotent
    assert current_revision(engine) == head_revision()
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []
    engine.dispose()
