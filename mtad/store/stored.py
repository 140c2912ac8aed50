"""Messages a route's ``store()`` keeps (``messages.stored_until``): marked kept, served back, forgotten, expired.

The storage key is the message's queue id; the message stays in ``messages`` while kept. Forgetting an inbound
message with no work left deletes it. ``StoredMessageStore`` is the contract, ``StoredMessageMethods`` its
SQLite implementation.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from mtad.store.events import NewEvent, record
from mtad.store.queue import QueuedMessage
from mtad.store.dialect import dialect_of
from mtad.store.work import WorkOutcome, finish_work, messages_by_id


def mark_stored(conn: sqlite3.Connection, queue_id: str, until: float) -> None:
    """Kept until ``until`` at least (a later store() never shortens it)."""
    conn.execute(f"UPDATE messages SET stored_until = {dialect_of(conn).greatest('COALESCE(stored_until, 0)', '?')}"
                 " WHERE id = ?", (until, queue_id))


def keep(conn: sqlite3.Connection, queue_id: str, until: float, event: NewEvent, done: WorkOutcome | None) -> None:
    mark_stored(conn, queue_id, until)
    record(conn, event.domain, event.data, system=event.system)
    if done is not None:
        finish_work(conn, "forwards", [done])


def stored_message(conn: sqlite3.Connection, key: str, domain: str, now: float) -> QueuedMessage | None:
    """The message under storage key ``key`` of ``domain``, if still kept."""
    row = conn.execute("SELECT domain, stored_until FROM messages WHERE id = ?", (key,)).fetchone()
    if row is None or row[1] is None or row[1] < now or row[0].lower() != domain.lower():
        return None
    return messages_by_id(conn, [key]).get(key)


def _pending_work(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM deliveries WHERE message = ? AND state IN ('queued', 'deferred', 'held')"
        " UNION ALL SELECT 1 FROM forwards WHERE message = ? AND state IN ('queued', 'deferred') LIMIT 1",
        (queue_id, queue_id)).fetchone() is not None


def forget(conn: sqlite3.Connection, queue_id: str) -> None:
    """No longer stored; an inbound message with no work left is deleted."""
    conn.execute("UPDATE messages SET stored_until = NULL WHERE id = ?", (queue_id,))
    if not _pending_work(conn, queue_id):
        conn.execute("DELETE FROM messages WHERE id = ? AND direction = 'inbound'", (queue_id,))


def expire(conn: sqlite3.Connection, now: float, limit: int = 1000) -> int:
    ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE stored_until IS NOT NULL AND stored_until < ?"
                                      " LIMIT ?", (now, limit))]
    for queue_id in ids:
        forget(conn, queue_id)
    return len(ids)


class StoredMessageStore(Protocol):
    """Messages kept by a route's ``store()`` action."""

    async def keep_message(self, queue_id: str, until: float, event: NewEvent, done: WorkOutcome | None = None) -> None:
        """In one transaction: keep the message until ``until`` at least (never shortened), record its ``stored``
        event, and write ``done`` (the store() row's outcome, when there is nothing to notify)."""
        ...

    async def stored_message(self, key: str, domain: str, now: float) -> QueuedMessage | None:
        """The message under storage key ``key`` if it belongs to ``domain`` (any case) and is kept at ``now``."""
        ...

    async def forget_message(self, queue_id: str) -> None:
        """No longer kept; an inbound message with no pending work is deleted. Idempotent."""
        ...

    async def expire_stored(self, now: float, limit: int = 1000) -> int:
        """Forget up to ``limit`` messages kept until before ``now``; the number forgotten (``limit``: call
        again)."""
        ...


class StoredMessageMethods:
    """``StoredMessageStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def keep_message(self, queue_id: str, until: float, event: NewEvent, done: WorkOutcome | None = None) -> None:
        await self.write(lambda c: keep(c, queue_id, until, event, done))

    async def stored_message(self, key: str, domain: str, now: float) -> QueuedMessage | None:
        return await self.read(lambda c: stored_message(c, key, domain, now))

    async def forget_message(self, queue_id: str) -> None:
        await self.write(lambda c: forget(c, queue_id))

    async def expire_stored(self, now: float, limit: int = 1000) -> int:
        return await self.write(lambda c: expire(c, now, limit))
