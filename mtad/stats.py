"""Stats from the hourly counters (seed 001): totals, by domain / tag / provider / IP, in Mailgun's shapes.

``events.record`` bumps counters as events are written: ``stats(domain, tag, event, hour)`` with the
tag ``''`` for all messages, and ``stats_dims(domain, dim, value, event, hour)`` for the provider (the
recipient's domain) and the sending IP. Counter keys are the event name plus Mailgun's breakdowns
(``accepted:incoming``, ``delivered:smtp``, ``failed:temporary``, ``failed:permanent:bounce``...), see
``events.stat_keys``. A query over months reads at most one row per hour and key, grouped in SQL:
milliseconds, never a scan of events.

Times are UTC; buckets are aligned to the hour, day or calendar month. Pure functions of a read
connection and parsed parameters; the API module turns them into responses.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from mtad.eventquery import QueryError, parse_time, rfc2822

EVENTS = ("accepted", "delivered", "failed", "opened", "clicked", "unsubscribed", "complained", "stored")
RESOLUTIONS = ("hour", "day", "month")
GROUPS = ("total", "time", "day", "month", "domain", "ip", "provider", "tag", "country")
_PERMANENT = ("suppress-bounce", "suppress-unsubscribe", "suppress-complaint", "bounce", "delayed-bounce",
              "webhook", "optimized")


@dataclass(frozen=True)
class Range:
    start: float  # first bucket's start
    end: float  # the end given (inclusive)
    resolution: str

    def hours(self) -> tuple[int, int]:
        return int(self.start // 3600), int(self.end // 3600)


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
    dt = _utc(ts)
    if resolution == "hour":
        return (dt + timedelta(hours=1)).timestamp()
    if resolution == "day":
        return (dt + timedelta(days=1)).timestamp()
    year, month = (dt.year + 1, 1) if dt.month == 12 else (dt.year, dt.month + 1)
    return dt.replace(year=year, month=month).timestamp()


def _months_back(ts: float, months: int) -> float:
    dt = _utc(ts)
    total = dt.year * 12 + dt.month - 1 - months
    year, month = divmod(total, 12)
    day = min(dt.day, 28)
    return dt.replace(year=year, month=month + 1, day=day).timestamp()


def parse_range(params: Mapping[str, str], now: float, default_resolution: str = "day") -> Range:
    """``start``/``end`` (RFC 2822 or epoch; default the last 7 days), ``duration`` (``3d``, ``12h``, ``2m``
    = months; counted back from ``end``, overrides ``start``), ``resolution`` (hour, day, month)."""
    resolution = params.get("resolution") or default_resolution
    if resolution not in RESOLUTIONS:
        raise QueryError(f"resolution: expected hour, day or month, got '{resolution}'")
    end = parse_time(params["end"], "end") if params.get("end") else now
    if params.get("duration"):
        text = params["duration"].strip()
        unit, number = text[-1:], text[:-1]
        if not number.isdigit() or unit not in "hdm":
            raise QueryError(f"duration: expected a number and h, d or m (months), got '{text}'")
        n = int(number)
        start = _months_back(end, n) if unit == "m" else end - n * (3600 if unit == "h" else 86400)
    else:
        start = parse_time(params["start"], "start") if params.get("start") else end - 7 * 86400
    if start > end:
        raise QueryError("start must be before end")
    return Range(bucket_start(start, resolution), end, resolution)


def check_events(names: Iterable[str]) -> list[str]:
    names = [n for n in names if n]
    if not names:
        raise QueryError("event: at least one event is required")
    for name in names:
        if name not in EVENTS:
            raise QueryError(f"event: unknown event '{name}' (known: {', '.join(EVENTS)})")
    return list(dict.fromkeys(names))


_BREAKDOWNS = {"accepted": ("accepted:incoming", "accepted:outgoing"), "delivered": ("delivered:smtp", "delivered:http"),
               "failed": ("failed:temporary", "failed:permanent")}
_REASONS = ("bounce", "old", "generic", "rejected", "suppress-bounce", "suppress-unsubscribe", "suppress-complaint",
            "delayed-bounce", "webhook", "optimized")


def _event_terms(conn: sqlite3.Connection, events: list[str]) -> tuple[str, list[str]]:
    """``event IN (...)``: the counter keys of the events and their breakdowns, so that the index serves the
    hour range too. Reasons of permanent failures beyond the known ones are looked up in the counters."""
    keys = [k for e in events for k in (e, *_BREAKDOWNS.get(e, ()))]
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
    """Counters -> Mailgun's nested stats object for one bucket."""
    c = lambda key: int(counts.get(key, 0))  # noqa: E731
    out: dict[str, Any] = {}
    for event in events:
        if event == "accepted":
            out[event] = {"incoming": c("accepted:incoming"), "outgoing": c("accepted:outgoing"), "total": c("accepted")}
        elif event == "delivered":
            out[event] = {"smtp": c("delivered:smtp"), "http": c("delivered:http"), "optimized": 0,
                          "total": c("delivered")}
        elif event == "failed":
            permanent = {reason: c(f"failed:permanent:{reason}") for reason in _PERMANENT}
            for key, n in counts.items():
                if key.startswith("failed:permanent:"):
                    permanent[key.split(":", 2)[2]] = int(n)
            permanent["total"] = c("failed:permanent")
            out[event] = {"temporary": {"espblock": 0, "total": c("failed:temporary")}, "permanent": permanent}
        else:
            out[event] = {"total": c(event)}
    return out


