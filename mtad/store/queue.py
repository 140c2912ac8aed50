"""The queue: messages, their outbound deliveries, claims on deliveries, outcomes, and the operator's actions.

Two levels:
- functions of a connection (``enqueue``, ``claim``, ``finish_attempt``, ...): the SQL, run inside
  ``Store.write`` (one transaction, group-committed) or ``Store.read``; internal to ``mtad.store``;
- ``QueueMethods``: the typed async methods ``SqliteStore`` composes (``await store.enqueue(...)``,
  ``await store.claim_due(...)``), each one writer or reader hop running those functions. ``QueueStore`` is
  their contract (claim semantics, what commits together, idempotency).

Nothing here knows SMTP or HTTP, nor builds an event: callers hand over the events a write commits
(``store.events.NewEvent``), built by ``mtad.events.shape``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterable, Mapping, Protocol, Sequence

from mtad.base.types import NewMessage, Outcome, domain_of
from mtad.store.dialect import dialect_of, pg_array
from mtad.store.batch import execute_rows
from mtad.store.events import NewEvent, record_all
from mtad.store.suppressions import add_suppression, allowlisted, suppressed_many


_RANDOM_HEX: list[str] = []  # 8-hex-digit pieces of os.urandom, taken one per queue id (``_random_hex8``)
_RANDOM_LOCK = threading.Lock()


def _random_hex8() -> str:
    """8 random hex digits from a pool refilled 512 at a time: ``os.urandom`` is a system call that lets go of
    the GIL, and on the event loop taking it back waits for the store's writer thread (up to the interpreter's
    switch interval) — once per accepted message before, once per 512 now."""
    with _RANDOM_LOCK:
        if not _RANDOM_HEX:
            pool = os.urandom(2048).hex().upper()
            _RANDOM_HEX.extend(pool[i:i + 8] for i in range(0, len(pool), 8))
        return _RANDOM_HEX.pop()


os.register_at_fork(after_in_child=_RANDOM_HEX.clear)  # a forked child never repeats its parent's ids


def new_queue_id() -> str:
    """Sortable, unique: 11 hex digits of milliseconds then 8 random hex digits."""
    return f"{int(time.time() * 1000):011X}{_random_hex8()}"


def new_queue_ids(n: int) -> list[str]:
    """``n`` of ``new_queue_id`` (as unique: 32 random bits each) with one clock read and one system call."""
    millis = f"{int(time.time() * 1000):011X}"
    random = os.urandom(4 * n).hex().upper()
    return [millis + random[i:i + 8] for i in range(0, 8 * n, 8)]


@dataclass(frozen=True)
class ForwardRow:
    """Inbound work created at acceptance: one route action destination for one recipient."""

    recipient: str
    route_id: str
    action: str  # http | address | store
    destination: str
    sender: str | None = None  # address forwards: the rewritten envelope sender (SRS)


@dataclass(frozen=True)
class Enqueue:
    """One message to commit: stored once under ``queue_id`` with its work rows and its ``accepted`` events
    (built by the caller: ``events.shape.accepted``).

    ``deliver_to`` are the recipients the outbound stage delivers (None: all of an outbound message's, none of an
    inbound one's); ``forwards`` are the inbound route actions (``address`` ones become deliveries)."""

    queue_id: str
    message: NewMessage
    events: tuple[NewEvent, ...] = ()
    forwards: tuple[ForwardRow, ...] = ()
    deliver_to: tuple[str, ...] | None = None
    lists: tuple[int, ...] = ()  # ids of the mailing lists to expand it to (store.lists: one expansion row each)


def group_by_domain(recipients: Iterable[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for rcpt in recipients:
        grouped.setdefault(domain_of(rcpt), []).append(rcpt)
    return grouped


@dataclass(frozen=True)
class Enqueued:
    """What ``enqueue_stream`` wrote of one message, for the caller's log and counters."""

    queue_id: str
    recipients: int
    size: int
    has_work: bool  # delivery or forward rows: the scheduler and forwarders have something to do


STAGE_MAX_BODY = 64 * 1024  # a body up to this size may wait in a batch's staged rows (``enqueue(stage=True)``): at most
# max_group (256) x 64 KB = 16 MB in one multi-row INSERT; a larger message is sent as its own statement
_MESSAGES_HEAD = ("INSERT INTO messages (id, created_at, direction, domain, sender, recipients, message_id, headers,"
                  " options, envelope, size, body, attachments)")
_DELIVERIES_HEAD = ("INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, created_at,"
                    " updated_at)")
_SENDER_DELIVERIES_HEAD = ("INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, sender,"
                           " created_at, updated_at)")
_FORWARDS_HEAD = ("INSERT INTO forwards (message, recipient, route_id, action, destination, state, next_attempt_at,"
                  " created_at, updated_at)")
_LISTS_HEAD = "INSERT INTO list_expansions (message, list_id, state, next_attempt_at, created_at, updated_at)"


def _insert_messages(conn: sqlite3.Connection, rows: list) -> None:
    execute_rows(conn, _MESSAGES_HEAD, 13, rows)


def _insert_deliveries(conn: sqlite3.Connection, rows: list) -> None:
    execute_rows(conn, _DELIVERIES_HEAD, 7, rows)


def _insert_sender_deliveries(conn: sqlite3.Connection, rows: list) -> None:
    execute_rows(conn, _SENDER_DELIVERIES_HEAD, 8, rows)


def _insert_forwards(conn: sqlite3.Connection, rows: list) -> None:
    execute_rows(conn, _FORWARDS_HEAD, 9, rows)


def _insert_lists(conn: sqlite3.Connection, rows: list) -> None:
    execute_rows(conn, _LISTS_HEAD, 6, rows)


def _rows(conn: sqlite3.Connection, staged: bool, name: str, insert: Callable[[sqlite3.Connection, list], None],
          rows: list) -> None:
    if not rows:
        return
    if staged:
        conn.staged.pending(name, insert).extend(rows)  # type: ignore[attr-defined] - a group commit's ``Staged``
    else:
        insert(conn, rows)


def enqueue(conn: sqlite3.Connection, item: Enqueue, now: float, *, stage: bool = False) -> None:
    """Store the message once, its work rows (deliveries per destination domain, forwards) and its events.

    ``stage``: the caller writes nothing else of the message in its write (``QueueMethods.enqueue``), so the
    message's rows may be staged (``engine.Staged``: one multi-row INSERT per table for the whole group commit,
    instead of statements per message), on an engine that isolates a write's staged rows when a batch fails
    (``conn.isolates_staged``: PostgreSQL's runs the failed batch again applying each write's staged rows in its
    savepoint, so a row the server refuses fails its own write alone) and for a body up to ``STAGE_MAX_BODY``."""
    queue_id, msg, forwards, deliver_to = item.queue_id, item.message, item.forwards, item.deliver_to
    staged = (stage and len(msg.body) <= STAGE_MAX_BODY and getattr(conn, "staged", None) is not None
              and getattr(conn, "isolates_staged", False))
    env = msg.envelope
    envelope = {"client_ip": env.client_ip, "client_helo": env.client_helo, "auth_user": env.auth_user,
                "tls": env.tls, "transport": env.transport, "listener": env.listener}
    if env.verdicts is not None:
        envelope["verdicts"] = dict(env.verdicts)  # inbound authentication verdicts, for later events
    _rows(conn, staged, "queue.messages", _insert_messages, [
        (queue_id, now, msg.direction, msg.domain, env.sender, json.dumps(list(env.recipients)),
         msg.headers.message_id, json.dumps(msg.headers.to_json()), json.dumps(msg.options.to_json()),
         json.dumps(envelope), len(msg.body), msg.body, json.dumps(list(msg.attachments)))])
    if deliver_to is None:
        deliver_to = env.recipients if msg.direction == "outbound" else ()
    deliver_to = list(deliver_to)
    if deliver_to:
        due = max(now, msg.options.deliver_by or 0.0)
        _rows(conn, staged, "queue.deliveries", _insert_deliveries,
              [(queue_id, domain, json.dumps(rcpts), "queued", due, now, now)
               for domain, rcpts in group_by_domain(deliver_to).items()])
    forwards = list(forwards)
    by_sender: dict[tuple[str, str], list[str]] = {}
    for f in forwards:
        if f.action == "address":
            sender = env.sender if f.sender is None else f.sender  # "" is the null sender of a returned bounce
            by_sender.setdefault((domain_of(f.destination), sender), []).append(f.destination)
    _rows(conn, staged, "queue.sender_deliveries", _insert_sender_deliveries,
          [(queue_id, domain, json.dumps(sorted(set(rcpts))), "queued", now, sender, now, now)
           for (domain, sender), rcpts in by_sender.items()])
    _rows(conn, staged, "queue.forwards", _insert_forwards,
          [(queue_id, f.recipient, f.route_id, f.action, f.destination, "queued", now, now, now)
           for f in forwards if f.action != "address"])
    if item.lists:  # mailing lists: expanded later, durably (store.lists)
        _rows(conn, staged, "queue.lists", _insert_lists,
              [(queue_id, list_id, "queued", now, now, now) for list_id in dict.fromkeys(item.lists)])
    record_all(conn, item.events)


# --- claims are leases (see mtad.leases) ------------------------------------------------------------------

LEASED_TABLES = ("deliveries", "forwards", "webhook_deliveries", "list_expansions", "if_campaigns")
DEFAULT_LEASE = 300.0  # seconds; the daemon passes ``store.claim_lease``
# A row may be claimed when nobody holds it or when its holder's lease ran out (the holder died or lost the store).
CLAIMABLE = "(locked_by IS NULL OR lease_until < ?)"
UNLOCK = "locked_by = NULL, locked_at = NULL, lease_until = NULL"


def release_stale_locks(conn: sqlite3.Connection, node_id: str | None = None) -> int:
    """At start-up nothing of this node is in flight: the locks its previous process left are released (those
    of ``node_id``; None: every lock, the store has one node). Other nodes' leases are theirs: a live node keeps
    them, a dead one's are taken over by claims once they ran out."""
    released = 0
    for table in LEASED_TABLES:
        if node_id is None:
            released += conn.execute(f"UPDATE {table} SET {UNLOCK} WHERE locked_by IS NOT NULL").rowcount
        else:
            released += conn.execute(f"UPDATE {table} SET {UNLOCK} WHERE locked_by = ?", (node_id,)).rowcount
    return released


def release_expired(conn: sqlite3.Connection, now: float, table: str, where: str = "1 = 1", args: tuple = ()) -> int:
    """Unlock the rows of ``table`` (matching ``where``) whose lease ran out (``mtad queue flush``)."""
    assert table in LEASED_TABLES
    return conn.execute(f"UPDATE {table} SET {UNLOCK} WHERE locked_by IS NOT NULL AND lease_until < ? AND ({where})",
                        (now, *args)).rowcount


@dataclass(frozen=True)
class QueueEntry:
    """A pending outbound delivery or inbound forward (``mtad queue list``); ``state`` ``active`` while a worker
    holds it (``locked_by``), as Postfix's active queue."""

    queue_id: str
    sender: str
    recipients: tuple[str, ...]
    destination: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_reply: str | None
    kind: str  # delivery | forward
    locked_by: str | None

    def to_json(self) -> dict[str, Any]:
        return {"queue_id": self.queue_id, "sender": self.sender, "recipients": list(self.recipients),
                "destination": self.destination, "state": self.state, "attempts": self.attempts,
                "next_attempt_at": self.next_attempt_at, "last_reply": self.last_reply, "kind": self.kind,
                "locked_by": self.locked_by}


def list_queue(conn: sqlite3.Connection, limit: int = 1000) -> tuple[QueueEntry, ...]:
    """Pending outbound deliveries and inbound forwards, oldest first."""
    rows = conn.execute(
        "SELECT d.message AS queue_id, m.sender, d.recipients, d.domain AS destination,"
        " CASE WHEN d.locked_by IS NULL THEN d.state ELSE 'active' END AS state, d.attempts,"
        " d.next_attempt_at, d.last_reply, 'delivery' AS kind, d.locked_by FROM deliveries d JOIN messages m"
        " ON m.id = d.message WHERE d.state IN ('queued', 'deferred', 'held')"
        f" UNION ALL SELECT f.message, m.sender, {dialect_of(conn).json_array1('f.recipient')}, f.destination,"
        " CASE WHEN f.locked_by IS NULL THEN f.state ELSE 'active' END, f.attempts,"
        " f.next_attempt_at, f.last_error, 'forward', f.locked_by FROM forwards f JOIN messages m ON m.id = f.message"
        " WHERE f.state IN ('queued', 'deferred') ORDER BY 1 LIMIT ?", (limit,)).fetchall()
    return tuple(QueueEntry(r[0], r[1], tuple(json.loads(r[2])), *r[3:]) for r in rows)


def count_messages(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


@dataclass(frozen=True)
class QueueCounts:
    """Pending work by state, for metrics: deliveries by (state, destination domain) (``active`` while claimed),
    forwards and webhook POSTs by state."""

    deliveries: tuple[tuple[str, str, int], ...]
    forwards: tuple[tuple[str, int], ...]
    webhooks: tuple[tuple[str, int], ...]


def queue_counts(conn: sqlite3.Connection) -> QueueCounts:
    return QueueCounts(
        tuple(tuple(r) for r in conn.execute(
            "SELECT CASE WHEN locked_by IS NULL THEN state ELSE 'active' END, domain, count(*) FROM deliveries"
            " WHERE state IN ('queued', 'deferred', 'held') GROUP BY 1, 2")),
        tuple(tuple(r) for r in conn.execute("SELECT state, count(*) FROM forwards WHERE state IN ('queued',"
                                             " 'deferred') GROUP BY state")),
        tuple(tuple(r) for r in conn.execute("SELECT state, count(*) FROM webhook_deliveries WHERE state IN"
                                             " ('queued', 'deferred') GROUP BY state")))


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
    direction: str = "outbound"  # the message's: an inbound one's deliveries are forwards to addresses (their own sender)


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
        f" AND {CLAIMABLE}{exclude} ORDER BY next_attempt_at LIMIT ?{dialect_of(conn).lock_rows}",
        (now if due is None else due, now, *paused, limit)) if r[0] not in skip]
    if not ids:
        return []
    if dialect_of(conn).is_postgresql:  # the ids as one array parameter: one statement text whatever their number
        among, id_args = "= ANY(?::bigint[])", (pg_array(ids),)
    else:
        among, id_args = f"IN ({','.join('?' * len(ids))})", tuple(ids)
    conn.execute(f"UPDATE deliveries SET locked_by = ?, locked_at = ?, lease_until = ? WHERE id {among}",
                 (worker, now, now + DEFAULT_LEASE if lease_until is None else lease_until, *id_args))
    rows = conn.execute(
        "SELECT d.id, d.message, d.domain, d.recipients, d.attempts, COALESCE(d.sender, m.sender), m.domain, m.created_at, m.options,"
        " m.headers, m.envelope, m.size, CASE WHEN m.size <= ? THEN m.body END, m.attachments, m.direction"
        " FROM deliveries d"
        f" JOIN messages m ON m.id = d.message WHERE d.id {among} ORDER BY d.next_attempt_at",
        (preload_body, *id_args)).fetchall()
    return [DeliveryJob(r[0], r[1], r[2], tuple(json.loads(r[3])), r[4], r[5], r[6], r[7], json.loads(r[8]),
                        json.loads(r[9]), json.loads(r[10]), r[11], None if r[12] is None else bytes(r[12]),
                        json.loads(r[13]), r[14])
            for r in rows]


PAUSE_KINDS = ("domain", "provider", "tag")


@dataclass(frozen=True)
class Pauses:
    """What the operator paused (``mtad queue pause``): deliveries to these domains are not claimed; those of
    these providers or tags are held when claimed."""

    domain: frozenset[str] = frozenset()
    provider: frozenset[str] = frozenset()
    tag: frozenset[str] = frozenset()


def pauses(conn: sqlite3.Connection) -> Pauses:
    found: dict[str, set[str]] = {kind: set() for kind in PAUSE_KINDS}
    for (key,) in conn.execute("SELECT key FROM kv WHERE key LIKE 'pause:%'"):
        _, kind, value = key.split(":", 2)
        found.setdefault(kind, set()).add(value)
    return Pauses(*(frozenset(found[kind]) for kind in PAUSE_KINDS))


@dataclass(frozen=True)
class DueClaim:
    """What ``claim_due`` took: the jobs, each one's suppressed recipients (recipient -> reason), and the pauses
    in force, read in the same transaction."""

    jobs: tuple[DeliveryJob, ...]
    suppressed: tuple[Mapping[str, str], ...]
    pauses: Pauses


def claim(conn: sqlite3.Connection, worker: str, now: float, limit: int, *, preload_body: int = 0,
          lease_until: float | None = None, skip: Container[int] = ()) -> DueClaim:
    """The pauses, then ``claim_due_deliveries`` outside paused domains, then each job's suppressed recipients."""
    paused = pauses(conn)
    jobs = claim_due_deliveries(conn, worker, now, limit, paused.domain, preload_body, lease_until=lease_until,
                                skip=skip)
    return DueClaim(tuple(jobs), tuple(suppressed_many(conn, [
        (job.sending_domain, job.recipients, job.options.get("tags") or ()) for job in jobs])), paused)


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


@dataclass(frozen=True)
class FinishedAttempt:
    """What one attempt of a delivery decided, ready to write (``outbound.attempts.finished`` builds it).

    ``deferred`` recipients stay on the row, due again at ``retry_at``; without any the row is done. ``failed`` are
    the recipients failed for good, with their final outcomes (for the DSN). ``events`` are the attempt's
    ``delivered``/``failed`` events; ``bounce_list`` the (recipient, data) to put on the sending domain's bounce
    list unless the address or its domain is allowlisted. ``system``: the attempt of a DSN mtad made (its
    failures get no DSN)."""

    attempt_no: int
    retry_at: float | None
    deferred: tuple[str, ...]
    failed: Mapping[str, Outcome]
    events: tuple[NewEvent, ...]
    bounce_list: tuple[tuple[str, Mapping[str, Any]], ...] = ()
    last_code: int | None = None
    last_reply: str | None = None
    system: bool = False


# The DSN of a finished attempt: given the failed message's header block, the bounce to commit with it, or None.
DsnBuilder = Callable[[bytes], "Enqueue | None"]


_DEFER_ROW = ("UPDATE deliveries SET recipients = ?, state = 'deferred', attempts = ?, next_attempt_at = ?,"
              f" {UNLOCK}, last_code = ?, last_reply = ?, updated_at = ? WHERE id = ?")
_DONE_ROW = (f"UPDATE deliveries SET recipients = '[]', state = 'done', attempts = ?, {UNLOCK},"
             " last_code = ?, last_reply = ?, updated_at = ? WHERE id = ?")


def finish_attempt(conn: sqlite3.Connection, job: DeliveryJob, attempt: FinishedAttempt, now: float,
                   dsn: DsnBuilder | None = None, *, rows: dict[str, list[tuple]] | None = None) -> list[str]:
    """Apply an attempt: its events, the bounce list, the row's next state, and the DSN (``dsn``, called with the
    message's header block when recipients failed, unless the attempt is a DSN's own). Returns the permanently
    failed recipients. ``rows``: the row's UPDATE is added there (SQL text -> parameter rows) for the caller to
    run with the others of its batch (``finish_attempts``) instead of at once."""
    record_all(conn, attempt.events)
    for rcpt, data in attempt.bounce_list:
        if not allowlisted(conn, job.sending_domain, rcpt):  # never put on the bounce list
            add_suppression(conn, job.sending_domain, "bounces", rcpt, now, dict(data))
    if attempt.deferred:
        sql, params = _DEFER_ROW, (json.dumps(list(attempt.deferred)), attempt.attempt_no, attempt.retry_at,
                                   attempt.last_code, attempt.last_reply, now, job.id)
    else:
        sql, params = _DONE_ROW, (attempt.attempt_no, attempt.last_code, attempt.last_reply, now, job.id)
    if rows is None:
        conn.execute(sql, params)
    else:
        rows.setdefault(sql, []).append(params)
    if attempt.failed and dsn is not None and not attempt.system:
        bounce = dsn(_header_block(conn, job.queue_id))
        if bounce is not None:
            enqueue(conn, bounce, now)
    return list(attempt.failed)


@dataclass(frozen=True)
class AttemptDone:
    """One ``finish_attempt`` call as a record, for ``finish_attempts``: the job, its attempt, the time it ended
    and its DSN builder."""

    job: DeliveryJob
    attempt: FinishedAttempt
    now: float
    dsn: DsnBuilder | None = None


# PostgreSQL: the rows of a burst of outcomes of one kind in ONE statement, their values as arrays (unnest), in
# the column order of the parameters of _DONE_ROW and _DEFER_ROW, then the ids again (a statement per row costs the
# server a Bind and an Execute each, and psycopg ~40 µs of Python each). ``d.id = ANY(ids)`` has the rows found by
# their primary key: joined to the arrays alone, a small table is read whole (a hash join on a sequential scan).
_ROWS_PG = {
    _DONE_ROW: (f"UPDATE deliveries AS d SET recipients = '[]', state = 'done', attempts = v.attempts, {UNLOCK},"
                " last_code = v.code, last_reply = v.reply, updated_at = v.at"
                " FROM unnest(?::int[], ?::int[], ?::text[], ?::float8[], ?::bigint[])"
                " AS v(attempts, code, reply, at, id) WHERE d.id = v.id AND d.id = ANY(?::bigint[])"),
    _DEFER_ROW: ("UPDATE deliveries AS d SET recipients = v.recipients, state = 'deferred', attempts = v.attempts,"
                 f" next_attempt_at = v.due, {UNLOCK}, last_code = v.code, last_reply = v.reply, updated_at = v.at"
                 " FROM unnest(?::text[], ?::int[], ?::float8[], ?::int[], ?::text[], ?::float8[], ?::bigint[])"
                 " AS v(recipients, attempts, due, code, reply, at, id) WHERE d.id = v.id AND d.id = ANY(?::bigint[])"),
}


def finish_attempts(conn: sqlite3.Connection, items: Sequence[AttemptDone]) -> None:
    """``finish_attempt`` of each item, in order, in the caller's transaction; the rows' UPDATEs together at the end,
    per kind (done, deferred): on PostgreSQL one statement for all the rows of a kind (``_ROWS_PG``: the values as
    arrays), on SQLite one ``executemany`` (a statement stepped per row). (Each item is a different delivery row:
    a claimed row has one outcome.)"""
    rows: dict[str, list[tuple]] = {}
    for item in items:
        finish_attempt(conn, item.job, item.attempt, item.now, item.dsn, rows=rows)
    batched = dialect_of(conn).is_postgresql
    for sql, params in rows.items():
        if batched and len(params) > 1:
            columns = [pg_array(column) for column in zip(*params)]
            conn.execute(_ROWS_PG[sql], [*columns, columns[-1]])
        else:
            conn.executemany(sql, params)


def settle_some(conn: sqlite3.Connection, job: DeliveryJob, worker: str, rest: tuple[str, ...],
                attempt: FinishedAttempt, now: float, dsn: DsnBuilder | None = None) -> None:
    """Record final outcomes for some recipients before any connection (suppressed); ``rest`` stays claimed by
    ``worker`` in its state. One transaction: the row never shows as done while ``rest`` still waits.
    """
    (state,) = conn.execute("SELECT state FROM deliveries WHERE id = ?", (job.id,)).fetchone()
    finish_attempt(conn, job, attempt, now, dsn)
    conn.execute("UPDATE deliveries SET recipients = ?, state = ?, attempts = ?, locked_by = ?, locked_at = ?"
                 " WHERE id = ?", (json.dumps(list(rest)), state, job.attempts, worker, now, job.id))


def _header_block(conn: sqlite3.Connection, queue_id: str) -> bytes:
    """The message's header block with its final CRLF, for a DSN's text/rfc822-headers part."""
    row = conn.execute(f"SELECT {dialect_of(conn).header_block('body')} FROM messages WHERE id = ?",
                       (queue_id,)).fetchone()
    return bytes(row[0]) if row else b""


@dataclass(frozen=True)
class QueuedMessage:
    """A stored message (the ``messages`` row), its JSON columns decoded: what the operator's commands show and
    what HTTP work (forwards, ``store()``, the stored-messages API) reads."""

    id: str
    created_at: float
    direction: str
    domain: str
    sender: str
    recipients: tuple[str, ...]
    message_id: str
    headers: Mapping[str, Any]
    options: Mapping[str, Any]
    envelope: Mapping[str, Any]
    size: int
    body: bytes = field(repr=False)
    stored_until: float | None = None
    attachments: tuple[Mapping[str, Any], ...] = ()


MESSAGE_COLUMNS = ("id, created_at, direction, domain, sender, recipients, message_id, headers, options, envelope,"
                   " size, body, stored_until, attachments")


def queued_message(r: Sequence[Any]) -> QueuedMessage:
    """A row of ``SELECT {MESSAGE_COLUMNS} FROM messages`` (``attachments`` None: a store not yet opened by a
    daemon that adds the column)."""
    return QueuedMessage(r[0], r[1], r[2], r[3], r[4], tuple(json.loads(r[5])), r[6], json.loads(r[7]),
                         json.loads(r[8]), json.loads(r[9]), r[10], bytes(r[11]), r[12],
                         tuple(json.loads(r[13] or "[]")))


def load_message(conn: sqlite3.Connection, queue_id: str) -> QueuedMessage | None:
    cursor = conn.execute("SELECT * FROM messages WHERE id = ?", (queue_id,))  # columns of the store's version
    row = cursor.fetchone()
    if row is None:
        return None
    data = dict(zip((d[0] for d in cursor.description), row))
    return queued_message([data.get(name) for name in MESSAGE_COLUMNS.split(", ")])


# --- the operator's actions (``mtad queue ...``) ------------------------------------------------------------

@dataclass(frozen=True)
class DeliveryState:
    id: int
    domain: str
    recipients: tuple[str, ...]
    state: str
    attempts: int
    next_attempt_at: float
    last_reply: str | None
    locked_by: str | None = None  # the claimer holding the row (its lease), None when free


@dataclass(frozen=True)
class ForwardState:
    id: int
    recipient: str
    action: str
    destination: str
    state: str
    attempts: int
    last_status: int | None
    locked_by: str | None = None  # the claimer holding the row (its lease), None when free


@dataclass(frozen=True)
class MessageDetail:
    """A message with its deliveries and forwards (``mtad queue show``)."""

    message: QueuedMessage
    deliveries: tuple[DeliveryState, ...]
    forwards: tuple[ForwardState, ...]


def message_detail(conn: sqlite3.Connection, queue_id: str) -> MessageDetail | None:
    msg = load_message(conn, queue_id)
    if msg is None:
        return None
    deliveries = tuple(DeliveryState(r[0], r[1], tuple(json.loads(r[2])), *r[3:]) for r in conn.execute(
        "SELECT id, domain, recipients, state, attempts, next_attempt_at, last_reply, locked_by FROM deliveries"
        " WHERE message = ?", (queue_id,)))
    forwards = tuple(ForwardState(*r) for r in conn.execute(
        "SELECT id, recipient, action, destination, state, attempts, last_status, locked_by FROM forwards"
        " WHERE message = ?", (queue_id,)))
    return MessageDetail(msg, deliveries, forwards)


def flush(conn: sqlite3.Connection, now: float, domain: str | None = None, queue_id: str | None = None) -> int:
    """Make queued and deferred work due now, and unlock what a claim whose lease ran out still locks (its holder
    died or lost the store): the running daemon takes it at its next poll. Forwards too, unless ``domain``."""
    where, args = "state IN ('deferred', 'queued')", []
    if domain:
        where += " AND domain = ?"
        args.append(domain.lower())
    if queue_id:
        where += " AND message = ?"
        args.append(queue_id)
    release_expired(conn, now, "deliveries", where, tuple(args))
    n = conn.execute(f"UPDATE deliveries SET next_attempt_at = ? WHERE {where}", (now, *args)).rowcount
    if not domain:
        where, args = "state IN ('deferred', 'queued')", ([queue_id] if queue_id else [])
        if queue_id:
            where += " AND message = ?"
        release_expired(conn, now, "forwards", where, tuple(args))
        n += conn.execute(f"UPDATE forwards SET next_attempt_at = ? WHERE {where}", (now, *args)).rowcount
    return n


def delete_message(conn: sqlite3.Connection, queue_id: str) -> bool:
    return conn.execute("DELETE FROM messages WHERE id = ?", (queue_id,)).rowcount > 0


OPERATOR = "operator"  # ``locked_by`` of the rows an operator's action holds for the length of its transaction


def bounce_message(conn: sqlite3.Connection, queue_id: str, now: float,
                   finished: Callable[[DeliveryJob], FinishedAttempt]) -> int:
    """Finish every pending delivery of a message with ``finished(job)`` (no DSN) now; the recipients counted."""
    jobs = [j for j in claim_due_deliveries(conn, OPERATOR, now, 10_000, due=float("inf")) if j.queue_id == queue_id]
    n = 0
    for job in jobs:
        finish_attempt(conn, job, finished(job), now)
        n += len(job.recipients)
    conn.execute(f"UPDATE deliveries SET {UNLOCK} WHERE locked_by = ?", (OPERATOR,))
    return n


def pause(conn: sqlite3.Connection, kind: str, value: str, now: float) -> None:
    conn.execute("INSERT INTO kv (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                 (f"pause:{kind}:{value.lower()}", json.dumps({"since": now})))


def resume(conn: sqlite3.Connection, kind: str, value: str, now: float) -> int:
    conn.execute("DELETE FROM kv WHERE key = ?", (f"pause:{kind}:{value.lower()}",))
    # held rows go back to the queue; any still covered by another pause are held again when claimed
    return conn.execute("UPDATE deliveries SET state = 'deferred', next_attempt_at = ? WHERE state = 'held'",
                        (now,)).rowcount


# --- the typed methods ---------------------------------------------------------------------------------------

class QueueStore(Protocol):
    """Messages, their deliveries, claims on deliveries and their outcomes.

    Contract:
    - **Commit.** ``enqueue(items, now)`` stores each message once with its delivery rows (one per destination
      domain of ``deliver_to``, and one per (domain, sender) of its ``address`` forwards), its forward rows and its
      events, all of ``items`` in one transaction, group-committed with other writers: when it returns every one
      is durable (the 250 may be given); if it raises (``StoreError`` when the store cannot commit) none of them
      is stored. Not idempotent: a queue id is stored once (a second time is refused). ``enqueue_stream(make,
      now)`` does the same for the items ``make()`` yields, written one by one as they come (a large batch is
      never all in memory): one transaction, all or none; an exception raised by the iteration fails the write
      and stores nothing (the caller gets it). ``make`` may be called again if the engine runs the transaction
      again (each call must yield the same messages; their queue ids may differ); the result is what the
      committed run wrote: per message (queue id, recipients, size, has work rows).
    - **Claims are leases.** ``claim_due(worker, now, limit, ...)`` takes up to ``limit`` deliveries that are due
      (``next_attempt_at <= now``, queued or deferred), oldest due first, outside paused domains, and locks each
      to ``worker`` until ``lease_until``: rows nobody holds, and rows whose holder's lease ran out before ``now``
      (the holder died or lost the store: taken over), except ``skip`` (the rows ``worker`` still holds itself).
      A holder renews its leases while it works (``mtad.store.leases``); a row is claimed by one worker at a
      time. The claim, the pauses and each job's suppressed recipients are read in one transaction.
    - **Ending a claim.** ``finish_attempt`` writes, in one transaction, the attempt's events, the bounce-list
      entries, the row's next state (deferred with the remaining recipients and ``retry_at``, else done; the lock
      released) and the DSN message with its own rows and events. ``finish_attempts(items)`` writes many
      attempts so, all in one transaction (all or none): one write for the outcomes of a burst of deliveries
      instead of a write each (on PostgreSQL one round trip and one commit for all). ``settle_some`` does the same for some
      recipients and keeps the rest claimed. ``release`` gives a row back unlocked without counting an attempt,
      ``hold`` puts it aside (paused) unlocked. Each is idempotent in effect when repeated with the same
      arguments after a failure that left nothing written (``leases.settle_call`` repeats them until written), but
      ``finish_attempt`` repeated after it was written records its events twice: call it once per attempt.
    - ``release_stale_locks(node_id)`` at start-up: nothing of this node is in flight, every lock its previous
      process left goes (claimers lock rows with their node's id); other nodes' leases stay. Without a node id
      (one node on the store) every lock goes.
    - Reads (``load_body``, ``message``, ``list_queue``, counts) see one consistent snapshot each.
    - The operator's actions (``flush``, ``delete_message``, ``bounce_message``, ``pause``, ``resume``) are one
      transaction each; a running daemon sees them at its next claim.
    """

    async def enqueue(self, items: Sequence[Enqueue], now: float) -> None:
        """Commit ``items`` (messages, work rows, events) in one transaction, all or none."""

    async def enqueue_stream(self, make: Callable[[], Iterable[Enqueue]], now: float) -> tuple[Enqueued, ...]:
        """Commit what ``make()`` yields, each item written as it comes, in one transaction, all or none."""

    async def release_stale_locks(self, node_id: str | None = None) -> int:
        """Unlock the rows claimed by ``node_id`` (None: every claimed row) in every work table; the number
        released."""

    async def claim_due(self, worker: str, now: float, limit: int, *, preload_body: int = 0,
                        lease_until: float | None = None, skip: Container[int] = ()) -> DueClaim:
        """Lease up to ``limit`` due deliveries to ``worker`` (see the contract); bodies up to ``preload_body``
        bytes come with the jobs, larger ones are read when sent (``load_body``)."""

    async def load_body(self, queue_id: str) -> bytes | None:
        """A message's bytes, None once it is gone (deleted by an operator)."""

    async def hold(self, delivery_id: int) -> None:
        """Put a claimed delivery aside (state ``held``, unlocked) until ``resume``."""

    async def release(self, delivery_id: int, next_attempt_at: float, reply: str = "") -> None:
        """Give a claimed delivery back, due at ``next_attempt_at``, without counting an attempt."""

    async def finish_attempt(self, job: DeliveryJob, attempt: FinishedAttempt, now: float,
                             dsn: DsnBuilder | None = None) -> None:
        """Write an attempt's outcome with its events, bounce list and DSN (see the contract)."""

    async def finish_attempts(self, items: Sequence[AttemptDone]) -> None:
        """``finish_attempt`` of every item, in one transaction: all written or none."""

    async def settle_some(self, job: DeliveryJob, worker: str, rest: tuple[str, ...], attempt: FinishedAttempt,
                          now: float, dsn: DsnBuilder | None = None) -> None:
        """``finish_attempt`` for some recipients; ``rest`` stays claimed by ``worker``, in one transaction."""

    async def message(self, queue_id: str) -> QueuedMessage | None:
        """A stored message, or None."""

    async def list_queue(self, limit: int = 1000) -> tuple[QueueEntry, ...]:
        """Pending deliveries and forwards, oldest first."""

    async def count_messages(self) -> int:
        """How many messages are stored."""

    async def queue_counts(self) -> QueueCounts:
        """Pending work by state (metrics)."""

    async def message_detail(self, queue_id: str) -> MessageDetail | None:
        """A message with its deliveries and forwards (each with the claimer holding it), or None."""

    async def flush(self, now: float, *, domain: str | None = None, queue_id: str | None = None) -> int:
        """Make pending work due now (of one domain's deliveries, or one message); the rows made due."""

    async def delete_message(self, queue_id: str) -> bool:
        """Delete a message and its work rows; False if there was none."""

    async def bounce_message(self, queue_id: str, now: float,
                             finished: Callable[[DeliveryJob], FinishedAttempt]) -> int:
        """Finish every pending delivery of a message with ``finished(job)`` (no DSN); the recipients failed."""

    async def pause(self, kind: str, value: str, now: float) -> None:
        """Pause deliveries of a domain, provider or tag (``PAUSE_KINDS``)."""

    async def resume(self, kind: str, value: str, now: float) -> int:
        """Lift a pause; held deliveries are due again now. The rows put back."""

    async def pauses(self) -> Pauses:
        """The pauses in force."""


class QueueMethods:
    """``QueueStore`` over the SQLite engine (``self.write``/``self.read``): one writer or reader hop each."""

    async def enqueue(self, items: Sequence[Enqueue], now: float) -> None:
        def write(conn: sqlite3.Connection) -> None:
            for item in items:
                enqueue(conn, item, now, stage=True)  # nothing else of these messages is written here
        await self.write(write)  # type: ignore[attr-defined]

    async def enqueue_stream(self, make: Callable[[], Iterable[Enqueue]], now: float) -> tuple[Enqueued, ...]:
        def write(conn: sqlite3.Connection) -> tuple[Enqueued, ...]:
            done = []
            for item in make():  # built on the writer thread as it is written: one item in memory at a time
                enqueue(conn, item, now)
                done.append(Enqueued(item.queue_id, len(item.message.envelope.recipients), len(item.message.body),
                                     bool(item.forwards) or bool(item.message.envelope.recipients
                                                                 if item.deliver_to is None else item.deliver_to)))
            return tuple(done)
        return await self.write(write)  # type: ignore[attr-defined]

    async def release_stale_locks(self, node_id: str | None = None) -> int:
        return await self.write(lambda c: release_stale_locks(c, node_id))  # type: ignore[attr-defined]

    async def claim_due(self, worker: str, now: float, limit: int, *, preload_body: int = 0,
                        lease_until: float | None = None, skip: Container[int] = ()) -> DueClaim:
        return await self.write(lambda c: claim(  # type: ignore[attr-defined]
            c, worker, now, limit, preload_body=preload_body, lease_until=lease_until, skip=skip))

    async def load_body(self, queue_id: str) -> bytes | None:
        return await self.read(lambda c: load_body(c, queue_id))  # type: ignore[attr-defined]

    async def hold(self, delivery_id: int) -> None:
        await self.write(lambda c: hold(c, delivery_id))  # type: ignore[attr-defined]

    async def release(self, delivery_id: int, next_attempt_at: float, reply: str = "") -> None:
        await self.write(lambda c: release(c, delivery_id, next_attempt_at, reply))  # type: ignore[attr-defined]

    async def finish_attempt(self, job: DeliveryJob, attempt: FinishedAttempt, now: float,
                             dsn: DsnBuilder | None = None) -> None:
        await self.write(lambda c: finish_attempt(c, job, attempt, now, dsn))  # type: ignore[attr-defined]

    async def finish_attempts(self, items: Sequence[AttemptDone]) -> None:
        items = tuple(items)
        if items:
            await self.write(lambda c: finish_attempts(c, items))  # type: ignore[attr-defined]

    async def settle_some(self, job: DeliveryJob, worker: str, rest: tuple[str, ...], attempt: FinishedAttempt,
                          now: float, dsn: DsnBuilder | None = None) -> None:
        await self.write(lambda c: settle_some(c, job, worker, rest, attempt, now, dsn))  # type: ignore[attr-defined]

    async def message(self, queue_id: str) -> QueuedMessage | None:
        return await self.read(lambda c: load_message(c, queue_id))  # type: ignore[attr-defined]

    async def list_queue(self, limit: int = 1000) -> tuple[QueueEntry, ...]:
        return await self.read(lambda c: list_queue(c, limit))  # type: ignore[attr-defined]

    async def count_messages(self) -> int:
        return await self.read(count_messages)  # type: ignore[attr-defined]

    async def queue_counts(self) -> QueueCounts:
        return await self.read(queue_counts)  # type: ignore[attr-defined]

    async def message_detail(self, queue_id: str) -> MessageDetail | None:
        return await self.read(lambda c: message_detail(c, queue_id))  # type: ignore[attr-defined]

    async def flush(self, now: float, *, domain: str | None = None, queue_id: str | None = None) -> int:
        return await self.write(lambda c: flush(c, now, domain, queue_id))  # type: ignore[attr-defined]

    async def delete_message(self, queue_id: str) -> bool:
        return await self.write(lambda c: delete_message(c, queue_id))  # type: ignore[attr-defined]

    async def bounce_message(self, queue_id: str, now: float,
                             finished: Callable[[DeliveryJob], FinishedAttempt]) -> int:
        return await self.write(lambda c: bounce_message(c, queue_id, now, finished))  # type: ignore[attr-defined]

    async def pause(self, kind: str, value: str, now: float) -> None:
        await self.write(lambda c: pause(c, kind, value, now))  # type: ignore[attr-defined]

    async def resume(self, kind: str, value: str, now: float) -> int:
        return await self.write(lambda c: resume(c, kind, value, now))  # type: ignore[attr-defined]

    async def pauses(self) -> Pauses:
        return await self.read(pauses)  # type: ignore[attr-defined]
