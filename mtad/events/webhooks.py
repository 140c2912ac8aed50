"""Event webhooks: their URLs per domain, the signed POSTs, durable retries and redelivery.

Where the work comes from: ``events.record`` queues one ``webhook_deliveries`` row per URL of the
domain's webhook for the event, in the event's own transaction. This module POSTs those rows:

- **Formats.** ``json`` (Mailgun's current webhooks): ``{"signature": {"timestamp", "token",
  "signature"}, "event-data": {...}}``; ``legacy`` (the seed manual's form-encoded webhooks):
  ``event`` (``delivered``, ``bounced``, ``dropped``, ...), ``recipient``, ``domain``,
  ``message-headers`` (a JSON list of [name, value], in order, with Mailgun's ``X-Mailgun-Variables``
  header holding the user variables as JSON when there are any), ``Message-Id``, ``tag``,
  ``campaign-id``, each user variable as its own field, ``code``/``error``/``notification`` for
  bounces, ``reason`` (``hardfail`` | ``maxfails``) and ``description`` for drops, and
  ``timestamp``/``token``/``signature``. The signature is the hex HMAC-SHA256 of timestamp+token
  under the webhook signing key (``signing.sign_token``).
- **De-duplication.** Every POST carries ``X-Mtad-Event-Id`` (the event's ``id``, also in the JSON)
  and ``X-Mtad-Webhook-Attempt``; a receiver that saw the id may answer 200 and ignore it.
- **Retries.** 2xx completes the row. 406 Not Acceptable stops at once (the application refuses the
  event). A ``delivered`` event is POSTed once and never retried (the seed manual: "Delivered Event
  will only POST once"). Anything else (status, timeout, refused connection) is retried after
  ``webhooks.retry_schedule[n-1]`` (the seed's 3 x 10 minutes then 4 x 30 minutes by default), then
  the row fails. Rows are durable: a restart resumes where it stopped.
- **Isolation.** POSTs run in ``WebhookLoop``, apart from mail: at most ``max_concurrent`` in flight,
  and at most ``max_per_url`` to any one URL, enforced when rows are claimed, so a slow or dead
  receiver holds a few slots and never delays mail or other receivers. Every POST has a total
  ``timeout``. Its own HTTP client (SSRF-guarded, see httpclient) keeps its own connection pool.
- **Redelivery.** ``redeliver`` queues events again (``mtad webhooks redeliver --since``) for an
  application that was down longer than the retry window; the running daemon picks them up.

Webhooks come from the config file (synced into the ``webhooks`` table at start and on reload,
``source = 'config'``, read-only through the API) and from the API (``source = 'api'``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, Callable, Container, Iterable
from urllib.parse import urlencode

from mtad.events import record as events
from mtad.mail import signing
from mtad.store import queue as spool
from mtad.config.schema import WEBHOOK_IDS, WebhooksConfig
from mtad.net.httpclient import HttpClient, HttpResult
from mtad.store.leases import settle
from mtad.store.engine import Store
from mtad.store.workloop import WorkLoop

log = logging.getLogger("mtad.webhooks")

MAX_URLS = 3
FORMATS = ("json", "legacy")


# --- the webhooks table -------------------------------------------------------------------------------------

def sync_config(conn, cfg: WebhooksConfig, now: float) -> int:
    """Make the table's config-file rows equal to ``cfg`` (API rows are kept). Returns the URL count."""
    conn.execute("DELETE FROM webhooks WHERE source = 'config'")
    rows = [(domain.lower(), hook, url, wh.format, now)
            for domain, hooks in cfg.domains.items() for hook, wh in hooks.items() for url in wh.urls]
    conn.executemany("INSERT INTO webhooks (domain, hook, url, format, source, created_at) VALUES (?, ?, ?, ?,"
                     " 'config', ?) ON CONFLICT (domain, hook, url) DO UPDATE SET format = excluded.format,"
                     " source = 'config'", rows)
    events.invalidate_webhooks()
    return len(rows)


