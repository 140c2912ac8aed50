"""Mailgun-shaped events: building them, and recording them with their counters.

An event is a plain JSON-able dict in the shape of Mailgun's events API (``id``, ``event``,
``timestamp``, ``log-level``, ``recipient``, ``message``, ``envelope``, ``flags``, ...). ``record``
writes it in the caller's transaction, counts it in the ``stats`` counters (so stats queries never scan
events) and creates one ``webhook_deliveries`` row per URL of the domain's webhook for that event (so a
committed event is never without its webhook work). Inside ``Store.write`` the event row, its counter
increments and webhook rows are staged and written with those of the whole group commit just before its
COMMIT (``write_events``: a few multi-row statements, one UPSERT row per distinct counter), which is what
keeps events cheap beside deliveries. Building is pure; recording takes the writer's connection.

Size: every event of a message carries its user variables (up to 4 KB, ``options.MAX_VARIABLES_SIZE``), and a
message to 1,000 recipients has thousands of events; so variables over ``INLINE_VARIABLES`` bytes are stored
once in ``event_variables`` (keyed by their hash) and the event row names them (``events.variables``). Readers
select ``EVENT_DATA`` instead of the ``data`` column: the same JSON, variables put back. An event is also
bounded as a whole: over ``MAX_EVENT_BYTES`` its long strings are shortened (``bounded``), so one answer of the
events API holds a known number of bytes per event.

Webhook URLs live in the ``webhooks`` table; ``record`` reads them through an in-memory cache that
whoever changes the table clears with ``invalidate_webhooks()`` (the table is small and read on
every event). ``on_webhook_work`` and ``observers`` are process-local hooks set by app.py: called on
the writer thread inside the transaction, they must be cheap and must not raise.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import random
import secrets
import sqlite3
import threading
import time
from collections import Counter
from typing import Any, Callable, Iterable

import orjson

from mtad.store.engine import execute_rows
from mtad.base.types import NewMessage, Outcome

_LOG_LEVEL = {"accepted": "info", "delivered": "info", "failed": "error", "rejected": "warn",
              "stored": "info", "opened": "info", "clicked": "info", "unsubscribed": "info",
              "complained": "warn"}


_ids = random.Random(secrets.randbits(128))  # ids need uniqueness, not secrecy: no system call per event


def new_event_id() -> str:
    """22 URL-safe characters like Mailgun's, time-ordered (48 bits of milliseconds, then 80 random bits) so that
    the events table's unique index on ids grows at its end instead of dirtying a random page per event."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + _ids.getrandbits(80).to_bytes(10, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def message_part(msg_headers: dict[str, str], size: int, attachments: Iterable[dict] = ()) -> dict[str, Any]:
    return {"headers": msg_headers, "attachments": list(attachments), "size": size}


