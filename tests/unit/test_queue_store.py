"""The typed queue and event methods of the store (``QueueStore``, ``EventStore``, on every backend:
``tests.support.stores``): what commits together, claims with their pauses and suppressions, outcomes with their
events, bounce list and DSN, and the event bus the store tells."""

import asyncio
import json
import sqlite3

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage, Outcome, SendOptions
from mtad.events import shape
from mtad.outbound import dsn, queueadmin
from mtad.outbound.attempts import AttemptRecord, dsn_for, finished
from mtad.store import queue as spool
from mtad.store.events import EventBus
from mtad.store.sqlite import SqliteStore
from mtad.store.suppressions import Suppression
from tests.support.stores import backend_store  # noqa: F401 (fixture)

BODY = b"From: s@example.com\r\nSubject: t\r\nMessage-ID: <m1@example.com>\r\n\r\nhello\r\n"


def message(rcpts, transport="smtp"):
    return NewMessage(Envelope("s@example.com", tuple(rcpts), auth_user="u@example.com", transport=transport), BODY,
                      "outbound", "example.com", HeaderSummary("m1@example.com", "s@example.com", rcpts[0], "t"),
                      SendOptions(tags=("t1",)))


def item(rcpts, now=1.0, queue_id=None, **kw):
    queue_id = queue_id or spool.new_queue_id()
    msg = message(rcpts, **kw)
    return spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now))


@pytest.fixture
async def store(backend_store):
    s = backend_store(bus=EventBus())
    s.integrity_error = backend_store.integrity_error
    return s


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite3", bus=EventBus())
    s.open()
    yield s
    s.close()


async def count(store, sql):
    return await store.read(lambda c: c.execute(sql).fetchone()[0])


async def test_enqueue_commits_a_batch_all_or_none(store):
    first = item(["a@x.test"])
    await store.enqueue([first], 1.0)
    with pytest.raises(store.integrity_error):  # the second message reuses a queue id: the whole batch is refused
        await store.enqueue([item(["b@x.test"]), item(["c@x.test"], queue_id=first.queue_id)], 1.0)
    assert await store.count_messages() == 1
    assert await count(store, "SELECT count(*) FROM events WHERE event = 'accepted'") == 1
    [entry] = await store.list_queue()
    assert (entry.queue_id, entry.recipients, entry.destination, entry.state, entry.kind) == (
        first.queue_id, ("a@x.test",), "x.test", "queued", "delivery")


async def test_claim_due_brings_pauses_and_suppressions_from_one_transaction(store):
    await store.enqueue([item(["a@x.test", "gone@x.test"]), item(["b@paused.test"])], 1.0)
    await store.add_suppressions("example.com", [Suppression("bounces", "gone@x.test", 1.0)])
    await queueadmin.pause(store, "domain", "paused.test")
    await queueadmin.pause(store, "tag", "Promo")
    claim = await store.claim_due("w1", 2.0, 10)
    assert [job.domain for job in claim.jobs] == ["x.test"]  # a paused domain is not claimed
    assert claim.suppressed == ({"gone@x.test": "suppress-bounce"},)
    assert claim.pauses == spool.Pauses(frozenset({"paused.test"}), frozenset(), frozenset({"promo"}))
    assert (await store.claim_due("w2", 2.0, 10)).jobs == ()  # leased to w1
    assert await queueadmin.resume(store, "domain", "paused.test") == 0
    assert [job.domain for job in (await store.claim_due("w2", 2.0, 10)).jobs] == ["paused.test"]


