"""Engagement tracking's state: each domain's tracking settings, the messages whose copies carry tracking URLs,
and the first open and click of each (message, recipient).

- ``domain_tracking``: one row per sending domain whose settings were set through the API (``DomainTracking``;
  a domain without a row has the configured defaults). A change tells every node (``store.changes``,
  ``"tracking"``): the scheduler keeps them in memory.
- ``tracked_messages``: written once per message before its first tracked copy is sent (``track_message``,
  idempotent): what a click, open or unsubscribe event shows of the message (headers, size, tags, campaigns,
  user variables) and its link list, so tracking URLs keep working after the message itself is deleted, until
  the tracking retention drops the row (``prune_tracking``).
- ``engagement_firsts``: (queue id, recipient, opened | clicked): ``record_engagement`` inserts one in the
  same transaction as the event; the first insert makes the event the unique one (``Engagement.first_event``).

``EngagementMethods`` are the typed methods (composed by both backends, ``store.methods``); ``EngagementStore``
is their contract.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from mtad.store.changes import changed
from mtad.store.events import NewEvent, Prepared, record, record_prepared
from mtad.store.suppressions import Suppression, add_entries

DEFAULT_HTML_FOOTER = '\n<br>\n<p><a href="%unsubscribe_url%">unsubscribe</a></p>\n'  # Mailgun's defaults
DEFAULT_TEXT_FOOTER = "\n\nTo unsubscribe click: <%unsubscribe_url%>\n\n"


@dataclass(frozen=True)
class DomainTracking:
    """A sending domain's tracking settings (Mailgun's ``/v3/domains/{d}/tracking``): ``click`` is ``yes``,
    ``no`` or ``htmlonly``; ``base_url`` the domain's own tracking host (its CNAME), ``""`` for the configured
    one."""

    open: bool = False
    click: str = "no"
    unsubscribe: bool = False
    html_footer: str = DEFAULT_HTML_FOOTER
    text_footer: str = DEFAULT_TEXT_FOOTER
    base_url: str = ""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "DomainTracking":
        known = {k: data[k] for k in ("open", "click", "unsubscribe", "html_footer", "text_footer", "base_url")
                 if k in data}
        return cls(**known)


@dataclass(frozen=True)
class TrackedMessage:
    """A message whose copies carry tracking URLs: its sending domain, when it was first rendered, what its events
    show of it (``data``: ``headers``, ``size``, ``attachments``, ``options``, ``sender``) and its link list."""

    queue_id: str
    domain: str
    created_at: float
    data: Mapping[str, Any] = field(default_factory=dict)
    links: tuple[str, ...] = ()


@dataclass(frozen=True)
class Engagement:
    """One open, click or unsubscribe to record: ``event`` (built by ``mtad.events``), and, for opens and clicks,
    ``first`` = (queue id, recipient, kind) with ``first_event``, the same event marked unique, recorded instead
    when this is the first of its kind for that message and recipient (None: ``event`` with ``flags.is-unique``
    true, made only if it is the first). ``suppression``: an entry to add to ``event.domain``'s lists with it (an
    unsubscribe). ``prepared``: ``event``'s rows made ahead (``store.events.prepare``), written unless it is the
    first (the unique variant's rows are made at the write)."""

    event: NewEvent
    first: tuple[str, str, str] | None = None
    first_event: NewEvent | None = None
    suppression: Suppression | None = None
    prepared: Prepared | None = None


# --- SQL --------------------------------------------------------------------------------------------------

def load_settings(conn: sqlite3.Connection) -> dict[str, DomainTracking]:
    return {domain: DomainTracking.from_json(json.loads(settings))
            for domain, settings in conn.execute("SELECT domain, settings FROM domain_tracking")}


def save_settings(conn: sqlite3.Connection, domain: str, settings: DomainTracking, now: float) -> None:
    conn.execute("INSERT INTO domain_tracking (domain, settings, updated_at) VALUES (?, ?, ?)"
                 " ON CONFLICT (domain) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
                 (domain, json.dumps(asdict(settings)), now))
    changed(conn, "tracking")


def insert_tracked(conn: sqlite3.Connection, msg: TrackedMessage) -> None:
    conn.execute("INSERT INTO tracked_messages (queue_id, domain, created_at, data, links) VALUES (?, ?, ?, ?, ?)"
                 " ON CONFLICT (queue_id) DO NOTHING",
                 (msg.queue_id, msg.domain, msg.created_at, json.dumps(msg.data), json.dumps(list(msg.links))))


def load_tracked(conn: sqlite3.Connection, queue_id: str) -> TrackedMessage | None:
    row = conn.execute("SELECT queue_id, domain, created_at, data, links FROM tracked_messages WHERE queue_id = ?",
                       (queue_id,)).fetchone()
    if row is None:
        return None
    return TrackedMessage(row[0], row[1], row[2], json.loads(row[3]), tuple(json.loads(row[4])))


_FIRSTS_CHUNK = 128  # rows per INSERT of first engagements (4 parameters each)


def _insert_firsts(conn: sqlite3.Connection, keys: list[tuple[str, str, str]], now: float) -> set[tuple[str, str, str]]:
    """Insert the (queue id, recipient, kind) keys not there yet, a chunk per statement; the keys inserted."""
    inserted: set[tuple[str, str, str]] = set()
    for i in range(0, len(keys), _FIRSTS_CHUNK):
        chunk = keys[i:i + _FIRSTS_CHUNK]
        rows = conn.execute("INSERT INTO engagement_firsts (queue_id, recipient, kind, at) VALUES "
                            + ", ".join(["(?, ?, ?, ?)"] * len(chunk))
                            + " ON CONFLICT (queue_id, recipient, kind) DO NOTHING RETURNING queue_id, recipient, kind",
                            [v for key in chunk for v in (*key, now)]).fetchall()
        inserted.update((r[0], r[1], r[2]) for r in rows)
    return inserted


def record_engagements(conn: sqlite3.Connection, items: Sequence[Engagement], now: float) -> tuple[bool, ...]:
    """Record each item (see ``Engagement``); for each, whether it was the first of its kind. The first-engagement
    rows of a batch go in one statement per 128 (a burst of clicks is one write: ``api.tracking``)."""
    keys = list(dict.fromkeys(item.first for item in items if item.first is not None))
    inserted = _insert_firsts(conn, keys, now) if keys else set()
    firsts = []
    for item in items:
        first = item.first is not None and item.first in inserted
        if first:
            inserted.discard(item.first)  # the same key twice in a batch: the earlier one is the first
        event = item.event
        if first:
            event = item.first_event if item.first_event is not None else NewEvent(
                event.domain, {**event.data, "flags": {**event.data.get("flags", {}), "is-unique": True}}, event.system)
        if item.suppression is not None:
            add_entries(conn, event.domain, [item.suppression])
        if item.prepared is not None and not first:
            record_prepared(conn, item.prepared)
        else:
            record(conn, event.domain, event.data, system=event.system)
        firsts.append(first)
    return tuple(firsts)


def prune(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` tracked messages and as many first-engagement rows older than ``before``."""
    n = conn.execute("DELETE FROM tracked_messages WHERE queue_id IN (SELECT queue_id FROM tracked_messages"
                     " WHERE created_at < ? ORDER BY created_at LIMIT ?)", (before, limit)).rowcount
    n += conn.execute("DELETE FROM engagement_firsts WHERE (queue_id, recipient, kind) IN (SELECT queue_id,"
                      " recipient, kind FROM engagement_firsts WHERE at < ? LIMIT ?)", (before, limit)).rowcount
    return n


# --- the typed methods -----------------------------------------------------------------------------------

class EngagementStore(Protocol):
    """Tracking settings, tracked messages and engagement events.

    Contract:
    - ``set_tracking_settings`` commits before it returns and every node's ``on_change("tracking")`` callbacks
      run; ``tracking_settings`` reads every domain's row (domains without one have the configured defaults).
    - ``track_message`` is idempotent: the first write for a queue id stays (a message's link list never changes).
    - ``record_engagements(items, now)`` writes, in one transaction group-committed with other writers, each
      item's first-engagement row, its event (the unique variant for a first), its counters and webhook rows,
      and its suppression entry; all or none. Two concurrent firsts for the same (message, recipient, kind): one
      is the first, the other is not.
    - ``prune_tracking(before, limit)`` deletes up to ``limit`` rows of each table older than ``before``; the
      number deleted (0: nothing left).
    """

    async def tracking_settings(self) -> dict[str, DomainTracking]:
        """Every domain's stored tracking settings."""

    async def set_tracking_settings(self, domain: str, settings: DomainTracking, now: float) -> None:
        """Store ``domain``'s tracking settings (see the contract)."""

    async def track_message(self, message: TrackedMessage) -> None:
        """Keep a tracked message's event data and link list (idempotent)."""

    async def tracked_message(self, queue_id: str) -> TrackedMessage | None:
        """A tracked message, or None (never tracked, or pruned)."""

    async def record_engagements(self, items: Sequence[Engagement], now: float) -> tuple[bool, ...]:
        """Record opens, clicks and unsubscribes (see the contract); for each, whether it was the first."""

    async def prune_tracking(self, before: float, limit: int) -> int:
        """Delete tracking rows older than ``before`` (see the contract)."""


class EngagementMethods:
    """``EngagementStore`` over either engine (``self.write``/``self.read``): one writer or reader hop each."""

    async def tracking_settings(self) -> dict[str, DomainTracking]:
        return await self.read(load_settings)  # type: ignore[attr-defined]

    async def set_tracking_settings(self, domain: str, settings: DomainTracking, now: float) -> None:
        await self.write(lambda c: save_settings(c, domain, settings, now))  # type: ignore[attr-defined]
        self._changed("tracking")  # type: ignore[attr-defined]

    async def track_message(self, message: TrackedMessage) -> None:
        await self.write(lambda c: insert_tracked(c, message))  # type: ignore[attr-defined]

    async def tracked_message(self, queue_id: str) -> TrackedMessage | None:
        return await self.read(lambda c: load_tracked(c, queue_id))  # type: ignore[attr-defined]

    async def record_engagements(self, items: Sequence[Engagement], now: float) -> tuple[bool, ...]:
        items = tuple(items)
        return await self.write(lambda c: record_engagements(c, items, now))  # type: ignore[attr-defined]

    async def prune_tracking(self, before: float, limit: int) -> int:
        return await self.write(lambda c: prune(c, before, limit))  # type: ignore[attr-defined]
