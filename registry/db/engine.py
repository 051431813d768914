"""Engines for the embedded SQLite default and for PostgreSQL.

SQLite needs care to behave under a threaded server: WAL so readers never wait
for the writer, a busy timeout so writers queue instead of failing, and
``BEGIN IMMEDIATE`` for write transactions so two writers never both hold a read
snapshot and then deadlock on the upgrade to a write lock (which SQLite reports
at once as "database is locked", busy timeout or not).  Reads take no explicit
transaction (see ``_on_begin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

WRITE_OPTION = "modelyard_write"
"""Execution option marking a connection whose transaction will write."""

SQLITE_BUSY_TIMEOUT_MS = 30_000


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_db_engine(url: str, *, pool_size: int = 20) -> Engine:
    """Create an engine for ``url``, tuned for the registry server."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            parsed,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_size=pool_size,
            max_overflow=pool_size,
        )
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        # A bare postgresql:// URL would pick psycopg2; we ship psycopg 3.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        # No pre-ping: it would double the round trips of every request.  A connection
        # that died with the server raises a disconnect error once; SQLAlchemy then
        # drops the whole pool, and the next request connects afresh (tests/test_db_outage.py).
        pool_recycle=1800,
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own is deferred-only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across crashes in WAL mode
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Reads run without BEGIN: each SELECT is its own consistent snapshot in WAL mode,
        # and skipping BEGIN/ROLLBACK halves the cost of the operator's hot alias lookup.
        if connection.get_execution_options().get(WRITE_OPTION, False):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