async def test_finish_attempt_writes_outcomes_events_bounce_list_and_dsn_together(store):
    await store.enqueue([item(["ok@x.test", "nobody@x.test", "later@x.test"])], 1.0)
    [job] = (await store.claim_due("w1", 2.0, 10)).jobs
    outcomes = {"ok@x.test": Outcome("delivered", 250, "2.0.0", "Ok"),
                "nobody@x.test": Outcome("failed", 550, "5.1.1", "No such user"),
                "later@x.test": Outcome("deferred", 451, "4.3.0", "Try later")}
    attempt = finished(job, AttemptRecord(outcomes, 1, 600.0), 3.0)
    build = lambda j, failed, headers: dsn.build(j, failed, "mx.example.com", headers)  # noqa: E731
    await store.finish_attempt(job, attempt, 3.0, dsn_for(build, job, attempt, 3.0))
    row = await store.read(lambda c: c.execute("SELECT recipients, state, attempts, next_attempt_at, locked_by"
                                               " FROM deliveries WHERE id = ?", (job.id,)).fetchone())
    assert (json.loads(row[0]), row[1], row[2], row[3], row[4]) == (["later@x.test"], "deferred", 1, 600.0, None)
    kinds = await store.read(lambda c: sorted(tuple(r) for r in c.execute(
        "SELECT event, severity, recipient FROM events WHERE event != 'accepted'")))
    assert kinds == [("delivered", "", "ok@x.test"), ("failed", "permanent", "nobody@x.test"),
                     ("failed", "temporary", "later@x.test")]
    assert await count(store, "SELECT count(*) FROM suppressions WHERE kind = 'bounces'"
                              " AND address = 'nobody@x.test'") == 1
    # the DSN is a message of its own, to the sender, committed with the outcome; its accepted event is a system one
    assert await store.count_messages() == 2
    [entry] = [e for e in await store.list_queue() if e.queue_id != job.queue_id]
    assert (entry.sender, entry.recipients) == ("", ("s@example.com",))
    detail = await store.message_detail(entry.queue_id)
    assert detail.message.envelope["transport"] == "dsn" and b"No such user" in detail.message.body
    assert await count(store, "SELECT sum(count) FROM stats WHERE tag = '' AND event = 'accepted'") == 3


async def test_finish_attempts_writes_a_burst_of_outcomes_in_one_transaction_all_or_none(store):
    await store.enqueue([item([f"r{i}@x{i}.test"]) for i in range(6)], 1.0)
    jobs = (await store.claim_due("w1", 2.0, 10)).jobs
    ok, later = Outcome("delivered", 250, "2.0.0", "Ok"), Outcome("deferred", 451, "4.3.0", "Try later")

    def done(job, outcome, dsn_builder=None):
        attempt = finished(job, AttemptRecord({job.recipients[0]: outcome}, 1, 600.0), 3.0)
        return spool.AttemptDone(job, attempt, 3.0, dsn_builder)

    def broken(headers):
        raise RuntimeError("a DSN builder's bug")
    failing = spool.AttemptDone(jobs[5], finished(jobs[5], AttemptRecord(
        {jobs[5].recipients[0]: Outcome("failed", 550, "5.1.1", "No such user")}, 1, None), 3.0), 3.0, broken)
    with pytest.raises(RuntimeError, match="bug"):  # one item fails: none of the burst is written
        await store.finish_attempts([done(jobs[0], ok), failing])
    assert await count(store, "SELECT count(*) FROM deliveries WHERE state = 'done'") == 0
    assert await count(store, "SELECT count(*) FROM events WHERE event != 'accepted'") == 0
    writes = store.committed_writes
    await store.finish_attempts([done(job, ok) for job in jobs[:4]] + [done(jobs[4], later)])
    assert store.committed_writes == writes + 1  # one write (one transaction) for the five outcomes
    rows = await store.read(lambda c: sorted(tuple(r) for r in c.execute(
        "SELECT state, locked_by FROM deliveries")))
    assert rows == [("deferred", None)] + [("done", None)] * 4 + [("queued", "w1")]
    # the rows' UPDATEs run together at the end of the burst (one executemany per kind): each row got its own values
    detail = await store.read(lambda c: sorted(tuple(r) for r in c.execute(
        "SELECT id, state, recipients, attempts, last_code FROM deliveries WHERE state != 'queued'")))
    assert detail == sorted([(job.id, "done", "[]", 1, 250) for job in jobs[:4]]
                            + [(jobs[4].id, "deferred", json.dumps(list(jobs[4].recipients)), 1, 451)])
    assert await count(store, f"SELECT next_attempt_at FROM deliveries WHERE id = {jobs[4].id}") == 600.0
    assert await count(store, "SELECT count(*) FROM events WHERE event = 'delivered'") == 4
    assert await count(store, "SELECT count(*) FROM events WHERE event = 'failed'") == 1


