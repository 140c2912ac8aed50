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


def _counters(conn):
    return {table: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {table}"))
            for table in ("stats", "stats_daily", "stats_dims")}


async def test_events_of_a_group_commit_are_counted_once_per_key_and_dropped_with_a_failed_write(store, tmp_path):
    """Events and their counters are staged per write and written just before the batch's COMMIT: the
    batch-mates' sum up, a failed write's vanish with it, and the result equals recording them one by one."""
    msg = message()
    ids = [spool.new_queue_id() for _ in range(50)]

    def enqueue_then_fail(conn):
        spool.enqueue(conn, spool.new_queue_id(), msg, 7200.0)
        raise ValueError("boom")
    results = await asyncio.gather(store.write(enqueue_then_fail),
                                   *(store.write(lambda c, q=q: spool.enqueue(c, q, msg, 7200.0)) for q in ids),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1:] == [None] * 50
    assert store.commits < 51
    got = await store.read(lambda c: (c.execute("SELECT count(*) FROM events").fetchone()[0], _counters(c)))
    assert got[0] == 150
    assert dict(((r[0], r[1], r[2]), r[4]) for r in got[1]["stats_daily"]) == {
        ("example.com", "", "accepted:outgoing"): 150, ("example.com", "t1", "accepted:outgoing"): 150}

    from mtad.store import SCHEMA, connect  # the same events on a plain connection: counted at once
    plain = connect(tmp_path / "plain.sqlite3")
    plain.executescript(SCHEMA)
    for q in ids:
        spool.enqueue(plain, q, msg, 7200.0)
    assert _counters(plain) == got[1]
    plain.close()


async def test_staged_rows_are_written_in_the_transaction_of_their_writes(store):
    from mtad import events, webhooks
    from mtad.config import WebhookConfig, WebhooksConfig
    await store.write(lambda c: webhooks.sync_config(c, WebhooksConfig(domains={"example.com": {
        "delivered": WebhookConfig(("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"))}}), 1.0))
    seen = []

    def write(conn, fail=False):
        conn.staged.pending("probe", lambda c, items: seen.append(list(items))).append("x" if not fail else "y")
        events.record(conn, "example.com", events.base_event(
            "delivered", timestamp=3600.0, recipient="r@x.com", queue_id="q", message={"headers": {}}, options={},
            envelope={}, flags={}))
        if fail:
            raise ValueError("boom")
    results = await asyncio.gather(store.write(write), store.write(lambda c: write(c, True)), store.write(write),
                                   return_exceptions=True)
    assert results[0] is None and isinstance(results[1], ValueError) and results[2] is None
    assert sorted(x for batch in seen for x in batch) == ["x", "x"]
    n = await store.read(lambda c: c.execute("SELECT count(*), (SELECT sum(count) FROM stats WHERE tag = ''"
                                             " AND event = 'delivered'), (SELECT count(*) FROM webhook_deliveries"
                                             " WHERE event_id IN (SELECT id FROM events)) FROM events").fetchone())
    assert tuple(n) == (2, 2, 4)  # the failed write's event, counter and webhook rows are gone with it


@pytest.mark.parametrize("n", [0, 1, 3, 511, 1300])
def test_execute_rows_inserts_every_row_in_order(n):
    from mtad.store import execute_rows
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a, b)")
    execute_rows(conn, "INSERT INTO t (a, b)", 2, [(i, str(i)) for i in range(n)])
    assert conn.execute("SELECT a, b FROM t ORDER BY seq").fetchall() == [(i, str(i)) for i in range(n)]
    conn.execute("CREATE TABLE c (k PRIMARY KEY, n)")
    execute_rows(conn, "INSERT INTO c (k, n)", 2, [("x", 2), ("y", 1)], " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    execute_rows(conn, "INSERT INTO c (k, n)", 2, [("x", 3)], " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    assert conn.execute("SELECT k, n FROM c ORDER BY k").fetchall() == [("x", 5), ("y", 1)]


async def test_a_store_made_before_the_attachments_column_gets_it_at_open(tmp_path):
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE messages (id TEXT PRIMARY KEY, created_at REAL NOT NULL, direction TEXT NOT NULL,"
                 " domain TEXT NOT NULL, sender TEXT NOT NULL, recipients TEXT NOT NULL, message_id TEXT NOT NULL"
                 " DEFAULT '', headers TEXT NOT NULL, options TEXT NOT NULL, envelope TEXT NOT NULL,"
                 " size INTEGER NOT NULL, body BLOB NOT NULL, stored_until REAL)")
    conn.execute("INSERT INTO messages VALUES ('old', 1, 'outbound', 'example.com', 's@example.com', '[]', '', '{}',"
                 " '{}', '{}', 2, x'6869', NULL)")
    conn.commit()
    assert spool.message_row(conn, "old")["attachments"] == []  # read before any daemon added the column
    conn.close()
    s = Store(path)
    s.open()
    try:
        listed = [{"filename": "a.pdf", "content-type": "application/pdf", "size": 3}]
        msg = message()
        qid = spool.new_queue_id()
        await s.write(lambda c: spool.enqueue(c, qid, NewMessage(msg.envelope, msg.body, msg.direction, msg.domain,
                                                                   msg.headers, msg.options, tuple(listed)), 1.0))
        rows = await s.read(lambda c: (spool.message_row(c, "old")["attachments"],
                                       spool.message_row(c, qid)["attachments"]))
        assert rows == ([], listed)
    finally:
        s.close()
