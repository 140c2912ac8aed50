"""Event webhooks: their URLs per domain, the signed POSTs, durable retries and redelivery.

Where the work comes from: ``store.events.record`` queues one ``webhook_deliveries`` row per URL of the
domain's webhook for the event, in the event's own transaction. This module POSTs those rows:

- **Formats.** ``json`` (Mailgun's current webhooks): ``{"signature": {"timestamp", "token",
  "signature"}, "event-data": {...}}``; ``legacy`` (the seed manual's form-encoded webhooks):
  ``event`` (``delivered``, ``bounced``, ``dropped``, ...), ``recipient``, ``domain``,
  ``message-headers`` (a JSON list of [name, value], in order, with Mailgun's ``X-Mailgun-Variables``
  header holding the user variables as JSON when there are any), ``Message-Id``, ``tag``,
  ``campaign-id``, each user variable as its own field, ``code``/``error``/``notification`` for
  bounces, ``reason`` (``hardfail`` | ``maxfails``) and ``description`` for drops, ``url`` for clicks,
  ``ip``, ``country``, ``region``, ``city``, ``user-agent``, ``device-type``, ``client-type``, ``client-name``
  and ``client-os`` for opens, clicks and unsubscribes, and
  ``timestamp``/``token``/``signature``. The signature is the hex HMAC-SHA256 of timestamp+token
  under the webhook signing key (``signing.sign_token``).
- **De-duplication.** Every POST carries ``X-Mtad-Event-Id`` (the event's ``id``, also in the JSON)
  and ``X-Mtad-Webhook-Attempt``; a receiver that saw the id may answer 200 and ignore it.
- **Retries.** 2xx completes the row. 406 Not Acceptable stops at once (the application refuses the
  event). A ``delivered`` event is POSTed once and never retried (the seed manual: "Delivered Event
  will only POST once"). Anything else (status, timeout, refused connection) is retried after
  ``webhooks.retry_schedule[n-1]`` (the seed's 3 x 10 minutes then 4 x 30 minutes by default), then
  the row fails: the rule of all HTTP work, ``net.retry``. Rows are durable: a restart resumes where it stopped.
- **Isolation.** POSTs run in ``WebhookLoop``, apart from mail: at most ``max_concurrent`` in flight,
  and at most ``max_per_url`` to any one URL, enforced when rows are claimed, so a slow or dead
  receiver holds a few slots and never delays mail or other receivers. Every POST has a total
  ``timeout``. Its own HTTP client (SSRF-guarded, see httpclient) keeps its own connection pool.
- **Redelivery.** ``WebhookConfigStore.redeliver_webhooks`` queues events again (``mtad webhooks redeliver --since``) for an
  application that was down longer than the retry window; the running daemon picks them up.

Webhooks come from the config file (synced into the ``webhooks`` table at start and on reload,
``source = 'config'``, read-only through the API) and from the API (``source = 'api'``); the store keeps them
(``store.webhooks``), this module vets changes (``check_change``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from typing import Any, Callable
from urllib.parse import urlencode

from mtad.store.events import webhook_id
from mtad.mail import signing
from mtad.config.schema import WEBHOOK_IDS, WebhooksConfig
from mtad.net import retry
from mtad.net.httpclient import HttpClient, HttpResult
from mtad.store.leases import settle_call
from mtad.store.webhooks import WebhookError
from mtad.store.work import WorkItem, WorkOutcome, WorkStore
from mtad.store.workloop import WorkLoop

log = logging.getLogger("mtad.webhooks")

MAX_URLS = 3
FORMATS = ("json", "legacy")


# --- changes of the webhooks table (kept by the store: ``store.webhooks``) --------------------------------------

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
    return "bounced" if reason in ("bounce", "generic", "delayed-bounce") else "dropped"  # late bounces too


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
    if event.get("client-info") or event.get("geolocation"):  # opens, clicks, unsubscribes (the seed's fields)
        info, geo = event.get("client-info") or {}, event.get("geolocation") or {}
        fields += [("ip", str(event.get("ip") or "")), ("country", str(geo.get("country", ""))),
                   ("region", str(geo.get("region", ""))), ("city", str(geo.get("city", ""))),
                   ("user-agent", str(info.get("user-agent", ""))), ("device-type", str(info.get("device-type", ""))),
                   ("client-type", str(info.get("client-type", ""))), ("client-name", str(info.get("client-name", ""))),
                   ("client-os", str(info.get("client-os", "")))]
    reserved = {n for n, _ in fields} | {"timestamp", "token", "signature"}
    for var, value in (event.get("user-variables") or {}).items():
        if var not in reserved:
            fields.append((var, value if isinstance(value, str) else json.dumps(value)))
    timestamp, token, signature = signing.sign_token(key)
    fields += [("timestamp", timestamp), ("token", token), ("signature", signature)]
    return fields


def header_list(block: bytes | None) -> list[list[str]] | None:
    """All header fields of a message's start (``WorkStore.webhook_event``), in order, for ``message-headers``."""
    from mtad.mail import headers as headers_mod
    if block is None:
        return None
    try:
        fields, _ = headers_mod.parse_block(block, 1000, 262144)
    except headers_mod.HeaderError:
        return None
    return [[f.name, headers_mod.decode(f.value)] for f in fields]


def decide(hook: str | None, result: HttpResult, attempt: int, schedule: tuple[float, ...],
           now: float) -> tuple[str, float | None]:
    """(state, next attempt time) after one POST (``net.retry``'s rule): done, failed (no retry) or deferred. A
    ``delivered`` event is POSTed once."""
    return retry.decide(result.status, attempt, schedule, now, retry=hook != "delivered")


