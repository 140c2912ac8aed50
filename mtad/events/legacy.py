"""The seed manual's legacy v2 log and stats, built over the events and the stats counters.

- ``GET /v2/{domain}/log`` (``skip``, ``limit``): ``{"total_count", "items": [{"hap", "created_at",
  "message", "type", "message_id"}]}``, newest first. ``hap`` is the event as the legacy webhooks name it
  (``accepted``, ``delivered``, ``bounced``, ``dropped``, ``failed`` for a temporary failure, ``rejected``,
  ``stored``, ...), ``type`` the event's log level (``info``, ``warn``, ``error``), ``message`` a line like
  the seed's ``Delivered: me@samples.mailgun.org → alex@mailgun.net 'Hello'``.
- ``GET /v2/{domain}/stats`` (``event`` repeatable, ``start-date`` YYYY-MM-DD, ``skip``, ``limit``):
  ``{"total_count", "items": [{"total_count", "created_at", "tags", "id", "event"}]}``, one item per day and
  event with a non-zero count, newest day first, ``tags`` the count per tag. Events: the seed's ``sent``
  (outgoing mail accepted), ``delivered``, ``bounced`` (permanent SMTP failures), ``dropped`` (other permanent
  failures: suppressions, expiry), ``opened``, ``clicked``, ``unsubscribed``, ``complained``, and mtad's
  ``accepted`` (in and out), ``failed`` (every failure) and ``stored``.

Pure shaping functions plus two reads of the store (``log_page``, ``stats_page``).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
from datetime import datetime, timezone
from typing import Any, Callable, Iterable

from mtad.events import query as eventquery
from mtad.events import stats
from mtad.events.query import EventQuery, QueryError
from mtad.events.webhooks import legacy_event_name
from mtad.store.counters import CounterRow
from mtad.store.events import EventStore

LOG_MAX_LIMIT = eventquery.MAX_LIMIT
LOG_MAX_SKIP = 100_000  # offset paging walks the skipped entries: keep it bounded
STATS_MAX_LIMIT = 1000
STATS_DEFAULT_DAYS = 183  # the seed: "We keep track of events for 6 months"

_BOUNCES = ("failed:permanent:bounce", "failed:permanent:delayed-bounce")
STATS_EVENTS: dict[str, Callable[[str], bool]] = {
    "sent": lambda key: key == "accepted:outgoing",
    "delivered": lambda key: key.startswith("delivered:"),
    "bounced": lambda key: key in _BOUNCES,
    "dropped": lambda key: key.startswith("failed:permanent:") and key not in _BOUNCES,
    "opened": lambda key: key.startswith("opened:"),
    "clicked": lambda key: key.startswith("clicked:"),
    "unsubscribed": lambda key: key == "unsubscribed",
    "complained": lambda key: key == "complained",
    "accepted": lambda key: key.startswith("accepted:"),
    "failed": lambda key: key.startswith("failed:"),
    "stored": lambda key: key == "stored",
}


def gmt(ts: float) -> str:
    """The seed's date format: ``Fri, 03 Feb 2012 10:39:50 GMT``."""
    return email.utils.formatdate(ts, usegmt=True)


def bounded_int(value: str | None, name: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise QueryError(f"{name}: expected a number") from None
    if not low <= n <= high:
        raise QueryError(f"{name}: must be between {low} and {high}")
    return n


# --- log --------------------------------------------------------------------------------------------------------

def log_item(event: dict[str, Any], timestamp: float) -> dict[str, Any]:
    headers = (event.get("message") or {}).get("headers") or {}
    hap = legacy_event_name(event)
    line = f"{hap.capitalize()}: {headers.get('from', '')} \u2192 {event.get('recipient', '')} " \
           f"'{headers.get('subject', '')}'"
    status = event.get("delivery-status") or {}
    if event.get("event") == "failed" and (status.get("message") or status.get("description")):
        line += f" Server response: {status.get('code') or ''} {status.get('message') or status.get('description')}"
    elif event.get("event") == "rejected":
        line += f" {(event.get('reject') or {}).get('reason', '')}"
    return {"hap": hap, "created_at": gmt(timestamp), "message": line.rstrip(),
            "type": event.get("log-level", "info"), "message_id": headers.get("message-id", "")}


async def log_page(store: EventStore, domain: str, skip: int, limit: int) -> dict[str, Any]:
    total, rows = await store.event_log(EventQuery((domain,), limit=limit), skip)
    return {"total_count": total, "items": [log_item(json.loads(r.data), r.timestamp) for r in rows]}


# --- stats ------------------------------------------------------------------------------------------------------

def check_stats_events(names: Iterable[str]) -> list[str]:
    names = [n for n in names if n]
    for name in names:
        if name not in STATS_EVENTS:
            raise QueryError(f"event: unknown event '{name}' (known: {', '.join(STATS_EVENTS)})")
    return list(dict.fromkeys(names)) or ["sent", "delivered", "bounced", "dropped", "opened", "clicked",
                                          "unsubscribed", "complained"]


def parse_start_date(value: str | None, now: float) -> float:
    if not value:
        return stats.bucket_start(now - STATS_DEFAULT_DAYS * 86400, "day")
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise QueryError(f"start-date: expected YYYY-MM-DD, got '{value[:40]}'") from None


def stats_items(rows: Iterable[CounterRow], names: list[str], domain: str) -> list[dict[str, Any]]:
    """Daily counter rows (``stats.daily_counts``) -> the seed's items, newest day first."""
    totals: dict[tuple[int, str], int] = {}
    tags: dict[tuple[int, str], dict[str, int]] = {}
    for tag, day, key, count in ((r.group, r.n, r.key, r.count) for r in rows):
        for name in names:
            if STATS_EVENTS[name](key):
                if tag:
                    per_tag = tags.setdefault((day, name), {})
                    per_tag[tag] = per_tag.get(tag, 0) + int(count)
                else:
                    totals[(day, name)] = totals.get((day, name), 0) + int(count)
    items = []
    for day in sorted({d for d, _ in totals}, reverse=True):
        for name in names:
            n = totals.get((day, name), 0)
            if n:
                ident = hashlib.sha1(f"{domain}:{day}:{name}".encode()).hexdigest()[:24]
                items.append({"total_count": n, "created_at": gmt(day * 86400), "tags": tags.get((day, name), {}),
                              "id": ident, "event": name})
    return items


async def stats_page(store: EventStore, domain: str, names: list[str], start: float, now: float, skip: int,
                     limit: int) -> dict[str, Any]:
    items = stats_items(await stats.daily_counts(store, domain, stats.Range(start, max(start, now), "day")), names,
                        domain)
    return {"total_count": len(items), "items": items[skip:skip + limit]}
