"""HTTP work rows: route forwards (``forwards``: ``http`` POSTs and ``store()`` actions) and event webhooks
(``webhook_deliveries``), and the leases of every claimed row (``deliveries`` too).

A claim locks due rows for a worker until ``lease_until`` (``store.leases``): free rows and rows whose lease ran
out are taken, oldest due first, except those the worker holds (``skip``). The handler's outcome ends the claim
(``finish_work``), written with the events it records in one transaction. Rows cross the boundary as frozen
``WorkItem`` records; ``WorkStore`` is the contract, ``WorkMethods`` its SQLite implementation.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Container, Iterable, Mapping, Protocol, Sequence

from mtad.store.dialect import dialect_of
from mtad.store.events import EVENT_DATA, NewEvent, record_all
from mtad.store.queue import (CLAIMABLE, DEFAULT_LEASE, LEASED_TABLES, MESSAGE_COLUMNS, UNLOCK, QueuedMessage,
                              queued_message)

WORK_TABLES = ("forwards", "webhook_deliveries")


@dataclass(frozen=True)
class WorkItem:
    """One claimed row of a work table; the fields of the other table keep their defaults."""

    table: str  # forwards | webhook_deliveries
    id: int
    attempts: int  # attempts made before this claim
    destination: str  # the URL to POST: a forward's destination (store(): the notify URL, or ""), a webhook's URL
    message: str = ""  # forwards: the message's queue id
    recipient: str = ""  # forwards
    route_id: str = ""  # forwards
    action: str = ""  # forwards: http | store
    event_id: str = ""  # webhook_deliveries
    domain: str = ""  # webhook_deliveries: the event's domain
    format: str = ""  # webhook_deliveries: json | legacy

    @property
    def url(self) -> str:
        return self.destination


@dataclass(frozen=True)
class WorkOutcome:
    """How one attempt at a claimed row ended; written by ``finish_work``, which releases the claim."""

    id: int
    state: str  # done | deferred | failed
    attempts: int
    next_attempt_at: float | None  # None: keep the row's
    status: int | None  # the HTTP status, None without an answer
    error: str
    now: float


@dataclass(frozen=True)
class StoredEvent:
    """A recorded event as a webhook POSTs it."""

    data: str  # the event's JSON as stored (user variables put back)
    header_block: bytes | None  # the start of its message (up to the header block), if asked and still stored


_COLUMNS = {"forwards": "id, attempts, destination, message, recipient, route_id, action",
            "webhook_deliveries": "id, attempts, url, event_id, domain, format"}


def _item(table: str, r: Sequence[Any]) -> WorkItem:
    if table == "forwards":
        return WorkItem(table, r[0], r[1], r[2], message=r[3], recipient=r[4], route_id=r[5] or "", action=r[6])
    return WorkItem(table, r[0], r[1], r[2], event_id=r[3], domain=r[4], format=r[5])


def claim_due_work(conn: sqlite3.Connection, table: str, worker: str, now: float, limit: int,
                   actions: tuple[str, ...] = (), *, lease_until: float | None = None,
                   skip: Container[int] = ()) -> list[WorkItem]:
    """Lock up to ``limit`` due rows of ``table`` (forwards: only the given actions) until ``lease_until``."""
    assert table in WORK_TABLES
    only = f" AND action IN ({','.join('?' * len(actions))})" if actions else ""
    rows = [r for r in conn.execute(
        f"SELECT {_COLUMNS[table]} FROM {table} WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?"
        f" AND {CLAIMABLE}{only} ORDER BY next_attempt_at LIMIT ?{dialect_of(conn).lock_rows}",
        (now, now, *actions, limit)).fetchall()
        if r[0] not in skip]
    if not rows:
        return []
    ids = [r[0] for r in rows]
    until = now + DEFAULT_LEASE if lease_until is None else lease_until
    conn.execute(f"UPDATE {table} SET locked_by = ?, locked_at = ?, lease_until = ?"
                 f" WHERE id IN ({','.join('?' * len(ids))})", (worker, now, until, *ids))
    return [_item(table, r) for r in rows]


def claim_webhook_work(conn: sqlite3.Connection, worker: str, now: float, limit: int, busy: Mapping[str, int],
                       max_per_url: int, scan: int = 5000, *, lease_until: float | None = None,
                       skip: Container[int] = ()) -> list[WorkItem]:
    """Lock up to ``limit`` due webhook rows until ``lease_until``, oldest due first, so that no URL has more than
    ``max_per_url`` in flight (``busy``: URL -> POSTs in flight now). URLs at their cap are left out of the scan
    itself, so a dead receiver's backlog never hides other receivers' rows."""
    full = [url for url, n in busy.items() if n >= max_per_url]
    exclude = f" AND url NOT IN ({','.join('?' * len(full))})" if full else ""
    taken: list[int] = []
    room: dict[str, int] = {}
    for row_id, url in conn.execute(
            "SELECT id, url FROM webhook_deliveries WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?"
            f" AND {CLAIMABLE}{exclude} ORDER BY next_attempt_at LIMIT ?{dialect_of(conn).lock_rows}",
            (now, now, *full, scan)):
        if row_id in skip:
            continue
        left = room.get(url)
        if left is None:
            left = max_per_url - busy.get(url, 0)
        if left > 0:
            taken.append(row_id)
            left -= 1
            if len(taken) >= limit:
                break
        room[url] = left
    if not taken:
        return []
    marks = ",".join("?" * len(taken))
    conn.execute(f"UPDATE webhook_deliveries SET locked_by = ?, locked_at = ?, lease_until = ? WHERE id IN ({marks})",
                 (worker, now, now + DEFAULT_LEASE if lease_until is None else lease_until, *taken))
    rows = conn.execute(f"SELECT {_COLUMNS['webhook_deliveries']} FROM webhook_deliveries WHERE id IN ({marks})"
                        " ORDER BY next_attempt_at", taken).fetchall()
    return [_item("webhook_deliveries", r) for r in rows]


def finish_work(conn: sqlite3.Connection, table: str, outcomes: Iterable[WorkOutcome],
                events: Iterable[NewEvent] = ()) -> None:
    """Write the outcomes (releasing their claims) and record the events they made."""
    assert table in WORK_TABLES
    conn.executemany(f"UPDATE {table} SET state = ?, attempts = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                     f" {UNLOCK}, last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
                     [(o.state, o.attempts, o.next_attempt_at, o.status, o.error[:1000], o.now, o.id)
                      for o in outcomes])
    record_all(conn, events)


def _chunks(ids: list[int], size: int = 500) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


def renew_leases(conn: sqlite3.Connection, table: str, worker: str, ids: Iterable[int], until: float) -> int:
    """Extend ``worker``'s lease on the rows ``ids`` it still holds to ``until``; the number of rows renewed."""
    assert table in LEASED_TABLES
    renewed = 0
    for chunk in _chunks(list(ids)):
        renewed += conn.execute(f"UPDATE {table} SET lease_until = ? WHERE locked_by = ? AND id IN"
                                f" ({','.join('?' * len(chunk))})", (until, worker, *chunk)).rowcount
    return renewed


