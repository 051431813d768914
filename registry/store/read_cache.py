"""Answers of hot reads, kept until a change to what they read commits, on any replica.

What may be cached is decided by who can tell the cache that it changed.  On SQLite the database
says whether anything was committed since the last look (``unannounced``), and that is asked
before every lookup: any commit, by any process, drops everything.  On PostgreSQL every
write transaction names what it changed (its *scopes*: a model, or everything) in a
``NOTIFY`` that is delivered, on commit, to every replica's listener (``db.change_listener``),
and the writing replica drops the same scopes itself before its write returns.  The cache
serves only while that listener is connected (``live``): while it is not, a change could go
unheard, so every read goes to the database.

Filling races with invalidation: a reader that missed reads the database and then stores the
answer, and a change may commit and be heard in between.  So a reader takes a ``ticket``
before it reads; the answer is stored only if no invalidation of its scope (nor of everything)
happened since, otherwise it is returned but not kept.

Pure and thread-safe: readers run in worker threads, the listener in its own.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, Generic, TypeVar

T = TypeVar("T")

EVERYTHING: Final = "*"
"""The scope of a change that may touch anything (tokens, authentication, an undeclared write)."""

NOTHING_CACHED: Final = "-"
"""The scope of a change no cached answer reads (upload claims, event retention): announced to nobody."""

AUTH: Final = "auth"
"""The scope of cached authentication answers; only changed by ``EVERYTHING``."""

_PAYLOAD_LIMIT = 7_000
"""PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more; longer lists become ``EVERYTHING``."""


def model_scope(name: str) -> str:
    """The scope of everything read about model ``name`` (its versions, aliases, deployments...)."""
    return f"m:{name}"


def payload(scopes: Iterable[str]) -> str:
    """One NOTIFY payload for a transaction's scopes (newline-separated: model names hold none)."""
    unique = sorted(set(scopes))
    if not unique or EVERYTHING in unique:
        return EVERYTHING
    text = "\n".join(unique)
    return text if len(text) < _PAYLOAD_LIMIT else EVERYTHING


def scopes_of(text: str) -> list[str]:
    """The scopes a NOTIFY payload names."""
    return text.split("\n") if text else [EVERYTHING]


class Ticket(Generic[T]):
    """Taken before a read; ``ReadCache.put`` keeps the answer only if the ticket is still current."""

    __slots__ = ("scope", "key", "epoch", "generation")

    def __init__(self, scope: str, key: object, epoch: int, generation: int) -> None:
        self.scope, self.key, self.epoch, self.generation = scope, key, epoch, generation


class ReadCache:
    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic,
                 unannounced: Callable[[], bool] | None = None) -> None:
        self.max_entries = max_entries
        self._clock = clock
        self._unannounced = unannounced
        """Where changes are not announced but can be asked for (SQLite): whether any happened since
        the last call; asked before every lookup, and everything is dropped when one did."""
        self._lock = threading.Lock()
        self._entries: dict[str, dict[object, tuple[Any, float]]] = {}
        self._size = 0
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self.live = False
        """Whether changes are heard; nothing is served or kept while they are not."""
        self.hits = 0
        self.misses = 0

    def get(self, scope: str, key: object) -> Any | None:
        """The cached answer, or None (also while not ``live``)."""
        if not self.live:
            return None
        if self._unannounced is not None and self._unannounced():
            self.invalidate([EVERYTHING])
        entry = self._entries.get(scope, {}).get(key)
        if entry is None or entry[1] <= self._clock():
            self.misses += 1
            return None
        self.hits += 1
        return entry[0]

    def ticket(self, scope: str, key: object) -> Ticket[Any]:
        return Ticket(scope, key, self._epoch, self._generations.get(scope, 0))

    def put(self, ticket: Ticket[T], value: T, *, expires_in: float = math.inf) -> T:
        """Keep ``value`` (the answer read after ``ticket`` was taken) unless its scope changed
        since, for ``expires_in`` seconds at most (an answer computed from the clock); returns it."""
        with self._lock:
            if (self.live and ticket.epoch == self._epoch
                    and ticket.generation == self._generations.get(ticket.scope, 0) and expires_in > 0):
                if self._size >= self.max_entries:
                    self._drop_all()
                scoped = self._entries.setdefault(ticket.scope, {})
                if ticket.key not in scoped:
                    self._size += 1
                scoped[ticket.key] = (value, self._clock() + expires_in)
        return value

    def invalidate(self, scopes: Iterable[str]) -> None:
        """Forget what ``scopes`` read (``EVERYTHING``: all of it); readers in flight keep nothing."""
        with self._lock:
            for scope in scopes:
                if scope == EVERYTHING:
                    self._drop_all()
                    return
                self._generations[scope] = self._generations.get(scope, 0) + 1
                dropped = self._entries.pop(scope, None)
                if dropped:
                    self._size -= len(dropped)
            if len(self._generations) > self.max_entries:
                self._drop_all()

    def _drop_all(self) -> None:
        self._epoch += 1
        self._entries.clear()
        self._generations.clear()
        self._size = 0

    def set_live(self, live: bool) -> None:
        """Serve from the cache (changes are heard from now on) or stop; either way start empty."""
        with self._lock:
            self._drop_all()
            self.live = live

    def __len__(self) -> int:
        return self._size