async def test_a_burst_of_outcomes_gives_each_row_its_own_values_in_every_kind(store):
    """The rows of a burst are updated together per kind (on PostgreSQL one statement per kind, the values as
    arrays): each row still gets exactly its own recipients, attempt number, due time, code and reply, and rows
    outside the burst are untouched."""
    await store.enqueue([item([f"r{i}@x{i}.test", f"s{i}@x{i}.test"]) for i in range(7)], 1.0)
    jobs = (await store.claim_due("w1", 2.0, 10)).jobs
    ok = Outcome("delivered", 250, "2.0.0", "Ok")

    def attempt(job, n, outcomes, retry_at):
        return spool.AttemptDone(job, finished(job, AttemptRecord(outcomes, n, retry_at), 3.0 + n), 3.0 + n)
    burst = []
    for n, job in enumerate(jobs[:3]):  # deferred: one recipient each left, due at its own time
        first, second = job.recipients
        burst.append(attempt(job, n + 1, {second: Outcome("deferred", 421 + n, "4.4.2", f"later {n}"), first: ok},
                             600.0 + n))  # the row's last_code and last_reply: the first outcome's
    for n, job in enumerate(jobs[3:6]):  # done: each with its own code and reply
        burst.append(attempt(job, n + 1, {r: Outcome("delivered", 250, "2.0.0", f"ok {n}") for r in job.recipients},
                             None))
    await store.finish_attempts(burst)
    rows = await store.read(lambda c: {r[0]: tuple(r[1:]) for r in c.execute(
        "SELECT id, state, recipients, attempts, next_attempt_at, last_code, last_reply, locked_by, updated_at"
        " FROM deliveries")})
    for n, job in enumerate(jobs[:3]):
        state, recipients, attempts, due, code, reply, locked_by, updated = rows[job.id]
        assert (state, json.loads(recipients), attempts, due, code, locked_by, updated) == (
            "deferred", [job.recipients[1]], n + 1, 600.0 + n, 421 + n, None, 4.0 + n)
        assert f"later {n}" in reply
    for n, job in enumerate(jobs[3:6]):
        state, recipients, attempts, _, code, reply, locked_by, updated = rows[job.id]
        assert (state, recipients, attempts, code, locked_by, updated) == ("done", "[]", n + 1, 250, None, 4.0 + n)
        assert f"ok {n}" in reply
    assert rows[jobs[6].id][0] == "queued" and rows[jobs[6].id][6] == "w1"  # not in the burst: still claimed
    assert await count(store, "SELECT count(*) FROM events WHERE event = 'delivered'") == 9


async def test_the_operator_bounce_fails_every_pending_recipient_without_a_dsn(store):
    queued = item(["a@x.test", "b@y.test"])
    await store.enqueue([queued], 1.0)
    assert await queueadmin.bounce(store, queued.queue_id) == 2
    assert await store.list_queue() == ()
    assert await count(store, "SELECT count(*) FROM events WHERE event = 'failed'") == 2
    assert await store.count_messages() == 1
    info = await queueadmin.show(store, queued.queue_id)
    assert [(d["recipients"], d["state"]) for d in info["deliveries"]] == [("[]", "done"), ("[]", "done")]
    assert info["headers_text"].startswith("From: s@example.com") and "body" not in info


async def test_the_store_tells_its_event_bus_and_stops_when_unsubscribed(store):
    seen = []
    stop = store.bus.on_event(lambda domain, event: seen.append((domain, event["event"], event["recipient"])))
    await store.enqueue([item(["a@x.test"])], 1.0)
    await store.record_events([shape.accepted(message(["r@y.test"]), "Q", 2.0)[0]])
    assert seen == [("example.com", "accepted", "a@x.test"), ("example.com", "accepted", "r@y.test")]
    stop()
    await store.enqueue([item(["b@x.test"])], 1.0)
    assert len(seen) == 2


async def test_a_read_only_store_reads_and_refuses_to_open(tmp_path, sqlite_store):
    store = sqlite_store
    await store.enqueue([item(["a@x.test"])], 1.0)
    ro = SqliteStore(store.path, read_only=True)
    try:
        assert len(await ro.list_queue()) == 1
        with pytest.raises(Exception, match="read-only"):
            ro.open()
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            await ro.read(lambda c: c.execute("DELETE FROM messages"))
    finally:
        ro.close()
    assert await asyncio.wait_for(store.count_messages(), 5) == 1
