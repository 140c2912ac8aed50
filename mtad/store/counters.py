"""Reading the stats counters (written with events, ``store.events.write_events``) and the tags they name.

Counters: hourly ``stats(domain, tag, event, hour)`` and daily ``stats_daily(domain, tag, event, day)`` with the
tag ``''`` for all messages, and daily ``stats_dims(domain, dim, value, event, day)`` for the provider (the
recipient's domain) and the sending IP. ``event`` is a leaf key of Mailgun's breakdowns (``accepted:incoming``,
``delivered:smtp``, ``failed:temporary``, ``failed:permanent:bounce``, ``opened:unique``...; ``store.events.stat_key``);
the hourly
table also holds the totals. A query reads at most one row per key and hour (hour resolution) or day (day and
month resolutions, groups), through an index that yields them in GROUP BY order: never a scan of events.
Shaping the sums into Mailgun's answers is ``mtad.events.stats``'s job.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class CounterQuery:
    """Summed counters of ``events`` (API names: accepted, delivered, failed, opened, ...) from ``start`` to ``end``.

    ``resolution`` hour reads the hourly counters, day and month the daily ones; ``dim`` (``provider`` | ``ip`` |
    ``device`` | ``country``,
    a value or None for every value) reads the daily per-dimension counters instead (no tags). ``domains`` None:
    every domain (an empty tuple: none). ``tag``: the counters of one tag (``''``: all messages); ``group``
    ``domain`` | ``tag`` | ``value`` sums per that column (``tag``: per tag, every tag); ``by_time`` per hour or
    day number as well."""

    events: tuple[str, ...]
    start: float
    end: float
    resolution: str
    domains: tuple[str, ...] | None = None
    tag: str = ""
    dim: tuple[str, str | None] | None = None
    group: str | None = None
    by_time: bool = True


@dataclass(frozen=True)
class CounterRow:
    """One summed counter: its group value (``''`` without ``group``), hour or day number (0 without
    ``by_time``), leaf key and count."""

    group: str
    n: int
    key: str
    count: int


@dataclass(frozen=True)
class TagInfo:
    tag: str
    description: str
    first_day: int  # day numbers (days since 1970) of the daily counters
    last_day: int


_LEAVES = {"accepted": ("accepted:incoming", "accepted:outgoing"), "delivered": ("delivered:smtp", "delivered:http"),
           "failed": ("failed:temporary",), "opened": ("opened:unique", "opened:repeat"),
           "clicked": ("clicked:unique", "clicked:repeat")}
_REASONS = ("bounce", "old", "generic", "rejected", "suppress-bounce", "suppress-unsubscribe", "suppress-complaint",
            "delayed-bounce", "webhook", "optimized")


def _event_terms(conn: sqlite3.Connection, events: tuple[str, ...]) -> tuple[str, list[str]]:
    """``event IN (...)``: the counter keys of the events and their breakdowns, so that the index serves the
    hour range too. Reasons of permanent failures beyond the known ones are looked up in the counters."""
    keys = [k for e in events for k in _LEAVES.get(e, (e,))]
    if "failed" in events:
        keys += [f"failed:permanent:{r}" for r in _REASONS]
        key = "failed:permanent:"  # every reason counted so far: one index seek per distinct key (a skip scan)
        while True:
            key = conn.execute("SELECT min(event) FROM stats WHERE tag = '' AND event > ?", (key,)).fetchone()[0]
            if key is None or not key.startswith("failed:permanent:"):
                break
            if key not in keys:
                keys.append(key)
    return f"event IN ({','.join('?' * len(keys))})", keys


def rows(conn: sqlite3.Connection, q: CounterQuery) -> tuple[CounterRow, ...]:
    """The summed rows of ``q``. The GROUP BY follows the order of the index that serves the query, so SQLite
    streams the sums instead of sorting every row."""
    hourly = q.dim is None and q.resolution == "hour"
    table = "stats" if hourly else ("stats_daily" if q.dim is None else "stats_dims")
    unit = "hour" if hourly else "day"
    term, params = _event_terms(conn, q.events)
    lo, hi = (int(q.start // 3600), int(q.end // 3600)) if hourly else (int(q.start // 86400), int(q.end // 86400))
    where = [term, f"{unit} >= ?", f"{unit} <= ?"]
    params += [lo, hi]
    if q.domains is not None:
        if not q.domains:
            return ()
        where.append(f"domain IN ({','.join('?' * len(q.domains))})")
        params += q.domains
    if q.dim is None:
        if q.group != "tag":
            where.append("tag = ?")
            params.append(q.tag)
        else:
            where.append("tag != ''")
    else:
        where.append("dim = ?")
        params.append(q.dim[0])
        if q.dim[1] is not None:
            where.append("value = ?")
            params.append(q.dim[1])
    column = {"domain": "domain", "tag": "tag", "value": "value"}.get(q.group or "")
    if q.by_time:
        select, group_by = f"{column or chr(39) * 2}, {unit}, event", (f"{column}, event, {unit}" if column else f"event, {unit}")
    else:
        select, group_by = f"{column or chr(39) * 2}, 0, event", (f"{column}, event" if column else "event")
    return tuple(CounterRow(*r) for r in conn.execute(
        f"SELECT {select}, sum(count) FROM {table} WHERE {' AND '.join(where)} GROUP BY {group_by}", params))


def providers(conn: sqlite3.Connection, domain: str, dim: str = "provider") -> tuple[tuple[str, str, int], ...]:
    """(value, leaf key, count) of one domain's per-``dim`` counters (``provider``, ``device``, ``country``) over
    all time."""
    return tuple((value, key, count) for value, key, count in conn.execute(
        "SELECT value, event, sum(count) FROM stats_dims WHERE domain = ? AND dim = ?"
        " GROUP BY value, event", (domain, dim)))


def list_tags(conn: sqlite3.Connection, domain: str, *, limit: int, pivot: str | None = None,
              before: bool = False, prefix: str = "") -> tuple[TagInfo, ...]:
    """Tags seen on a domain, by name, ``limit`` after (or before) ``pivot``."""
    where, params = ["domain = ?", "tag != ''"], [domain]
    if pivot is not None:
        where.append("tag < ?" if before else "tag > ?")
        params.append(pivot)
    if prefix:
        where.append("substr(tag, 1, ?) = ?")
        params += [len(prefix), prefix]
    order = "DESC" if before else "ASC"
    found = conn.execute(f"SELECT tag, min(day), max(day) FROM stats_daily WHERE {' AND '.join(where)} GROUP BY tag"
                         f" ORDER BY tag {order} LIMIT ?", (*params, limit)).fetchall()
    if before:
        found.reverse()
    return tuple(_tag(conn, domain, r[0], r[1], r[2]) for r in found)


def tag_info(conn: sqlite3.Connection, domain: str, tag: str) -> TagInfo | None:
    row = conn.execute("SELECT min(day), max(day) FROM stats_daily WHERE domain = ? AND tag = ?",
                       (domain, tag)).fetchone()
    if row is None or row[0] is None:
        return None
    return _tag(conn, domain, tag, row[0], row[1])


def _tag(conn: sqlite3.Connection, domain: str, tag: str, first: int, last: int | None) -> TagInfo:
    desc = conn.execute("SELECT value FROM kv WHERE key = ?", (f"tag:{domain}:{tag}",)).fetchone()
    return TagInfo(tag, desc[0] if desc else "", first, last or first)


def set_tag_description(conn: sqlite3.Connection, domain: str, tag: str, description: str) -> bool:
    if conn.execute("SELECT 1 FROM stats WHERE domain = ? AND tag = ? LIMIT 1", (domain, tag)).fetchone() is None:
        return False
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (f"tag:{domain}:{tag}", description))
    return True


def delete_tag(conn: sqlite3.Connection, domain: str, tag: str) -> bool:
    n = conn.execute("DELETE FROM stats WHERE domain = ? AND tag = ?", (domain, tag)).rowcount
    n += conn.execute("DELETE FROM stats_daily WHERE domain = ? AND tag = ?", (domain, tag)).rowcount
    conn.execute("DELETE FROM kv WHERE key = ?", (f"tag:{domain}:{tag}",))
    return n > 0
