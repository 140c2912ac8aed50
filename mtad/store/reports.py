"""Reports about sent mail (late DSNs, feedback reports): finding what they are about, and committing them.

A report is matched to the ``delivered`` event of the message and recipient it is about: a late bounce or a
complaint is, by definition, about mail the receiving system accepted. ``sent_by_queue_id`` and
``sent_by_message_id`` read those events (partial indexes on delivered events only: migration step 10), as the
events API shows them, so a match needs nothing but the event log (kept ``store.event_retention``).

``commit_report`` commits the report message itself (kept until ``keep_until``, then expired as a stored
message), the events it gives rise to and its suppression-list entries in one transaction: a report is never
stored without its outcome, nor its outcome recorded without the report. What a report says about one message
and recipient is a ``ReportOutcome`` keyed ``(queue id, recipient, kind)``: the key is written to ``report_keys``
(migration step 14) in the same transaction, and an outcome whose key is there already (a replayed DSN or ARF
report, a second unsubscribe mail) writes nothing: the report is still kept, its outcome not recorded twice. ``ReportStore`` is the contract,
``ReportMethods`` the implementation both backends compose.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, replace
from typing import Any, Mapping, Protocol, Sequence

from mtad.store.eventform import EVENT_DATA
from mtad.store.events import NewEvent
from mtad.store.lists import unsubscribe_member
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


@dataclass(frozen=True)
class ReportOutcome:
    """What a report records about one message and recipient, at most once per ``key``: ``(queue id, recipient
    (lower case), kind)``, kind one of ``bounce``, ``delay``, ``complaint``, ``unsubscribe``. ``member``: ``(list id,
    address)`` to set unsubscribed from that mailing list (``store.lists.unsubscribe_member``; its ``events`` are
    then recorded only if the address is a member)."""

    key: tuple[str, str, str]
    events: tuple[NewEvent, ...] = ()
    entries: tuple[ListEntry, ...] = ()
    member: tuple[int, str] | None = None


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


def _first_time(conn: sqlite3.Connection, key: tuple[str, str, str], now: float) -> bool:
    """Write ``key`` to ``report_keys``; False (nothing written) when it is there already."""
    return conn.execute("INSERT INTO report_keys (queue_id, recipient, kind, created_at) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (queue_id, recipient, kind) DO NOTHING", (*key, now)).rowcount > 0


def commit_report(conn: sqlite3.Connection, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                  now: float, outcomes: Sequence[ReportOutcome] = ()) -> int:
    """Store the report (``item``: its message, events, no work rows), keep it until ``keep_until``, and add the
    list entries whose address (or its domain) is not on that domain's allowlist; with them the ``outcomes`` whose
    key is new (``ReportOutcome``). The entries added."""
    entries = list(entries)
    events = list(item.events)
    members = []
    for outcome in outcomes:
        if not _first_time(conn, outcome.key, now):
            continue
        entries.extend(outcome.entries)
        if outcome.member is not None:
            members.append(outcome)
        else:
            events.extend(outcome.events)
    enqueue(conn, replace(item, events=tuple(events)), now)
    mark_stored(conn, item.queue_id, keep_until)
    for outcome in members:
        assert outcome.member is not None
        unsubscribe_member(conn, outcome.member[0], outcome.member[1], outcome.events)
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
      allowlisted address is skipped; an existing entry is replaced), and the ``outcomes`` whose ``key`` was never
      committed before (their keys written; an outcome with ``member`` sets that list member unsubscribed and
      records its events only if it is a member). When it returns all of it is durable; if it
      raises (``StoreError``) none of it is written. Returns the number of entries added.
    """

    async def sent_by_queue_id(self, queue_id: str) -> tuple[SentRecord, ...]:
        ...

    async def sent_by_message_id(self, message_id: str) -> tuple[SentRecord, ...]:
        ...

    async def commit_report(self, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                            now: float, outcomes: Sequence[ReportOutcome] = ()) -> int:
        ...


class ReportMethods:
    """``ReportStore`` over an engine's ``write``/``read`` (a mixin of both backends' stores)."""

    async def sent_by_queue_id(self, queue_id: str) -> tuple[SentRecord, ...]:
        return tuple(await self.read(lambda c: sent_by_queue_id(c, queue_id)))  # type: ignore[attr-defined]

    async def sent_by_message_id(self, message_id: str) -> tuple[SentRecord, ...]:
        return tuple(await self.read(lambda c: sent_by_message_id(c, message_id)))  # type: ignore[attr-defined]

    async def commit_report(self, item: Enqueue, entries: Sequence[ListEntry], keep_until: float,
                            now: float, outcomes: Sequence[ReportOutcome] = ()) -> int:
        entries, outcomes = tuple(entries), tuple(outcomes)
        return await self.write(  # type: ignore[attr-defined]
            lambda c: commit_report(c, item, entries, keep_until, now, outcomes))
