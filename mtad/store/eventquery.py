"""Event queries in SQL: typed filters compiled to conditions, cursor pages, counts.

The query language (Mailgun's filter expressions, the logs API's body, page tokens) is parsed by
``mtad.events.query`` into an ``EventQuery``: domains, a time range, a direction, a limit and ``filters`` (typed
nodes: ``Match`` one field against one value, ``Not``, ``AllOf``, ``AnyOf``, and ``Metric`` for the logs API's
metric events). This module is the only one that knows their SQL.

Paging is by cursor, never by offset: events are ordered by ``(timestamp, seq)`` (``seq`` is the insertion order,
which breaks ties); a ``Cursor`` is an anchor ``(timestamp, seq)`` and a side (the items ``after`` or ``before`` the
anchor in the query's order). A page holds at most ``limit`` events and about ``MAX_PAGE_BYTES`` of event JSON (a
page that would be larger ends early). Each event is read as the API shows it (``EVENT_DATA``) and at most
``MAX_READ_EVENT_BYTES`` (events written before that bound are shortened as they are read).

An equality on recipient or message-id of one domain (``EventQuery.hint``) probes the hour-bucketed index hour by
hour over the query's range instead of reading the domain's events in time order.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

from mtad.store import textsearch
from mtad.store.dialect import SQLITE, Dialect, dialect_of
from mtad.store.eventform import EVENT_DATA, MAX_EVENT_BYTES, bounded_text

MAX_PAGE_BYTES = 4_000_000  # event JSON in one page at most (beyond one event): answers of a known size
# a stored event longer than this is shortened as it is read: MAX_EVENT_BYTES plus 4 KB of variables, escaped
MAX_READ_EVENT_BYTES = MAX_EVENT_BYTES + 6 * 4096
MAX_HINT_HOURS = 24 * 400
HINT_INDEX = {"message-id": "events_message_hour", "recipient": "events_recipient_hour"}  # see store.SCHEMA


# --- filters -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Match:
    """``field`` equals ``value`` (or contains it, ``contains``). Fields: event, severity, recipient (any case),
    message-id (with or without <>), domain, tags/tag (any tag, any case), from and subject (substring of the
    header, any case), recipient-domain, reason, method, log-level, campaign (an id of the event's campaigns)."""

    field: str
    value: str
    contains: bool = False


@dataclass(frozen=True)
class Not:
    node: "Filter"


@dataclass(frozen=True)
class AllOf:
    nodes: tuple["Filter", ...]


@dataclass(frozen=True)
class AnyOf:
    nodes: tuple["Filter", ...]


@dataclass(frozen=True)
class Metric:
    """One of the logs API's metric events (``METRIC_EVENTS``), e.g. ``delivered_http``."""

    name: str


Filter = Union[Match, Not, AllOf, AnyOf, Metric]

FIELDS = ("event", "severity", "recipient", "message-id", "domain", "tags", "tag", "from", "subject",
          "recipient-domain", "reason", "method", "log-level", "campaign")
CONTAINS_FIELDS = ("recipient", "event", "severity", "message-id", "domain", "tags", "tag")
_METRIC_EVENT = {  # the logs API's metric events: (event, condition on the event's JSON or None)
    "accepted": ("accepted", None),
    "accepted_incoming": ("accepted", "authenticated:false"),
    "accepted_outgoing": ("accepted", "authenticated:true"),
    "delivered": ("delivered", None),
    "delivered_smtp": ("delivered", "transport:smtp"),
    "delivered_http": ("delivered", "transport:http"),
    "stored": ("stored", None),
    "opened": ("opened", None),
    "unique_opened": ("opened", "unique"),  # the first open of a message by a recipient (events.engagement)
    "clicked": ("clicked", None),
    "unique_clicked": ("clicked", "unique"),
    "unsubscribed": ("unsubscribed", None),
    "complained": ("complained", None),
    "failed": ("failed", None),
    "permanent_failed": ("failed", "severity:permanent"),
    "temporary_failed": ("failed", "severity:temporary"),
}


def _metric(name: str, dialect: Dialect) -> str:
    event, condition = _METRIC_EVENT[name]
    sql = f"event = '{event}'"
    if condition == "authenticated:false":
        sql += " AND " + dialect.json_flag("data", "flags", "is-authenticated", value=False)
    elif condition == "authenticated:true":
        sql += " AND " + dialect.json_flag("data", "flags", "is-authenticated", value=True)
    elif condition == "transport:smtp":
        sql += f" AND coalesce({dialect.json_text('data', 'envelope', 'transport')}, 'smtp') != 'http'"
    elif condition == "unique":
        sql += " AND " + dialect.json_flag("data", "flags", "is-unique", value=True)
    elif condition == "transport:http":
        sql += f" AND {dialect.json_text('data', 'envelope', 'transport')} = 'http'"
    elif condition is not None:
        sql += f" AND severity = '{condition.partition(':')[2]}'"
    return sql


METRIC_EVENTS = tuple(_METRIC_EVENT)


def _like(value: str) -> str:
    return "%" + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _match(name: str, value: str, contains: bool, dialect: Dialect) -> tuple[str, list[Any]]:
    v = value.strip()
    like = dialect.like_nocase
    if contains:
        column = {"recipient": "recipient", "event": "event", "severity": "severity", "message-id": "message_id",
                  "domain": "domain"}.get(name)
        if column:
            return f"{column} {like} ? ESCAPE '\\'", [_like(v)]
        if name in ("tags", "tag"):
            return (f"EXISTS (SELECT 1 FROM {dialect.json_tags('data')} WHERE value {like} ? ESCAPE '\\')",
                    [_like(v)])
    if name == "event":
        return "event = ?", [v.lower()]
    if name == "severity":
        return "severity = ?", [v.lower()]
    if name == "recipient":
        return dialect.nocase("recipient"), [v]
    if name == "message-id":
        return "message_id = ?", [v.strip("<>")]
    if name == "domain":
        return "domain = ?", [v.lower()]
    if name in ("tags", "tag"):
        return f"EXISTS (SELECT 1 FROM {dialect.json_tags('data')} WHERE {dialect.nocase('value')})", [v]
    if name == "campaign":  # an id the event's campaigns name (as it was sent: a rename does not rewrite events)
        return dialect.json_campaign("data"), [v]
    if name in ("from", "subject"):
        return f"{dialect.json_text('data', 'message', 'headers', name)} {like} ? ESCAPE '\\'", [_like(v)]
    if name == "recipient-domain":
        return f"recipient {like} ? ESCAPE '\\'", ["%@" + v.replace("%", "\\%").replace("_", "\\_")]
    if name in ("reason", "method", "log-level"):
        return f"{dialect.json_text('data', name)} = ?", [v]
    raise ValueError(f"unknown filter field '{name}'")


def compile_filter(node: Filter, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
    """SQL for one filter node and its parameters."""
    if isinstance(node, Match):
        return _match(node.field, node.value, node.contains, dialect)
    if isinstance(node, Not):
        sql, params = compile_filter(node.node, dialect)
        return f"NOT ({sql})", params
    if isinstance(node, Metric):
        return _metric(node.name, dialect), []
    parts = [compile_filter(n, dialect) for n in node.nodes]
    joiner = " AND " if isinstance(node, AllOf) else " OR "
    return "(" + joiner.join(f"({s})" for s, _ in parts) + ")", [p for _, ps in parts for p in ps]


# --- the query ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventQuery:
    """Events of ``domains`` (None: every domain) with ``lo <= timestamp <= hi`` matching every filter."""

    domains: tuple[str, ...] | None
    filters: tuple[Filter, ...] = ()
    lo: float | None = None  # inclusive bounds on timestamp
    hi: float | None = None
    ascending: bool = False
    limit: int = 300
    spec: Mapping[str, Any] = field(default_factory=dict)  # what rebuilds this query from a token (events API)
    hint: str | None = None  # "recipient" | "message-id": one equality among the filters, served by an index

    def where(self, dialect: Dialect = SQLITE) -> tuple[str, list[Any]]:
        sql: list[str] = []
        params: list[Any] = []
        if self.domains is not None:
            if len(self.domains) == 1:
                sql.append("domain = ?")
            else:  # SQLite's "+": walk events_time in order rather than sort every match of several domains
                sql.append(f"{dialect.unlikely_index}domain IN ({','.join('?' * len(self.domains))})")
            params += self.domains
        if self.lo is not None:
            sql.append("timestamp >= ?")
            params.append(self.lo)
        if self.hi is not None:
            sql.append("timestamp <= ?")
            params.append(self.hi)
        for node in self.filters:
            s, p = compile_filter(node, dialect)
            sql.append(s)
            params += p
        return " AND ".join(sql) or "1 = 1", params


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: the items ``side`` of ``anchor`` (timestamp, seq) in the query's order (None: from the
    start, ``after``, or the end, ``before``); ``inclusive``: the anchor itself belongs to the page."""

    anchor: tuple[float, int] | None = None
    side: str = "after"  # after | before
    inclusive: bool = False


@dataclass(frozen=True)
class EventRow:
    """One stored event: its insertion order, time, domain and JSON text (as the API shows it)."""

    seq: int
    timestamp: float
    domain: str
    data: str


@dataclass(frozen=True)
class EventPage:
    rows: tuple[EventRow, ...]  # in the query's order, whichever side was asked


def _conjuncts(nodes: tuple[Filter, ...]) -> list[Filter]:
    """The filters every event must match: ``nodes`` with the ANDs among them opened."""
    out: list[Filter] = []
    for node in nodes:
        out += _conjuncts(node.nodes) if isinstance(node, AllOf) else [node]
    return out


def text_index(conn: sqlite3.Connection, query: EventQuery) -> tuple[str, list[Any]] | None:
    """SQL selecting the events of the messages whose headers hold every text term ``query`` requires (the
    text index, ``store.textsearch``), or None: no such term, an equality on recipient or message-id
    (``query.hint``) already picks a few events, or the index cannot answer (then the filters scan)."""
    if query.hint is not None:
        return None
    terms = [(m.field, m.value.strip()) for m in _conjuncts(query.filters)
             if isinstance(m, Match) and m.field in textsearch.FIELDS and len(m.value.strip()) >= textsearch.MIN_CHARS]
    if not terms:
        return None
    return textsearch.condition(conn, tuple(dict.fromkeys(terms)), query.domains, query.lo, query.hi)


def _where(conn: sqlite3.Connection, query: EventQuery) -> tuple[str, list[Any], bool]:
    """``query.where`` and the text index's condition (if any) added; True when it was."""
    where, params = query.where(dialect_of(conn))
    indexed = text_index(conn, query)
    if indexed is None:
        return where, params, False
    return f"{indexed[0]} AND {where}", [*indexed[1], *params], True


def _source(conn: sqlite3.Connection, query: EventQuery, indexed: bool = False) -> tuple[str, str, list[Any]]:
    """(WITH prefix, FROM clause, extra WHERE) for ``query``: an equality on recipient or message-id of one
    domain probes the hour-bucketed index hour by hour over the query's range; with the text index's condition
    (``indexed``) SQLite reads its events by seq (NOT INDEXED: the time index must not drive the plan and test
    every event of the period); anything else reads events."""
    if indexed and dialect_of(conn).hour_probe:
        return "", "events NOT INDEXED", []
    if query.hint is None or query.domains is None or len(query.domains) != 1 or not dialect_of(conn).hour_probe:
        return "", "events", []
    lo, hi = query.lo, query.hi
    if lo is None or hi is None:
        # two statements: SQLite answers a lone min() or max() with one index seek, both together with a scan
        first = conn.execute("SELECT min(timestamp) FROM events WHERE domain = ?", (query.domains[0],)).fetchone()[0]
        last = conn.execute("SELECT max(timestamp) FROM events WHERE domain = ?", (query.domains[0],)).fetchone()[0]
        if first is None:
            return "", "events", []
        lo = first if lo is None else lo
        hi = last if hi is None else hi
    lo_h, hi_h = int(lo // 3600), int(hi // 3600)
    if hi_h < lo_h or hi_h - lo_h > MAX_HINT_HOURS:
        return "", "events", []
    return ("WITH RECURSIVE hours(h) AS (SELECT ? UNION ALL SELECT h + 1 FROM hours WHERE h < ?) ",
            f"events INDEXED BY {HINT_INDEX[query.hint]}", [lo_h, hi_h])


def fetch(conn: sqlite3.Connection, query: EventQuery, cursor: Cursor) -> EventPage:
    """One page of ``query`` at ``cursor``; rows in the query's order whichever side was asked."""
    where, params, indexed = _where(conn, query)
    forward = query.ascending == (cursor.side == "after")  # walk the table upwards?
    if cursor.anchor is not None:
        op = (">" if forward else "<") + ("=" if cursor.inclusive else "")
        where += f" AND (timestamp, seq) {op} (?, ?)"
        params += list(cursor.anchor)
    order = "ASC" if forward else "DESC"
    prefix, source, hours = _source(conn, query, indexed)
    if hours:
        where += " AND CAST(timestamp / 3600 AS INTEGER) IN hours"
    rows: list[EventRow] = []
    size = 0
    cur = conn.execute(f"{prefix}SELECT seq, timestamp, domain, {EVENT_DATA} FROM {source} WHERE {where}"
                       f" ORDER BY timestamp {order}, seq {order} LIMIT ?", (*hours, *params, query.limit))
    for seq, timestamp, domain, data in cur:  # rows one by one, the page ending when it is large
        data = bounded_text(data, MAX_READ_EVENT_BYTES)
        size += len(data)
        if rows and size > MAX_PAGE_BYTES:
            break
        rows.append(EventRow(seq, timestamp, domain, data))
    cur.close()
    if cursor.side == "before":
        rows.reverse()
    return EventPage(tuple(rows))


def count(conn: sqlite3.Connection, query: EventQuery) -> int:
    where, params, indexed = _where(conn, query)
    prefix, source, hours = _source(conn, query, indexed)
    if hours:
        where += " AND CAST(timestamp / 3600 AS INTEGER) IN hours"
    return conn.execute(f"{prefix}SELECT count(*) FROM {source} WHERE {where}", (*hours, *params)).fetchone()[0]


def fetch_skip(conn: sqlite3.Connection, query: EventQuery, skip: int) -> tuple[EventRow, ...]:
    """Offset paging, for the seed's legacy ``GET /v2/{domain}/log`` only (``skip``/``limit``): rows in the
    query's order after the first ``skip``, their stored JSON as it is. SQLite still walks the skipped index
    entries; callers bound it."""
    where, params = query.where(dialect_of(conn))
    order = "ASC" if query.ascending else "DESC"
    rows = conn.execute(f"SELECT seq, timestamp, domain, data FROM events WHERE {where}"
                        f" ORDER BY timestamp {order}, seq {order} LIMIT ? OFFSET ?",
                        (*params, query.limit, skip)).fetchall()
    return tuple(EventRow(*r) for r in rows)