def list_webhooks(conn, domain: str) -> dict[str, dict[str, Any]]:
    """hook id -> {"urls": [...], "format": ..., "source": ...} for one domain (Mailgun's shape plus two keys)."""
    hooks: dict[str, dict[str, Any]] = {}
    for hook, url, fmt, source in conn.execute(
            "SELECT hook, url, format, source FROM webhooks WHERE domain = ? ORDER BY created_at, url", (domain,)):
        entry = hooks.setdefault(hook, {"urls": [], "format": fmt, "source": source})
        entry["urls"].append(url)
        if source == "config":
            entry["source"] = "config"
    return hooks


class WebhookError(ValueError):
    """A refused change; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_change(hook: str, urls: list[str], fmt: str, allowed_networks: tuple[str, ...] = ()) -> None:
    """WebhookError (400) unless the change may be made; URLs as ``httpclient.url_refusal`` takes them."""
    from mtad.net.httpclient import url_refusal
    if hook not in WEBHOOK_IDS:
        raise WebhookError(400, f"Unknown webhook id '{hook}' (known: {', '.join(WEBHOOK_IDS)})")
    if not urls:
        raise WebhookError(400, "url is required")
    if len(urls) > MAX_URLS:
        raise WebhookError(400, f"A webhook takes at most {MAX_URLS} URLs")
    for url in urls:
        problem = url_refusal(url, allowed_networks)
        if problem:
            raise WebhookError(400, f"Invalid url '{url}': {problem}")
    if fmt not in FORMATS:
        raise WebhookError(400, f"format must be one of {', '.join(FORMATS)}")


def put_webhook(conn, domain: str, hook: str, urls: list[str], fmt: str, now: float, *, create: bool) -> None:
    """Create (``create``) or replace the API-managed URLs of one webhook."""
    existing = list_webhooks(conn, domain).get(hook)
    if existing and existing["source"] == "config":
        raise WebhookError(400, f"Webhook '{hook}' is set in the configuration file and is read-only here")
    if create and existing:
        raise WebhookError(400, f"Webhook '{hook}' already exists")
    if not create and not existing:
        raise WebhookError(404, "Webhook not found")
    conn.execute("DELETE FROM webhooks WHERE domain = ? AND hook = ?", (domain, hook))
    conn.executemany("INSERT INTO webhooks (domain, hook, url, format, source, created_at) VALUES (?, ?, ?, ?, 'api', ?)",
                     [(domain, hook, url, fmt, now) for url in dict.fromkeys(urls)])
    events.invalidate_webhooks()


def delete_webhook(conn, domain: str, hook: str) -> dict[str, Any]:
    existing = list_webhooks(conn, domain).get(hook)
    if not existing:
        raise WebhookError(404, "Webhook not found")
    if existing["source"] == "config":
        raise WebhookError(400, f"Webhook '{hook}' is set in the configuration file and is read-only here")
    conn.execute("DELETE FROM webhooks WHERE domain = ? AND hook = ?", (domain, hook))
    events.invalidate_webhooks()
    return existing


def put_url(conn, domain: str, url: str, *, add: Iterable[str], remove: Iterable[str], now: float,
            allowed_networks: tuple[str, ...] = ()) -> None:
    """Mailgun's v4 webhooks (one URL, several event types): put ``url`` on the webhooks ``add`` (created as
    ``json`` when absent) and take it off ``remove`` (a webhook left without URLs is deleted), all or nothing
    (the caller's transaction). Config-file webhooks are read-only."""
    hooks = list_webhooks(conn, domain)
    for hook in dict.fromkeys(add):
        existing = hooks.get(hook)
        if existing is None:
            check_change(hook, [url], "json", allowed_networks)
            put_webhook(conn, domain, hook, [url], "json", now, create=True)
        elif url not in existing["urls"]:
            check_change(hook, existing["urls"] + [url], existing["format"], allowed_networks)
            put_webhook(conn, domain, hook, existing["urls"] + [url], existing["format"], now, create=False)
    for hook in dict.fromkeys(remove):
        existing = hooks.get(hook)
        if existing is None or url not in existing["urls"]:
            continue
        rest = [u for u in existing["urls"] if u != url]
        if rest:
            put_webhook(conn, domain, hook, rest, existing["format"], now, create=False)
        else:
            delete_webhook(conn, domain, hook)


# --- payloads -----------------------------------------------------------------------------------------------

def json_body(event_json: str, key: str) -> bytes:
    """The JSON webhook body, built around the stored event text (no decode and re-encode)."""
    timestamp, token, signature = signing.sign_token(key)
    sig = json.dumps({"timestamp": timestamp, "token": token, "signature": signature})
    return f'{{"signature": {sig}, "event-data": {event_json}}}'.encode()


def legacy_event_name(event: dict[str, Any]) -> str:
    kind = event["event"]
    if kind != "failed":
        return kind
    if event.get("severity") == "temporary":
        return "failed"
    reason = event.get("reason") or "bounce"
    return "bounced" if reason in ("bounce", "generic") else "dropped"


def legacy_fields(event: dict[str, Any], domain: str, key: str,
                  header_list: list[list[str]] | None = None) -> list[tuple[str, str]]:
    """The seed manual's form fields for one event, signed."""
    headers = event.get("message", {}).get("headers", {})
    if header_list is None:
        header_list = [[name, headers[k]] for name, k in (("Message-Id", "message-id"), ("From", "from"),
                                                          ("To", "to"), ("Subject", "subject")) if headers.get(k)]
    variables = event.get("user-variables") or {}
    if variables and not any(str(n).lower() == "x-mailgun-variables" for n, _ in header_list):
        # Mailgun's message headers carry the variables (django-anymail reads them from there only)
        header_list = [*header_list, ["X-Mailgun-Variables", json.dumps(variables)]]
    name = legacy_event_name(event)
    fields: list[tuple[str, str]] = [("event", name), ("recipient", event.get("recipient", "")), ("domain", domain),
                                     ("message-headers", json.dumps(header_list))]
    if headers.get("message-id"):
        fields.append(("Message-Id", f"<{headers['message-id']}>"))
    for tag in event.get("tags") or ():
        fields.append(("tag", tag))
    for campaign in event.get("campaigns") or ():
        fields.append(("campaign-id", str(campaign.get("id", ""))))
    status = event.get("delivery-status") or {}
    if name == "bounced":
        fields += [("code", str(status.get("enhanced-code") or status.get("code") or "")),
                   ("error", str(status.get("message") or "")), ("notification", str(status.get("description") or ""))]
    elif name == "dropped":
        fields += [("reason", "maxfails" if event.get("reason") == "old" else "hardfail"),
                   ("code", str(status.get("code") or "")),
                   ("description", str(status.get("description") or status.get("message") or ""))]
    elif name == "failed":
        fields += [("severity", "temporary"), ("code", str(status.get("code") or "")),
                   ("error", str(status.get("message") or ""))]
    if event.get("url"):
        fields.append(("url", str(event["url"])))
    reserved = {n for n, _ in fields} | {"timestamp", "token", "signature"}
    for var, value in (event.get("user-variables") or {}).items():
        if var not in reserved:
            fields.append((var, value if isinstance(value, str) else json.dumps(value)))
    timestamp, token, signature = signing.sign_token(key)
    fields += [("timestamp", timestamp), ("token", token), ("signature", signature)]
    return fields


def stored_header_list(conn, queue_id: str) -> list[list[str]] | None:
    """All header fields of a still-stored message, in order, for ``message-headers``."""
    from mtad.mail import headers as headers_mod
    row = conn.execute("SELECT substr(body, 1, 262144) FROM messages WHERE id = ?", (queue_id,)).fetchone()
    if row is None:
        return None
    try:
        fields, _ = headers_mod.parse_block(bytes(row[0]), 1000, 262144)
    except headers_mod.HeaderError:
        return None
    return [[f.name, headers_mod.decode(f.value)] for f in fields]


# --- claiming and finishing rows ------------------------------------------------------------------------------

def claim_due(conn, worker: str, now: float, limit: int, busy: dict[str, int], max_per_url: int,
              scan: int = 5000, *, lease_until: float | None = None, skip: Container[int] = ()) -> list[dict[str, Any]]:
    """Lock up to ``limit`` due rows until ``lease_until``, oldest due first, so that no URL has more than
    ``max_per_url`` in flight (``busy``: URL -> POSTs in flight now). URLs at their cap are left out of the scan
    itself, so a dead receiver's backlog never hides other receivers' rows. Free rows and rows whose lease ran out
    are taken, except ``skip`` (the rows ``worker`` holds), as ``spool.claim_due_work`` does."""
    full = [url for url, n in busy.items() if n >= max_per_url]
    exclude = f" AND url NOT IN ({','.join('?' * len(full))})" if full else ""
    taken: list[int] = []
    room: dict[str, int] = {}
    for row_id, url in conn.execute(
            "SELECT id, url FROM webhook_deliveries WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?"
            f" AND {spool.CLAIMABLE}{exclude} ORDER BY next_attempt_at LIMIT ?", (now, now, *full, scan)):
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
                 (worker, now, now + spool.DEFAULT_LEASE if lease_until is None else lease_until, *taken))
    cur = conn.execute(f"SELECT * FROM webhook_deliveries WHERE id IN ({marks}) ORDER BY next_attempt_at", taken)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def finish(conn, row_id: int, *, state: str, attempts: int, next_attempt_at: float | None, status: int | None,
           error: str, now: float) -> None:
    conn.execute("UPDATE webhook_deliveries SET state = ?, attempts = ?, next_attempt_at = COALESCE(?, next_attempt_at),"
                 f" {spool.UNLOCK}, last_status = ?, last_error = ?, updated_at = ? WHERE id = ?",
                 (state, attempts, next_attempt_at, status, error[:1000], now, row_id))


