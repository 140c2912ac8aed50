"""Operator actions on the queue: show, flush, retry, delete, bounce, pause, resume.

Functions of a SQLite connection, used by ``mtad queue ...`` while the daemon runs (SQLite's WAL
lets both write; the daemon sees changes at its next poll, within ``delivery.poll_interval``).
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

from mtad.store import queue as spool
from mtad.base.types import Outcome

PAUSE_KINDS = ("domain", "provider", "tag")


def show(conn: sqlite3.Connection, queue_id: str) -> dict[str, Any] | None:
    msg = spool.message_row(conn, queue_id)
    if msg is None:
        return None
    body = msg.pop("body")
    msg["headers_text"] = body.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    msg["deliveries"] = [dict(zip(("id", "domain", "recipients", "state", "attempts", "next_attempt_at", "last_reply"), r))
                         for r in conn.execute("SELECT id, domain, recipients, state, attempts, next_attempt_at,"
                                               " last_reply FROM deliveries WHERE message = ?", (queue_id,))]
    msg["forwards"] = [dict(zip(("id", "recipient", "action", "destination", "state", "attempts", "last_status"), r))
                       for r in conn.execute("SELECT id, recipient, action, destination, state, attempts, last_status"
                                             " FROM forwards WHERE message = ?", (queue_id,))]
    return msg


def flush(conn: sqlite3.Connection, domain: str | None = None, queue_id: str | None = None) -> int:
    """Make queued and deferred work due now, and unlock what a claim whose lease ran out still locks (its holder
    died or lost the store): the running daemon takes it at its next poll."""
    now = time.time()
    where, args = "state IN ('deferred', 'queued')", []
    if domain:
        where += " AND domain = ?"
        args.append(domain.lower())
    if queue_id:
        where += " AND message = ?"
        args.append(queue_id)
    spool.release_expired(conn, now, "deliveries", where, tuple(args))
    n = conn.execute(f"UPDATE deliveries SET next_attempt_at = ? WHERE {where}", (now, *args)).rowcount
    if not domain:
        where, args = "state IN ('deferred', 'queued')", ([queue_id] if queue_id else [])
        if queue_id:
            where += " AND message = ?"
        spool.release_expired(conn, now, "forwards", where, tuple(args))
        n += conn.execute(f"UPDATE forwards SET next_attempt_at = ? WHERE {where}", (now, *args)).rowcount
    return n


def delete(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,)).rowcount > 0


def bounce(conn: sqlite3.Connection, queue_id: str) -> int:
    """Fail every pending recipient of a message permanently now (events recorded; no DSN)."""
    now = time.time()
    jobs = [j for j in spool.claim_due_deliveries(conn, "operator", now, 10_000, due=float("inf"))
            if j.queue_id == queue_id]
    n = 0
    for job in jobs:
        outcome = Outcome("failed", 550, "5.0.0", "Bounced by the operator", reason="bounce")
        spool.finish_attempt(conn, job, spool.AttemptRecord({r: outcome for r in job.recipients}, job.attempts + 1,
                                                            None), now)
        n += len(job.recipients)
    conn.execute(f"UPDATE deliveries SET {spool.UNLOCK} WHERE locked_by = 'operator'")
    return n


def pause(conn: sqlite3.Connection, kind: str, value: str) -> None:
    conn.execute("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)", (f"pause:{kind}:{value.lower()}",
                                                                          json.dumps({"since": time.time()})))


def resume(conn: sqlite3.Connection, kind: str, value: str) -> int:
    conn.execute("DELETE FROM kv WHERE key = ?", (f"pause:{kind}:{value.lower()}",))
    # held rows go back to the queue; any still covered by another pause are held again when claimed
    return conn.execute("UPDATE deliveries SET state = 'deferred', next_attempt_at = ? WHERE state = 'held'",
                        (time.time(),)).rowcount


def pauses(conn: sqlite3.Connection) -> list[str]:
    return [r[0].split(":", 1)[1] for r in conn.execute("SELECT key FROM kv WHERE key LIKE 'pause:%' ORDER BY key")]