# --- queries ------------------------------------------------------------------------------------------------------

def _rows(conn: sqlite3.Connection, events: list[str], rng: Range, *, domains: Iterable[str] | None,
          tag: str = "", dim: tuple[str, str | None] | None = None, group: str | None = None,
          by_day: bool = False) -> list[tuple[Any, int, str, int]]:
    """(group value, hour or day number, key, count) rows, summed."""
    table = "stats" if dim is None else "stats_dims"
    term, params = _event_terms(conn, events)
    lo, hi = rng.hours()
    where = [term, "hour >= ?", "hour <= ?"]
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
    group_col = {"domain": "domain", "tag": "tag", "value": "value"}.get(group or "", "''")
    bucket = "hour / 24" if by_day else "hour"
    return conn.execute(f"SELECT {group_col}, {bucket}, event, sum(count) FROM {table} WHERE {' AND '.join(where)}"
                        f" GROUP BY 1, 2, 3", params).fetchall()


def _time_series(rows: list[tuple[Any, int, str, int]], events: list[str], rng: Range,
                 by_day: bool) -> list[dict[str, Any]]:
    per_bucket: dict[float, dict[str, int]] = {}
    unit = 86400 if by_day else 3600
    starts: dict[int, float] = {}  # hour or day number -> its bucket (months need the calendar, once per day)
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
    by_day = rng.resolution != "hour"
    return _time_series(_rows(conn, events, rng, domains=domains, tag=tag, by_day=by_day), events, rng, by_day)


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
        rng = Range(bucket_start(rng.start, resolution), rng.end, resolution)
        by_day = resolution != "hour"
        rows = _rows(conn, events, rng, domains=domains, tag=tag, dim=dim, by_day=by_day)
        return _time_series(rows, events, rng, by_day)
    column = {"domain": "domain", "tag": "tag", "provider": "value", "ip": "value"}.get(group)
    rows = _rows(conn, events, rng, domains=domains, tag=tag, dim=dim, group=column, by_day=True)
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
    rows = _rows(conn, events, rng, domains=domains, group="domain", by_day=resolution != "hour")
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
            " AND event IN ('accepted', 'delivered', 'opened', 'clicked', 'unsubscribed', 'complained',"
            " 'failed:permanent') GROUP BY value, event", (domain,)):
        entry = out.setdefault(value, {"accepted": 0, "delivered": 0, "opened": 0, "clicked": 0, "unique_opened": 0,
                                       "unique_clicked": 0, "unsubscribed": 0, "complained": 0, "bounced": 0})
        entry["bounced" if key == "failed:permanent" else key] = int(count)
    return out


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
    rows = conn.execute(f"SELECT tag, min(hour), max(hour) FROM stats WHERE {' AND '.join(where)} GROUP BY tag"
                        f" ORDER BY tag {order} LIMIT ?", (*params, limit)).fetchall()
    if before:
        rows.reverse()
    return [tag_info(conn, domain, r[0], r[1], r[2]) for r in rows]


def tag_info(conn: sqlite3.Connection, domain: str, tag: str, first: int | None = None,
             last: int | None = None) -> dict[str, Any] | None:
    if first is None:
        row = conn.execute("SELECT min(hour), max(hour) FROM stats WHERE domain = ? AND tag = ?", (domain, tag)).fetchone()
        if row is None or row[0] is None:
            return None
        first, last = row
    desc = conn.execute("SELECT value FROM kv WHERE key = ?", (f"tag:{domain}:{tag}",)).fetchone()
    return {"tag": tag, "description": desc[0] if desc else "", "first-seen": _iso(first * 3600),
            "last-seen": _iso((last or first) * 3600)}


def set_tag_description(conn: sqlite3.Connection, domain: str, tag: str, description: str) -> bool:
    if conn.execute("SELECT 1 FROM stats WHERE domain = ? AND tag = ? LIMIT 1", (domain, tag)).fetchone() is None:
        return False
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (f"tag:{domain}:{tag}", description))
    return True


def delete_tag(conn: sqlite3.Connection, domain: str, tag: str) -> bool:
    n = conn.execute("DELETE FROM stats WHERE domain = ? AND tag = ?", (domain, tag)).rowcount
    conn.execute("DELETE FROM kv WHERE key = ?", (f"tag:{domain}:{tag}",))
    return n > 0


def stat_domains(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT domain FROM stats")]
