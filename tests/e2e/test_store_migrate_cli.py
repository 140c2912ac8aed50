"""``mtad store migrate``: creates or upgrades the configured store's schema (an old SQLite state folder, an empty
PostgreSQL database), says from which version to which, and refuses a schema newer than the binary with exit 2;
``mtad run`` migrates an older PostgreSQL schema at start, and ``mtad check-config`` reports the version."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import yaml

from mtad.store.migrations import postgresql as pg_migrations
from mtad.store.migrations.sqlite import SCHEMA_VERSION
from mtad.store.postgres.engine import PgConnection
from tests.e2e.old_state import restore_bebe064, restore_newer
from tests.support.daemon import Mtad, base_config

DSN_ENV = "MTAD_TEST_MIGRATE_DSN"


def mtad(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **(env or {})))


def pg_config(tmp_path: Path, **top) -> str:
    path = tmp_path / "pg.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state"),
                                    "store": {"backend": "postgresql", "dsn": {"env": DSN_ENV}}, **top}))
    return str(path)


def test_migrate_upgrades_an_old_sqlite_store_and_says_from_which_version(tmp_path):
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_bebe064(db, "http://127.0.0.1:9")
    done = mtad("store", "migrate", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{db}: schema version 1 -> {SCHEMA_VERSION}\n", done.stdout
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] > 0  # nothing lost
    conn.close()
    again = mtad("store", "migrate", "--state-dir", str(tmp_path / "state"))
    assert again.returncode == 0 and f"schema version {SCHEMA_VERSION}, current: nothing to do" in again.stdout


def test_migrate_makes_no_sqlite_store_where_there_is_none(tmp_path):
    done = mtad("store", "migrate", "--state-dir", str(tmp_path / "typo"))
    assert done.returncode == 1 and f"no mtad state at {tmp_path / 'typo'}" in done.stderr, done.stderr
    assert not (tmp_path / "typo").exists()


def test_migrate_refuses_a_newer_sqlite_store_with_exit_2(tmp_path):
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_newer(db)
    done = mtad("store", "migrate", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"has schema version {SCHEMA_VERSION + 1}; this mtad knows versions up to {SCHEMA_VERSION}" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_migrate_creates_the_schema_of_an_empty_postgresql_database(tmp_path, postgres, pg_database):
    dsn = pg_database()
    database = dsn.rsplit("/", 1)[1]
    config = pg_config(tmp_path, node_id="node-m")
    done = mtad("store", "migrate", "--config", config, env={DSN_ENV: dsn})
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"PostgreSQL at 127.0.0.1:{postgres.port}/{database}: schema created, version 0 -> "
                           f"{pg_migrations.SCHEMA_VERSION}\n")
    assert postgres.password not in done.stdout + done.stderr
    assert postgres.psql("SELECT string_agg(version || ':' || node, ',' ORDER BY version) FROM mtad_schema",
                         database) == ",".join(f"{v}:node-m" for v in range(1, pg_migrations.SCHEMA_VERSION + 1))
    assert postgres.psql("SELECT count(*) FROM messages", database) == "0"  # a schema, no rows
    again = mtad("store", "migrate", "--config", config, env={DSN_ENV: dsn})
    assert again.returncode == 0 and "current: nothing to do" in again.stdout
    checked = mtad("check-config", config, env={DSN_ENV: dsn})  # the probe, on psycopg
    assert checked.returncode == 0, checked.stderr
    assert f"/{database}, schema version {pg_migrations.SCHEMA_VERSION}" in checked.stderr


def test_migrate_refuses_a_newer_postgresql_schema_with_exit_2(tmp_path, postgres, pg_database):
    dsn = pg_database()
    database = dsn.rsplit("/", 1)[1]
    assert mtad("store", "migrate", "--config", pg_config(tmp_path), env={DSN_ENV: dsn}).returncode == 0
    newer = pg_migrations.SCHEMA_VERSION + 1
    postgres.psql(f"INSERT INTO mtad_schema VALUES ({newer}, 'from the future', 0, 'other')", database)
    done = mtad("store", "migrate", "--config", pg_config(tmp_path), env={DSN_ENV: dsn})
    assert done.returncode == 2, done.stdout + done.stderr
    assert (f"127.0.0.1:{postgres.port}/{database} has schema version {newer}; this mtad knows versions up to "
            f"{pg_migrations.SCHEMA_VERSION}") in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_migrate_with_a_wrong_password_is_one_line_naming_store_dsn(tmp_path, postgres):
    wrong = "not-the-password-0815"
    done = mtad("store", "migrate", "--config", pg_config(tmp_path), env={DSN_ENV: postgres.dsn(password=wrong)})
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mtad: configuration error: store.dsn: ") and "refused the login" in line
    assert wrong not in done.stderr


def test_run_migrates_an_older_postgresql_schema_at_start(tmp_path, certs, pg_database):
    dsn = pg_database()
    conn = PgConnection(lambda: psycopg.connect(dsn, autocommit=True))
    conn.ensure()  # a database an mtad of schema version 1 made
    conn.command("BEGIN")
    conn.command(f"CREATE TABLE {pg_migrations.SCHEMA_TABLE} (version INTEGER PRIMARY KEY, description TEXT NOT NULL,"
                 " applied_at DOUBLE PRECISION NOT NULL, node TEXT NOT NULL)")
    pg_migrations.STEPS[0].apply(conn)
    conn.execute(f"INSERT INTO {pg_migrations.SCHEMA_TABLE} VALUES (1, 'v1', 0, 'old')")
    conn.command("COMMIT")
    conn.close()
    cfg = base_config(tmp_path, certs)
    cfg["store"] = {"backend": "postgresql", "dsn": dsn}
    daemon = Mtad(tmp_path, cfg).start()
    try:
        assert daemon.query(f"SELECT max(version) FROM {pg_migrations.SCHEMA_TABLE}") == \
            [(pg_migrations.SCHEMA_VERSION,)]
        for step in pg_migrations.STEPS[1:]:
            assert f"migrated to schema version {step.version}: {step.description}" in daemon.log()
    finally:
        assert daemon.stop() == 0
