"""Outbound spool functions on a real SQLite store: suppression lookups, partial settling, preloaded bodies, the
original headers handed to the DSN builder."""

import json
import sqlite3

import pytest

from mtad.events import shape
from mtad.outbound.attempts import AttemptRecord, dsn_for, finished
from mtad.store import queue as spool
from mtad.store import suppressions
from mtad.store.migrations.sqlite import migrate
from mtad.base.types import Envelope, HeaderSummary, NewMessage, Outcome

BODY = b"From: s@example.com\r\nSubject: t\r\nMessage-ID: <m1@example.com>\r\n\r\nhello\r\n"


@pytest.fixture
def conn():
    c = sqlite3.connect(":memory:", isolation_level=None)
    migrate(c, "test")
    yield c
    c.close()


def suppress(conn, kind, address, data=None):
    suppressions.add_suppression(conn, "example.com", kind, address, 1.0, data or {})


def enqueue(conn, rcpts, body=BODY):
    qid = spool.new_queue_id()
    msg = NewMessage(Envelope("s@example.com", tuple(rcpts)), body, "outbound", "example.com",
                     HeaderSummary("m1@example.com", "s@example.com", rcpts[0], "t"))
    spool.enqueue(conn, spool.Enqueue(qid, msg, shape.accepted(msg, qid, 1.0)), 1.0)
    return qid


def test_suppressed_reasons_precedence_and_allowlist(conn):
    suppress(conn, "bounces", "b@x.test")
    suppress(conn, "complaints", "b@x.test")
    suppress(conn, "complaints", "c@x.test")
    suppress(conn, "unsubscribes", "u@x.test", {"tags": ["news"]})
    suppress(conn, "unsubscribes", "all@x.test", {"tags": ["*"]})
    suppress(conn, "bounces", "ok@allowed.test")
    suppress(conn, "whitelists", "allowed.test")  # a whole domain
    suppress(conn, "bounces", "vip@x.test")
    suppress(conn, "whitelists", "vip@x.test")
    rcpts = ["B@x.test", "c@x.test", "u@x.test", "all@x.test", "ok@allowed.test", "vip@x.test", "fresh@x.test"]
    assert suppressions.suppressed(conn, "example.com", rcpts, tags=["other"]) == {
        "B@x.test": "suppress-bounce", "c@x.test": "suppress-complaint", "all@x.test": "suppress-unsubscribe"}
    assert suppressions.suppressed(conn, "example.com", ["u@x.test"], tags=["news"]) == {"u@x.test": "suppress-unsubscribe"}
    assert suppressions.suppressed(conn, "other.org", rcpts) == {}  # lists belong to one sending domain


def test_suppressed_with_more_recipients_than_one_query_takes(conn):
    rcpts = [f"r{i}@d{i % 7}.test" for i in range(1200)]
    for r in rcpts[::100]:
        suppress(conn, "bounces", r)
    assert set(suppressions.suppressed(conn, "example.com", rcpts)) == set(rcpts[::100])


def test_settle_some_keeps_the_rest_claimed_in_its_state(conn):
    qid = enqueue(conn, ["gone@x.test", "here@x.test"])
    [job] = spool.claim_due_deliveries(conn, "w1", 2.0, 10)
    outcome = Outcome("failed", 605, "5.0.0", "suppressed", reason="suppress-bounce")
    attempt = finished(job, AttemptRecord({"gone@x.test": outcome}, 1, None), 2.0)
    built = []
    spool.settle_some(conn, job, "w1", ("here@x.test",), attempt, 2.0,
                      dsn_for(lambda j, failed, headers: built.append((list(failed), headers)), job, attempt, 2.0))
    row = conn.execute("SELECT recipients, state, attempts, locked_by FROM deliveries WHERE message = ?",
                       (qid,)).fetchone()
    assert (json.loads(row[0]), row[1], row[2], row[3]) == (["here@x.test"], "queued", 0, "w1")
    [(event,)] = conn.execute("SELECT data FROM events WHERE event = 'failed'").fetchall()
    assert json.loads(event)["reason"] == "suppress-bounce"
    # The DSN builder gets the original header block, not the body.
    assert built == [(["gone@x.test"], BODY.split(b"\r\n\r\n")[0] + b"\r\n")]


def test_claim_preloads_only_small_bodies(conn):
    small = enqueue(conn, ["a@x.test"])
    large = enqueue(conn, ["a@x.test"], BODY + b"x" * 5000 + b"\r\n")
    jobs = {j.queue_id: j for j in spool.claim_due_deliveries(conn, "w1", 2.0, 10, preload_body=1000)}
    assert jobs[small].body == BODY
    assert jobs[large].body is None
