"""Reports about sent mail (late DSNs, feedback reports): finding what they are about, and committing them.

A report is matched to the ``delivered`` event of the message and recipient it is about: a late bounce or a
complaint is, by definition, about mail the receiving system accepted. ``sent_by_queue_id`` and
``sent_by_message_id`` read those events (partial indexes on delivered events only: migration step 6), as the
events API shows them, so a match needs nothing but the event log (kept ``store.event_retention``).

``commit_report`` commits the report message itself (kept until ``keep_until``, then expired as a stored
message), the events it gives rise to and its suppression-list entries in one transaction: a report is never
stored without its outcome, nor its outcome recorded without the report. ``ReportStore`` is the contract,
``ReportMethods`` the implementation both backends compose.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from mtad.store.eventform import EVENT_DATA
from mtad.store.queue import Enqueue, enqueue
from mtad.store.stored import mark_stored
from mtad.store.suppressions import Suppression, add_entries, allowlisted

MAX_SENT = 1000  # delivered events read for one lookup at most


@dataclass(frozen=True)
class SentRecord:
    """A delivered recipient of a message: its domain, queue id, recipient and ``delivered`` event (the API's
    JSON), the newest one when it was delivered more than once."""

    domain: str
    queue_id: str
    recipient: str
    event: Mapping[str, Any]


@dataclass(frozen=True)
class ListEntry:
    """An entry a report puts on a domain's suppression list (``bounces`` or ``complaints``)."""

    domain: str
    entry: Suppression


def _sent(rows: Sequence[Sequence[Any]]) -> list[SentRecord]:
    newest: dict[tuple[str, str], SentRecord] = {}
    for domain, queue_id, recipient, data in rows:  # oldest first: a later delivery replaces an earlier one
        newest[(queue_id, recipient.lower())] = SentRecord(domain, queue_id, recipient, json.loads(data))
    return list(newest.values())


def sent_by_queue_id(conn: sqlite3.Connection, queue_id: str) -> list[SentRecord]:
    # ``event = 'delivered'`` written out: the planner uses a partial index only for a literal that implies it
    return _sent(conn.execute(f"SELECT domain, queue_id, recipient, {EVENT_DATA} FROM events"
                              " WHERE queue_id = ? AND event = 'delivered' ORDER BY seq LIMIT ?",
                              (queue_id, MAX_SENT)).fetchall())


def sent_by_message_id(conn: sqlite3.Connection, message_id: str) -> list[SentRecord]:
    return _sent(conn.execute(f"SELECT domain, queue_id, recipient, {EVENT_DATA} FROM events"
                              " WHERE message_id = ? AND event = 'delivered' ORDER BY seq LIMIT ?",
                              (message_id, MAX_SENT)).fetchall())


def commit_report(conn: sqlite3.Connection, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                  now: float) -> int:
    """Store the report (``item``: its message, events, no work rows), keep it until ``keep_until``, and add the
    list entries whose address (or its domain) is not on that domain's allowlist; the entries added."""
    enqueue(conn, item, now)
    mark_stored(conn, item.queue_id, keep_until)
    added = 0
    for e in entries:
        if not allowlisted(conn, e.domain, e.entry.address):
            added += add_entries(conn, e.domain, [e.entry])
    return added


class ReportStore(Protocol):
    """What reports about sent mail need of the store.

    Contract:
    - ``sent_by_queue_id`` / ``sent_by_message_id``: the recipients of a message that were delivered (one
      ``SentRecord`` per recipient, the newest delivery's event), at most ``MAX_SENT``, from one snapshot; empty
      when nothing matches (unknown message, or its events are past retention).
    - ``commit_report(item, entries, keep_until, now)``: in one transaction, group-committed: the report message
      with its events (``item``; counters and webhook rows as ``record_events`` writes them), kept until
      ``keep_until`` (``StoredMessageStore.expire_stored`` deletes it later), and the suppression entries (an
      allowlisted address is skipped; an existing entry is replaced). When it returns all of it is durable; if it
      raises (``StoreError``) none of it is written. Returns the number of entries added.
    """

    async def sent_by_queue_id(self, queue_id: str) -> tuple[SentRecord, ...]:
        ...

    async def sent_by_message_id(self, message_id: str) -> tuple[SentRecord, ...]:
        ...

    async def commit_report(self, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                            now: float) -> int:
        ...


class ReportMethods:
    """``ReportStore`` over an engine's ``write``/``read`` (a mixin of both backends' stores)."""

    async def sent_by_queue_id(self, queue_id: str) -> tuple[SentRecord, ...]:
        return tuple(await self.read(lambda c: sent_by_queue_id(c, queue_id)))  # type: ignore[attr-defined]

    async def sent_by_message_id(self, message_id: str) -> tuple[SentRecord, ...]:
        return tuple(await self.read(lambda c: sent_by_message_id(c, message_id)))  # type: ignore[attr-defined]

    async def commit_report(self, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                            now: float) -> int:
        entries = tuple(entries)
        return await self.write(  # type: ignore[attr-defined]
            lambda c: commit_report(c, item, entries, keep_until, now))
