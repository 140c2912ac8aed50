"""The PostgreSQL engine's own behaviour, on the session's real server (tests/support/postgres.py): placeholders,
the schema built once under an advisory lock, errors at open naming ``store.dsn``, a lost connection and a
cancelled statement failing only their callers, and the node's name and timeout on every connection.
(What both backends do alike is in tests/contract and the store-method tests.)"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import psycopg
import pytest

from mtad.base.errors import ConfigError, StoreError, StoreUnavailable
from mtad.config import schema as config
from mtad.store import new_store
from mtad.store.migrations import postgresql as migrations
from mtad.store.postgres.engine import pg_raw_sql
from mtad.store.postgres.store import PostgresStore


def test_raw_placeholders_are_numbered_outside_quotes_and_percent_signs_kept():
    assert pg_raw_sql("SELECT a FROM t WHERE b = ? AND c LIKE 'x?%' AND \"d?\" = ?") == \
        "SELECT a FROM t WHERE b = $1 AND c LIKE 'x?%' AND \"d?\" = $2"
    assert pg_raw_sql("SELECT 'it''s ?', ?, ?") == "SELECT 'it''s ?', $1, $2"


def store_of(dsn: str, **kwargs) -> PostgresStore:
    cfg = config.parse({"node_id": "node-t", "store": {"backend": "postgresql", "dsn": dsn,
                                                       "statement_timeout": kwargs.pop("timeout", "30s"),
                                                       "pool_size": 3}}, Path("."))
    return new_store(cfg.store, Path("unused"), cfg.node_id, **kwargs)


def test_nodes_starting_at_once_build_the_schema_once(pg_database):
    dsn = pg_database()
    stores = [store_of(dsn) for _ in range(4)]
    errors: list[BaseException] = []

    def open_one(store):
        try:
            store.open()
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)
    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for store in stores:
        store.close()
    assert errors == []
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT version, node FROM mtad_schema ORDER BY version").fetchall()
    assert rows == [(v, "node-t") for v in range(1, migrations.SCHEMA_VERSION + 1)]


def test_a_schema_newer_than_this_mtad_is_refused_naming_both_versions(pg_database):
    dsn = pg_database()
    store = store_of(dsn)
    store.open()
    store.close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO mtad_schema VALUES (%s, 'from the future', 0, 'x')", (migrations.SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=f"schema version {migrations.SCHEMA_VERSION + 1}; this mtad knows versions"
                                         f" up to {migrations.SCHEMA_VERSION}"):
        store_of(dsn).open()


def test_a_wrong_password_an_absent_server_and_a_standby_name_store_dsn(postgres, pg_database):
    with pytest.raises(ConfigError, match="store.dsn: PostgreSQL at .* refused the login") as refused:
        store_of(postgres.dsn(password="not-the-password")).open()
    assert "not-the-password" not in str(refused.value)
    with pytest.raises(ConfigError, match="store.dsn: cannot connect to PostgreSQL at 127.0.0.1:1/"):
        store_of(postgres.dsn(port=1)).open()
    dsn = pg_database()
    postgres.psql(f"ALTER DATABASE {dsn.rsplit('/', 1)[1]} SET default_transaction_read_only = on")
    with pytest.raises(ConfigError, match="store.dsn: .* takes no writes"):
        store_of(dsn).open()


async def test_statements_with_many_parameters_quotes_and_percent_signs_run_as_written(pg_database):
    """The store's SQL runs on raw cursors ($n parameters): a literal ``%`` and ``?`` stay, values are bound in order,
    executemany and a multi-row statement of hundreds of parameters (a group commit's events) too."""
    store = store_of(pg_database())
    store.open()
    try:
        def write(c):
            c.execute("CREATE TABLE kvt (k text PRIMARY KEY, v text)")
            c.executemany("INSERT INTO kvt (k, v) VALUES (?, ?)", [("a%", "1?"), ("b", "2")])
            c.execute("INSERT INTO kvt (k, v) VALUES " + ", ".join(["(?, ?)"] * 300),
                      [x for n in range(300) for x in (f"m{n}", f"{n}%")])
            return c.execute("SELECT count(*), min(v) FROM kvt WHERE k LIKE 'm%' AND v <> '?' AND v LIKE ?",
                             ("%\\%",)).fetchone()
        assert await store.write(write) == (300, "0%")
        assert await store.read(lambda c: c.execute("SELECT k, v FROM kvt WHERE k IN (?, ?) ORDER BY k",
                                                    ("a%", "b")).fetchall()) == [("a%", "1?"), ("b", "2")]
    finally:
        store.close()


async def test_a_lost_connection_fails_its_writes_and_the_next_write_reconnects(pg_database):
    store = store_of(pg_database())
    store.open()
    try:
        pid = await store.write(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        await store.read(lambda c: c.execute("SELECT pg_terminate_backend(?)", (pid,)).fetchone())
        with pytest.raises(StoreUnavailable):  # the writer's connection is gone: this write is not committed
            await store.write(lambda c: c.execute("CREATE TABLE lost (x int)"))
        await store.write(lambda c: c.execute("CREATE TABLE found (x int)"))  # connected again
        assert await store.read(lambda c: c.execute(
            "SELECT to_regclass('lost') IS NULL AND to_regclass('found') IS NOT NULL").fetchone()[0])
    finally:
        store.close()


async def test_a_cancelled_statement_fails_its_write_alone_and_the_batch_commits(pg_database):
    store = store_of(pg_database(), timeout="0.3s")
    store.open()
    try:
        await store.write(lambda c: c.execute("CREATE TABLE t (x int)"))
        results = await asyncio.gather(
            store.write(lambda c: c.execute("INSERT INTO t VALUES (1)")),
            store.write(lambda c: c.execute("SELECT pg_sleep(2)")),  # over statement_timeout: cancelled
            store.write(lambda c: c.execute("INSERT INTO t VALUES (2)")),
            return_exceptions=True)
        assert isinstance(results[1], StoreError) and "statement timeout" in str(results[1])
        assert not isinstance(results[0], BaseException) and not isinstance(results[2], BaseException)
        assert await store.read(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0]) == 2
        name, timeout = await store.read(lambda c: c.execute(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')").fetchone())
        assert (name, timeout) == ("mtad node-t", "300ms")
    finally:
        store.close()


async def test_a_write_raising_by_itself_fails_alone_with_what_it_wrote_and_its_batch_commits(pg_database):
    """A pipelined batch has no savepoint per write: a write that raises after queuing a statement (not a statement
    the server refused) makes the batch run again one write at a time; it fails alone and nothing of it stays."""
    store = store_of(pg_database())
    store.open()
    try:
        await store.write(lambda c: c.execute("CREATE TABLE t (x int)"))
        round_trips = store.round_trips

        def broken(c):
            c.execute("INSERT INTO t VALUES (99)")
            raise ValueError("the caller's own bug")
        results = await asyncio.gather(*(store.write(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
                                         for i in range(10)), store.write(broken),
                                       *(store.write(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
                                         for i in range(10, 20)), return_exceptions=True)
        assert isinstance(results[10], ValueError) and "own bug" in str(results[10])
        assert not any(isinstance(r, BaseException) for r in results[:10] + results[11:])
        assert sorted(await store.read(lambda c: [r[0] for r in c.execute("SELECT x FROM t")])) == list(range(20))
        # and a batch of writes that all succeed costs one round trip, not one per write (nor per savepoint)
        before = store.round_trips
        await asyncio.gather(*(store.write(lambda c, i=i: c.execute("INSERT INTO t VALUES (?)", (i,)))
                               for i in range(100, 150)))
        assert store.round_trips - before < 10 and store.commits > 0 and before > round_trips
    finally:
        store.close()


# --- a group commit of acceptances on the wire (issue 12: round trips per accepted message) -------------------------

def _inbound(n: int, queue_id: str):
    """``QueueMethods.enqueue``'s item for a 1 KB inbound message, with its accepted event (what SMTP ingress
    commits)."""
    from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions
    from mtad.events import shape
    from mtad.store import queue as spool
    rcpt = f"r{n}@example.net"
    msg = NewMessage(Envelope("s@example.com", (rcpt,)), b"Subject: t\r\n\r\n" + b"x" * 1000 + b"\r\n", "inbound",
                     "example.net", HeaderSummary(f"<{n}@example.com>", "s@example.com", rcpt, "t"), SendOptions())
    return spool.Enqueue(queue_id, msg, tuple(shape.accepted(msg, queue_id, 1_000_000.0)))


async def _one_batch(store, calls):
    """Run ``calls`` (coroutine factories of store writes) as ONE group commit: the writer is held inside a first
    write until all of them are queued behind it. Their results (or exceptions), in order."""
    hold, held = threading.Event(), threading.Event()

    def gate(c):
        held.set()
        hold.wait(10)
    first = asyncio.ensure_future(store.write(gate))
    while not held.is_set():
        await asyncio.sleep(0.01)
    tasks = [asyncio.ensure_future(call()) for call in calls]
    await asyncio.sleep(0.2)  # every write queued behind the gate
    hold.set()
    await first
    return await asyncio.gather(*tasks, return_exceptions=True)


def _frontend_messages(path: Path) -> list[str]:
    """The protocol messages libpq's trace shows mtad sent (``F`` lines: Parse, Bind, Execute, Sync...)."""
    names = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 4 and fields[1] == "F":
            names.append(fields[3].split(" ", 1)[0])
    return names


async def test_a_group_commit_of_acceptances_is_one_sync_and_a_few_statements(pg_database, tmp_path):
    """Twenty messages accepted together: one round trip (one Sync) for the whole transaction — the writer keeps
    its connection in pipeline mode, leaving it would send a second Sync — and a few multi-row INSERTs for the
    whole batch (messages, events, their text index and counters), not a statement per message."""
    from mtad.store import queue as spool
    store = store_of(pg_database())
    store.open()
    trace = tmp_path / "libpq.trace"
    try:
        ids = spool.new_queue_ids(21)
        await store.enqueue([_inbound(20, ids[20])], 1_000_000.0)  # connected, in pipeline mode, webhooks cached
        raw = store._writer_conn.raw  # noqa: SLF001 - the writer's own connection, traced for this test
        with trace.open("w") as out:
            raw.pgconn.trace(out.fileno())
            results = await _one_batch(store, [lambda n=n: store.enqueue([_inbound(n, ids[n])], 1_000_000.0)
                                               for n in range(20)])
            raw.pgconn.untrace()
        assert results == [None] * 20
        sent = _frontend_messages(trace)
        assert sent.count("Sync") == 2, sent  # the gate's batch, then the 20 acceptances' batch: one each
        # the gate's BEGIN and COMMIT; then BEGIN, messages, events and their text index in at most 2 multi-row
        # INSERTs each (chunks of power-of-two sizes: 16 + 4), 3 counter upserts, COMMIT
        assert sent.count("Execute") <= 2 + 1 + 3 * 2 + 3 + 1, sent
        assert await store.count_messages() == 21
        stored = await store.read(lambda c: c.execute("SELECT count(*) FROM events WHERE event = 'accepted'")
                                  .fetchone()[0])
        assert stored == 21
    finally:
        store.close()


async def test_a_staged_message_the_server_refuses_fails_its_acceptance_alone(pg_database):
    """A message row is staged with its batch's (one INSERT for all): one the server refuses (here a queue id
    already taken) makes the batch run again one write at a time, each write's staged rows in its savepoint, so
    only that acceptance fails, with its event; the others are committed with theirs."""
    from mtad.store import queue as spool
    store = store_of(pg_database())
    store.open()
    try:
        ids = spool.new_queue_ids(6)
        await store.enqueue([_inbound(0, ids[0])], 1_000_000.0)
        items = [_inbound(n, ids[n]) for n in range(1, 6)]
        items[2] = _inbound(99, ids[0])  # the same queue id as the stored message
        results = await _one_batch(store, [lambda i=i: store.enqueue([i], 1_000_000.0) for i in items])
        assert isinstance(results[2], psycopg.errors.UniqueViolation)
        assert [r for n, r in enumerate(results) if n != 2] == [None] * 4
        assert await store.count_messages() == 5
        recipients = await store.read(lambda c: sorted(r[0] for r in c.execute(
            "SELECT recipient FROM events WHERE event = 'accepted'")))
        assert recipients == sorted(f"r{n}@example.net" for n in (0, 1, 2, 4, 5))  # none of r99's
    finally:
        store.close()


async def test_a_connection_lost_in_the_middle_of_a_batch_fails_the_batch_and_the_next_reconnects(pg_database):
    """The writer's connection dies while a batch runs (its backend terminated): every acceptance of the batch
    gets StoreUnavailable (SMTP 451), nothing of it is stored, and the next batch connects again."""
    from mtad.store import queue as spool
    dsn = pg_database()
    store = store_of(dsn)
    store.open()
    try:
        pid = await store.write(lambda c: c.execute("SELECT pg_backend_pid()").fetchone()[0])
        ids = spool.new_queue_ids(6)

        def kill(c):  # a write of the batch: its connection dies after the writes before it queued statements
            with psycopg.connect(dsn, autocommit=True) as other:
                other.execute("SELECT pg_terminate_backend(%s)", (pid,))
        calls = [lambda n=n: store.enqueue([_inbound(n, ids[n])], 1_000_000.0) for n in range(5)]
        calls.insert(2, lambda: store.write(kill))
        results = await _one_batch(store, calls)
        assert all(isinstance(r, StoreUnavailable) for n, r in enumerate(results) if n != 2), results
        assert await store.count_messages() == 0
        await store.enqueue([_inbound(5, ids[5])], 1_000_000.0)  # connected again
        assert await store.count_messages() == 1
    finally:
        store.close()


async def test_staged_and_unstaged_acceptances_of_one_batch_keep_their_work_rows(pg_database):
    """Outbound messages accepted together, one with a body over ``STAGE_MAX_BODY`` (its own INSERT, at once) and
    the others staged: every message is stored with its delivery rows (a row per destination domain)."""
    from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions
    from mtad.events import shape
    from mtad.store import queue as spool
    store = store_of(pg_database())
    store.open()
    try:
        ids = spool.new_queue_ids(5)

        def outbound(n: int, size: int):
            rcpts = (f"a{n}@one.example", f"b{n}@two.example")
            msg = NewMessage(Envelope("s@example.com", rcpts), b"Subject: t\r\n\r\n" + b"y" * size, "outbound",
                             "example.com", HeaderSummary(f"<o{n}@example.com>", "s@example.com", rcpts[0], "t"),
                             SendOptions())
            return spool.Enqueue(ids[n], msg, tuple(shape.accepted(msg, ids[n], 1_000_000.0)))
        items = [outbound(n, spool.STAGE_MAX_BODY + 10 if n == 2 else 500) for n in range(5)]
        results = await _one_batch(store, [lambda i=i: store.enqueue([i], 1_000_000.0) for i in items])
        assert results == [None] * 5
        rows = await store.read(lambda c: sorted(tuple(r) for r in c.execute(
            "SELECT m.id, d.domain, m.size FROM messages m JOIN deliveries d ON d.message = m.id")))
        assert rows == sorted((ids[n], domain, len(items[n].message.body))
                              for n in range(5) for domain in ("one.example", "two.example"))
    finally:
        store.close()
