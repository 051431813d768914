"""The embedded SQLite database as a file that can be damaged, deleted or replaced.

A registry keeps its SQLite connections open: when the file is deleted or swapped
underneath it, writes still succeed (into an unlinked inode) and are lost at the
next restart.  The guard remembers which file the server opened and answers, in
a microsecond ``stat``, whether it is still the one at that path; the store
refuses writes and ``/readyz`` fails when it is not.  ``quick_check`` runs
SQLite's own consistency check at start-up.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, text
from sqlalchemy.exc import DatabaseError


def sqlite_file(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None for other databases or an in-memory one)."""
    if engine.dialect.name != "sqlite" or not engine.url.database or engine.url.database == ":memory:":
        return None
    return Path(engine.url.database).expanduser().resolve()


class DatabaseFileGuard:
    """Notices when the file at ``path`` is no longer the one the registry opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        identity = os.stat(path)
        self._identity = (identity.st_dev, identity.st_ino)

    def problem(self) -> str | None:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return (f"the database file {self.path} was deleted while the registry ran: writes are refused "
                    "(they would be lost); restore the file or restart the registry")
        if (now.st_dev, now.st_ino) != self._identity:
            return (f"the database file {self.path} was replaced while the registry ran: writes are refused "
                    "(they would go to the old file); restart the registry to open the new one")
        return None


def quick_check(engine: Engine) -> str | None:
    """SQLite's ``PRAGMA quick_check``: None when the database is consistent, else what it found."""
    try:
        with engine.connect() as connection:
            rows = [str(row[0]) for row in connection.execute(text("PRAGMA quick_check(20)"))]
    except DatabaseError as exc:  # damage can stop the check itself
        return str(exc.orig or exc).splitlines()[0]
    if rows == ["ok"]:
        return None
    return "; ".join(rows)
