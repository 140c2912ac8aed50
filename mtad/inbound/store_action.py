"""The route action ``store(notify="URL")``: keep an inbound message, tell the application, serve it back.

Ingress turns a matching ``store()`` into a ``forwards`` row with action ``store`` (destination: the
notify URL, or empty). ``StoreAction.handle`` (run by a WorkLoop over those rows):
1. the first time, marks the message stored until ``now + routing.store_retention`` (3 days by
   default) and records a ``stored`` event carrying ``storage.key`` and ``storage.url``;
2. without a notify URL the row is done; with one, POSTs the parsed message (without attachment
   bodies, which are listed with their URLs) plus ``message-url``, signed like route POSTs. 2xx is
   done, 406 fails at once, anything else is retried on ``routing.retry_schedule``.
The storage key is the message's queue id; the message stays in ``messages`` (``stored_until``).
``expire`` forgets stored messages past their time and deletes those kept only for storage.
``parsed(message, ...)`` and ``raw(message, ...)`` are the two JSON shapes ``GET`` answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from typing import Any, Callable

import aiohttp

from mtad.events import record as events
from mtad.mail import signing
from mtad.store import queue as spool
from mtad.config.schema import RoutingConfig
from mtad.net.httpclient import HttpClient, HttpResult
from mtad.store.leases import settle
from mtad.store.engine import Store

log = logging.getLogger("mtad.storedmsg")


def message_url(base_url: str, domain: str, key: str) -> str:
    return f"{base_url.rstrip('/')}/v3/domains/{domain}/messages/{key}"


# --- the store's side ------------------------------------------------------------------------------

def mark_stored(conn: sqlite3.Connection, queue_id: str, until: float) -> None:
    conn.execute("UPDATE messages SET stored_until = MAX(COALESCE(stored_until, 0), ?) WHERE id = ?",
                 (until, queue_id))


def stored_message(conn: sqlite3.Connection, key: str, domain: str, now: float) -> dict[str, Any] | None:
    """The message under storage key ``key`` of ``domain``, if still kept."""
    row = conn.execute("SELECT domain, stored_until FROM messages WHERE id = ?", (key,)).fetchone()
    if row is None or row[1] is None or row[1] < now or row[0].lower() != domain.lower():
        return None
    return spool.message_row(conn, key)


def _pending_work(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute(
        "SELECT 1 FROM deliveries WHERE message = ? AND state IN ('queued', 'deferred', 'held')"
        " UNION ALL SELECT 1 FROM forwards WHERE message = ? AND state IN ('queued', 'deferred') LIMIT 1",
        (queue_id, queue_id)).fetchone() is not None


def forget(conn: sqlite3.Connection, queue_id: str) -> None:
    """No longer stored; an inbound message with no work left is deleted."""
    conn.execute("UPDATE messages SET stored_until = NULL WHERE id = ?", (queue_id,))
    if not _pending_work(conn, queue_id):
        conn.execute("DELETE FROM messages WHERE id = ? AND direction = 'inbound'", (queue_id,))


def expire(conn: sqlite3.Connection, now: float, limit: int = 1000) -> int:
    ids = [r[0] for r in conn.execute("SELECT id FROM messages WHERE stored_until IS NOT NULL AND stored_until < ?"
                                      " LIMIT ?", (now, limit))]
    for queue_id in ids:
        forget(conn, queue_id)
    return len(ids)


# --- the JSON shapes -------------------------------------------------------------------------------

def _recipients(message: dict[str, Any]) -> str:
    return ", ".join(message["recipients"])


def parsed(message: dict[str, Any], url: str) -> dict[str, Any]:
    """Mailgun's stored-message JSON: the parsed route fields, attachments as URLs."""
    from mtad.inbound.form import parse as inbound_parse
    post = inbound_parse.parsed_fields(message["body"], _recipients(message), message["sender"])
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
    result.update({"recipients": _recipients(message), "sender": message["sender"], "attachments": attachments,
                   "message-url": url})
    return result


def _attachment_url(url: str, field: str) -> str:
    number = field.rpartition("-")[2]
    return f"{url}/attachments/{number}" if number.isdigit() else field


def raw(message: dict[str, Any], url: str) -> dict[str, Any]:
    """The ``Accept: message/rfc2822`` shape: the whole message in ``body-mime``."""
    summary = message["headers"]
    return {"recipients": _recipients(message), "sender": message["sender"], "from": summary.get("from", ""),
            "subject": summary.get("subject", ""), "Message-Id": summary.get("message-id", ""),
            "body-mime": message["body"].decode("utf-8", "replace"), "message-url": url}


def attachment(message: dict[str, Any], number: int):
    """The ``number``-th (1-based) attachment of a stored message, or None."""
    from mtad.inbound.form import parse as inbound_parse
    post = inbound_parse.parsed_fields(message["body"], _recipients(message), message["sender"])
    if not 1 <= number <= len(post.attachments):
        return None
    return post.attachments[number - 1]


