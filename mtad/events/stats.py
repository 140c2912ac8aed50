"""Stats from counters (seed 001): totals, by domain / tag / provider / IP, in Mailgun's shapes.

``events.record`` bumps counters as events are written (summed over each group commit, see ``events.write_events``): hourly ``stats(domain, tag, event, hour)`` and
daily ``stats_daily(domain, tag, event, day)`` with the tag ``''`` for all messages, and daily
``stats_dims(domain, dim, value, event, day)`` for the provider (the recipient's domain) and the sending
IP. Queries read the leaf keys of Mailgun's breakdowns (``accepted:incoming``, ``delivered:smtp``,
``failed:temporary``, ``failed:permanent:bounce``...; see ``events.stat_key``) and sum the totals (the hourly
table also holds the totals themselves, for readers of the table). A query reads at most one
row per key and hour (hour resolution) or day (day and month resolutions, groups), through an index that
yields them in GROUP BY order: milliseconds for months, never a scan of events.

Times are UTC; buckets are aligned to the hour, day or calendar month. Pure functions of a read
connection and parsed parameters; the API module turns them into responses.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from mtad.events.query import MAX_TIME, MIN_TIME, QueryError, parse_time, rfc2822

EVENTS = ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained", "stored")
RESOLUTIONS = ("hour", "day", "month")
GROUPS = ("total", "time", "day", "month", "domain", "ip", "provider", "tag", "country")
# Buckets one answer may hold: a year of hours, 27 years of days. Every bucket is answered (zeros included), so an
# unbounded range (start=0, resolution=hour: 490,000 buckets) would build hundreds of megabytes.
MAX_BUCKETS = 10_000
_BUCKET_SECONDS = {"hour": 3600, "day": 86400, "month": 28 * 86400}  # a month: at least 28 days
_DURATION = re.compile(r"\s*(\d{1,9})([hdm])\s*", re.ASCII)
_PERMANENT = ("suppress-bounce", "suppress-unsubscribe", "suppress-complaint", "bounce", "delayed-bounce",
              "webhook", "optimized")


@dataclass(frozen=True)
class Range:
    start: float  # first bucket's start
    end: float  # the end given (inclusive)
    resolution: str

    def hours(self) -> tuple[int, int]:
        return int(self.start // 3600), int(self.end // 3600)

    def days(self) -> tuple[int, int]:
        return int(self.start // 86400), int(self.end // 86400)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, timezone.utc)


def bucket_start(ts: float, resolution: str) -> float:
    dt = _utc(ts)
    if resolution == "hour":
        dt = dt.replace(minute=0, second=0, microsecond=0)
    elif resolution == "day":
        dt = dt.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        dt = dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return dt.timestamp()


def next_bucket(ts: float, resolution: str) -> float:
    """The start of the bucket after ``ts``'s; past the end of 9999, ``MAX_TIME + 1`` (no date beyond exists)."""
    dt = _utc(ts)
    try:
        if resolution == "hour":
            return (dt + timedelta(hours=1)).timestamp()
        if resolution == "day":
            return (dt + timedelta(days=1)).timestamp()
        year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
        return dt.replace(year=year, month=month).timestamp()
    except (OverflowError, ValueError):
        return MAX_TIME + 1


def _months_back(ts: float, months: int) -> float:
    dt = _utc(ts)
    total = dt.year * 12 + dt.month - 1 - months
    year, month = divmod(total, 12)
    if year < 1970:
        return MIN_TIME
    day = min(dt.day, 28)
    return dt.replace(year=year, month=month + 1, day=day).timestamp()


def parse_range(params: Mapping[str, str], now: float, default_resolution: str = "day") -> Range:
    """``start``/``end`` (RFC 2822 or epoch; default the last 7 days), ``duration`` (``3d``, ``12h``, ``2m``
    = months; counted back from ``end``, overrides ``start``), ``resolution`` (hour, day, month). A range of
    more than ``MAX_BUCKETS`` buckets is refused (QueryError): narrow it or choose a coarser resolution."""
    resolution = params.get("resolution") or default_resolution
    if resolution not in RESOLUTIONS:
        raise QueryError(f"resolution: expected hour, day or month, got '{resolution}'")
    end = parse_time(params["end"], "end") if params.get("end") else now
    if params.get("duration"):
        m = _DURATION.fullmatch(params["duration"])
        if not m:
            raise QueryError(f"duration: expected a number and h, d or m (months), got '{params['duration'][:60]}'")
        n, unit = int(m.group(1)), m.group(2)
        start = _months_back(end, n) if unit == "m" else max(MIN_TIME, end - n * (3600 if unit == "h" else 86400))
    else:
        start = parse_time(params["start"], "start") if params.get("start") else max(MIN_TIME, end - 7 * 86400)
    if start > end:
        raise QueryError("start must be before end")
    check_buckets(start, end, resolution)
    return Range(bucket_start(start, resolution), end, resolution)


