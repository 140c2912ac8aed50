import asyncio
import sqlite3

import pytest

from mtad import spool
from mtad.errors import StoreError
from mtad.store import Store
from mtad.types import Envelope, HeaderSummary, NewMessage, SendOptions


def message(rcpts=("a@x.com", "b@x.com", "c@y.org")):
    return NewMessage(Envelope("s@example.com", tuple(rcpts), auth_user="u@example.com"), b"Subject: t\r\n\r\nhi\r\n",
                      "outbound", "example.com", HeaderSummary("id@example.com", "s@example.com", "a@x.com", "t"),
                      SendOptions(tags=("t1",)))


@pytest.fixture
async def store(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    s.open()
    yield s
    s.close()


async def test_concurrent_writes_share_commits(store):
    msg = message()
    ids = [spool.new_queue_id() for _ in range(200)]
    await asyncio.gather(*(store.write(lambda c, q=q: spool.enqueue(c, q, msg, 1.0)) for q in ids))
    assert store.committed_writes == 200
    assert store.commits < 200  # group commit: fewer fsyncs than messages
    counts = await store.read(lambda c: c.execute(
        "SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM deliveries),"
        " (SELECT count(*) FROM events WHERE event = 'accepted')").fetchone())
    assert tuple(counts) == (200, 400, 600)  # one body, a row per destination domain, an event per recipient


async def test_a_failing_write_rolls_back_alone(store):
    msg = message()
    qid = spool.new_queue_id()

    def half_then_fail(conn):
        spool.enqueue(conn, spool.new_queue_id(), msg, 1.0)
        raise sqlite3.IntegrityError("boom")
    results = await asyncio.gather(store.write(half_then_fail), store.write(lambda c: spool.enqueue(c, qid, msg, 1.0)),
                                   return_exceptions=True)
    assert isinstance(results[0], sqlite3.IntegrityError) and results[1] is None
    rows = await store.read(lambda c: c.execute("SELECT id FROM messages").fetchall())
    assert [r[0] for r in rows] == [qid]


async def test_commit_failure_is_a_store_error(tmp_path):
    s = Store(tmp_path / "db.sqlite3")
    s.open()
    try:
        def huge(conn):
            conn.execute("PRAGMA max_page_count = 10")
            conn.execute("CREATE TABLE IF NOT EXISTS filler (x BLOB)")
            conn.execute("INSERT INTO filler VALUES (zeroblob(1000000))")
        with pytest.raises((StoreError, sqlite3.DatabaseError)):
            await s.write(huge)
        n = await s.read(lambda c: c.execute("SELECT count(*) FROM sqlite_master WHERE name = 'filler'").fetchone()[0])
        assert n == 0
    finally:
        s.close()


async def test_claim_and_finish_a_delivery(store):
    qid = spool.new_queue_id()
    await store.write(lambda c: spool.enqueue(c, qid, message(("a@x.com",)), 1.0))
    jobs = await store.write(lambda c: spool.claim_due_deliveries(c, "w1", 2.0, 10))
    assert [j.recipients for j in jobs] == [("a@x.com",)]
    assert await store.write(lambda c: spool.claim_due_deliveries(c, "w2", 2.0, 10)) == []  # locked
    released = await store.write(spool.release_stale_locks)
    assert released == 1
