"""Stats from counters (seed 001): totals, by domain / tag / provider / IP, in Mailgun's shapes.

The store counts events as they are written (``mtad.store.counters``: hourly and daily per tag, daily per provider
and sending IP) and reads the summed leaf keys of Mailgun's breakdowns (``accepted:incoming``, ``delivered:smtp``,
``failed:temporary``, ``failed:permanent:bounce``...) for a ``CounterQuery``; this module checks the parameters,
asks the store (one read per answer) and sums the totals into Mailgun's shapes: milliseconds for months, never a
scan of events.

Times are UTC; buckets are aligned to the hour, day or calendar month. Pure functions of parsed parameters and
the store's rows; the API module turns them into responses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Mapping

from mtad.events.query import MAX_TIME, MIN_TIME, QueryError, parse_time, rfc2822
from mtad.store.counters import CounterQuery, CounterRow, TagInfo
from mtad.store.events import EventStore

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
        elif event in ("opened", "clicked"):
            unique = c(f"{event}:unique")
            out[event] = {"total": unique + c(f"{event}:repeat"), "unique": unique}
        else:
            out[event] = {"total": c(event)}
    return out


# --- queries ------------------------------------------------------------------------------------------------------

def _query(events: list[str], rng: Range, *, domains: Iterable[str] | None, tag: str = "",
           dim: tuple[str, str | None] | None = None, group: str | None = None, by_time: bool = True) -> CounterQuery:
    """The store's query for (group value, hour or day number (0 without ``by_time``), key, count) rows, summed.
    Hour resolution reads the hourly counters, day and month the daily ones (24 times fewer rows); provider and IP
    counters are daily only."""
    return CounterQuery(tuple(events), rng.start, rng.end, rng.resolution,
                        None if domains is None else tuple(domains), tag, dim, group, by_time)


async def _rows(store: EventStore, query: CounterQuery) -> tuple[CounterRow, ...]:
    (rows,) = await store.counter_rows(query)
    return rows


def _time_series(rows: Iterable[CounterRow], events: list[str], rng: Range) -> list[dict[str, Any]]:
    per_bucket: dict[float, dict[str, int]] = {}
    starts: dict[int, float] = {}  # hour or day number -> its bucket (months need the calendar, once per day)
    unit = 3600 if rng.resolution == "hour" else 86400
    for row in rows:
        n, key, count = row.n, row.key, row.count
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


async def totals(store: EventStore, events: list[str], rng: Range, *, domains: Iterable[str] | None,
                 tag: str = "") -> list[dict[str, Any]]:
    """One entry per bucket of the range (zeros included), like ``GET /v3/stats/total``."""
    return _time_series(await _rows(store, _query(events, rng, domains=domains, tag=tag)), events, rng)


async def grouped(store: EventStore, events: list[str], rng: Range, *, group: str,
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
    if (dim_filter or group in ("provider", "ip", "country")) and (tags or group == "tag"):
        raise QueryError("provider and ip counters are kept without tags: they cannot be combined with tag")
    dim = None
    if group in ("provider", "ip", "country"):  # countries: of opens, clicks, unsubscribes (events.engagement)
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
        return _time_series(await _rows(store, _query(events, rng, domains=domains, tag=tag, dim=dim)), events, rng)
    column = {"domain": "domain", "tag": "tag", "provider": "value", "ip": "value", "country": "value"}.get(group)
    rows = await _rows(store, _query(events, rng, domains=domains, tag=tag, dim=dim, group=column, by_time=False))
    per_group: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = per_group.setdefault(row.group if column else "", {})
        counts[row.key] = counts.get(row.key, 0) + row.count
    if group == "total":
        return [{"time": rfc2822(rng.start), **shape(per_group.get("", {}), events)}]
    return [{group: value, **shape(counts, events)} for value, counts in sorted(per_group.items())]


async def domain_totals(store: EventStore, events: list[str], at: float, resolution: str, *,
                  domains: Iterable[str] | None, skip: int, limit: int) -> list[dict[str, Any]]:
    """``GET /v3/stats/total/domains``: per domain, the one bucket containing ``at``."""
    start = bucket_start(at, resolution)
    rng = Range(start, next_bucket(start, resolution) - 1, resolution)
    rows = await _rows(store, _query(events, rng, domains=domains, group="domain", by_time=False))
    per_domain: dict[str, dict[str, int]] = {}
    for row in rows:
        counts = per_domain.setdefault(row.group, {})
        counts[row.key] = counts.get(row.key, 0) + row.count
    chosen = sorted(per_domain)[skip:skip + limit]
    return [{"time": rfc2822(start), "domain": d, **shape(per_domain[d], events)} for d in chosen]


async def providers(store: EventStore, domain: str, dim: str = "provider") -> dict[str, dict[str, int]]:
    """``GET /v3/{domain}/aggregates/providers|devices|countries``: all-time counts per recipient provider
    (domain), per device type, per country (``dim``: provider, device, country). Devices and countries are known
    for opens, clicks and unsubscribes only."""
    out: dict[str, dict[str, int]] = {}
    for value, key, count in await store.provider_counts(domain, dim):
        if dim == "provider":
            blank = {"accepted": 0, "delivered": 0, "opened": 0, "clicked": 0, "unique_opened": 0,
                     "unique_clicked": 0, "unsubscribed": 0, "complained": 0, "bounced": 0}
        else:
            blank = {"clicked": 0, "opened": 0, "unique_clicked": 0, "unique_opened": 0, "unsubscribed": 0,
                     "complained": 0}
        entry = out.setdefault(value, blank)
        name = "bounced" if key.startswith("failed:permanent:") else key.split(":")[0]
        if name in entry:
            entry[name] += int(count)
        if key in ("opened:unique", "clicked:unique"):
            entry["unique_" + name] += int(count)
    return out


async def daily_counts(store: EventStore, domain: str, rng: Range) -> list[CounterRow]:
    """(tag, day number, leaf key, count) rows of one domain's daily counters over ``rng`` (day resolution); tag
    ``''`` rows are the totals of all messages, the others per tag (the seed's ``GET /v2/{domain}/stats``)."""
    rng = Range(rng.start, rng.end, "day")
    every = list(EVENTS)
    totals_, per_tag = await store.counter_rows(_query(every, rng, domains=[domain]),
                                                _query(every, rng, domains=[domain], group="tag"))
    return [*totals_, *per_tag]


# --- tags ---------------------------------------------------------------------------------------------------------

def _iso(ts: float) -> str:
    return _utc(ts).strftime("%Y-%m-%dT%H:%M:%SZ")


def tag_json(info: TagInfo) -> dict[str, Any]:
    """Mailgun's shape of a tag; first and last seen to the day (from the daily counters)."""
    return {"tag": info.tag, "description": info.description, "first-seen": _iso(info.first_day * 86400),
            "last-seen": _iso(info.last_day * 86400)}


async def list_tags(store: EventStore, domain: str, *, limit: int, pivot: str | None = None,
                    before: bool = False, prefix: str = "") -> list[dict[str, Any]]:
    """Tags seen on a domain, by name, ``limit`` after (or before) ``pivot``."""
    return [tag_json(t) for t in await store.list_tags(domain, limit=limit, pivot=pivot, before=before,
                                                         prefix=prefix)]


async def tag_info(store: EventStore, domain: str, tag: str) -> dict[str, Any] | None:
    info = await store.tag_info(domain, tag)
    return None if info is None else tag_json(info)