def check_buckets(start: float, end: float, resolution: str) -> None:
    """QueryError if ``start``..``end`` spans more than ``MAX_BUCKETS`` buckets of ``resolution``."""
    if (end - start) / _BUCKET_SECONDS[resolution] >= MAX_BUCKETS:
        raise QueryError(f"the range spans more than {MAX_BUCKETS} {resolution} buckets: shorten it or use a "
                         "coarser resolution")


def check_events(names: Iterable[str]) -> list[str]:
    names = [n for n in names if n]
    if not names:
        raise QueryError("event: at least one event is required")
    for name in names:
        if name not in EVENTS:
            raise QueryError(f"event: unknown event '{name}' (known: {', '.join(EVENTS)})")
    return list(dict.fromkeys(names))


_LEAVES = {"accepted": ("accepted:incoming", "accepted:outgoing"), "delivered": ("delivered:smtp", "delivered:http"),
           "failed": ("failed:temporary",)}
_REASONS = ("bounce", "old", "generic", "rejected", "suppress-bounce", "suppress-unsubscribe", "suppress-complaint",
            "delayed-bounce", "webhook", "optimized")


def _event_terms(conn: sqlite3.Connection, events: list[str]) -> tuple[str, list[str]]:
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


def shape(counts: Mapping[str, int], events: list[str]) -> dict[str, Any]:
    """Leaf counters (``events.stat_key``) -> Mailgun's nested stats object for one bucket, totals summed."""
    c = lambda key: int(counts.get(key, 0))  # noqa: E731
    out: dict[str, Any] = {}
    for event in events:
        if event == "accepted":
            incoming, outgoing = c("accepted:incoming"), c("accepted:outgoing")
            out[event] = {"incoming": incoming, "outgoing": outgoing, "total": incoming + outgoing}
        elif event == "delivered":
            smtp, http = c("delivered:smtp"), c("delivered:http")
            out[event] = {"smtp": smtp, "http": http, "optimized": 0, "total": smtp + http}
        elif event == "failed":
            permanent = {reason: c(f"failed:permanent:{reason}") for reason in _PERMANENT}
            for key, n in counts.items():
                if key.startswith("failed:permanent:"):
                    permanent[key.split(":", 2)[2]] = int(n)
            permanent["total"] = sum(permanent.values())
            out[event] = {"temporary": {"espblock": 0, "total": c("failed:temporary")}, "permanent": permanent}
        else:
            out[event] = {"total": c(event)}
    return out


# --- queries ------------------------------------------------------------------------------------------------------

def _rows(conn: sqlite3.Connection, events: list[str], rng: Range, *, domains: Iterable[str] | None,
          tag: str = "", dim: tuple[str, str | None] | None = None, group: str | None = None,
          by_time: bool = True) -> list[tuple[Any, int, str, int]]:
    """(group value, hour or day number (0 without ``by_time``), key, count) rows, summed. Hour resolution
    reads the hourly counters, day and month the daily ones (24 times fewer rows); provider and IP counters
    are daily only. The GROUP BY follows the order of the index that serves the query, so SQLite streams the
    sums instead of sorting every row."""
    hourly = dim is None and rng.resolution == "hour"
    table = "stats" if hourly else ("stats_daily" if dim is None else "stats_dims")
    unit = "hour" if hourly else "day"
    term, params = _event_terms(conn, events)
    lo, hi = rng.hours() if hourly else rng.days()
    where = [term, f"{unit} >= ?", f"{unit} <= ?"]
    params += [lo, hi]
    domains = list(domains) if domains is not None else None
    if domains is not None:
        if not domains:
            return []
        where.append(f"domain IN ({','.join('?' * len(domains))})")
        params += domains
    if dim is None:
        if group != "tag":
            where.append("tag = ?")
            params.append(tag)
        else:
            where.append("tag != ''")
    else:
        where.append("dim = ?")
        params.append(dim[0])
        if dim[1] is not None:
            where.append("value = ?")
            params.append(dim[1])
    column = {"domain": "domain", "tag": "tag", "value": "value"}.get(group or "")
    if by_time:
        select, group_by = f"{column or chr(39) * 2}, {unit}, event", (f"{column}, event, {unit}" if column else f"event, {unit}")
    else:
        select, group_by = f"{column or chr(39) * 2}, 0, event", (f"{column}, event" if column else "event")
    return conn.execute(f"SELECT {select}, sum(count) FROM {table} WHERE {' AND '.join(where)} GROUP BY {group_by}",
                        params).fetchall()