def notify_form(message: dict[str, Any], recipient: str, url: str, domain: str, key: str) -> aiohttp.FormData:
    fields = parsed(message, url)
    form = aiohttp.FormData(quote_fields=False, charset="utf-8")
    for name, value in fields.items():
        if name in ("recipients",):
            continue
        form.add_field(name, value if isinstance(value, str) else json.dumps(value))
    form.add_field("recipient", recipient)
    form.add_field("domain", domain)
    timestamp, token, signature = signing.sign_token(key)
    form.add_field("timestamp", timestamp)
    form.add_field("token", token)
    form.add_field("signature", signature)
    return form


# --- the work loop's handler -----------------------------------------------------------------------

class StoreAction:
    """Handles claimed ``forwards`` rows with action ``store``."""

    def __init__(self, *, store: Store, http: HttpClient, config: RoutingConfig, signing_key: str,
                 base_url: str, clock: Callable[[], float] = time.time):
        self.store = store
        self.http = http
        self.config = config
        self.signing_key = signing_key
        self.base_url = base_url
        self.clock = clock
        self.counters = {"stored": 0, "notified": 0, "retried": 0, "failed": 0}

    async def handle(self, row: dict[str, Any]) -> None:
        message = await self.store.read(lambda c: spool.message_row(c, row["message"]))
        now = self.clock()
        if message is None:
            await self._finish(row, "failed", None, None, "message deleted", now)
            return
        url = message_url(self.base_url, message["domain"], message["id"])
        notify = row["destination"]
        if row["attempts"] == 0:
            until = now + self.config.store_retention.seconds
            event = self._stored_event(row, message, url, now)

            def mark(conn: sqlite3.Connection) -> None:
                mark_stored(conn, message["id"], until)
                events.record(conn, message["domain"], event)
                if not notify:
                    spool.finish_work(conn, "forwards", row["id"], state="done", attempts=1, next_attempt_at=None,
                                      status=None, error="", now=now)
            await self.store.write(mark)
            self.counters["stored"] += 1
            log.info("%s: stored for <%s> until %s%s", message["id"], row["recipient"],
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(until)), f" notify={notify}" if notify else "")
            if not notify:
                return
        form = await asyncio.to_thread(notify_form, message, row["recipient"], url, message["domain"],
                                       self.signing_key)
        result = await self.http.post(notify, data=form)
        await self._record(row, message, result)

    def _stored_event(self, row: dict[str, Any], message: dict[str, Any], url: str, now: float) -> dict[str, Any]:
        return events.base_event(
            "stored", timestamp=now, recipient=row["recipient"], queue_id=message["id"],
            message=events.message_part(message["headers"], message["size"], message["attachments"]),
            options=message["options"],
            envelope={"sender": message["sender"], "targets": row["recipient"], "transport": "smtp"},
            flags={"is-routed": True, "is-authenticated": False, "is-test-mode": False},
            extra={"storage": {"key": message["id"], "url": url}, "route": {"id": row["route_id"]}})

    async def _record(self, row: dict[str, Any], message: dict[str, Any], result: HttpResult) -> None:
        now = self.clock()
        attempt = row["attempts"] + 1
        ok = result.status is not None and 200 <= result.status < 300
        schedule = self.config.retry_schedule
        if ok:
            state, retry_at = "done", None
        elif result.status == 406 or attempt > len(schedule):
            state, retry_at = "failed", None
        else:
            state, retry_at = "deferred", now + schedule[attempt - 1].seconds
        error = "" if ok else (result.error or result.body[:200])
        await self._finish(row, state, retry_at, result.status, error, now, attempt)
        self.counters["notified" if ok else ("retried" if retry_at else "failed")] += 1
        log.info("%s: store notify url=%s status=%s%s", message["id"], row["destination"],
                 result.status if result.status is not None else "none",
                 "" if ok else f" error={error!r}" + (f" retry_in={int(retry_at - now)}s" if retry_at else ""))

    async def _finish(self, row: dict[str, Any], state: str, retry_at: float | None, status: int | None, error: str,
                      now: float, attempts: int | None = None) -> None:
        await settle(self.store, lambda c: spool.finish_work(
            c, "forwards", row["id"], state=state, attempts=attempts if attempts is not None else row["attempts"],
            next_attempt_at=retry_at, status=status, error=error, now=now), f"store action {row['id']}: outcome")

    async def expire_loop(self, interval: float = 600.0) -> None:
        """Forget stored messages past their time, every ``interval`` seconds."""
        while True:
            try:
                while await self.store.write(lambda c: expire(c, self.clock())) >= 1000:
                    await asyncio.sleep(0)
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("could not expire stored messages")
            await asyncio.sleep(interval)
