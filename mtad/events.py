"""Mailgun-shaped events: building them, and recording them with their counters.

An event is a plain JSON-able dict in the shape of Mailgun's events API (``id``, ``event``,
``timestamp``, ``log-level``, ``recipient``, ``message``, ``envelope``, ``flags``, ...). ``record``
inserts it inside the caller's transaction and bumps the hourly ``stats`` counters, so stats queries
never scan events. Building is pure; recording takes the writer's connection.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from typing import Any, Iterable

from mtad.types import NewMessage, Outcome

_LOG_LEVEL = {"accepted": "info", "delivered": "info", "failed": "error", "rejected": "warn",
              "stored": "info", "opened": "info", "clicked": "info", "unsubscribed": "info",
              "complained": "warn"}


def new_event_id() -> str:
    return secrets.token_urlsafe(16)


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
        "log-level": _LOG_LEVEL.get(kind, "info"),
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
             "is-routed": False, "is-system-test": False}
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


def stat_keys(event: dict[str, Any]) -> list[str]:
    """Counter names an event bumps: the event itself plus Mailgun's breakdowns."""
    kind = event["event"]
    keys = [kind]
    if kind == "accepted":
        keys.append("accepted:incoming" if event.get("direction") == "incoming" else "accepted:outgoing")
    elif kind == "delivered":
        keys.append("delivered:http" if event.get("delivery-status", {}).get("transport") == "http"
                    or event.get("method") == "http" else "delivered:smtp")
    elif kind == "failed":
        severity = event.get("severity", "permanent")
        keys.append(f"failed:{severity}")
        if severity == "permanent":
            keys.append(f"failed:permanent:{event.get('reason') or 'bounce'}")
    return keys


def record(conn: sqlite3.Connection, domain: str, event: dict[str, Any]) -> None:
    """Insert one event and bump its hourly counters (total and per tag), in the caller's transaction."""
    headers = event.get("message", {}).get("headers", {})
    conn.execute(
        "INSERT INTO events (id, timestamp, domain, event, recipient, message_id, queue_id, severity, data)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event["id"], event["timestamp"], domain, event["event"], event.get("recipient", ""),
         headers.get("message-id", ""), event.get("storage", {}).get("key", ""),
         event.get("severity", ""), json.dumps(event, separators=(",", ":"))))
    hour = int(event["timestamp"] // 3600)
    tags = [""] + list(event.get("tags") or ())
    rows = [(domain, tag, key, hour) for tag in tags for key in stat_keys(event)]
    conn.executemany(
        "INSERT INTO stats (domain, tag, event, hour, count) VALUES (?, ?, ?, ?, 1)"
        " ON CONFLICT (domain, tag, event, hour) DO UPDATE SET count = count + 1", rows)