def decide(hook: str | None, result: HttpResult, attempt: int, schedule: tuple[float, ...],
           now: float) -> tuple[str, float | None]:
    """(state, next attempt time) after one POST: done, failed (no retry) or deferred."""
    if result.status is not None and 200 <= result.status < 300:
        return "done", None
    if result.status == 406 or hook == "delivered" or attempt > len(schedule):
        return "failed", None
    return "deferred", now + schedule[attempt - 1]


# --- dispatch -------------------------------------------------------------------------------------------------

class Dispatcher:
    """POSTs one claimed ``webhook_deliveries`` row and records the outcome."""

    def __init__(self, *, store: Store, http: HttpClient, config: WebhooksConfig, signing_key: str,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.clock = clock
        self.schedule = tuple(d.seconds for d in config.retry_schedule)
        self.counters: Counter[str] = Counter()  # done | retried | failed

    async def handle(self, row: dict[str, Any]) -> None:
        found = await self.store.read(lambda c: _load_event(c, row["event_id"], row["format"] == "legacy"))
        if found is None:  # pruned by retention meanwhile
            now = self.clock()
            await settle(self.store, lambda c: finish(c, row["id"], state="failed", attempts=row["attempts"],
                                                      next_attempt_at=None, status=None, error="event expired",
                                                      now=now), f"webhook {row['id']}: outcome")
            self.counters["failed"] += 1
            return
        data, event, header_list = found
        attempt = row["attempts"] + 1
        headers = {"X-Mtad-Event-Id": event["id"], "X-Mtad-Webhook-Attempt": str(attempt)}
        if row["format"] == "legacy":
            body = urlencode(legacy_fields(event, row["domain"], self.signing_key, header_list)).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json_body(data, self.signing_key)
            headers["Content-Type"] = "application/json"
        result = await self.http.post(row["url"], data=body, headers=headers)
        now = self.clock()
        state, retry_at = decide(events.webhook_id(event), result, attempt, self.schedule, now)
        error = result.error or ("" if state == "done" else f"HTTP {result.status}: {result.body[:200]}")
        await settle(self.store, lambda c: finish(c, row["id"], state=state, attempts=attempt,
                                                  next_attempt_at=retry_at, status=result.status, error=error,
                                                  now=now), f"webhook {row['id']} event {event['id']}: outcome")
        self.counters[{"done": "done", "deferred": "retried"}.get(state, "failed")] += 1
        log.info("webhook %s event=%s id=%s url=%s status=%s -> %s%s", row["domain"], event["event"], event["id"],
                 row["url"], result.status if result.status is not None else "none", state,
                 f" retry_in={int(retry_at - now)}s" if retry_at else (f" error={error!r}" if error else ""))


def _load_event(conn, event_id: str, legacy: bool):
    row = conn.execute(f"SELECT {events.EVENT_DATA}, queue_id FROM events WHERE id = ?", (event_id,)).fetchone()
    if row is None:
        return None
    data = row[0]
    event = json.loads(data)
    header_list = stored_header_list(conn, row[1]) if legacy and row[1] else None
    return data, event, header_list


class WebhookLoop(WorkLoop):
    """The durable claim loop of ``workloop``, claiming with a per-URL cap (see ``claim_due``)."""

    def __init__(self, *, store: Store, dispatcher: Dispatcher, config: WebhooksConfig,
                 clock: Callable[[], float] = time.time, poll_interval: float = 1.0):
        super().__init__(name="webhooks", store=store, table="webhook_deliveries", handle=dispatcher.handle,
                         max_concurrent=config.max_concurrent, poll_interval=poll_interval, clock=clock)
        self.dispatcher = dispatcher
        self.max_per_url = config.max_per_url
        self.per_url: Counter[str] = Counter()

    def wake_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """A waker callable from the store's writer thread (``events.on_webhook_work``)."""
        def wake() -> None:
            if not self._wake.is_set():
                loop.call_soon_threadsafe(self._wake.set)
        return wake

    async def claim(self, now: float, room: int) -> list[dict[str, Any]]:
        busy, until, held = dict(self.per_url), self.leases.until(now), self.leases.held
        return await self.store.write(lambda c: claim_due(c, self.worker, now, room, busy, self.max_per_url,
                                                          lease_until=until, skip=held))

    def started(self, row: dict[str, Any]) -> None:
        self.per_url[row["url"]] += 1

    def finished(self, row: dict[str, Any]) -> None:
        self.per_url[row["url"]] -= 1
        if self.per_url[row["url"]] <= 0:
            del self.per_url[row["url"]]


# --- redelivery -----------------------------------------------------------------------------------------------

def redeliver(conn, *, since: float, until: float | None = None, kinds: Iterable[str] = (),
              domain: str | None = None, url: str | None = None, now: float | None = None) -> int:
    """Queue the events of ``[since, until]`` again for the current webhooks (optionally one event kind,
    domain or URL). Returns the number of POSTs queued. Events get new rows, so each is POSTed again once."""
    now = time.time() if now is None else now
    kinds = list(kinds)
    where, params = ["timestamp >= ?"], [since]
    if until is not None:
        where.append("timestamp <= ?")
        params.append(until)
    if kinds:
        where.append(f"event IN ({','.join('?' * len(kinds))})")
        params += kinds
    if domain:
        where.append("domain = ?")
        params.append(domain.lower())
    hooks: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for d, h, u, fmt in conn.execute("SELECT domain, hook, url, format FROM webhooks"):
        if url is None or u == url:
            hooks.setdefault((d, h), []).append((u, fmt))
    queued = 0
    for event_id, d, kind, severity in conn.execute(
            f"SELECT id, domain, event, severity FROM events WHERE {' AND '.join(where)} ORDER BY timestamp, seq",
            params).fetchall():
        hook = events.webhook_id({"event": kind, "severity": severity or "permanent"})
        targets = hooks.get((d, hook or ""))
        if targets:
            queued += events.add_webhook_work(conn, d, event_id, targets, now)
    return queued