def _time_series(rows: list[tuple[Any, int, str, int]], events: list[str], rng: Range) -> list[dict[str, Any]]:
    per_bucket: dict[float, dict[str, int]] = {}
    starts: dict[int, float] = {}  # hour or day number -> its bucket (months need the calendar, once per day)
    unit = 3600 if rng.resolution == "hour" else 86400
    for _, n, key, count in rows:
        b = starts.get(n)
        if b is None:
            b = starts[n] = float(n * unit) if rng.resolution != "month" else bucket_start(n * unit, "month")
        bucket = per_bucket.get(b)
        if bucket is None:
            bucket = per_bucket[b] = {}
        bucket[key] = bucket.get(key, 0) + count
    out = []
    t = rng.start
    while t <= rng.end:
        out.append({"time": rfc2822(t), **shape(per_bucket.get(t, {}), events)})
        t = next_bucket(t, rng.resolution)
    return out


def totals(conn: sqlite3.Connection, events: list[str], rng: Range, *, domains: Iterable[str] | None,
           tag: str = "") -> list[dict[str, Any]]:
    """One entry per bucket of the range (zeros included), like ``GET /v3/stats/total``."""
    return _time_series(_rows(conn, events, rng, domains=domains, tag=tag), events, rng)


def grouped(conn: sqlite3.Connection, events: list[str], rng: Range, *, group: str,
            filters: Mapping[str, list[str]], domains: Iterable[str] | None) -> list[dict[str, Any]]:
    """``GET /v3/stats/filter``: totals filtered by domain/tag/provider/ip and grouped by ``group``."""
    if group not in GROUPS:
        raise QueryError(f"group: expected one of {', '.join(GROUPS)}")
    unknown = set(filters) - {"domain", "tag", "provider", "ip"}
    if unknown:
        raise QueryError(f"filter: unknown key '{sorted(unknown)[0]}' (known: domain, tag, provider, ip)")
    if "domain" in filters:
        wanted = {d.lower() for d in filters["domain"]}
        domains = sorted(wanted if domains is None else wanted & set(domains))
    tags = filters.get("tag", [])
    if len(tags) > 1:
        raise QueryError("filter: give at most one tag")
    dim_filter = [(k, v) for k in ("provider", "ip") for v in filters.get(k, [])]
    if len(dim_filter) > 1:
        raise QueryError("filter: give at most one provider or ip")
    if group == "country":
        return []  # mtad has no geolocation: no country is known for any event
    if (dim_filter or group in ("provider", "ip")) and (tags or group == "tag"):
        raise QueryError("provider and ip counters are kept without tags: they cannot be combined with tag")
    dim = None
    if group in ("provider", "ip"):
        dim = (group, dim_filter[0][1] if dim_filter and dim_filter[0][0] == group else None)
        if dim_filter and dim_filter[0][0] != group:
            raise QueryError("filter: a provider filter needs group=provider, an ip filter group=ip")
    elif dim_filter:
        dim = dim_filter[0]
    tag = tags[0] if tags else ""
    if group in ("time", "day", "month"):
        resolution = rng.resolution if group == "time" else group
        if dim is not None and resolution == "hour":
            raise QueryError("provider and ip counters are daily: use resolution day or month")
        check_buckets(rng.start, rng.end, resolution)
        rng = Range(bucket_start(rng.start, resolution), rng.end, resolution)
        return _time_series(_rows(conn, events, rng, domains=domains, tag=tag, dim=dim), events, rng)
    column = {"domain": "domain", "tag": "tag", "provider": "value", "ip": "value"}.get(group)
    rows = _rows(conn, events, rng, domains=domains, tag=tag, dim=dim, group=column, by_time=False)
    per_group: dict[str, dict[str, int]] = {}
    for value, _, key, count in rows:
        counts = per_group.setdefault(value if column else "", {})
        counts[key] = counts.get(key, 0) + count
    if group == "total":
        return [{"time": rfc2822(rng.start), **shape(per_group.get("", {}), events)}]
    return [{group: value, **shape(counts, events)} for value, counts in sorted(per_group.items())]


