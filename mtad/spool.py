"""Queue operations on the store's tables: enqueue, claim, mark, list. Functions of a connection.

These run inside ``Store.write`` (one transaction, group-committed) or ``Store.read``. The scheduler
and the CLI call them; nothing here knows SMTP or HTTP.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable

from mtad import events
from mtad.types import NewMessage


def new_queue_id() -> str:
    """Sortable, unique: 11 hex digits of milliseconds then 8 random hex digits."""
    return f"{int(time.time() * 1000):011X}{os.urandom(4).hex().upper()}"


@dataclass(frozen=True)
class ForwardRow:
    """Inbound work created at acceptance: one route action destination for one recipient."""

    recipient: str
    route_id: str
    action: str  # http | address | store
    destination: str


def group_by_domain(recipients: Iterable[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for rcpt in recipients:
        grouped.setdefault(events.domain_of(rcpt), []).append(rcpt)
    return grouped


def enqueue(conn: sqlite3.Connection, queue_id: str, msg: NewMessage, now: float,
            forwards: Iterable[ForwardRow] = (), deliver_to: Iterable[str] | None = None) -> None:
    """Store the message once, its work rows, and an ``accepted`` event per recipient.

    ``deliver_to`` are the recipients the outbound stage delivers (default: all of an outbound
    message's); ``forwards`` are the inbound route actions.
    """
    env = msg.envelope
    envelope = {"client_ip": env.client_ip, "client_helo": env.client_helo, "auth_user": env.auth_user,
                "tls": env.tls, "transport": env.transport, "listener": env.listener}
    conn.execute(
        "INSERT INTO messages (id, created_at, direction, domain, sender, recipients, message_id, headers,"
        " options, envelope, size, body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (queue_id, now, msg.direction, msg.domain, env.sender, json.dumps(list(env.recipients)),
         msg.headers.message_id, json.dumps(msg.headers.to_json()), json.dumps(msg.options.to_json()),
         json.dumps(envelope), len(msg.body), msg.body))
    if deliver_to is None:
        deliver_to = env.recipients if msg.direction == "outbound" else ()
    deliver_to = list(deliver_to)
    if deliver_to:
        due = max(now, msg.options.deliver_by or 0.0)
        conn.executemany(
            "INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, created_at,"
            " updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?)",
            [(queue_id, domain, json.dumps(rcpts), due, now, now)
             for domain, rcpts in group_by_domain(deliver_to).items()])
    conn.executemany(
        "INSERT INTO forwards (message, recipient, route_id, action, destination, state, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        [(queue_id, f.recipient, f.route_id, f.action, f.destination, now, now, now) for f in forwards])
    for event in events.accepted_events(msg, queue_id, now):
        events.record(conn, msg.domain, event)


def release_stale_locks(conn: sqlite3.Connection) -> int:
    """At start-up nothing is in flight: every lock left by a dead process is released."""
    released = 0
    for table in ("deliveries", "forwards", "webhook_deliveries"):
        released += conn.execute(
            f"UPDATE {table} SET locked_by = NULL, locked_at = NULL WHERE locked_by IS NOT NULL").rowcount
    return released


def list_queue(conn: sqlite3.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Pending outbound deliveries and inbound forwards, oldest first (``mtad queue list``)."""
    rows = conn.execute(
        "SELECT d.message AS queue_id, m.sender, d.recipients, d.domain AS destination, d.state, d.attempts,"
        " d.next_attempt_at, d.last_reply, 'delivery' AS kind FROM deliveries d JOIN messages m"
        " ON m.id = d.message WHERE d.state IN ('queued', 'deferred', 'held')"
        " UNION ALL SELECT f.message, m.sender, json_array(f.recipient), f.destination, f.state, f.attempts,"
        " f.next_attempt_at, f.last_error, 'forward' FROM forwards f JOIN messages m ON m.id = f.message"
        " WHERE f.state IN ('queued', 'deferred') ORDER BY 1 LIMIT ?", (limit,)).fetchall()
    return [dict(row) | {"recipients": json.loads(row["recipients"])} for row in rows]


def count_messages(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
