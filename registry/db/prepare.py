"""Open a registry database ready for use: schema at head (migrated here or refused) and, on
SQLite, the file's integrity checked.  Used by the server at start-up and by the admin commands."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import Engine

from modelyard.registry.db.engine import create_db_engine, is_sqlite
from modelyard.registry.db.file_guard import quick_check
from modelyard.registry.db.migrate import current_revision, head_revision, upgrade

log = logging.getLogger("modelyard.registry")


class SchemaNotMigrated(ValueError):
    """The database's schema is behind this server's; run ``modelyard registry migrate``."""


@dataclass(frozen=True)
class PreparedDatabase:
    engine: Engine
    damage: str | None
    """What the integrity check found wrong with a SQLite file, if anything (writes are then refused)."""


def prepare_database(db_url: str, migrate_on_start: bool | None = None) -> PreparedDatabase:
    """``migrate_on_start`` None: SQLite migrates itself, a shared PostgreSQL is migrated by one
    ``modelyard registry migrate`` job rather than by every replica racing."""
    engine = create_db_engine(db_url)
    migrate = migrate_on_start if migrate_on_start is not None else is_sqlite(db_url)
    if migrate:
        upgrade(engine)
    elif current_revision(engine) != head_revision():
        raise SchemaNotMigrated(
            f"database schema is at {current_revision(engine) or 'nothing'}, this server needs {head_revision()}: "
            "run `modelyard registry migrate --db …` first (or set MODELYARD_MIGRATE_ON_START=true)"
        )
    damage = quick_check(engine) if engine.dialect.name == "sqlite" else None
    if damage:
        log.error("the database %s failed its integrity check: %s; writes are refused and /readyz fails "
                  "until it is restored from a backup", engine.url.database, damage)
    return PreparedDatabase(engine, damage)