# --- dispatch -------------------------------------------------------------------------------------------------

class Dispatcher:
    """POSTs one claimed ``webhook_deliveries`` row and records the outcome."""

    def __init__(self, *, store: WorkStore, http: HttpClient, config: WebhooksConfig, signing_key: str,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.clock = clock
        self.schedule = tuple(d.seconds for d in config.retry_schedule)
        self.counters: Counter[str] = Counter()  # done | retried | failed

    async def _finish(self, outcome: WorkOutcome, what: str) -> None:
        await settle_call(self.store, lambda: self.store.finish_work("webhook_deliveries", [outcome]), what)

    async def handle(self, row: WorkItem) -> None:
        legacy = row.format == "legacy"
        found = await self.store.webhook_event(row.event_id, with_headers=legacy)
        if found is None:  # pruned by retention meanwhile
            await self._finish(WorkOutcome(row.id, "failed", row.attempts, None, None, "event expired", self.clock()),
                               f"webhook {row.id}: outcome")
            self.counters["failed"] += 1
            return
        data = found.data
        event = json.loads(data)
        attempt = row.attempts + 1
        headers = {"X-Mtad-Event-Id": event["id"], "X-Mtad-Webhook-Attempt": str(attempt)}
        if legacy:
            fields = legacy_fields(event, row.domain, self.signing_key, header_list(found.header_block))
            body = urlencode(fields).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json_body(data, self.signing_key)
            headers["Content-Type"] = "application/json"
        result = await self.http.post(row.url, data=body, headers=headers)
        now = self.clock()
        state, retry_at = decide(webhook_id(event), result, attempt, self.schedule, now)
        error = result.error or ("" if state == "done" else f"HTTP {result.status}: {result.body[:200]}")
        await self._finish(WorkOutcome(row.id, state, attempt, retry_at, result.status, error, now),
                           f"webhook {row.id} event {event['id']}: outcome")
        self.counters[{"done": "done", "deferred": "retried"}.get(state, "failed")] += 1
        log.info("webhook %s event=%s id=%s url=%s status=%s -> %s%s", row.domain, event["event"], event["id"],
                 row.url, result.status if result.status is not None else "none", state,
                 f" retry_in={int(retry_at - now)}s" if retry_at else (f" error={error!r}" if error else ""))


    async def send_test(self, domain: str, hook: str, url: str, fmt: str) -> HttpResult:
        """POST a made-up event of webhook ``hook`` to ``url`` once, signed, in ``fmt`` (the web panel's "send
        test"): nothing is recorded or retried. The event's ``flags.is-test-mode`` is true."""
        data = json.dumps(test_event(hook, domain, self.clock()))
        headers = {"X-Mtad-Event-Id": "test", "X-Mtad-Webhook-Attempt": "1"}
        if fmt == "legacy":
            body = urlencode(legacy_fields(json.loads(data), domain, self.signing_key)).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            body = json_body(data, self.signing_key)
            headers["Content-Type"] = "application/json"
        return await self.http.post(url, data=body, headers=headers)


_TEST_EVENTS = {"permanent_fail": ("failed", "permanent"), "temporary_fail": ("failed", "temporary")}


def test_event(hook: str, domain: str, now: float) -> dict[str, Any]:
    """A made-up event of webhook ``hook`` for ``domain`` (``send_test``)."""
    from mtad.events.shape import new_event_id
    kind, severity = _TEST_EVENTS.get(hook, (hook, ""))
    event: dict[str, Any] = {
        "id": new_event_id(), "event": kind, "timestamp": now, "recipient": f"alice@{domain}",
        "recipient-domain": domain, "tags": [], "user-variables": {},
        "message": {"headers": {"message-id": f"webhook-test@{domain}", "from": f"mtad <test@{domain}>",
                                "to": f"alice@{domain}", "subject": "mtad webhook test"}},
        "flags": {"is-test-mode": True}}
    if severity:
        event["severity"] = severity
        event["delivery-status"] = {"code": 550 if severity == "permanent" else 451, "message": "webhook test"}
    return event


class WebhookLoop(WorkLoop):
    """The durable claim loop of ``workloop``, claiming with a per-URL cap (see ``claim_due``)."""

    def __init__(self, *, store: WorkStore, dispatcher: Dispatcher, config: WebhooksConfig,
                 clock: Callable[[], float] = time.time, poll_interval: float = 1.0, node_id: str = ""):
        super().__init__(name="webhooks", store=store, table="webhook_deliveries", handle=dispatcher.handle,
                         max_concurrent=config.max_concurrent, poll_interval=poll_interval, clock=clock,
                         node_id=node_id)
        self.dispatcher = dispatcher
        self.max_per_url = config.max_per_url
        self.per_url: Counter[str] = Counter()

    def wake_threadsafe(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
        """A waker callable from the store's writer thread (``EventBus.on_webhook_work``)."""
        def wake() -> None:
            if not self._wake.is_set():
                loop.call_soon_threadsafe(self._wake.set)
        return wake

    async def claim(self, now: float, room: int) -> list[WorkItem]:
        return await self.store.claim_webhook_work(self.worker, now, room, self.per_url, self.max_per_url,
                                                   lease_until=self.leases.until(now), skip=self.leases.held)

    def started(self, row: WorkItem) -> None:
        self.per_url[row.url] += 1

    def finished(self, row: WorkItem) -> None:
        self.per_url[row.url] -= 1
        if self.per_url[row.url] <= 0:
            del self.per_url[row.url]
