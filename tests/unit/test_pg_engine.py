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
