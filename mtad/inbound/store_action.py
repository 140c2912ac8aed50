"""The route action ``store(notify="URL")``: keep an inbound message, tell the application, serve it back.

Ingress turns a matching ``store()`` into a ``forwards`` row with action ``store`` (destination: the
notify URL, or empty). ``StoreAction.handle`` (run by a WorkLoop over those rows):
1. the first time, marks the message stored until ``now + routing.store_retention`` (3 days by
   default) and records a ``stored`` event carrying ``storage.key`` and ``storage.url``;
2. without a notify URL the row is done; with one, POSTs the parsed message (without attachment
   bodies, which are listed with their URLs) plus ``message-url``, signed like route POSTs. 2xx is
   done, 406 fails at once, anything else is retried on ``routing.retry_schedule``.
The storage key is the message's queue id; the message stays in ``messages`` (``stored_until``, kept by
``store.stored``). ``expire_loop`` forgets stored messages past their time and deletes those kept only for storage.
2xx/406/schedule is the rule of all HTTP work, ``net.retry``.
``parsed(message, ...)`` and ``raw(message, ...)`` are the two JSON shapes ``GET`` answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Callable, Protocol

import aiohttp

from mtad.events import shape
from mtad.mail import signing
from mtad.config.schema import RoutingConfig
from mtad.net import retry
from mtad.net.httpclient import HttpClient, HttpResult
from mtad.store.leases import settle_call
from mtad.store.stored import StoredMessageStore
from mtad.store.events import NewEvent
from mtad.store.queue import QueuedMessage
from mtad.store.work import WorkItem, WorkOutcome, WorkStore

log = logging.getLogger("mtad.storedmsg")


def message_url(base_url: str, domain: str, key: str) -> str:
    return f"{base_url.rstrip('/')}/v3/domains/{domain}/messages/{key}"


# --- the JSON shapes -------------------------------------------------------------------------------

def _recipients(message: QueuedMessage) -> str:
    return ", ".join(message.recipients)


def parsed(message: QueuedMessage, url: str) -> dict[str, Any]:
    """Mailgun's stored-message JSON: the parsed route fields, attachments as URLs."""
    from mtad.inbound.form import parse as inbound_parse
    post = inbound_parse.parsed_fields(message.body, _recipients(message), message.sender)
    result: dict[str, Any] = {}
    for name, value in post.fields:
        result.setdefault(name, value)
    for name in ("message-headers", "content-id-map"):
        if isinstance(result.get(name), str):
            try:
                result[name] = json.loads(result[name])
            except ValueError:
                pass
    attachments = [{"url": f"{url}/attachments/{n}", "content-type": a.content_type or "application/octet-stream",
                    "name": a.filename or a.field_name, "size": len(a.data)}
                   for n, a in enumerate(post.attachments, 1)]
    if isinstance(result.get("content-id-map"), dict):
        result["content-id-map"] = {cid: _attachment_url(url, field) for cid, field in result["content-id-map"].items()}
    result.pop("attachment-count", None)
    result.update({"recipients": _recipients(message), "sender": message.sender, "attachments": attachments,
                   "message-url": url})
    return result


def _attachment_url(url: str, field: str) -> str:
    number = field.rpartition("-")[2]
    return f"{url}/attachments/{number}" if number.isdigit() else field


def raw(message: QueuedMessage, url: str) -> dict[str, Any]:
    """The ``Accept: message/rfc2822`` shape: the whole message in ``body-mime``."""
    summary = message.headers
    return {"recipients": _recipients(message), "sender": message.sender, "from": summary.get("from", ""),
            "subject": summary.get("subject", ""), "Message-Id": summary.get("message-id", ""),
            "body-mime": message.body.decode("utf-8", "replace"), "message-url": url}


def attachment(message: QueuedMessage, number: int):
    """The ``number``-th (1-based) attachment of a stored message, or None."""
    from mtad.inbound.form import parse as inbound_parse
    post = inbound_parse.parsed_fields(message.body, _recipients(message), message.sender)
    if not 1 <= number <= len(post.attachments):
        return None
    return post.attachments[number - 1]


