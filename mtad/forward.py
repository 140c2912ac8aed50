"""Route forwards to URLs: signed HTTP POSTs in Mailgun's formats, retried durably.

A URL ending in ``mime`` gets the raw format (``body-mime``); any other URL the parsed format
(fields, attachments as file uploads). Both carry ``timestamp``, ``token`` and ``signature``. A 2xx
completes the forward; 406 Not Acceptable means the application refuses it, so it is not retried;
anything else (status, timeout, refused connection) is retried on ``routing.retry_schedule``, then
fails. Every attempt leaves an event on the receiving domain: ``delivered`` or ``failed``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiohttp

from mtad import events, inbound_parse, signing, spool
from mtad.config import RoutingConfig
from mtad.httpclient import HttpClient, HttpResult
from mtad.store import Store

log = logging.getLogger("mtad.forward")


def build_form(message: dict[str, Any], recipient: str, url: str, key: str, max_depth: int = 20) -> aiohttp.FormData:
    """The multipart body of a route POST (parsed or raw MIME), signed."""
    raw = message["body"]
    if url.rstrip("/").lower().endswith("mime"):
        post = inbound_parse.raw_fields(raw, recipient, message["sender"])
    else:
        post = inbound_parse.parsed_fields(raw, recipient, message["sender"], max_depth=max_depth)
    form = aiohttp.FormData(quote_fields=False, charset="utf-8")
    for name, value in post.fields:
        form.add_field(name, value)
    for att in post.attachments:
        form.add_field(att.field_name, att.data, filename=att.filename or att.field_name,
                       content_type=att.content_type or "application/octet-stream")
    timestamp, token, signature = signing.sign_token(key)
    form.add_field("timestamp", timestamp)
    form.add_field("token", token)
    form.add_field("signature", signature)
    return form


class Forwarder:
    """Handles claimed ``forwards`` rows with action ``http``."""

    def __init__(self, *, store: Store, http: HttpClient, config: RoutingConfig, signing_key: str,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.clock = clock
        self.counters = {"delivered": 0, "retried": 0, "failed": 0}

    async def handle(self, row: dict[str, Any]) -> None:
        message = await self.store.read(lambda c: spool.message_row(c, row["message"]))
        if message is None:  # deleted meanwhile
            await self.store.write(lambda c: spool.finish_work(
                c, "forwards", row["id"], state="failed", attempts=row["attempts"], next_attempt_at=None,
                status=None, error="message deleted", now=self.clock()))
            return
        form = await asyncio.to_thread(build_form, message, row["recipient"], row["destination"], self.signing_key)
        started = time.monotonic()
        result = await self.http.post(row["destination"], data=form)
        await self._record(row, message, result, time.monotonic() - started)

    async def _record(self, row: dict[str, Any], message: dict[str, Any], result: HttpResult, seconds: float) -> None:
        now = self.clock()
        attempt = row["attempts"] + 1
        ok = result.status is not None and 200 <= result.status < 300
        schedule = self.config.retry_schedule
        if ok:
            state, retry_at, kind, severity = "done", None, "delivered", ""
        elif result.status == 406 or attempt > len(schedule):
            state, retry_at, kind, severity = "failed", None, "failed", "permanent"
        else:
            state, retry_at, kind, severity = "deferred", now + schedule[attempt - 1].seconds, "failed", "temporary"
        error = result.error or (result.body[:200] if not ok else "")
        status = {"code": result.status or 0, "message": error if not ok else "OK", "attempt-no": attempt,
                  "session-seconds": round(seconds, 3), "url": row["destination"]}
        if retry_at:
            status["retry-seconds"] = int(retry_at - now)
        extra: dict[str, Any] = {"delivery-status": status, "method": "http", "route": {"id": row["route_id"]}}
        if kind == "failed":
            extra["severity"] = severity
            extra["reason"] = "rejected" if result.status == 406 else ("generic" if severity == "temporary" else "old")
        event = events.base_event(
            kind, timestamp=now, recipient=row["recipient"], queue_id=message["id"],
            message=events.message_part(message["headers"], message["size"]), options=message["options"],
            envelope={"sender": message["sender"], "targets": row["destination"], "transport": "http"},
            flags={"is-routed": True, "is-authenticated": False, "is-test-mode": False}, extra=extra)

        def apply(conn):
            spool.finish_work(conn, "forwards", row["id"], state=state, attempts=attempt, next_attempt_at=retry_at,
                              status=result.status, error=error, now=now)
            events.record(conn, message["domain"], event)
        await self.store.write(apply)
        self.counters["delivered" if ok else ("retried" if retry_at else "failed")] += 1
        log.info("%s: forward to=<%s> url=%s status=%s%s", message["id"], row["recipient"], row["destination"],
                 result.status if result.status is not None else "none",
                 f" error={error!r}" if error and not ok else "" + (f" retry_in={int(retry_at - now)}s" if retry_at else ""))