def domain_totals(conn: sqlite3.Connection, events: list[str], at: float, resolution: str, *,
                  domains: Iterable[str] | None, skip: int, limit: int) -> list[dict[str, Any]]:
    """``GET /v3/stats/total/domains``: per domain, the one bucket containing ``at``."""
    start = bucket_start(at, resolution)
    rng = Range(start, next_bucket(start, resolution) - 1, resolution)
    rows = _rows(conn, events, rng, domains=domains, group="domain", by_time=False)
    per_domain: dict[str, dict[str, int]] = {}
    for domain, _, key, count in rows:
        counts = per_domain.setdefault(domain, {})
        counts[key] = counts.get(key, 0) + count
    chosen = sorted(per_domain)[skip:skip + limit]
    return [{"time": rfc2822(start), "domain": d, **shape(per_domain[d], events)} for d in chosen]


def providers(conn: sqlite3.Connection, domain: str) -> dict[str, dict[str, int]]:
    """``GET /v3/{domain}/aggregates/providers``: all-time counts per recipient provider (domain)."""
    out: dict[str, dict[str, int]] = {}
    for value, key, count in conn.execute(
            "SELECT value, event, sum(count) FROM stats_dims WHERE domain = ? AND dim = 'provider'"
            " GROUP BY value, event", (domain,)):
        entry = out.setdefault(value, {"accepted": 0, "delivered": 0, "opened": 0, "clicked": 0, "unique_opened": 0,
                                       "unique_clicked": 0, "unsubscribed": 0, "complained": 0, "bounced": 0})
        name = "bounced" if key.startswith("failed:permanent:") else key.split(":")[0]
        if name in entry:
            entry[name] += int(count)
    return out


def daily_counts(conn: sqlite3.Connection, domain: str, rng: Range) -> list[tuple[str, int, str, int]]:
    """(tag, day number, leaf key, count) of one domain's daily counters over ``rng`` (day resolution); tag
    ``''`` rows are the totals of all messages, the others per tag (the seed's ``GET /v2/{domain}/stats``)."""
    rng = Range(rng.start, rng.end, "day")
    every = list(EVENTS)
    return _rows(conn, every, rng, domains=[domain]) + _rows(conn, every, rng, domains=[domain], group="tag")


# --- tags ---------------------------------------------------------------------------------------------------------

def _iso(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def list_tags(conn: sqlite3.Connection, domain: str, *, limit: int, pivot: str | None = None,
              before: bool = False, prefix: str = "") -> list[dict[str, Any]]:
    """Tags seen on a domain, by name, ``limit`` after (or before) ``pivot``."""
    where, params = ["domain = ?", "tag != ''"], [domain]
    if pivot is not None:
        where.append("tag < ?" if before else "tag > ?")
        params.append(pivot)
    if prefix:
        where.append("substr(tag, 1, ?) = ?")
        params += [len(prefix), prefix]
    order = "DESC" if before else "ASC"
    rows = conn.execute(f"SELECT tag, min(day), max(day) FROM stats_daily WHERE {' AND '.join(where)} GROUP BY tag"
                        f" ORDER BY tag {order} LIMIT ?", (*params, limit)).fetchall()
    if before:
        rows.reverse()
    return [tag_info(conn, domain, r[0], r[1], r[2]) for r in rows]


def tag_info(conn: sqlite3.Connection, domain: str, tag: str, first: int | None = None,
             last: int | None = None) -> dict[str, Any] | None:
    if first is None:
        row = conn.execute("SELECT min(day), max(day) FROM stats_daily WHERE domain = ? AND tag = ?",
                           (domain, tag)).fetchone()
        if row is None or row[0] is None:
            return None
        first, last = row
    desc = conn.execute("SELECT value FROM kv WHERE key = ?", (f"tag:{domain}:{tag}",)).fetchone()
    return {"tag": tag, "description": desc[0] if desc else "", "first-seen": _iso(first * 86400),
            "last-seen": _iso((last or first) * 86400)}  # to the day: from the daily counters


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

