"""Hears, on PostgreSQL, what every replica's write transactions changed (``LISTEN``).

Each write transaction sends ``NOTIFY modelyard_changes`` with the scopes it changed
(``store.read_cache``); PostgreSQL delivers it when, and only if, the transaction commits, to
every listening session, in commit order.  This thread holds one such session and hands each
payload to ``on_change``.

The read cache is only as coherent as this session is alive, so ``on_live(False)`` is called
the moment it is in doubt: a connection error, or a liveness query that does not answer
within ``ping_seconds`` (TCP keepalives and ``tcp_user_timeout`` bound a silent network).
``on_live(True)`` is called only once ``LISTEN`` is in effect again, so nothing committed
after that is missed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
from sqlalchemy import URL

CHANNEL = "modelyard_changes"

log = logging.getLogger(__name__)


def libpq_conninfo(url: URL) -> str:
    """The libpq connection string for a SQLAlchemy PostgreSQL URL."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeListener:
    def __init__(self, url: URL, on_change: Callable[[str], None], on_live: Callable[[bool], None], *,
                 ping_seconds: float = 1.0, retry_seconds: float = 1.0) -> None:
        self.conninfo = libpq_conninfo(url)
        self.on_change = on_change
        self.on_live = on_live
        self.ping_seconds = ping_seconds
        self.retry_seconds = retry_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="modelyard-change-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop listening (within ``ping_seconds``); the cache stops serving."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.ping_seconds + 5)

    def _connect(self) -> psycopg.Connection:
        timeout_ms = int(self.ping_seconds * 2000) + 1000
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=max(2, int(self.ping_seconds * 2)),
                               keepalives=1, keepalives_idle=max(1, int(self.ping_seconds)), keepalives_interval=1,
                               keepalives_count=2, tcp_user_timeout=timeout_ms,
                               options=f"-c statement_timeout={timeout_ms}",
                               application_name="modelyard-registry-changes")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with self._connect() as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self.on_live(True)
                    while not self._stop.is_set():
                        for notice in connection.notifies(timeout=self.ping_seconds):
                            self.on_change(notice.payload)
                            if self._stop.is_set():
                                break
                        connection.execute("SELECT 1")  # still there: a dead session must not pass for a quiet one
            except Exception as exc:  # noqa: BLE001 - any failure: stop trusting the cache, then reconnect
                if not self._stop.is_set():
                    log.warning("registry change listener lost its PostgreSQL session (%s): reads bypass the cache "
                                "until it is back", exc)
            finally:
                self.on_live(False)
            self._stop.wait(self.retry_seconds)
