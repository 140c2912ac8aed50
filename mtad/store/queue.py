"""Queue operations on the store's tables: enqueue, claim, mark, list. Functions of a connection.

These run inside ``Store.write`` (one transaction, group-committed) or ``Store.read``. The scheduler
and the CLI call them; nothing here knows SMTP or HTTP.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any, Container, Iterable

from mtad.events import record as events
from mtad.base.types import NewMessage
from mtad.store.suppressions import add_suppression, suppressed  # noqa: F401 - suppressed: the scheduler's name


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
    sender: str | None = None  # address forwards: the rewritten envelope sender (SRS)


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
        " options, envelope, size, body, attachments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (queue_id, now, msg.direction, msg.domain, env.sender, json.dumps(list(env.recipients)),
         msg.headers.message_id, json.dumps(msg.headers.to_json()), json.dumps(msg.options.to_json()),
         json.dumps(envelope), len(msg.body), msg.body, json.dumps(list(msg.attachments))))
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
    forwards = list(forwards)
    by_sender: dict[tuple[str, str], list[str]] = {}
    for f in forwards:
        if f.action == "address":
            sender = env.sender if f.sender is None else f.sender  # "" is the null sender of a returned bounce
            by_sender.setdefault((events.domain_of(f.destination), sender), []).append(f.destination)
    conn.executemany(
        "INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, sender, created_at,"
        " updated_at) VALUES (?, ?, ?, 'queued', ?, ?, ?, ?)",
        [(queue_id, domain, json.dumps(sorted(set(rcpts))), now, sender, now, now)
         for (domain, sender), rcpts in by_sender.items()])
    conn.executemany(
        "INSERT INTO forwards (message, recipient, route_id, action, destination, state, next_attempt_at,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
        [(queue_id, f.recipient, f.route_id, f.action, f.destination, now, now, now)
         for f in forwards if f.action != "address"])
    from mtad.outbound.dsn import TRANSPORT as DSN
    system = env.transport == DSN  # a bounce mtad made is not the user's accepted mail
    for event in events.accepted_events(msg, queue_id, now):  # inbound: each recipient's own receiving domain
        events.record(conn, event["recipient-domain"] if msg.direction == "inbound" else msg.domain, event,
                      system=system)


# --- claims are leases (see mtad.leases) ------------------------------------------------------------------

LEASED_TABLES = ("deliveries", "forwards", "webhook_deliveries")
DEFAULT_LEASE = 300.0  # seconds; the daemon passes ``store.claim_lease``
# A row may be claimed when nobody holds it or when its holder's lease ran out (the holder died or lost the store).
CLAIMABLE = "(locked_by IS NULL OR lease_until < ?)"
UNLOCK = "locked_by = NULL, locked_at = NULL, lease_until = NULL"


def release_stale_locks(conn: sqlite3.Connection) -> int:
    """At start-up nothing is in flight: every lock left by a dead process is released."""
    released = 0
    for table in LEASED_TABLES:
        released += conn.execute(f"UPDATE {table} SET {UNLOCK} WHERE locked_by IS NOT NULL").rowcount
    return released


def release_expired(conn: sqlite3.Connection, now: float, table: str, where: str = "1", args: tuple = ()) -> int:
    """Unlock the rows of ``table`` (matching ``where``) whose lease ran out (``mtad queue flush``)."""
    assert table in LEASED_TABLES
    return conn.execute(f"UPDATE {table} SET {UNLOCK} WHERE locked_by IS NOT NULL AND lease_until < ? AND ({where})",
                        (now, *args)).rowcount


def list_queue(conn: sqlite3.Connection, limit: int = 1000) -> list[dict[str, Any]]:
    """Pending outbound deliveries and inbound forwards, oldest first (``mtad queue list``).

    A row claimed by a worker (being delivered or POSTed right now) shows as state ``active``, as Postfix's active
    queue; ``locked_by`` names the worker.
    """
    rows = conn.execute(
        "SELECT d.message AS queue_id, m.sender, d.recipients, d.domain AS destination,"
        " CASE WHEN d.locked_by IS NULL THEN d.state ELSE 'active' END AS state, d.attempts,"
        " d.next_attempt_at, d.last_reply, 'delivery' AS kind, d.locked_by FROM deliveries d JOIN messages m"
        " ON m.id = d.message WHERE d.state IN ('queued', 'deferred', 'held')"
        " UNION ALL SELECT f.message, m.sender, json_array(f.recipient), f.destination,"
        " CASE WHEN f.locked_by IS NULL THEN f.state ELSE 'active' END, f.attempts,"
        " f.next_attempt_at, f.last_error, 'forward', f.locked_by FROM forwards f JOIN messages m ON m.id = f.message"
        " WHERE f.state IN ('queued', 'deferred') ORDER BY 1 LIMIT ?", (limit,)).fetchall()
    return [dict(row) | {"recipients": json.loads(row["recipients"])} for row in rows]


def count_messages(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


# --- outbound deliveries -----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryJob:
    """A claimed delivery row with what the scheduler needs from its message; the body only if it was preloaded."""

    id: int
    queue_id: str
    domain: str
    recipients: tuple[str, ...]
    attempts: int
    sender: str
    sending_domain: str
    created_at: float
    options: dict[str, Any]
    headers: dict[str, str]
    envelope: dict[str, Any]
    size: int
    body: bytes | None = field(default=None, repr=False, compare=False)
    attachments: list[dict[str, Any]] = field(default_factory=list)  # events' message.attachments


def claim_due_deliveries(conn: sqlite3.Connection, worker: str, now: float, limit: int,
                         paused_domains: Iterable[str] = (), preload_body: int = 0, *,
                         lease_until: float | None = None, skip: Container[int] = (),
                         due: float | None = None) -> list[DeliveryJob]:
    """Lock up to ``limit`` deliveries due at ``due`` (default ``now``) for ``worker`` until ``lease_until``
    (default ``now + DEFAULT_LEASE``); oldest due first. Rows nobody holds are taken, and rows whose lease ran out
    before ``now``, except ``skip``: the rows ``worker`` still holds itself.

    Bodies of messages up to ``preload_body`` bytes come with the jobs (one read for the batch instead of one per
    message); larger ones are read when sent (``load_body``), so a batch never holds more than limit x preload_body.
    """
    paused = list(paused_domains)
    exclude = f" AND domain NOT IN ({','.join('?' * len(paused))})" if paused else ""
    ids = [r[0] for r in conn.execute(
        "SELECT id FROM deliveries WHERE state IN ('queued', 'deferred') AND next_attempt_at <= ?"
        f" AND {CLAIMABLE}{exclude} ORDER BY next_attempt_at LIMIT ?",
        (now if due is None else due, now, *paused, limit)) if r[0] not in skip]
    if not ids:
        return []
    marks = ",".join("?" * len(ids))
    conn.execute(f"UPDATE deliveries SET locked_by = ?, locked_at = ?, lease_until = ? WHERE id IN ({marks})",
                 (worker, now, now + DEFAULT_LEASE if lease_until is None else lease_until, *ids))
    rows = conn.execute(
        "SELECT d.id, d.message, d.domain, d.recipients, d.attempts, COALESCE(d.sender, m.sender), m.domain, m.created_at, m.options,"
        " m.headers, m.envelope, m.size, CASE WHEN m.size <= ? THEN m.body END, m.attachments FROM deliveries d"
        f" JOIN messages m ON m.id = d.message WHERE d.id IN ({marks}) ORDER BY d.next_attempt_at",
        (preload_body, *ids)).fetchall()
    return [DeliveryJob(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7], json.loads(r[8]),
                        json.loads(r[9]), json.loads(r[10]), r[11], None if r[12] is None else bytes(r[12]),
                        json.loads(r[13]))
            for r in rows]


def load_body(conn: sqlite3.Connection, queue_id: str) -> bytes | None:
    row = conn.execute("SELECT body FROM messages WHERE id = ?", (queue_id,)).fetchone()
    return bytes(row[0]) if row else None


def hold(conn: sqlite3.Connection, delivery_id: int) -> None:
    conn.execute(f"UPDATE deliveries SET state = 'held', {UNLOCK} WHERE id = ?", (delivery_id,))


def release(conn: sqlite3.Connection, delivery_id: int, next_attempt_at: float, reply: str = "") -> None:
    """Give a claimed delivery back without counting an attempt (suspended provider, shutdown)."""
    conn.execute(f"UPDATE deliveries SET {UNLOCK}, next_attempt_at = ?,"
                 " last_reply = COALESCE(NULLIF(?, ''), last_reply) WHERE id = ?",
                 (next_attempt_at, reply, delivery_id))


def _job_event(kind: str, job: DeliveryJob, rcpt: str, now: float, extra: dict[str, Any]) -> dict[str, Any]:
    env = job.envelope
    flags = {"is-authenticated": env.get("auth_user") is not None, "is-test-mode": bool(job.options.get("test_mode")),
             "is-routed": env.get("transport") == "route", "is-delayed-bounce": False}
    envelope = {"sender": job.sender, "targets": rcpt, "transport": "smtp", "sending-ip": env.get("sending_ip", "")}
    return events.base_event(kind, timestamp=now, recipient=rcpt, queue_id=job.queue_id,
                             message=events.message_part(job.headers, job.size, job.attachments), options=job.options,
                             envelope=envelope, flags=flags, extra=extra)


@dataclass(frozen=True)
class AttemptRecord:
    """What one attempt decided, per recipient, for ``finish_attempt``."""

    outcomes: dict[str, Any]  # recipient -> types.Outcome
    attempt_no: int
    retry_at: float | None  # when deferred recipients are tried again; None: they have run out of time
    session_seconds: float = 0.0


def finish_attempt(conn: sqlite3.Connection, job: DeliveryJob, record: AttemptRecord, now: float,
                   dsn: Any = None) -> list[str]:
    """Apply an attempt: events, bounce list, the row's next state. Returns permanently failed recipients.

    ``dsn(job, failed: dict[rcpt, Outcome], original_headers: bytes) -> NewMessage | None`` builds the bounce
    to the sender. A DSN's own outcomes are recorded as system events (not the user's stats nor webhooks), and
    its failure never puts its recipient (the user's own address) on the domain's bounce list.
    """
    from mtad.outbound.classify import is_mailbox_bounce
    from mtad.outbound.dsn import is_dsn
    from mtad.base.types import Outcome
    system = is_dsn(job)
    deferred: list[str] = []
    failed: dict[str, Outcome] = {}
    for rcpt, outcome in record.outcomes.items():
        if outcome.kind == "deferred" and record.retry_at is None:
            outcome = Outcome("failed", outcome.code, outcome.enhanced, outcome.message, outcome.mx_host, outcome.tls,
                              outcome.certificate_verified, reason="old")
        status = events.outcome_status(outcome, record.attempt_no, record.session_seconds,
                                       (record.retry_at - now) if outcome.kind == "deferred" and record.retry_at else None)
        if outcome.kind == "delivered":
            events.record(conn, job.sending_domain, _job_event("delivered", job, rcpt, now, {"delivery-status": status}),
                          system=system)
        elif outcome.kind == "deferred":
            deferred.append(rcpt)
            events.record(conn, job.sending_domain, _job_event(
                "failed", job, rcpt, now, {"severity": "temporary", "reason": "generic", "delivery-status": status}),
                system=system)
        else:
            failed[rcpt] = outcome
            events.record(conn, job.sending_domain, _job_event(
                "failed", job, rcpt, now, {"severity": "permanent", "reason": outcome.reason or "bounce",
                                           "delivery-status": status}), system=system)
            if not system and is_mailbox_bounce(outcome) and not conn.execute(  # allowlisted: never put on the bounce list
                    "SELECT 1 FROM suppressions WHERE domain = ? AND kind = 'whitelists' AND address IN (?, ?)",
                    (job.sending_domain, rcpt.lower(), events.domain_of(rcpt))).fetchone():
                add_suppression(conn, job.sending_domain, "bounces", rcpt, now,
                                {"code": str(outcome.code), "error": outcome.message})
    last = next(iter(record.outcomes.values()), None)
    if deferred:
        conn.execute("UPDATE deliveries SET recipients = ?, state = 'deferred', attempts = ?, next_attempt_at = ?,"
                     f" {UNLOCK}, last_code = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                     (json.dumps(deferred), record.attempt_no, record.retry_at, last.code if last else None,
                      last.message if last else None, now, job.id))
    else:
        conn.execute(f"UPDATE deliveries SET recipients = '[]', state = 'done', attempts = ?, {UNLOCK},"
                     " last_code = ?, last_reply = ?, updated_at = ? WHERE id = ?",
                     (record.attempt_no, last.code if last else None, last.message if last else None, now, job.id))
    if failed and dsn is not None and not system:
        bounce = dsn(job, failed, _header_block(conn, job.queue_id))
        if bounce is not None:
            enqueue(conn, new_queue_id(), bounce, now)
    return list(failed)


def settle_some(conn: sqlite3.Connection, job: DeliveryJob, worker: str, rest: tuple[str, ...],
                record: AttemptRecord, now: float, dsn: Any = None) -> None:
    """Record final outcomes for some recipients before any connection (suppressed); ``rest`` stays claimed by
    ``worker`` in its state. One transaction: the row never shows as done while ``rest`` still waits.
    """
    (state,) = conn.execute("SELECT state FROM deliveries WHERE id = ?", (job.id,)).fetchone()
    finish_attempt(conn, replace(job, recipients=tuple(record.outcomes)), record, now, dsn)
    conn.execute("UPDATE deliveries SET recipients = ?, state = ?, attempts = ?, locked_by = ?, locked_at = ?"
                 " WHERE id = ?", (json.dumps(list(rest)), state, job.attempts, worker, now, job.id))


def _header_block(conn: sqlite3.Connection, queue_id: str) -> bytes:
    """The message's header block with its final CRLF, for a DSN's text/rfc822-headers part."""
    row = conn.execute("SELECT CASE WHEN instr(body, X'0D0A0D0A') > 0 THEN substr(body, 1, instr(body, X'0D0A0D0A')"
                       " + 1) ELSE body END FROM messages WHERE id = ?", (queue_id,)).fetchone()
    return bytes(row[0]) if row else b""


def message_row(conn: sqlite3.Connection, queue_id: str) -> dict[str, Any] | None:
    cursor = conn.execute("SELECT * FROM messages WHERE id = ?", (queue_id,))  # columns of the store's version
    row = cursor.fetchone()
    if row is None:
        return None
    data = dict(zip((d[0] for d in cursor.description), row))
    data.setdefault("attachments", "[]")  # a store not yet opened by a daemon that adds the column
    for key in ("recipients", "headers", "options", "envelope", "attachments"):
        data[key] = json.loads(data[key])
    data["body"] = bytes(data["body"])
    return data
