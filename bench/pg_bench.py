#!/usr/bin/env python3
"""Bench helper for mtad on PostgreSQL: a private server for one benchmark run, and its store between runs.

  python pg_bench.py start DIR      -> starts a private PostgreSQL (tests/support/postgres.py's PostgresServer:
                                       initdb + pg_ctl, loopback, random port, fsync and synchronous_commit on,
                                       run as the unprivileged user mtadtest under root), creates database
                                       ``mtadbench``; writes DIR/dsn, DIR/pid (the postmaster: the root of the
                                       server's process tree) and DIR/folder; prints the DSN
  python pg_bench.py createdb DSN NAME -> creates database NAME on the DSN's server, prints its DSN
  python pg_bench.py stop DIR       -> pg_ctl stop -m fast, the cluster's folder removed
  python pg_bench.py count DSN      -> prints the number of stored messages
  python pg_bench.py empty DSN      -> TRUNCATEs every table that grows with the messages taken in
                                       (the counterpart of bench/mtad_store.py's SQLite ``empty``)
  python pg_bench.py xacts DSN      -> prints pg_stat_database.xact_commit of the DSN's database: transactions
                                       committed (every statement outside a transaction block is one)

``xacts`` first waits 1.2 s: a backend reports its counters at most once a second when it goes idle, so the
figure includes every transaction of the run that just ended. The benchmark reads it before and after a run;
the delta per accepted message is the database round trips (commits) per message, readers' included.
"""
from __future__ import annotations

import atexit
import os
import pwd
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DATABASE = "mtadbench"
# every table that grows with the messages taken in (routes, domains, credentials, webhooks, kv stay)
TABLES = ("forwards", "deliveries", "webhook_deliveries", "event_variables", "events", "stats", "stats_daily",
          "stats_dims", "message_text", "messages")


def _server(folder: Path | None = None):
    from tests.support.postgres import TEST_USER, PostgresServer, find_binaries
    bin_dir = find_binaries()
    if bin_dir is None:
        raise SystemExit("pg_bench.py: PostgreSQL server binaries not found (apt-get install postgresql)")
    # watch=False: the server outlives `pg_bench.py start` (`stop DIR` ends it)
    server = PostgresServer(bin_dir, watch=False) if folder is None else \
        PostgresServer(bin_dir, folder=folder, watch=False)
    if folder is not None and os.geteuid() == 0:
        server._user = pwd.getpwnam(TEST_USER)
    return server


def start(out: Path) -> int:
    server = _server()
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    atexit.unregister(server.stop)  # the server outlives this helper: `stop DIR` ends it
    server.psql(f"CREATE DATABASE {DATABASE}")
    pid = (server.data / "postmaster.pid").read_text().split()[0]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dsn").write_text(server.dsn(DATABASE) + "\n")
    (out / "pid").write_text(pid + "\n")
    (out / "folder").write_text(str(server.folder) + "\n")
    (out / "dsn").chmod(0o600)
    print(server.dsn(DATABASE))
    return 0


def stop(out: Path) -> int:
    folder = out / "folder"
    if folder.exists():
        _server(Path(folder.read_text().strip())).stop()
    return 0


def connect(dsn: str):
    import psycopg
    return psycopg.connect(dsn, autocommit=True)


def main() -> int:
    action, arg = sys.argv[1], sys.argv[2]
    if action == "start":
        return start(Path(arg))
    if action == "stop":
        return stop(Path(arg))
    if action == "createdb":  # createdb DSN NAME -> the DSN of a new database NAME on the same server
        with connect(arg) as conn:
            conn.execute(f"CREATE DATABASE {sys.argv[3]}")
        print(arg.rsplit("/", 1)[0] + "/" + sys.argv[3])
        return 0
    if action == "xacts":
        time.sleep(1.2)
    with connect(arg) as conn:
        if action == "count":
            print(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        elif action == "empty":
            present = [t for t in TABLES if conn.execute("SELECT to_regclass(%s)", (t,)).fetchone()[0]]
            if present:
                # CASCADE: the (empty) tables that reference messages, e.g. list_expansions, go with it
                conn.execute(f"TRUNCATE {', '.join(present)} CASCADE")
        elif action == "xacts":
            print(conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
                  .fetchone()[0])
        else:
            print(f"unknown action {action}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
