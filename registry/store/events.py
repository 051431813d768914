"""The change feed: ordered events, read after an id, pruned by age and count, and whether a
reader fell behind what was pruned.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, delete, func, select

from modelyard.registry.db import models as db
from modelyard.registry.kernel import schemas
from modelyard.registry.store.base import StoreBase

EVENTS_PRUNED_KEY = "events_pruned_through"
_SELECT_EVENTS = (select(db.Event.id, db.Event.type, db.Event.model, db.Event.version, db.Event.alias, db.Event.time)
                  .where(db.Event.id > bindparam("after")).order_by(db.Event.id).limit(bindparam("limit")))


class EventRecords(StoreBase):
    """See the module's docstring; its contract is ``contracts.EventFeed``."""

    def events_after(self, after: int, limit: int = 1000) -> list[schemas.Event]:
        with self.engine.connect() as connection:
            rows = connection.execute(_SELECT_EVENTS, {"after": after, "limit": limit})
            return [schemas.Event(id=r.id, type=r.type, model=r.model, version=r.version, alias=r.alias,
                                  time=r.time) for r in rows]

    def prune_events(self, *, older_than: timedelta, keep: int) -> int:
        """Apply the event feed's retention: drop events older than ``older_than`` and all but the
        newest ``keep``.  Records the last id dropped, so a follower asking for events after an
        older id is told it fell behind (``events_truncated``) and re-lists.  Returns how many went."""
        with self._write() as session:
            self._changes(session, None)
            newest = session.scalar(select(func.coalesce(func.max(db.Event.id), 0))) or 0
            by_age = session.scalar(select(func.max(db.Event.id)).where(db.Event.time < db.utcnow() - older_than)) or 0
            through = max(by_age, newest - keep)
            if through <= 0:
                return 0
            dropped = cast("CursorResult[Any]", session.execute(delete(db.Event).where(db.Event.id <= through))).rowcount or 0
            row = session.get(db.RegistryState, EVENTS_PRUNED_KEY)
            if row is None:
                session.add(db.RegistryState(key=EVENTS_PRUNED_KEY, value=str(through), updated_at=db.utcnow()))
            elif int(row.value) < through:
                row.value, row.updated_at = str(through), db.utcnow()
            return dropped

    def events_truncated(self, after: int) -> bool:
        """Whether events after ``after`` were dropped by the retention (the caller fell behind)."""
        with self.engine.connect() as connection:
            through = connection.scalar(select(db.RegistryState.value).where(
                db.RegistryState.key == EVENTS_PRUNED_KEY))
        return through is not None and after < int(through)

    def last_event_id(self) -> int:
        with self._reader() as session:
            return session.scalar(select(func.coalesce(func.max(db.Event.id), 0))) or 0

