"""Writing events: their rows, counters, stored-once variables and webhook work, staged in the group commit.

An event is a plain JSON-able dict in the shape of Mailgun's events API, built by ``mtad.events.shape`` (pure);
the store writes what it is handed (``NewEvent``) and never builds one. ``record`` writes an event in the caller's
transaction, counts it in the ``stats`` counters (so stats queries never scan events) and creates one
``webhook_deliveries`` row per URL of the domain's webhook for that event (so a committed event is never without
its webhook work). Inside ``Store.write`` the event row, its counter increments and webhook rows are staged and
written with those of the whole group commit just before its COMMIT (``write_events``: a few multi-row
statements, one UPSERT row per distinct counter), which is what keeps events cheap beside deliveries.

Size: every event of a message carries its user variables (up to 4 KB, ``options.MAX_VARIABLES_SIZE``), and a
message to 1,000 recipients has thousands of events; so variables over ``INLINE_VARIABLES`` bytes are stored
once in ``event_variables`` (keyed by their hash) and the event row names them (``events.variables``). Readers
select ``EVENT_DATA`` instead of the ``data`` column: the same JSON, variables put back. An event is also
bounded as a whole: over ``MAX_EVENT_BYTES`` its long strings are shortened (``bounded``), so one answer of the
events API holds a known number of bytes per event.

Webhook URLs live in the ``webhooks`` table; ``record`` reads them through an in-memory cache that whoever
changes the table clears with ``invalidate_webhooks()`` (the table is small and read on every event).

Listeners: an ``EventBus`` given to the store (``SqliteStore(..., bus=...)``) is told of every recorded event and
of new webhook work; it is called on the writer thread inside the transaction, so its listeners must be cheap
and must not raise. The store's writer connection carries it (``conn.bus``); a connection without one (a
command-line tool, a test) tells nobody.

``EventMethods`` are the typed methods (``record_events``, ``query_events``, counters, ``prune_events``) that
``SqliteStore`` composes; ``EventStore`` is their contract.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

from mtad.store import campaigns as campaigns_sql
from mtad.store import ifcounts
from mtad.store import counters as counters_sql
from mtad.store import eventquery as query_sql
from mtad.store import textsearch
from mtad.store.counters import CounterQuery, CounterRow, TagInfo
from mtad.store.dialect import dialect_of, pg_array
from mtad.store.batch import execute_rows, stage as stage_row
from mtad.store.eventform import EVENT_DATA, MAX_EVENT_BYTES, _encode, bounded, bounded_text  # noqa: F401
from mtad.store.eventquery import Cursor, EventPage, EventQuery, EventRow


@dataclass(frozen=True)
class NewEvent:
    """An event to record: its domain (whose log, stats and webhooks it belongs to) and its JSON.

    ``system``: an event of a message mtad made itself (a DSN): written for tracing, but neither counted in the
    domain's stats nor posted to its webhooks, since it is not the user's mail."""

    domain: str
    data: Mapping[str, Any]
    system: bool = False


class EventBus:
    """Process-local listeners of what a store records (see the module doc): ``webhook_work`` are called when
    webhook rows were written (the dispatcher's next claim, a later write, sees them), ``recorded`` with
    (domain, event) for every event. Both run on the writer thread inside the transaction."""

    __slots__ = ("webhook_work", "recorded")

    def __init__(self) -> None:
        self.webhook_work: list[Callable[[], None]] = []
        self.recorded: list[Callable[[str, Mapping[str, Any]], None]] = []

    def on_webhook_work(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake`` when webhook work is written; returns what unsubscribes it."""
        self.webhook_work.append(wake)
        return lambda: self.webhook_work.remove(wake) if wake in self.webhook_work else None

    def on_event(self, observe: Callable[[str, Mapping[str, Any]], None]) -> Callable[[], None]:
        """Call ``observe(domain, event)`` for every recorded event; returns what unsubscribes it."""
        self.recorded.append(observe)
        return lambda: self.recorded.remove(observe) if observe in self.recorded else None


# --- counter keys and webhook ids: how an event is counted and posted --------------------------------------

def stat_key(event: Mapping[str, Any]) -> str:
    """The most detailed counter of an event (Mailgun's stats shape): totals are sums of these, accepted =
    accepted:incoming + accepted:outgoing, delivered = delivered:smtp + delivered:http, failed =
    failed:temporary + failed:permanent:REASON for every reason; other events count under their own name.
    The daily and per-provider counters hold these keys only; the hourly ones also the totals (``stat_keys``)."""
    kind = event["event"]
    if kind == "accepted":
        return "accepted:incoming" if event.get("direction") == "incoming" else "accepted:outgoing"
    if kind == "delivered":
        http = event.get("method") == "http" or event.get("delivery-status", {}).get("transport") == "http"
        return "delivered:http" if http else "delivered:smtp"
    if kind == "failed":
        if event.get("severity", "permanent") == "temporary":
            return "failed:temporary"
        return f"failed:permanent:{event.get('reason') or 'bounce'}"
    if kind in ("opened", "clicked"):  # the first of a message and recipient, or another (events.engagement)
        return f"{kind}:unique" if (event.get("flags") or {}).get("is-unique") else f"{kind}:repeat"
    return kind


def severity_of(event: Mapping[str, Any]) -> str:
    """The ``severity`` column of an event: a failure's severity; ``machine`` for an open or click flagged as a
    machine's (``flags.is-machine``), so that reports over the log can leave them out of unique figures
    (``store.dispatch.campaign_figures``); else empty."""
    if event.get("event") in ("opened", "clicked") and (event.get("flags") or {}).get("is-machine"):
        return MACHINE
    return event.get("severity", "")


MACHINE = ifcounts.MACHINE  # "machine"


def stat_keys(event: Mapping[str, Any]) -> list[str]:
    """Hourly counter names of an event: the event itself, ``failed:temporary|permanent``, and the leaf key."""
    return list(_hourly_keys(stat_key(event)))


@functools.lru_cache(maxsize=256)
def _hourly_keys(leaf: str) -> tuple[str, ...]:
    """``stat_keys`` from the leaf key alone (the event name is its first part)."""
    kind = leaf.partition(":")[0]
    if leaf == kind:
        return (kind,)
    if kind == "failed" and leaf != "failed:temporary":
        return (kind, "failed:permanent", leaf)
    return (kind, leaf)


def webhook_id(event: Mapping[str, Any]) -> str | None:
    """The Mailgun webhook id an event triggers (``failed`` splits by severity), or None."""
    kind = event["event"]
    if kind == "failed":
        return "permanent_fail" if event.get("severity", "permanent") == "permanent" else "temporary_fail"
    return kind if kind in _WEBHOOK_KINDS else None


_WEBHOOK_KINDS = frozenset({"accepted", "delivered", "opened", "clicked", "unsubscribed", "complained"})


# --- webhook work ------------------------------------------------------------------------------------------

_webhooks_lock = threading.Lock()
_webhooks: dict[int, dict[tuple[str, str], list[tuple[str, str]]]] = {}  # id(conn) -> (domain, hook) -> urls
_webhooks_generation = [0]  # bumped by every invalidation


def invalidate_webhooks() -> None:
    """Forget cached webhook URLs; the next event reads the ``webhooks`` table again. Any thread may call it
    (another node's change arrives on the store's listener thread, ``store.changes``)."""
    with _webhooks_lock:
        _webhooks.clear()
        _webhooks_generation[0] += 1


def webhook_targets(conn: sqlite3.Connection, domain: str, hook: str) -> list[tuple[str, str]]:
    """(url, format) pairs of ``domain``'s webhook ``hook``, from the cache (filled from the table). A table
    read while an invalidation happened is used once but not kept: it may predate the change."""
    table = _webhooks.get(id(conn))
    if table is None:
        generation = _webhooks_generation[0]
        table = {}
        for d, h, url, fmt in conn.execute("SELECT domain, hook, url, format FROM webhooks ORDER BY created_at"):
            table.setdefault((d, h), []).append((url, fmt))
        with _webhooks_lock:
            if _webhooks_generation[0] == generation:
                _webhooks[id(conn)] = table
    return table.get((domain, hook), [])


def webhook_rows(domain: str, event_id: str, targets: Iterable[tuple[str, str]], now: float) -> list[tuple]:
    """``webhook_deliveries`` rows (``write_webhook_rows``) for one POST of ``event_id`` per (url, format); a URL
    given twice gets one."""
    seen: set[str] = set()
    rows = []
    for url, fmt in targets:
        if url not in seen:
            seen.add(url)
            rows.append((event_id, domain, url, fmt, "queued", now, now, now))
    return rows


def write_webhook_rows(conn: sqlite3.Connection, rows: list[tuple]) -> None:
    execute_rows(conn, "INSERT INTO webhook_deliveries (event_id, domain, url, format, state, next_attempt_at,"
                       " created_at, updated_at)", 8, rows)


def add_webhook_work(conn: sqlite3.Connection, domain: str, event_id: str, targets: Iterable[tuple[str, str]],
                     now: float) -> int:
    """Queue one POST of event ``event_id`` per (url, format) now; returns the number of POSTs queued."""
    rows = webhook_rows(domain, event_id, targets, now)
    write_webhook_rows(conn, rows)
    return len(rows)


# --- the stored form of an event (``eventform``) --------------------------------------------------------

_EVENT_ROWS = ("INSERT INTO events (id, timestamp, domain, event, recipient, message_id, queue_id, severity, data,"
               " variables)")
INLINE_VARIABLES = 256  # bytes of user-variables JSON kept inline in an event; larger ones are stored once
_STAGED, _STAGED_WEBHOOKS, _STAGED_VARIABLES = "events", "events.webhooks", "events.variables"  # see store.Staged


def write_variables(conn: sqlite3.Connection, rows: list[tuple[str, str, float]]) -> None:
    """Store (key, JSON, event time) variables once each; a key stored already gets the newer time."""
    newest: dict[str, tuple[str, str, float]] = {}
    for row in rows:
        if row[0] not in newest or newest[row[0]][2] < row[2]:
            newest[row[0]] = row
    execute_rows(conn, "INSERT INTO event_variables (key, data, last_at)", 3, list(newest.values()),
                 " ON CONFLICT (key) DO UPDATE SET last_at ="
                 f" {dialect_of(conn).greatest('event_variables.last_at', 'excluded.last_at')}")


def _stored_form(event: Mapping[str, Any]) -> tuple[str, tuple[str, str, float] | None]:
    """(event JSON to store, (key, variables JSON, time) to store once or None)."""
    variables = event.get("user-variables")
    if variables:
        text = _encode(variables)
        if len(text) > INLINE_VARIABLES:
            key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            rest = {k: v for k, v in event.items() if k != "user-variables"}
            return bounded(rest), (key, text, event["timestamp"])
    return bounded(event), None
# PostgreSQL: a group commit's events in ONE statement, each column one array parameter (``pg_array``: passed as
# text, in C), so that the statement text is the same whatever the number of rows and the server prepares it once;
# a multi-row VALUES list (``execute_rows``) is a new text per chunk size, 10 parameters a row dumped one by one.
_EVENTS_PG = (_EVENT_ROWS + " SELECT * FROM unnest(?::text[], ?::float8[], ?::text[], ?::text[], ?::text[],"
              " ?::text[], ?::text[], ?::text[], ?::text[], ?::text[])")
_UPSERT_TYPES = (("text", "text", "text", "bigint", "bigint"), ("text", "text", "text", "bigint", "bigint"),
                 ("text", "text", "text", "text", "bigint", "bigint"))  # the column types of _UPSERTS, in order
_UPSERTS = (  # (head, columns, tail) of each counter table's multi-row UPSERT (store.execute_rows)
    ("INSERT INTO stats (domain, tag, event, hour, count)", 5,
     " ON CONFLICT (domain, tag, event, hour) DO UPDATE SET count = stats.count + excluded.count"),
    ("INSERT INTO stats_daily (domain, tag, event, day, count)", 5,
     " ON CONFLICT (domain, tag, event, day) DO UPDATE SET count = stats_daily.count + excluded.count"),
    ("INSERT INTO stats_dims (domain, dim, value, event, day, count)", 6,
     " ON CONFLICT (domain, dim, value, event, day) DO UPDATE SET count = stats_dims.count + excluded.count"),
)

# What ``record`` keeps of an event for its counters: (domain, tags, leaf key, hour, provider, sending IP, engagement
# dimensions ((dim, value), ...): the device type and country of an open, click or unsubscribe); None for an event
# that is not counted (``record(system=True)``).
StatItem = tuple[str, tuple[str, ...], str, int, str, str, tuple[tuple[str, str], ...]]


def engagement_dims(event: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """(``device``, device type) and (``country``, ISO code) of an event that has them (opens, clicks,
    unsubscribes: ``events.engagement``); unknown values are not counted."""
    info, geo = event.get("client-info"), event.get("geolocation")
    if not info and not geo:
        return ()
    dims = []
    device = (info or {}).get("device-type")
    if device and device != "unknown":
        dims.append(("device", str(device)))
    country = (geo or {}).get("country")
    if country and country != "Unknown":
        dims.append(("country", str(country)))
    return tuple(dims)


def write_events(conn: sqlite3.Connection, items: list[tuple[tuple, StatItem | None]]) -> None:
    """Insert (event row, counter item) pairs as ``record`` makes them, and add them to the counters: the
    events of a batch with the same counter item are counted once with their number, so a group commit of
    deliveries costs one UPSERT row per distinct counter, not several per event, and a few multi-row
    statements in all (``store.execute_rows``; on PostgreSQL one statement per table, ``_EVENTS_PG``). Counters
    are updated in key order (neighbouring keys share B-tree pages)."""
    if not items:
        return
    if dialect_of(conn).is_postgresql:  # one prepared statement, a text parameter per column (_EVENTS_PG)
        conn.execute(_EVENTS_PG, [pg_array(column) for column in zip(*[row for row, _ in items])])
    else:
        execute_rows(conn, _EVENT_ROWS, 10, [row for row, _ in items])
    hourly: Counter = Counter()
    daily: Counter = Counter()
    dims: Counter = Counter()
    for (domain, tags, leaf, hour, provider, ip, extra), n in Counter([stat for _, stat in items if stat]).items():
        day = hour // 24
        for tag in dict.fromkeys(("", *tags)):
            for key in _hourly_keys(leaf):
                hourly[(domain, tag, key, hour)] += n
            daily[(domain, tag, leaf, day)] += n
        dims[(domain, "provider", provider, leaf, day)] += n
        if ip:
            dims[(domain, "ip", ip, leaf, day)] += n
        for dim, value in extra:
            dims[(domain, dim, value, leaf, day)] += n
    pg = dialect_of(conn).is_postgresql
    for (head, width, tail), types, counts in zip(_UPSERTS, _UPSERT_TYPES, (hourly, daily, dims)):
        rows = [(*key, n) for key, n in sorted(counts.items())]
        if pg and rows:  # each key once (the Counters): one UPSERT from the columns' arrays
            conn.execute(f"{head} SELECT * FROM unnest({', '.join(f'?::{t}[]' for t in types)}){tail}",
                         [pg_array(column) for column in zip(*rows)])
        elif rows:
            execute_rows(conn, head, width, rows, tail)


class Prepared:
    """An event's rows as ``record`` stages them, made ahead of its write (``prepare``): a pure function of the
    event, so a caller that queues events for a later write (``api.tracking``: the clicks of 50 ms share one)
    can make them as each event comes, instead of the store's writer thread making a whole batch's at once while
    it holds the GIL. ``record_prepared`` stages them exactly as ``record`` would (webhook URLs and the
    ``EventBus`` are still looked up and told at the write)."""

    __slots__ = ("domain", "event", "system", "item", "variables", "text", "campaigns", "inboxfirst", "hook")

    def __init__(self, domain: str, event: Mapping[str, Any], system: bool, item: tuple,
                 variables: tuple[str, str, float] | None, text: tuple | None, campaigns: tuple | None,
                 inboxfirst: tuple | None, hook: str | None):
        self.domain, self.event, self.system, self.item = domain, event, system, item
        self.variables, self.text, self.campaigns, self.inboxfirst, self.hook = \
            variables, text, campaigns, inboxfirst, hook


def prepare(domain: str, event: Mapping[str, Any], *, system: bool = False) -> Prepared:
    """The rows ``record(conn, domain, event, system=system)`` writes (see ``Prepared``); the event must not
    change afterwards."""
    headers = event.get("message", {}).get("headers", {})
    tags = event.get("tags")
    data, variables = _stored_form(event)
    severity = severity_of(event)
    item = ((event["id"], event["timestamp"], domain, event["event"], event.get("recipient", ""),
             headers.get("message-id", ""), event.get("storage", {}).get("key", ""), severity,
             data, variables[0] if variables else None),
            None if system else
            (domain, tuple(tags) if tags else (), stat_key(event), int(event["timestamp"] // 3600),
             event.get("recipient-domain") or "", (event.get("envelope") or {}).get("sending-ip") or "",
             engagement_dims(event)))
    return Prepared(domain, event, system, item, variables, textsearch.row_of(domain, event),
                    None if system or not event.get("campaigns") else campaigns_sql.item_of(domain, event),
                    None if system or not event.get("storage") else ifcounts.item_of(event, severity),
                    None if system else webhook_id(event))


def record(conn: sqlite3.Connection, domain: str, event: Mapping[str, Any], *, system: bool = False) -> None:
    """Write one event, count it (hourly per tag, daily per tag, daily per provider and sending IP) and queue
    its webhook POSTs, in the caller's transaction (``system``: see ``NewEvent``).

    Inside ``Store.write`` the event row, its counter item and its webhook rows are staged (``conn.staged``)
    and written with the rest of the group commit's (``write_events``, ``write_webhook_rows``) just before its
    COMMIT: exactly as durable as the write that recorded them, and gone with it if it fails. On any other
    connection they are written at once. The connection's ``EventBus`` (if any) is told."""
    record_prepared(conn, prepare(domain, event, system=system))


def record_prepared(conn: sqlite3.Connection, prepared: Prepared) -> None:
    """``record`` of an event whose rows were made ahead (``prepare``)."""
    domain, event = prepared.domain, prepared.event
    stage_row(conn, _STAGED, write_events, prepared.item)
    if prepared.variables:
        stage_row(conn, _STAGED_VARIABLES, write_variables, prepared.variables)
    if prepared.text is not None:  # its message's Subject and From, for the text filters
        textsearch.stage_row_of(conn, prepared.text)
    if prepared.campaigns is not None:  # the campaigns' counters and index (store.campaigns)
        campaigns_sql.stage_item(conn, prepared.campaigns)
    if prepared.inboxfirst is not None:  # an InboxFirst campaign copy's counters (store.ifcounts)
        ifcounts.stage_item(conn, prepared.inboxfirst)
    bus: EventBus | None = getattr(conn, "bus", None)
    hook = prepared.hook
    if hook is not None:
        targets = webhook_targets(conn, domain, hook)
        if targets:
            rows = webhook_rows(domain, event["id"], targets, event["timestamp"])
            staged = getattr(conn, "staged", None)
            if staged is None:
                write_webhook_rows(conn, rows)
            else:
                staged.pending(_STAGED_WEBHOOKS, write_webhook_rows).extend(rows)
            if bus is not None:
                for wake in bus.webhook_work:  # the dispatcher's claim is a later write: it sees these rows
                    wake()
    if bus is not None:
        for observe in bus.recorded:
            observe(domain, event)


def record_all(conn: sqlite3.Connection, events: Iterable[NewEvent]) -> None:
    """``record`` each of ``events`` in order."""
    for e in events:
        record(conn, e.domain, e.data, system=e.system)


# --- retention ---------------------------------------------------------------------------------------------

def prune_batch(conn: sqlite3.Connection, cutoff: float, limit: int) -> int:
    """Delete up to ``limit`` events older than ``cutoff`` (oldest first), and as many finished webhook rows,
    report keys (``store.reports``) and stored-once user variables no newer event names."""
    old_events = conn.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events WHERE timestamp < ?"
                              " ORDER BY timestamp LIMIT ?)", (cutoff, limit)).rowcount
    deleted = old_events
    deleted += conn.execute("DELETE FROM webhook_deliveries WHERE id IN (SELECT id FROM webhook_deliveries"
                            " WHERE state IN ('done', 'failed') AND updated_at < ? LIMIT ?)", (cutoff, limit)).rowcount
    # keys of replayed reports (store.reports): past event retention a report finds no delivered event to match
    deleted += conn.execute("DELETE FROM report_keys WHERE (queue_id, recipient, kind) IN (SELECT queue_id,"
                            " recipient, kind FROM report_keys WHERE created_at < ? LIMIT ?)", (cutoff, limit)).rowcount
    if old_events < limit:  # no event older than the cutoff is left, so none names variables last used before it
        deleted += conn.execute("DELETE FROM event_variables WHERE key IN (SELECT key FROM event_variables"
                                " WHERE last_at < ? LIMIT ?)", (cutoff, limit)).rowcount
        deleted += textsearch.prune_rows(conn, cutoff, limit)  # messages whose last event is older
    return deleted


# --- the typed methods -------------------------------------------------------------------------------------

class EventStore(Protocol):
    """Events, their counters and their queries.

    Contract:
    - ``record_events(events)`` writes the events, their counters (hourly, daily, per provider and sending IP;
      not for ``system`` events) and one webhook row per URL of the domain's webhook for each (not for
      ``system`` events), all in one transaction, group-committed with other writers: when it returns they are
      durable, and if it fails none of them is written. Events are written by whoever commits what they record
      (``QueueStore.enqueue``, ``finish_attempt``): those commit the events with their own rows.
    - Recording is not idempotent: the same event (same id) recorded twice is refused (its id is unique).
    - ``query_events(query, cursor)`` returns at most ``query.limit`` events and about ``MAX_PAGE_BYTES`` of
      JSON, ordered by (timestamp, seq) in the query's direction, from one consistent snapshot; each event's
      JSON is as the API shows it (stored-once variables put back, bounded to ``MAX_READ_EVENT_BYTES``).
      A cursor is stable: events written later never shift a page.
    - Counters are read as sums (``counter_rows``); they are never pruned.
    - ``prune_events(before, limit)`` deletes up to ``limit`` events older than ``before``, finished webhook rows
      as old, and variables no remaining event names; returns the number of rows deleted (0: nothing is left).
    """

    async def record_events(self, events: Sequence[NewEvent]) -> None:
        """Write ``events`` (with counters and webhook work) in one transaction."""

    async def query_events(self, query: EventQuery, cursor: Cursor) -> EventPage:
        """One page of ``query`` from ``cursor``: rows in the query's order whichever side was asked."""

    async def count_events(self, query: EventQuery) -> int:
        """How many events match ``query`` (no limit)."""

    async def query_events_with_count(self, query: EventQuery, cursor: Cursor) -> tuple[EventPage, int]:
        """``query_events`` and ``count_events`` from one snapshot."""

    async def event_log(self, query: EventQuery, skip: int) -> tuple[int, tuple[EventRow, ...]]:
        """(count, the rows after the first ``skip`` in the query's order, raw stored JSON) from one snapshot:
        offset paging, for the seed's legacy log only."""

    async def counter_rows(self, *queries: CounterQuery) -> tuple[tuple[CounterRow, ...], ...]:
        """Summed counter rows of each query, from one snapshot."""

    async def provider_counts(self, domain: str, dim: str = "provider") -> tuple[tuple[str, str, int], ...]:
        """(value, leaf key, count) of ``domain``'s all-time counters per ``dim`` (``provider``, ``device``,
        ``country``)."""

    async def list_tags(self, domain: str, *, limit: int, pivot: str | None = None, before: bool = False,
                        prefix: str = "") -> tuple[TagInfo, ...]:
        """Tags seen on ``domain``, by name, ``limit`` after (or before) ``pivot``."""

    async def tag_info(self, domain: str, tag: str) -> TagInfo | None:
        """One tag of ``domain``, or None if it was never counted."""

    async def set_tag_description(self, domain: str, tag: str, description: str) -> bool:
        """Describe a tag; False if it was never counted."""

    async def delete_tag(self, domain: str, tag: str) -> bool:
        """Delete a tag's counters and description; False if it had none."""

    async def prune_events(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` events older than ``before`` (see the contract)."""


class EventMethods:
    """``EventStore`` over the SQLite engine (``self.write``/``self.read``): one writer or reader hop each."""

    async def record_events(self, events: Sequence[NewEvent]) -> None:
        events = tuple(events)
        await self.write(lambda c: record_all(c, events))  # type: ignore[attr-defined]

    async def query_events(self, query: EventQuery, cursor: Cursor) -> EventPage:
        return await self.read(lambda c: query_sql.fetch(c, query, cursor))  # type: ignore[attr-defined]

    async def count_events(self, query: EventQuery) -> int:
        return await self.read(lambda c: query_sql.count(c, query))  # type: ignore[attr-defined]

    async def query_events_with_count(self, query: EventQuery, cursor: Cursor) -> tuple[EventPage, int]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: (query_sql.fetch(c, query, cursor), query_sql.count(c, query)))

    async def event_log(self, query: EventQuery, skip: int) -> tuple[int, tuple[EventRow, ...]]:
        def run(conn: sqlite3.Connection) -> tuple[int, tuple[EventRow, ...]]:
            total = query_sql.count(conn, query)
            return total, (query_sql.fetch_skip(conn, query, skip) if skip < total else ())
        return await self.read(run)  # type: ignore[attr-defined]

    async def counter_rows(self, *queries: CounterQuery) -> tuple[tuple[CounterRow, ...], ...]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: tuple(counters_sql.rows(c, q) for q in queries))

    async def provider_counts(self, domain: str, dim: str = "provider") -> tuple[tuple[str, str, int], ...]:
        return await self.read(lambda c: counters_sql.providers(c, domain, dim))  # type: ignore[attr-defined]

    async def list_tags(self, domain: str, *, limit: int, pivot: str | None = None, before: bool = False,
                        prefix: str = "") -> tuple[TagInfo, ...]:
        return await self.read(  # type: ignore[attr-defined]
            lambda c: counters_sql.list_tags(c, domain, limit=limit, pivot=pivot, before=before, prefix=prefix))

    async def tag_info(self, domain: str, tag: str) -> TagInfo | None:
        return await self.read(lambda c: counters_sql.tag_info(c, domain, tag))  # type: ignore[attr-defined]

    async def set_tag_description(self, domain: str, tag: str, description: str) -> bool:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: counters_sql.set_tag_description(c, domain, tag, description))

    async def delete_tag(self, domain: str, tag: str) -> bool:
        return await self.write(lambda c: counters_sql.delete_tag(c, domain, tag))  # type: ignore[attr-defined]

    async def prune_events(self, before: float, limit: int) -> int:
        return await self.write(lambda c: prune_batch(c, before, limit))  # type: ignore[attr-defined]