def notify_form(message: QueuedMessage, recipient: str, url: str, domain: str, key: str) -> aiohttp.FormData:
    fields = parsed(message, url)
    form = aiohttp.FormData(quote_fields=False, charset="utf-8")
    for name, value in fields.items():
        if name in ("recipients", "recipient", "domain"):
            continue  # written once below, for this row's recipient
        form.add_field(name, value if isinstance(value, str) else json.dumps(value))
    form.add_field("recipient", recipient)
    form.add_field("domain", domain)
    timestamp, token, signature = signing.sign_token(key)
    form.add_field("timestamp", timestamp)
    form.add_field("token", token)
    form.add_field("signature", signature)
    return form


# --- the work loop's handler -----------------------------------------------------------------------

class _Store(WorkStore, StoredMessageStore, Protocol):
    """What the store() action needs of the store."""


class StoreAction:
    """Handles claimed ``forwards`` rows with action ``store``."""

    def __init__(self, *, store: _Store, http: HttpClient, config: RoutingConfig, signing_key: str,
                 base_url: str, clock: Callable[[], float] = time.time):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.base_url = base_url
        self.clock = clock
        self.counters = {"stored": 0, "notified": 0, "retried": 0, "failed": 0}

    async def handle(self, row: WorkItem) -> None:
        message = (await self.store.work_messages([row.message])).get(row.message)
        now = self.clock()
        if message is None:
            await self._finish(WorkOutcome(row.id, "failed", row.attempts, None, None, "message deleted", now))
            return
        url = message_url(self.base_url, message.domain, message.id)
        notify = row.destination
        if row.attempts == 0:
            until = now + self.config.store_retention.seconds
            done = None if notify else WorkOutcome(row.id, "done", 1, None, None, "", now)
            await self.store.keep_message(message.id, until, self._stored_event(row, message, url, now), done)
            self.counters["stored"] += 1
            log.info("%s: stored for <%s> until %s%s", message.id, row.recipient,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until)), f" notify={notify}" if notify else "")
            if not notify:
                return
        form = await asyncio.to_thread(notify_form, message, row.recipient, url, message.domain, self.signing_key)
        result = await self.http.post(notify, data=form)
        await self._record(row, message, result)

    def _stored_event(self, row: WorkItem, message: QueuedMessage, url: str, now: float) -> NewEvent:
        return NewEvent(message.domain, shape.base_event(
            "stored", timestamp=now, recipient=row.recipient, queue_id=message.id,
            message=shape.message_part(message.headers, message.size, message.attachments),
            options=message.options,
            envelope={"sender": message.sender, "targets": row.recipient, "transport": "smtp"},
            flags={"is-routed": True, "is-authenticated": False, "is-test-mode": False},
            extra=shape.with_authentication({"storage": {"key": message.id, "url": url}, "route": {"id": row.route_id}},
                                            message.envelope.get("verdicts"))))

    async def _record(self, row: WorkItem, message: QueuedMessage, result: HttpResult) -> None:
        now = self.clock()
        attempt = row.attempts + 1
        state, retry_at = retry.decide(result.status, attempt, [d.seconds for d in self.config.retry_schedule], now)
        ok = state == "done"
        error = "" if ok else (result.error or result.body[:200])
        await self._finish(WorkOutcome(row.id, state, attempt, retry_at, result.status, error, now))
        self.counters["notified" if ok else ("retried" if retry_at else "failed")] += 1
        log.info("%s: store notify url=%s status=%s%s", message.id, row.destination,
                 result.status if result.status is not None else "none",
                 "" if ok else f" error={error!r}" + (f" retry_in={int(retry_at - now)}s" if retry_at else ""))

    async def _finish(self, outcome: WorkOutcome) -> None:
        await settle_call(self.store, lambda: self.store.finish_work("forwards", [outcome]),
                          f"store action {outcome.id}: outcome")

    async def expire_loop(self, interval: float = 600.0) -> None:
        """Forget stored messages past their time, every ``interval`` seconds."""
        while True:
            try:
                while await self.store.expire_stored(self.clock()) >= 1000:
                    await asyncio.sleep(0)
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("could not expire stored messages")
            await asyncio.sleep(interval)
