"""``mtad.store.copy`` against the session's real PostgreSQL: what it copies is read off the two schemas, and a
schema step added to one backend's list and not to the other stops the copy (and this test); a failure midway
commits nothing; identity sequences go past every id SQLite ever gave."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from mtad.base.errors import StoreError
from mtad.config import schema as config
from mtad.store import copy as store_copy
from mtad.store.migrations import postgresql as pg_migrations
from mtad.store.postgres.engine import PgConnection
from mtad.store.queue import LEASED_TABLES
from mtad.store.sqlite import SqliteStore


def fresh_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "mtad.sqlite3"
    store = SqliteStore(path)
    store.open()  # every SQLite step
    store.close()
    return path


def target(dsn: str):
    return config.parse({"store": {"backend": "postgresql", "dsn": dsn}}, Path(".")).store


def pg(dsn: str) -> PgConnection:
    conn = PgConnection(lambda: psycopg.connect(dsn, autocommit=True))
    conn.ensure()
    return conn


def test_the_plan_covers_every_table_and_column_of_both_schemas(tmp_path, pg_database):
    src = sqlite3.connect(fresh_sqlite(tmp_path))
    dst = pg(pg_database())
    pg_migrations.migrate(dst, "test")  # every PostgreSQL step
    try:
        plan = store_copy.plan(src, dst)
        sqlite_tables = store_copy.sqlite_tables(src)
        pg_tables = store_copy.postgresql_tables(dst)
    finally:
        src.close()
        dst.close()
    assert {t.name for t in plan} == set(sqlite_tables) == set(pg_tables) - store_copy.CLUSTER_ONLY
    assert len(plan) >= 15  # the walk found the schema
    for table in plan:
        assert [c.name for c in table.columns] == [c for c, _, _ in pg_tables[table.name]]
        for column in table.columns:  # every column comes from its namesake, but claims and SQLite's implicit rowid
            expected = ("NULL" if table.name in LEASED_TABLES and column.name in store_copy.CLAIM_COLUMNS
                        else "rowid AS seq" if column.name not in sqlite_tables[table.name] else column.name)
            assert column.source == expected, (table.name, column)
    names = [t.name for t in plan]
    assert names.index("messages") < names.index("deliveries") and names.index("messages") < names.index("forwards")
    assert {t.name: t.identity for t in plan if t.identity} == {
        "deliveries": "id", "forwards": "id", "webhook_deliveries": "id", "events": "seq", "routes": "seq",
        "mailing_lists": "id", "list_expansions": "id",
        "campaigns": "cid", "if_campaigns": "id", "if_campaign_contents": "id", "if_campaign_links": "id",
        "message_text": "id"}
    assert "message_text" in names and not [n for n in names if n.startswith("message_text_fts")]  # SQLite's FTS5


def test_a_table_or_column_in_one_schema_only_stops_the_copy_naming_it(tmp_path, pg_database):
    path = fresh_sqlite(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE only_here (id TEXT PRIMARY KEY)")  # a step added to the SQLite list only
    conn.commit()
    conn.close()
    dsn = pg_database()
    dst = pg(dsn)
    pg_migrations.migrate(dst, "test")
    dst.command("ALTER TABLE domains ADD COLUMN tracking TEXT")  # and a column added to the PostgreSQL list only
    dst.close()
    with pytest.raises(StoreError) as caught:
        store_copy.copy_store(path, target(dsn))
    assert "tables only in SQLite: only_here" in str(caught.value)
    assert "column domains.tracking only in PostgreSQL" in str(caught.value)


def fill(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO messages (id, created_at, direction, domain, sender, recipients, headers, options,"
                 " envelope, size, body) VALUES ('Q1', 1, 'outbound', 'example.com', 's@example.com', '[]', '{}',"
                 " '{}', '{}', 3, X'00FF0D')")
    conn.execute("INSERT INTO deliveries (id, message, domain, recipients, state, next_attempt_at, locked_by,"
                 " locked_at, lease_until, created_at, updated_at) VALUES (41, 'Q1', 'dest.test', '[\"a@dest.test\"]',"
                 " 'queued', 1, 'old-node', 1, 2, 1, 1)")
    for seq in (1, 2, 3):
        conn.execute("INSERT INTO events (seq, id, timestamp, domain, event, data) VALUES (?, ?, 1, 'example.com',"
                     " 'accepted', '{}')", (seq, f"e{seq}"))
    conn.execute("DELETE FROM events WHERE seq = 3")  # AUTOINCREMENT: seq 3 is never given again
    conn.commit()
    conn.close()


def test_ids_bodies_and_sequences_are_copied_and_claims_cleared(tmp_path, pg_database):
    path = fresh_sqlite(tmp_path)
    fill(path)
    dsn = pg_database()
    report = store_copy.copy_store(path, target(dsn))
    counts = {t.table: (t.source_rows, t.target_rows, t.claims) for t in report.tables}
    assert counts["messages"] == (1, 1, 0) and counts["deliveries"] == (1, 1, 1) and counts["events"] == (2, 2, 0)
    assert dict(report.sequences) == {"deliveries.id": 41, "events.seq": 3}
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("SELECT body FROM messages").fetchone()[0] == b"\x00\xff\x0d"
        assert conn.execute("SELECT id, locked_by, locked_at, lease_until FROM deliveries").fetchall() == \
            [(41, None, None, None)]
        assert conn.execute("SELECT nextval(pg_get_serial_sequence('events', 'seq'))").fetchone()[0] == 4
        assert conn.execute("SELECT nextval(pg_get_serial_sequence('deliveries', 'id'))").fetchone()[0] == 42


def test_a_failure_midway_commits_nothing(tmp_path, pg_database):
    path = fresh_sqlite(tmp_path)
    fill(path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO webhooks (domain, hook, url, format, source, created_at)"
                 " VALUES ('example.com', 'delivered', 'http://x/' || char(0), 'json', 'api', 1)")  # text PG refuses
    conn.commit()
    conn.close()
    dsn = pg_database()
    with pytest.raises(StoreError, match="webhooks.url holds a NUL character"):
        store_copy.copy_store(path, target(dsn))
    with psycopg.connect(dsn, autocommit=True) as pgc:
        assert pgc.execute("SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM deliveries)"
                           " + (SELECT count(*) FROM events)").fetchone()[0] == 0
    # and once the bad row is gone, the copy goes through: nothing of the failed one is in the way
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM webhooks")
    conn.commit()
    conn.close()
    assert {t.table: t.target_rows for t in store_copy.copy_store(path, target(dsn)).tables}["messages"] == 1