def release_claim(conn: sqlite3.Connection, table: str, row_id: int, worker: str, next_attempt_at: float) -> bool:
    """Give back a row ``worker`` claimed but could not handle, without counting an attempt; False if it no
    longer held it (its lease ran out and another claimer took it)."""
    assert table in LEASED_TABLES
    return conn.execute(f"UPDATE {table} SET {UNLOCK}, next_attempt_at = ? WHERE id = ? AND locked_by = ?",
                        (next_attempt_at, row_id, worker)).rowcount > 0


def messages_by_id(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, QueuedMessage]:
    """The messages still stored among ``ids`` (one query for a batch)."""
    rows = conn.execute(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE id IN ({','.join('?' * len(ids))})",
                        list(ids)).fetchall()
    return {r[0]: queued_message(r) for r in rows}


HEADER_SCAN = 262_144  # bytes of a message a legacy webhook reads its header fields from


def webhook_event(conn: sqlite3.Connection, event_id: str, with_headers: bool) -> StoredEvent | None:
    row = conn.execute(f"SELECT {EVENT_DATA}, queue_id FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    block = None
    if with_headers and row[1]:
        found = conn.execute(f"SELECT substr(body, 1, {HEADER_SCAN}) FROM messages WHERE id = ?",
                             (row[1],)).fetchone()
        block = bytes(found[0]) if found else None
    return StoredEvent(row[0], block)


class WorkStore(Protocol):
    """HTTP work and the leases of claimed rows. Claims are leases: a row is taken when free or when its holder's
    lease ran out, so a holder that dies loses its rows to the next claimer (at-least-once); a holder renews
    what it holds and never takes its own rows twice (``skip``)."""

    lease: float  # seconds a claim holds without renewal (``store.claim_lease``)
    is_open: bool

    async def claim_work(self, table: str, worker: str, now: float, limit: int, actions: Sequence[str] = (), *,
                         lease_until: float, skip: Container[int] = ()) -> list[WorkItem]:
        """Lock up to ``limit`` rows of ``table`` due at ``now`` (forwards: of these actions) for ``worker`` until
        ``lease_until``, oldest due first; committed before it returns."""
        ...

    async def claim_webhook_work(self, worker: str, now: float, limit: int, busy: Mapping[str, int],
                                 max_per_url: int, *, lease_until: float, skip: Container[int] = ()
                                 ) -> list[WorkItem]:
        """``claim_work`` over webhook rows with at most ``max_per_url`` in flight to any URL, counting ``busy``
        (URL -> POSTs in flight); a URL at its cap never hides other URLs' rows."""
        ...

    async def finish_work(self, table: str, outcomes: Sequence[WorkOutcome], events: Sequence[NewEvent] = ()) -> None:
        """Write outcomes (each releases its row's claim) and record ``events`` (built by ``events.shape``), all in
        one transaction. Writing the same outcome again is harmless."""
        ...

    async def renew_leases(self, table: str, worker: str, ids: Sequence[int], until: float) -> int:
        """Extend the leases ``worker`` still holds among ``ids`` (any leased table, ``deliveries`` too); the
        number renewed (a row another claimer took over is not)."""
        ...

    async def release_claim(self, table: str, row_id: int, worker: str, next_attempt_at: float) -> bool:
        """Give back a row unhandled (no attempt counted), due at ``next_attempt_at``; False if ``worker`` no
        longer held it."""
        ...

    async def work_messages(self, ids: Sequence[str]) -> dict[str, QueuedMessage]:
        """The messages still stored among ``ids``."""
        ...

    async def webhook_event(self, event_id: str, with_headers: bool = False) -> StoredEvent | None:
        """A recorded event (None once retention pruned it), with its message's header block if asked."""
        ...


class WorkMethods:
    """``WorkStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def claim_work(self, table: str, worker: str, now: float, limit: int, actions: Sequence[str] = (), *,
                         lease_until: float, skip: Container[int] = ()) -> list[WorkItem]:
        actions = tuple(actions)
        return await self.write(lambda c: claim_due_work(c, table, worker, now, limit, actions,
                                                         lease_until=lease_until, skip=skip))

    async def claim_webhook_work(self, worker: str, now: float, limit: int, busy: Mapping[str, int],
                                 max_per_url: int, *, lease_until: float, skip: Container[int] = ()
                                 ) -> list[WorkItem]:
        busy = dict(busy)
        return await self.write(lambda c: claim_webhook_work(c, worker, now, limit, busy, max_per_url,
                                                             lease_until=lease_until, skip=skip))

    async def finish_work(self, table: str, outcomes: Sequence[WorkOutcome], events: Sequence[NewEvent] = ()) -> None:
        outcomes, events = tuple(outcomes), tuple(events)
        await self.write(lambda c: finish_work(c, table, outcomes, events))

    async def renew_leases(self, table: str, worker: str, ids: Sequence[int], until: float) -> int:
        ids = tuple(ids)
        return await self.write(lambda c: renew_leases(c, table, worker, ids, until))

    async def release_claim(self, table: str, row_id: int, worker: str, next_attempt_at: float) -> bool:
        return await self.write(lambda c: release_claim(c, table, row_id, worker, next_attempt_at))

    async def work_messages(self, ids: Sequence[str]) -> dict[str, QueuedMessage]:
        ids = tuple(dict.fromkeys(ids))
        return await self.read(lambda c: messages_by_id(c, ids))

    async def webhook_event(self, event_id: str, with_headers: bool = False) -> StoredEvent | None:
        return await self.read(lambda c: webhook_event(c, event_id, with_headers))
