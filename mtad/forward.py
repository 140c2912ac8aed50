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
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

from mtad import events, inbound_parse, signing, spool
from mtad.config import RoutingConfig
from mtad.httpclient import HttpClient, HttpResult
from mtad.store import Store

log = logging.getLogger("mtad.forward")

INLINE_PARSE = 16_384  # bytes: messages up to this size are parsed on the event loop (at most ~1.5 ms)


@dataclass(frozen=True)
class Form:
    """A route POST's multipart/form-data body, encoded once: one write to the socket, not one per part."""

    body: bytes
    content_type: str


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r'[\x00-\x1f\x7f"\\]')


def _param(text: str) -> str:
    """A quoted-string parameter of a part header: control characters dropped, quotes and backslashes escaped."""
    if not _UNSAFE.search(text):  # nearly always: header names, attachment-N
        return text
    return _CONTROL.sub("", text).replace("\\", "\\\\").replace('"', '\\"')


def encode_form(fields: list[tuple[str, str]], files: tuple[inbound_parse.Attachment, ...] = ()) -> Form:
    """multipart/form-data (RFC 7578): text fields in UTF-8, then files with their names and types.

    File names are written as UTF-8, unescaped, as browsers do; the boundary is random, so a message
    cannot end a part early.
    """
    boundary = secrets.token_hex(16)
    chunks: list[bytes] = []
    for name, value in fields:
        chunks += [f'--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n'
                   f'Content-Disposition: form-data; name="{_param(name)}"\r\n\r\n'.encode("utf-8", "replace"),
                   value.encode("utf-8", "replace"), b"\r\n"]
    for att in files:
        content_type = _CONTROL.sub("", att.content_type) or "application/octet-stream"
        chunks += [f'--{boundary}\r\nContent-Type: {content_type}\r\nContent-Disposition: form-data; '
                   f'name="{_param(att.field_name)}"; filename="{_param(att.filename or att.field_name)}"\r\n\r\n'
                   .encode("utf-8", "replace"),
                   att.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return Form(b"".join(chunks), f"multipart/form-data; boundary={boundary}")


def build_form(message: dict[str, Any], recipient: str, url: str, key: str, max_depth: int = 20) -> Form:
    """The multipart body of a route POST (parsed or raw MIME), signed. Always multipart, as Mailgun posts."""
    raw = message["body"]
    if url.rstrip("/").lower().endswith("mime"):
        post = inbound_parse.raw_fields(raw, recipient, message["sender"])
    else:
        post = inbound_parse.parsed_fields(raw, recipient, message["sender"], max_depth=max_depth)
    timestamp, token, signature = signing.sign_token(key)
    return encode_form([*post.fields, ("timestamp", timestamp), ("token", token), ("signature", signature)],
                       post.attachments)


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
        args = (message, row["recipient"], row["destination"], self.signing_key)
        # Parsing costs ~0.1 ms per KB: small messages inline (a thread hand-off costs as much), large ones in a thread.
        form = build_form(*args) if message["size"] <= INLINE_PARSE else await asyncio.to_thread(build_form, *args)
        started = time.monotonic()
        result = await self.http.post(row["destination"], data=form.body, headers={"Content-Type": form.content_type})
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
