"""``store: {backend: postgresql, dsn: ...}`` and ``node_id``: strict keys naming their path, ``mtad check-config``
connecting to a real PostgreSQL (the session's private server) and reporting it, one-line errors with exit 2 for a
wrong password or an unreachable server, and ``mtad run`` building the schema on it or exiting 2 with one line
naming ``store.dsn`` when it cannot use it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
import yaml

from mtad.config import schema as config
from mtad.store.migrations.postgresql import SCHEMA_VERSION
from mtad.store.postgres.probe import connect_options
from tests.e2e.test_ingress_config import config_file, mtad_cli  # noqa: F401 (fixture)


def with_store(config_file, store: dict, **top) -> str:
    cfg = config_file.base
    cfg["store"] = store
    cfg.update(top)
    return str(config_file(cfg))


def assert_one_line_error(result, *needles: str, secret: str = "") -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    if secret:
        assert secret not in result.stderr + result.stdout
    return lines[0]


@pytest.mark.parametrize("store, top, key_path, words", [
    ({"backend": "postgresql"}, {}, "store.dsn", "required with backend: postgresql"),
    ({"dsn": "postgresql://u:p@127.0.0.1/db"}, {}, "store.dsn", "only for backend: postgresql"),
    ({"backend": "postgresql", "dsn": "host=127.0.0.1 dbname=mtad"}, {}, "store.dsn", "postgresql://"),
    ({"backend": "postgresql", "dsn": {"vault": "x"}}, {}, "store.dsn", "{env: NAME} or {file: PATH}"),
    ({"backend": "mysql"}, {}, "store.backend", "'sqlite', 'postgresql'"),
    ({"backend": "postgresql", "dsn": "postgresql://u:p@h/d", "pool_size": 0}, {}, "store.pool_size", "1 to 1000"),
    ({"backend": "postgresql", "dsn": "postgresql://u:p@h/d", "pool_size": "ten"}, {}, "store.pool_size",
     "integer"),
    ({"backend": "postgresql", "dsn": "postgresql://u:p@h/d", "statement_timeout": "0s"}, {},
     "store.statement_timeout", "more than 0s"),
    ({"backend": "postgresql", "dsn": "postgresql://u:p@h/d", "pool": 3}, {}, "store.pool", "unknown key"),
    ({}, {"node_id": "node 1"}, "node_id", "letters, digits"),
    ({}, {"node_id": ""}, "node_id", "letters, digits"),
], ids=["dsn-missing", "dsn-with-sqlite", "dsn-key-value", "dsn-bad-secret", "backend", "pool-size-0",
        "pool-size-text", "statement-timeout", "unknown-key", "node-id-space", "node-id-empty"])
def test_store_keys_are_strict_and_errors_name_the_key_path(config_file, store, top, key_path, words):
    result = mtad_cli("check-config", with_store(config_file, store, **top))
    line = assert_one_line_error(result, f"{key_path}: ", words)
    assert line.startswith("mtad: configuration error: "), line


def test_defaults_keep_sqlite_and_node_id_is_the_hostname(config_file):
    result = mtad_cli("check-config", with_store(config_file, {}))
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["node_id"] == socket.gethostname()
    assert shown["store"]["backend"] == "sqlite"
    assert shown["store"]["dsn"] is None
    assert shown["store"]["pool_size"] == 10
    assert shown["store"]["statement_timeout"] == "30s"
    assert "PostgreSQL" not in result.stderr


def test_check_config_connects_and_reports_the_server_version(config_file, postgres, pg_database):
    dsn = pg_database()
    path = with_store(config_file, {"backend": "postgresql", "dsn": {"env": "MTAD_TEST_DSN"}, "pool_size": 4},
                      node_id="node-a")
    result = mtad_cli("check-config", path, env={"MTAD_TEST_DSN": dsn})
    assert result.returncode == 0, result.stderr
    version = postgres.psql("SHOW server_version")
    database = dsn.rsplit("/", 1)[1]
    assert (f"# store.dsn: PostgreSQL {version} at 127.0.0.1:{postgres.port}/{database}, no schema yet"
            in result.stderr.splitlines()), result.stderr
    assert "warning" not in result.stderr  # the test server runs with fsync and synchronous_commit on
    shown = yaml.safe_load(result.stdout)
    assert shown["store"]["dsn"] == "******** (env:MTAD_TEST_DSN)"
    assert shown["node_id"] == "node-a"
    assert postgres.password not in result.stdout + result.stderr


def test_check_config_reports_the_schema_version_when_there_is_one(config_file, postgres, pg_database):
    dsn = pg_database()
    database = dsn.rsplit("/", 1)[1]
    postgres.psql("CREATE TABLE mtad_schema (version integer PRIMARY KEY, applied_at timestamptz DEFAULT now());"
                  "INSERT INTO mtad_schema (version) VALUES (1), (2), (3)", database)
    result = mtad_cli("check-config", with_store(config_file, {"backend": "postgresql", "dsn": dsn}))
    assert result.returncode == 0, result.stderr
    assert f"/{database}, schema version 3" in result.stderr, result.stderr
    assert "no schema yet" not in result.stderr


def test_check_config_with_a_wrong_password_is_one_line_naming_store_dsn(config_file, postgres):
    wrong = "not-the-password-4711"
    path = with_store(config_file, {"backend": "postgresql", "dsn": postgres.dsn(password=wrong)})
    result = mtad_cli("check-config", path)
    assert_one_line_error(result, "store.dsn: ", f"127.0.0.1:{postgres.port}", "refused the login",
                          "password authentication failed", secret=wrong)


def test_check_config_with_a_missing_database_is_one_line_naming_store_dsn(config_file, postgres):
    path = with_store(config_file, {"backend": "postgresql", "dsn": postgres.dsn("no_such_db")})
    result = mtad_cli("check-config", path)
    assert_one_line_error(result, "store.dsn: ", "no_such_db", "does not exist", secret=postgres.password)


def test_check_config_with_an_unreachable_server_is_one_line_naming_store_dsn(config_file, postgres):
    with socket.socket() as s:  # a loopback port nobody listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        path = with_store(config_file, {"backend": "postgresql", "dsn": postgres.dsn(port=port)})
        started = time.monotonic()
        result = mtad_cli("check-config", path)
    assert_one_line_error(result, "store.dsn: ", f"127.0.0.1:{port}", "connection refused",
                          secret=postgres.password)
    assert time.monotonic() - started < 20


def test_check_config_without_secrets_does_not_connect(config_file):
    path = with_store(config_file, {"backend": "postgresql", "dsn": {"env": "MTAD_TEST_UNSET_DSN"}})
    result = mtad_cli("check-config", "--no-secrets", path)
    assert result.returncode == 0, result.stderr
    assert "# store.dsn: not read (env:MTAD_TEST_UNSET_DSN), so the connection was not checked" in result.stderr


@pytest.mark.parametrize("dsn, words", [
    (lambda pg, db: pg.dsn(password="not-the-password-4711"), ("refused the login", "password authentication")),
    (lambda pg, db: pg.dsn("no_such_db"), ("no_such_db", "does not exist")),
    (lambda pg, db: pg.dsn(port=1), ("127.0.0.1:1/", "connection refused")),
], ids=["wrong-password", "missing-database", "unreachable"])
def test_run_with_a_database_it_cannot_use_exits_2_naming_store_dsn(config_file, postgres, pg_database, dsn,
                                                                     words):
    path = with_store(config_file, {"backend": "postgresql", "dsn": dsn(postgres, pg_database)})
    result = mtad_cli("run", "--config", path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert postgres.password not in result.stderr + result.stdout and "not-the-password" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if "store.dsn" in line]
    assert "configuration error: store.dsn: " in line and all(w in line for w in words), line


def test_run_builds_the_schema_and_check_config_reports_it(config_file, postgres, pg_database):
    dsn = pg_database()
    path = with_store(config_file, {"backend": "postgresql", "dsn": dsn}, node_id="node-a")
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", path], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while "schema version" not in (report := mtad_cli("check-config", path)).stderr + report.stdout \
                or "no schema yet" in report.stderr + report.stdout:
            assert proc.poll() is None and time.monotonic() < deadline, report.stderr
            time.sleep(0.2)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT max(version), min(node) FROM mtad_schema").fetchone() == (SCHEMA_VERSION,
                                                                                             "node-a")


def test_connections_carry_the_statement_timeout_and_the_node_id(pg_database):
    cfg = config.parse({"node_id": "node-b", "store": {"backend": "postgresql", "dsn": pg_database(),
                                                       "statement_timeout": "1.5s"}}, Path("."))
    with psycopg.connect(**connect_options(cfg.store, cfg.node_id)) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1500ms"
        assert conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
                            ).fetchone()[0] == "mtad node-b"
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(5)")
