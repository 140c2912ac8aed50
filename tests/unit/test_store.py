import asyncio
import sqlite3

import pytest

from mtad.events import shape
from mtad.store import queue as spool
from mtad.base.errors import StoreError
from mtad.store.sqlite import SqliteStore
from tests.support.stores import backend_store  # noqa: F401 (fixture)
from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions


def message(rcpts=("a@x.com", "b@x.com", "c@y.org")):
    return NewMessage(Envelope("s@example.com", tuple(rcpts), auth_user="u@example.com"), b"Subject: t\r\n\r\nhi\r\n",
                      "outbound", "example.com", HeaderSummary("id@example.com", "s@example.com", "a@x.com", "t"),
                      SendOptions(tags=("t1",)))


def item(queue_id, msg, now, **kw):
    """What ingress commits for ``msg``: it with its accepted events."""
    return spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now), **kw)


@pytest.fixture
async def store(backend_store):
    """A store of each backend (``tests.support.stores``); the tests of SQLite's own failures open theirs."""
    return backend_store()


@pytest.fixture
async def sqlite_store(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite3")
    s.open()
    yield s
    s.close()


async def test_concurrent_writes_share_commits(store):
    msg = message()
    ids = [spool.new_queue_id() for _ in range(200)]
    await asyncio.gather(*(store.write(lambda c, q=q: spool.enqueue(c, item(q, msg, 1.0), 1.0)) for q in ids))
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
        spool.enqueue(conn, item(spool.new_queue_id(), msg, 1.0), 1.0)
        raise sqlite3.IntegrityError("boom")
    results = await asyncio.gather(store.write(half_then_fail),
                                   store.write(lambda c: spool.enqueue(c, item(qid, msg, 1.0), 1.0)),
                                   return_exceptions=True)
    assert isinstance(results[0], sqlite3.IntegrityError) and results[1] is None
    rows = await store.read(lambda c: c.execute("SELECT id FROM messages").fetchall())
    assert [r[0] for r in rows] == [qid]


async def test_commit_failure_is_a_store_error(tmp_path):
    s = SqliteStore(tmp_path / "db.sqlite3")
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
    await store.enqueue([item(qid, message(("a@x.com",)), 1.0)], 1.0)
    claim = await store.claim_due("w1", 2.0, 10)
    assert [j.recipients for j in claim.jobs] == [("a@x.com",)] and claim.suppressed == ({},)
    assert (await store.claim_due("w2", 2.0, 10)).jobs == ()  # locked
    released = await store.release_stale_locks()
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
        spool.enqueue(conn, item(spool.new_queue_id(), msg, 7200.0), 7200.0)
        raise ValueError("boom")
    results = await asyncio.gather(store.write(enqueue_then_fail),
                                   *(store.write(lambda c, q=q: spool.enqueue(c, item(q, msg, 7200.0), 7200.0))
                                     for q in ids),
                                   return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1:] == [None] * 50
    assert store.commits < 51
    got = await store.read(lambda c: (c.execute("SELECT count(*) FROM events").fetchone()[0], _counters(c)))
    assert got[0] == 150
    assert dict(((r[0], r[1], r[2]), r[4]) for r in got[1]["stats_daily"]) == {
        ("example.com", "", "accepted:outgoing"): 150, ("example.com", "t1", "accepted:outgoing"): 150}

    from mtad.store.engine import connect  # the same events on a plain connection: counted at once
    from mtad.store.migrations import sqlite as migrations
    plain = connect(tmp_path / "plain.sqlite3")
    migrations.migrate(plain, "plain")
    for q in ids:
        spool.enqueue(plain, item(q, msg, 7200.0), 7200.0)
    assert _counters(plain) == got[1]
    plain.close()


async def test_staged_rows_are_written_in_the_transaction_of_their_writes(store):
    from mtad.store import events
    from mtad.config.schema import WebhookConfig, WebhooksConfig
    await store.sync_webhooks(WebhooksConfig(domains={"example.com": {
        "delivered": WebhookConfig(("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"))}}), 1.0)
    seen = []

    def write(conn, fail=False):
        conn.staged.pending("probe", lambda c, items: seen.append(list(items))).append("x" if not fail else "y")
        events.record(conn, "example.com", shape.base_event(
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
    from mtad.store.batch import execute_rows
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a, b)")
    execute_rows(conn, "INSERT INTO t (a, b)", 2, [(i, str(i)) for i in range(n)])
    assert conn.execute("SELECT a, b FROM t ORDER BY seq").fetchall() == [(i, str(i)) for i in range(n)]
    conn.execute("CREATE TABLE c (k PRIMARY KEY, n)")
    execute_rows(conn, "INSERT INTO c (k, n)", 2, [("x", 2), ("y", 1)], " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    execute_rows(conn, "INSERT INTO c (k, n)", 2, [("x", 3)], " ON CONFLICT (k) DO UPDATE SET n = n + excluded.n")
    assert conn.execute("SELECT k, n FROM c ORDER BY k").fetchall() == [("x", 5), ("y", 1)]


# --- claims are leases (mtad.leases) -------------------------------------------------------------------------

def _lock(conn, table="deliveries"):
    return [tuple(r) for r in conn.execute(f"SELECT locked_by, lease_until, next_attempt_at FROM {table} ORDER BY id")]


async def test_a_claim_is_a_lease_that_others_take_over_once_it_ran_out(store):
    qid = spool.new_queue_id()
    await store.write(lambda c: spool.enqueue(c, item(qid, message(("a@x.com",)), 1.0), 1.0))
    [job] = await store.write(lambda c: spool.claim_due_deliveries(c, "w1", 2.0, 10, lease_until=12.0))
    assert (await store.read(_lock))[0][:2] == ("w1", 12.0)
    assert await store.write(lambda c: spool.claim_due_deliveries(c, "w2", 11.0, 10, lease_until=21.0)) == []
    # renewed before it ran out: still w1's
    assert await store.renew_leases("deliveries", "w1", [job.id], 20.0) == 1
    assert await store.write(lambda c: spool.claim_due_deliveries(c, "w2", 13.0, 10, lease_until=23.0)) == []
    # the holder's own rows are never taken twice by it, even when their lease looks expired
    assert await store.write(lambda c: spool.claim_due_deliveries(c, "w1", 25.0, 10, lease_until=35.0,
                                                                  skip={job.id})) == []
    # its holder stopped renewing (died): another claimer takes the row over
    [again] = await store.write(lambda c: spool.claim_due_deliveries(c, "w2", 25.0, 10, lease_until=35.0))
    assert again.id == job.id and (await store.read(_lock))[0][:2] == ("w2", 35.0)
    # the former holder can no longer renew nor release it
    assert await store.renew_leases("deliveries", "w1", [job.id], 99.0) == 0
    assert await store.release_claim("deliveries", job.id, "w1", 0.0) is False
    assert await store.release_claim("deliveries", job.id, "w2", 26.0) is True
    assert (await store.read(_lock))[0] == (None, None, 26.0)


async def test_queue_flush_unlocks_expired_leases_only(store):
    import time
    from mtad.outbound import queueadmin
    ids = [spool.new_queue_id() for _ in range(2)]
    for qid in ids:
        await store.write(lambda c, q=qid: spool.enqueue(c, item(q, message(("a@x.com",)), 1.0), 1.0))
    now = time.time()
    await store.write(lambda c: spool.claim_due_deliveries(c, "dead", now, 1, lease_until=now - 1))
    await store.write(lambda c: spool.claim_due_deliveries(c, "alive", now, 1, lease_until=now + 300))
    assert await queueadmin.flush(store) == 2
    assert sorted(r[0] or "" for r in await store.read(_lock)) == ["", "alive"]


async def test_an_existing_database_without_leases_opens_and_gets_the_column(tmp_path):
    """A state database made before leases (no lease_until) opens; the column is added and claims work."""
    from mtad.store.migrations import sqlite as migrations
    old_schema = migrations.V1_SCHEMA
    assert "lease_until" not in old_schema
    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA user_version=1")
    conn.execute("INSERT INTO messages (id, created_at, direction, domain, sender, recipients, headers, options,"
                 " envelope, size, body) VALUES ('Q1', 1, 'outbound', 'example.com', 's@example.com', '[\"a@x.com\"]',"
                 " '{}', '{}', '{}', 2, X'6869')")
    conn.execute("INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, locked_by, locked_at,"
                 " created_at, updated_at) VALUES ('Q1', 'x.com', '[\"a@x.com\"]', 'queued', 1, 'old-pid', 1, 1, 1)")
    conn.commit()
    conn.close()
    s = SqliteStore(path)
    s.open()
    try:
        for table in ("deliveries", "forwards", "webhook_deliveries"):
            columns = await s.read(lambda c, t=table: [r[1] for r in c.execute(f"PRAGMA table_info({t})")])
            assert "lease_until" in columns, table
        assert await s.release_stale_locks() == 1
        [job] = await s.write(lambda c: spool.claim_due_deliveries(c, "w1", 2.0, 10, lease_until=9.0))
        assert job.queue_id == "Q1" and (await s.read(_lock)) == [("w1", 9.0, 1.0)]
    finally:
        s.close()
    s = SqliteStore(path)  # and opens again, the column now present
    s.open()
    s.close()


async def test_settle_keeps_a_write_the_store_refuses_and_writes_it_once_the_store_recovers(sqlite_store):
    """A real SQLite 'database or disk is full' (max_page_count at the current size): the outcome is kept and
    written, once, as soon as the store takes writes again. (PostgreSQL: tests/unit/test_pg_engine.py.)"""
    from mtad.store import leases
    store = sqlite_store
    await store.write(lambda c: c.execute("CREATE TABLE IF NOT EXISTS outcome (x BLOB)"))
    pages = await store.write(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    await store.write(lambda c: c.execute(f"PRAGMA max_page_count = {pages}"))
    with pytest.raises(StoreError):  # the disk is full
        await store.write(lambda c: c.execute("INSERT INTO outcome VALUES (zeroblob(200000))"))
    calls = []

    def outcome(conn):
        calls.append(1)
        conn.execute("INSERT INTO outcome VALUES (zeroblob(200000))")
        return "written"
    loop = asyncio.get_running_loop()
    started = loop.time()
    settling = asyncio.create_task(leases.settle_call(store, lambda: store.write(outcome), "test outcome",
                                                        first_delay=0.05))
    await asyncio.sleep(0.6)
    assert not settling.done() and len(calls) >= 3  # tried again and again meanwhile
    await store.write(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))  # space is back
    assert await asyncio.wait_for(settling, 5) == "written"
    assert loop.time() - started < 0.6 + 1.5  # within the backoff of its last try
    assert await store.read(lambda c: c.execute("SELECT count(*) FROM outcome").fetchone()[0]) == 1


async def test_settle_gives_up_when_the_store_closes(tmp_path):
    from mtad.store import leases
    s = SqliteStore(tmp_path / "db.sqlite3")
    s.open()
    s.close()
    with pytest.raises(StoreError):
        await leases.settle_call(s, lambda: s.write(lambda c: None), "after close")


async def test_a_work_loop_gives_back_at_once_a_row_it_could_not_handle_and_renews_what_it_holds(store):
    """A handler that fails (the store refused a write before the work was done, or any other error) leaves no
    row locked by the running process: it is given back at once, due again soon after a store failure, later
    after another error; rows being handled have their lease renewed."""
    import time
    from mtad.base.errors import StoreError as SE
    from mtad.store.work import WorkOutcome
    from mtad.store.workloop import WorkLoop
    qid = spool.new_queue_id()
    now = time.time()
    forwards = [spool.ForwardRow(f"r{i}@in.test", "route", "http", f"http://127.0.0.1/{i}") for i in range(3)]
    await store.enqueue([item(qid, message(("r@in.test",)), now, forwards=tuple(forwards))], now)
    store.lease = 0.3  # renewed every 0.1 s
    gate = asyncio.Event()

    async def handle(row):
        if row.destination.endswith("/0"):
            raise SE("database or disk is full")
        if row.destination.endswith("/1"):
            raise RuntimeError("a bug")
        await gate.wait()  # the third is being handled: its lease must be renewed
        await store.finish_work("forwards", [WorkOutcome(row.id, "done", 1, None, 200, "", time.time())])
    loop = WorkLoop(name="t", store=store, table="forwards", handle=handle, max_concurrent=10, poll_interval=5.0,
                    actions=("http",))
    task = asyncio.create_task(loop.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.05)
            rows = await store.read(lambda c: _lock(c, "forwards"))
            if rows[0][0] is None and rows[1][0] is None:
                break
        rows = await store.read(lambda c: _lock(c, "forwards"))
        assert rows[0][0] is None and now < rows[0][2] <= time.time() + 5  # store failure: given back, due soon
        assert rows[1][0] is None and rows[1][2] >= now + 50  # another error: given back, due later
        first_lease = rows[2][1]
        assert rows[2][0] == loop.worker
        await asyncio.sleep(0.5)
        rows = await store.read(lambda c: _lock(c, "forwards"))
        assert rows[2][0] == loop.worker and rows[2][1] > first_lease + 0.2  # renewed while held
        ids = await store.read(lambda c: [r[0] for r in c.execute("SELECT id FROM forwards ORDER BY id")])
        assert loop.leases.held == {ids[2]}
        gate.set()
        for _ in range(40):
            await asyncio.sleep(0.05)
            if not loop.leases.held:
                break
        assert not loop.leases.held
    finally:
        await loop.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


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
    assert spool.load_message(conn, "old").attachments == ()  # read before any daemon added the column
    conn.close()
    s = SqliteStore(path)
    s.open()
    try:
        listed = [{"filename": "a.pdf", "content-type": "application/pdf", "size": 3}]
        msg = message()
        qid = spool.new_queue_id()
        await s.enqueue([item(qid, NewMessage(msg.envelope, msg.body, msg.direction, msg.domain, msg.headers,
                                              msg.options, tuple(listed)), 1.0)], 1.0)
        assert (await s.message("old")).attachments == ()
        assert (await s.message(qid)).attachments == tuple(listed)
    finally:
        s.close()
