"""Building Mailgun-shaped events: pure functions of what happened, no I/O.

An event is a plain JSON-able dict in the shape of Mailgun's events API (``id``, ``event``, ``timestamp``,
``log-level``, ``recipient``, ``message``, ``envelope``, ``flags``, ...). This module builds them; the store
writes them (``mtad.store.events``: rows, counters, webhook work), handed over as ``NewEvent`` (the event, the
domain it belongs to, and whether it is a ``system`` event of a message mtad made itself).
"""

from __future__ import annotations

import base64
import random
import secrets
import time
from typing import Any, Iterable, Mapping

from mtad.base.types import DSN_TRANSPORT, NewMessage, Outcome, domain_of
from mtad.store.events import NewEvent, stat_key, stat_keys, webhook_id  # noqa: F401 - how an event is counted
from mtad.store.queue import DeliveryJob

_LOG_LEVEL = {"accepted": "info", "delivered": "info", "failed": "error", "rejected": "warn",
              "stored": "info", "opened": "info", "clicked": "info", "unsubscribed": "info",
              "complained": "warn"}


_ids = random.Random(secrets.randbits(128))  # ids need uniqueness, not secrecy: no system call per event


def new_event_id() -> str:
    """22 URL-safe characters like Mailgun's, time-ordered (48 bits of milliseconds, then 80 random bits) so that
    the events table's unique index on ids grows at its end instead of dirtying a random page per event."""
    raw = int(time.time() * 1000).to_bytes(6, "big") + _ids.getrandbits(80).to_bytes(10, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def new_event_ids(n: int) -> list[str]:
    """``n`` of ``new_event_id`` (as unique: 80 random bits each) with one clock read, in ascending order (the
    events of a batch written in id order are appended to the ids' index)."""
    millis = int(time.time() * 1000).to_bytes(6, "big")
    randoms = _ids.getrandbits(80 * n).to_bytes(10 * n, "big") if n else b""
    return sorted(base64.urlsafe_b64encode(millis + randoms[i:i + 10]).decode()[:22] for i in range(0, 10 * n, 10))


def message_part(msg_headers: Mapping[str, str], size: int, attachments: Iterable[Mapping] = ()) -> dict[str, Any]:
    return {"headers": msg_headers, "attachments": list(attachments), "size": size}


def base_event(kind: str, *, timestamp: float, recipient: str, queue_id: str, message: dict[str, Any],
               options: Mapping[str, Any], envelope: dict[str, Any], flags: dict[str, Any],
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


def with_authentication(extra: dict[str, Any], verdicts: Mapping[str, Any] | None) -> dict[str, Any]:
    """``extra`` plus an inbound message's authentication verdicts (``authentication``: spf, dkim, dmarc, arc and
    the policy's action; issue 15), when it has them."""
    if verdicts:
        extra["authentication"] = dict(verdicts)
    return extra


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
            with_authentication(extra, env.verdicts)
        else:
            extra["direction"] = "outgoing"
        events.append(base_event("accepted", timestamp=now, recipient=rcpt, queue_id=queue_id,
                                 message=message, options=options, envelope=envelope, flags=flags,
                                 extra=extra))
    return events


def accepted(msg: NewMessage, queue_id: str, now: float) -> tuple[NewEvent, ...]:
    """``accepted_events`` as the store records them: an inbound message's in each recipient's own receiving
    domain, an outbound one's in its sending domain; a DSN's as system events (not the user's mail)."""
    system = msg.envelope.transport == DSN_TRANSPORT
    inbound = msg.direction == "inbound"
    return tuple(NewEvent(event["recipient-domain"] if inbound else msg.domain, event, system)
                 for event in accepted_events(msg, queue_id, now))


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


def delivery_event(kind: str, job: DeliveryJob, rcpt: str, now: float, extra: dict[str, Any]) -> dict[str, Any]:
    """A ``delivered`` or ``failed`` event of one recipient of an outbound delivery."""
    env = job.envelope
    flags = {"is-authenticated": env.get("auth_user") is not None, "is-test-mode": bool(job.options.get("test_mode")),
             "is-routed": env.get("transport") == "route", "is-delayed-bounce": False}
    envelope = {"sender": job.sender, "targets": rcpt, "transport": "smtp", "sending-ip": env.get("sending_ip", "")}
    return base_event(kind, timestamp=now, recipient=rcpt, queue_id=job.queue_id,
                      message=message_part(job.headers, job.size, job.attachments), options=job.options,
                      envelope=envelope, flags=flags, extra=extra)


def about_delivered(kind: str, delivered: Mapping[str, Any], now: float, flags: Mapping[str, Any],
                    extra: dict[str, Any]) -> dict[str, Any]:
    """An event about a recipient mtad delivered to, learnt later from a report (a late bounce, a complaint):
    the ``delivered`` event's recipient, message, tags, campaigns, user-variables, envelope and storage, its
    flags updated with ``flags``, and ``extra``."""
    recipient = str(delivered.get("recipient", ""))
    event = {
        "id": new_event_id(),
        "event": kind,
        "timestamp": now,
        "log-level": "warn" if kind == "failed" and extra.get("severity") == "temporary" else _LOG_LEVEL.get(kind, "info"),
        "recipient": recipient,
        "recipient-domain": domain_of(recipient),
        "message": delivered.get("message") or message_part({}, 0),
        "tags": list(delivered.get("tags") or ()),
        "campaigns": list(delivered.get("campaigns") or ()),
        "user-variables": dict(delivered.get("user-variables") or {}),
        "envelope": dict(delivered.get("envelope") or {}),
        "flags": {**(delivered.get("flags") or {}), **flags},
        "storage": dict(delivered.get("storage") or {}),
    }
    event.update(extra)
    return event


def delayed_bounce(delivered: Mapping[str, Any], now: float, *, permanent: bool, code: int, enhanced: str,
                   message: str, mx_host: str) -> dict[str, Any]:
    """The ``failed`` event of a late bounce (a DSN received after the recipient's MX accepted the message):
    Mailgun's ``is-delayed-bounce`` in its flags and its delivery-status, severity ``permanent`` (reason
    ``delayed-bounce``, counted as such in stats) for a final failure, else ``temporary`` (``generic``)."""
    status = {"code": code, "enhanced-code": enhanced, "message": message, "description": message,
              "attempt-no": int((delivered.get("delivery-status") or {}).get("attempt-no") or 1),
              "mx-host": mx_host, "tls": False, "certificate-verified": False, "session-seconds": 0.0,
              "is-delayed-bounce": True}
    return about_delivered("failed", delivered, now, {"is-delayed-bounce": True},
                           {"severity": "permanent" if permanent else "temporary",
                            "reason": "delayed-bounce" if permanent else "generic", "delivery-status": status})


def complained(delivered: Mapping[str, Any], now: float) -> dict[str, Any]:
    """The ``complained`` event of a feedback report (the recipient marked the message as spam)."""
    return about_delivered("complained", delivered, now, {}, {})