def base_event(kind: str, *, timestamp: float, recipient: str, queue_id: str, message: dict[str, Any],
               options: dict[str, Any], envelope: dict[str, Any], flags: dict[str, Any],
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    event = {
        "id": new_event_id(),
        "event": kind,
        "timestamp": timestamp,
        "log-level": "warn" if kind == "failed" and (extra or {}).get("severity") == "temporary"
        else _LOG_LEVEL.get(kind, "info"),
        "recipient": recipient,
        "recipient-domain": domain_of(recipient),
        "message": message,
        "tags": list(options.get("tags") or ()),
        "campaigns": [{"id": c} for c in options.get("campaigns") or ()],
        "user-variables": dict(options.get("variables") or {}),
        "envelope": envelope,
        "flags": flags,
        "storage": {"key": queue_id},
    }
    if extra:
        event.update(extra)
    return event


def accepted_events(msg: NewMessage, queue_id: str, now: float) -> list[dict[str, Any]]:
    """One ``accepted`` event per recipient of a newly committed message."""
    env = msg.envelope
    options = msg.options.to_json()
    message = message_part(msg.headers.to_json(), len(msg.body), msg.attachments)
    flags = {"is-authenticated": env.auth_user is not None, "is-test-mode": msg.options.test_mode,
             "is-routed": False, "is-delayed-bounce": False, "is-system-test": False}
    events = []
    for rcpt in env.recipients:
        envelope = {"sender": env.sender, "targets": rcpt, "transport": env.transport,
                    "sending-ip": env.client_ip}
        extra = {"method": env.transport, "originating-ip": env.client_ip}
        if msg.direction == "inbound":
            extra["direction"] = "incoming"
        else:
            extra["direction"] = "outgoing"
        events.append(base_event("accepted", timestamp=now, recipient=rcpt, queue_id=queue_id,
                                 message=message, options=options, envelope=envelope, flags=flags,
                                 extra=extra))
    return events


def outcome_status(outcome: Outcome, attempt: int, session_seconds: float = 0.0,
                   retry_seconds: float | None = None) -> dict[str, Any]:
    """Mailgun's ``delivery-status`` block for one attempt."""
    status = {"code": outcome.code, "enhanced-code": outcome.enhanced, "message": outcome.message,
              "description": outcome.message if outcome.kind != "delivered" else "",
              "attempt-no": attempt, "mx-host": outcome.mx_host, "tls": outcome.tls,
              "certificate-verified": outcome.certificate_verified,
              "session-seconds": round(session_seconds, 3)}
    if retry_seconds is not None:
        status["retry-seconds"] = int(retry_seconds)
    return status


def stat_key(event: dict[str, Any]) -> str:
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
    return kind


def stat_keys(event: dict[str, Any]) -> list[str]:
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


def webhook_id(event: dict[str, Any]) -> str | None:
    """The Mailgun webhook id an event triggers (``failed`` splits by severity), or None."""
    kind = event["event"]
    if kind == "failed":
        return "permanent_fail" if event.get("severity", "permanent") == "permanent" else "temporary_fail"
    return kind if kind in _WEBHOOK_KINDS else None


_WEBHOOK_KINDS = frozenset({"accepted", "delivered", "opened", "clicked", "unsubscribed", "complained"})
_webhooks_lock = threading.Lock()
_webhooks: dict[int, dict[tuple[str, str], list[tuple[str, str]]]] = {}  # id(conn) -> (domain, hook) -> urls

on_webhook_work: Callable[[], None] = lambda: None  # new webhook rows were written (wakes the dispatcher)
observers: list[Callable[[str, dict[str, Any]], None]] = []  # every recorded event (metrics)


def invalidate_webhooks() -> None:
    """Forget cached webhook URLs; the next event reads the ``webhooks`` table again."""
    with _webhooks_lock:
        _webhooks.clear()


def webhook_targets(conn: sqlite3.Connection, domain: str, hook: str) -> list[tuple[str, str]]:
    """(url, format) pairs of ``domain``'s webhook ``hook``, from the cache (filled from the table)."""
    table = _webhooks.get(id(conn))
    if table is None:
        table = {}
        for d, h, url, fmt in conn.execute("SELECT domain, hook, url, format FROM webhooks ORDER BY created_at"):
            table.setdefault((d, h), []).append((url, fmt))
        with _webhooks_lock:
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


_EVENT_ROWS = ("INSERT INTO events (id, timestamp, domain, event, recipient, message_id, queue_id, severity, data,"
               " variables)")
INLINE_VARIABLES = 256  # bytes of user-variables JSON kept inline in an event; larger ones are stored once
MAX_EVENT_BYTES = 32_768  # an event's JSON (without stored-once variables) at most; longer strings are shortened
# The event JSON as the API and webhooks show it: ``data`` with its stored-once variables put back (first).
EVENT_DATA = ("CASE WHEN events.variables IS NULL THEN events.data ELSE '{\"user-variables\":' ||"
              " coalesce((SELECT v.data FROM event_variables v WHERE v.key = events.variables), '{}') || ',' ||"
              " substr(events.data, 2) END")
_json_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode  # events are trees we built


def _encode(event: dict[str, Any]) -> str:
    """Compact JSON of an event: orjson (a tenth of the stdlib's cost per event); the stdlib for what orjson
    refuses (a lone surrogate from an undecodable header, an integer over 64 bits)."""
    try:
        return orjson.dumps(event).decode()
    except (orjson.JSONEncodeError, TypeError):
        return _json_encode(event)
_STAGED, _STAGED_WEBHOOKS, _STAGED_VARIABLES = "events", "events.webhooks", "events.variables"  # see store.Staged


def _shorten(value: Any, cut: int, items: int) -> Any:
    """``value`` with strings over ``cut`` characters cut (ending in "…") and lists and objects over ``items``
    entries cut to their first ``items``."""
    if isinstance(value, str):
        return value if len(value) <= cut else value[:cut] + "…"
    if isinstance(value, dict):
        return {k: _shorten(v, cut, items) for k, v in list(value.items())[:items]}
    if isinstance(value, list):
        return [_shorten(v, cut, items) for v in value[:items]]
    return value


_KEPT = ("id", "event", "timestamp", "log-level", "recipient", "recipient-domain", "severity", "reason", "method",
         "storage")


def _fits(text: str, limit: int) -> bool:
    """At most ``limit`` bytes of UTF-8 (events are ASCII but for header values and variables)."""
    return len(text) <= limit and (text.isascii() or len(text.encode("utf-8", "surrogatepass")) <= limit)


def bounded(event: dict[str, Any], limit: int = MAX_EVENT_BYTES) -> str:
    """The JSON of ``event``, at most ``limit`` bytes: as it is if it fits; else with long strings, lists and
    objects shortened (a 1,000-recipient To header, a huge subject); at worst its identifying fields only."""
    text = _encode(event)
    if _fits(text, limit):
        return text
    for cut, items in ((1024, 100), (128, 20)):
        text = _encode(_shorten(event, cut, items))
        if _fits(text, limit):
            return text
    headers = (event.get("message") or {}).get("headers") or {}
    kept = {k: event[k] for k in _KEPT if k in event}
    kept["message"] = {"headers": {"message-id": str(headers.get("message-id", ""))[:1024]}}
    return _encode(_shorten(kept, 1024, 20))


def bounded_text(text: str, limit: int = MAX_EVENT_BYTES) -> str:
    """``bounded`` for stored event JSON (events written before events were bounded)."""
    return text if _fits(text, limit) else bounded(json.loads(text), limit)


def write_variables(conn: sqlite3.Connection, rows: list[tuple[str, str, float]]) -> None:
    """Store (key, JSON, event time) variables once each; a key stored already gets the newer time."""
    newest: dict[str, tuple[str, str, float]] = {}
    for row in rows:
        if row[0] not in newest or newest[row[0]][2] < row[2]:
            newest[row[0]] = row
    execute_rows(conn, "INSERT INTO event_variables (key, data, last_at)", 3, list(newest.values()),
                 " ON CONFLICT (key) DO UPDATE SET last_at = max(last_at, excluded.last_at)")


def _stored_form(event: dict[str, Any]) -> tuple[str, tuple[str, str, float] | None]:
    """(event JSON to store, (key, variables JSON, time) to store once or None)."""
    variables = event.get("user-variables")
    if variables:
        text = _encode(variables)
        if len(text) > INLINE_VARIABLES:
            key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
            rest = {k: v for k, v in event.items() if k != "user-variables"}
            return bounded(rest), (key, text, event["timestamp"])
    return bounded(event), None
_UPSERTS = (  # (head, columns, tail) of each counter table's multi-row UPSERT (store.execute_rows)
    ("INSERT INTO stats (domain, tag, event, hour, count)", 5,
     " ON CONFLICT (domain, tag, event, hour) DO UPDATE SET count = count + excluded.count"),
    ("INSERT INTO stats_daily (domain, tag, event, day, count)", 5,
     " ON CONFLICT (domain, tag, event, day) DO UPDATE SET count = count + excluded.count"),
    ("INSERT INTO stats_dims (domain, dim, value, event, day, count)", 6,
     " ON CONFLICT (domain, dim, value, event, day) DO UPDATE SET count = count + excluded.count"),
)

# What ``record`` keeps of an event for its counters: (domain, tags, leaf key, hour, provider, sending IP);
# None for an event that is not counted (``record(system=True)``).
StatItem = tuple[str, tuple[str, ...], str, int, str, str]


def write_events(conn: sqlite3.Connection, items: list[tuple[tuple, StatItem | None]]) -> None:
    """Insert (event row, counter item) pairs as ``record`` makes them, and add them to the counters: the
    events of a batch with the same counter item are counted once with their number, so a group commit of
    deliveries costs one UPSERT row per distinct counter, not several per event, and a few multi-row
    statements in all (``store.execute_rows``). Counters are updated in key order (neighbouring keys share
    B-tree pages)."""
    execute_rows(conn, _EVENT_ROWS, 10, [row for row, _ in items])
    hourly: Counter = Counter()
    daily: Counter = Counter()
    dims: Counter = Counter()
    for (domain, tags, leaf, hour, provider, ip), n in Counter([stat for _, stat in items if stat]).items():
        day = hour // 24
        for tag in dict.fromkeys(("", *tags)):
            for key in _hourly_keys(leaf):
                hourly[(domain, tag, key, hour)] += n
            daily[(domain, tag, leaf, day)] += n
        dims[(domain, "provider", provider, leaf, day)] += n
        if ip:
            dims[(domain, "ip", ip, leaf, day)] += n
    for (head, width, tail), counts in zip(_UPSERTS, (hourly, daily, dims)):
        execute_rows(conn, head, width, [(*key, n) for key, n in sorted(counts.items())], tail)


def record(conn: sqlite3.Connection, domain: str, event: dict[str, Any], *, system: bool = False) -> None:
    """Write one event, count it (hourly per tag, daily per tag, daily per provider and sending IP) and queue
    its webhook POSTs, in the caller's transaction.

    ``system``: an event of a message mtad made itself (a DSN): written for tracing, but neither counted in the
    domain's stats nor posted to its webhooks, since it is not the user's mail.

    Inside ``Store.write`` the event row, its counter item and its webhook rows are staged (``conn.staged``)
    and written with the rest of the group commit's (``write_events``, ``write_webhook_rows``) just before its
    COMMIT: exactly as durable as the write that recorded them, and gone with it if it fails. On any other
    connection they are written at once."""
    headers = event.get("message", {}).get("headers", {})
    tags = event.get("tags")
    data, variables = _stored_form(event)
    item = ((event["id"], event["timestamp"], domain, event["event"], event.get("recipient", ""),
             headers.get("message-id", ""), event.get("storage", {}).get("key", ""), event.get("severity", ""),
             data, variables[0] if variables else None),
            None if system else
            (domain, tuple(tags) if tags else (), stat_key(event), int(event["timestamp"] // 3600),
             event.get("recipient-domain") or "", (event.get("envelope") or {}).get("sending-ip") or ""))
    staged = getattr(conn, "staged", None)
    if staged is None:
        write_events(conn, [item])
        if variables:
            write_variables(conn, [variables])
    else:
        staged.pending(_STAGED, write_events).append(item)
        if variables:
            staged.pending(_STAGED_VARIABLES, write_variables).append(variables)
    hook = None if system else webhook_id(event)
    if hook is not None:
        targets = webhook_targets(conn, domain, hook)
        if targets:
            rows = webhook_rows(domain, event["id"], targets, event["timestamp"])
            if staged is None:
                write_webhook_rows(conn, rows)
            else:
                staged.pending(_STAGED_WEBHOOKS, write_webhook_rows).extend(rows)
            on_webhook_work()  # the dispatcher's claim is a later write: it sees these rows
    for observe in observers:
        observe(domain, event)
