"""Moving a single node to PostgreSQL: ``mtad store copy`` of a real old state, then ``mtad run`` on PostgreSQL.

The state is the one release bebe064 left after real use (``data/state_bebe064.sql``, see test_store_migration.py):
delivered, failed and deferred mail, mail queued for a paused domain (one delivery still claimed by a process that
died), a route forward waiting for its retry, webhook POSTs pending, suppressions of each kind, an API route,
webhook, domain (DKIM key) and credential, events and counters. Today's SqliteStore opens it (migrating it), the
operator runs ``mtad store copy --from sqlite:PATH --to-env NAME`` into a fresh database on the session's
PostgreSQL server, and starts ``mtad run`` on that database; the module then checks, as an operator and an API
client would, that everything is there once and still moves. Also: a copy refused into a database holding mtad
data, and refused while a daemon runs on the source.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtad.store.migrations.sqlite import SCHEMA_VERSION
from mtad.store.sqlite import SqliteStore
from tests.e2e.events_support import World, events, running_world
from tests.e2e.old_state import assert_old_accounts_answered, restore_bebe064
from tests.support.api import api
from tests.support.wait import wait_for

DSN_ENV = "MTAD_TEST_COPY_DSN"


def mtad(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *args], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def counts(db: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        listed = [(name, sql or "") for name, sql in rows]
        # FTS5 tables and their shadow tables are SQLite's own index of message_text (PostgreSQL indexes it itself)
        virtual = [name for name, sql in listed if sql.upper().startswith("CREATE VIRTUAL TABLE")]
        tables = [name for name, _ in listed if not any(name == v or name.startswith(v + "_") for v in virtual)]
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}
    finally:
        conn.close()


class Moved:
    """What happened before the daemon started on PostgreSQL."""

    old_db: Path
    dsn: str
    queue_before: list[dict]
    rows_before: dict[str, int]
    copy: subprocess.CompletedProcess


def move_to_postgresql(postgres, moved: Moved):
    def tweak(cfg: dict, world: World) -> None:
        old_state = Path(cfg["state_dir"]).parent / "old-state"
        moved.old_db = old_state / "mtad.sqlite3"
        restore_bebe064(moved.old_db, world.receiver.url(""))
        store = SqliteStore(moved.old_db)  # today's store opens it: migrated to the current schema
        store.open()
        store.close()
        listed = mtad("queue", "list", "--json", "--state-dir", str(old_state))
        assert listed.returncode == 0, listed.stderr
        moved.queue_before = json.loads(listed.stdout)
        moved.rows_before = counts(moved.old_db)
        moved.dsn = postgres.create_database()[1]
        moved.copy = mtad("store", "copy", "--from", f"sqlite:{moved.old_db}", "--to-env", DSN_ENV,
                          env={DSN_ENV: moved.dsn})
        assert moved.copy.returncode == 0, moved.copy.stderr
        cfg["store"] = {"backend": "postgresql", "dsn": moved.dsn, "event_retention": "36500d"}
        cfg["node_id"] = "new-node-1"
        # the same webhook configuration as the old daemon had, at this test's receiver
        cfg["webhooks"]["domains"] = {"example.com": {"delivered": {"urls": [world.receiver.url("delivered")]},
                                                      "permanent_fail": {"urls": [world.receiver.url("hook")]},
                                                      "temporary_fail": {"urls": [world.receiver.url("hook")]}}}
    return tweak


@pytest.fixture(scope="module")
def moved() -> Moved:
    return Moved()


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, postgres, moved):
    with running_world(tmp_path_factory, certs, "copy", move_to_postgresql(postgres, moved)) as w:
        yield w


def cli(world: World, *args: str) -> str:
    done = mtad(*args, "--config", str(world.mtad.config_path))
    assert done.returncode == 0, done.stderr
    return done.stdout


def text_of(post) -> str:
    return " ".join(value for _, value in post.fields) + post.body.decode(errors="replace")


# --- the copy itself ----------------------------------------------------------------------------------------------

def test_the_copy_prints_rows_per_table_equal_on_both_sides(world, moved):
    out = moved.copy.stdout
    assert f"(schema version {SCHEMA_VERSION})" in out.splitlines()[0], out  # today's store had migrated it
    assert f"(schema version {SCHEMA_VERSION}, created)" in out.splitlines()[1], out
    table_lines = {line.split()[0]: line.split()[1:3] for line in out.splitlines()[3:]
                   if line.split() and line.split()[0] in moved.rows_before}
    assert set(table_lines) == set(moved.rows_before), out  # every table of the store, none left out
    for table, n in moved.rows_before.items():
        assert table_lines[table] == [str(n), str(n)], (table, out)
    assert moved.rows_before["messages"] > 0 and moved.rows_before["events"] > 0
    assert "deliveries" in out and "(1 claims of the old node cleared)" in out
    assert "copied in one transaction; row counts verified on both sides" in out
    # what PostgreSQL holds, counted by the test itself (the daemon has taken no mail yet)
    for table in ("messages", "deliveries", "forwards", "webhook_deliveries", "events", "event_variables", "stats",
                  "stats_daily", "suppressions", "routes", "domains", "credentials", "kv"):
        assert world.mtad.query(f"SELECT count(*) FROM {table}") == [(moved.rows_before[table],)], table


def test_no_claim_of_the_old_node_survives_the_copy(world):
    for table in ("deliveries", "forwards", "webhook_deliveries"):
        assert world.mtad.query(f"SELECT count(*) FROM {table} WHERE locked_by = 'old-mtad:4242'") == [(0,)]


def test_the_queue_lists_the_same_mail(world, moved):
    after = json.loads(cli(world, "queue", "list", "--json"))

    def key(row):
        return (row["queue_id"], row["kind"], tuple(row["recipients"]), row["destination"])
    assert sorted(map(key, after)) == sorted(map(key, moved.queue_before))
    by_rcpt = {tuple(r["recipients"]): r for r in after}
    for rcpt in ("q1@yahoo.test", "q2@yahoo.test"):  # q1's claim by the old node is gone
        assert (by_rcpt[(rcpt,)]["state"], by_rcpt[(rcpt,)]["locked_by"]) == ("queued", None)
    assert by_rcpt[("soft@dest.test",)]["state"] == "deferred"


async def test_suppressions_routes_webhooks_domains_and_credentials_are_answered_by_the_api(world):
    await assert_old_accounts_answered(world)


async def test_a_route_made_after_the_copy_comes_after_the_copied_one(world):
    """routes.seq (SQLite's rowid) was copied and its sequence advanced: a new route gets a later place."""
    await api(world, "POST", "/v3/routes", data=[("priority", "2"), ("description", "made on PostgreSQL"),
                                                  ("expression", 'match_recipient("new@inbound.test")'),
                                                  ("action", "stop()")])
    names = [r["description"] for r in (await api(world, "GET", "/v3/routes"))["items"]]
    assert names.index("API route made by bebe064") < names.index("made on PostgreSQL"), names


async def test_old_events_are_in_the_events_api(world):
    first = world.mtad.query("SELECT min(timestamp) FROM events")[0][0]
    got = await events(world, "example.com", begin=str(first - 1), ascending="yes")
    seen = {(e["event"], e["recipient"]) for e in got}
    assert {("accepted", r) for r in ("ok1@dest.test", "ok2@dest.test", "old@dest.test", "bad@dest.test",
                                      "soft@dest.test", "q1@yahoo.test", "q2@yahoo.test")} <= seen
    assert {("delivered", "ok1@dest.test"), ("delivered", "ok2@dest.test"), ("delivered", "old@dest.test"),
            ("failed", "bad@dest.test"), ("failed", "soft@dest.test")} <= seen
    [old] = [e for e in got if e["event"] == "delivered" and e["recipient"] == "old@dest.test"]
    assert old["user-variables"] == {"order": "old-42", "blob": "x" * 2000}
    assert old["tags"] == ["legacy"] and old["message"]["headers"]["subject"] == "Before the upgrade"
    ids = [e["id"] for e in got]
    assert len(ids) == len(set(ids))  # each event once


async def test_stats_totals_are_those_of_the_old_node(world):
    start = int(world.mtad.query("SELECT min(timestamp) FROM events")[0][0]) - 86400
    answer = await api(world, "GET", "/v3/example.com/stats/total", params=[
        ("event", "accepted"), ("event", "delivered"), ("event", "failed"), ("start", str(start)),
        ("end", str(int(time.time()))), ("resolution", "day")])
    total = {"accepted": 0, "delivered": 0, "bounce": 0}
    for bucket in answer["stats"]:
        total["accepted"] += bucket["accepted"]["outgoing"]
        total["delivered"] += bucket["delivered"]["smtp"]
        total["bounce"] += bucket["failed"]["permanent"]["bounce"]
    assert total == {"accepted": 7, "delivered": 3, "bounce": 1}  # the old counters (yahoo.test still paused)


async def test_the_queued_mail_is_delivered_exactly_once_once_its_domain_is_resumed(world):
    assert "resumed domain yahoo.test" in cli(world, "queue", "resume", "--domain", "yahoo.test")  # a copied pause
    await wait_for(lambda: world.sink.to("q1@yahoo.test") and world.sink.to("q2@yahoo.test"), timeout=30,
                   what="the queued mail at the sink")
    await asyncio.sleep(1.5)
    assert (len(world.sink.to("q1@yahoo.test")), len(world.sink.to("q2@yahoo.test"))) == (1, 1)
    assert b"Subject: Queued before the upgrade (claimed)" in world.sink.to("q1@yahoo.test")[0].data


async def test_new_mail_gets_new_ids_and_is_delivered(world):
    """The identity sequences were advanced past the copied ids: a new message's delivery and events insert."""
    queue_id = world.send(["fresh@dest.test"], "After the move")
    await wait_for(lambda: world.sink.to("fresh@dest.test"), timeout=30, what="the new mail at the sink")
    assert len(world.sink.to("fresh@dest.test")) == 1
    assert world.mtad.query("SELECT count(*) FROM messages WHERE id = ?", (queue_id,)) == [(1,)]


async def test_the_pending_forward_is_posted_once(world):
    cli(world, "queue", "flush")  # its retry was an hour after the old daemon's failed try
    hits = await wait_for(lambda: [h for h in world.receiver.to("route") if "Forwarded before the upgrade"
                                   in text_of(h)], timeout=30, what="the forward POST")
    await asyncio.sleep(1)
    assert len([h for h in world.receiver.to("route") if "Forwarded before the upgrade" in text_of(h)]) == 1 == \
        len(hits)


async def test_pending_webhooks_are_posted(world):
    def posted():
        got = {h.json()["event-data"]["recipient"] for h in world.receiver.to("hook")}
        return got if {"bad@dest.test", "soft@dest.test"} <= got else None
    await wait_for(posted, timeout=30, what="the queued webhook POSTs")


# --- refusals ------------------------------------------------------------------------------------------------------

def test_a_copy_into_a_database_holding_mtad_data_is_refused(world, moved):
    before = world.mtad.query("SELECT count(*) FROM messages")
    done = mtad("store", "copy", "--from", f"sqlite:{moved.old_db}", "--to-env", DSN_ENV, env={DSN_ENV: moved.dsn})
    assert done.returncode == 1, done.stdout + done.stderr
    assert "already holds mtad data (rows in " in done.stderr and "nothing was written" in done.stderr
    assert "messages" in done.stderr.split("rows in ")[1].split(")")[0]
    assert "Traceback" not in done.stderr and moved.dsn.split("@")[0].split(":")[-1] not in done.stderr
    assert world.mtad.query("SELECT count(*) FROM messages") == before


def test_a_copy_of_a_running_daemons_store_is_refused(mtad_factory, postgres):
    daemon = mtad_factory().start()  # on SQLite
    dsn = postgres.create_database()[1]
    done = mtad("store", "copy", "--from", f"sqlite:{daemon.db_path.parent}", "--to-env", DSN_ENV,
                env={DSN_ENV: dsn})
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"mtad (pid {daemon.proc.pid}) is running on {daemon.db_path.resolve()}" in done.stderr, done.stderr
    assert "stop it first" in done.stderr and "Traceback" not in done.stderr
    assert postgres.psql("SELECT to_regclass('messages') IS NULL", dsn.rsplit("/", 1)[1]) == "t"  # untouched


def test_a_copy_of_a_store_another_process_holds_open_is_refused(tmp_path, postgres):
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_bebe064(db, "http://127.0.0.1:9")
    holder = subprocess.Popen([sys.executable, "-c", "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1]);"
                               " c.execute('SELECT 1 FROM messages').fetchall(); print('open', flush=True);"
                               " time.sleep(60)", str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        dsn = postgres.create_database()[1]
        done = mtad("store", "copy", "--from", f"sqlite:{db}", "--to-env", DSN_ENV, env={DSN_ENV: dsn})
    finally:
        holder.kill()
        holder.wait(10)
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{db.resolve()} is open in process {holder.pid}" in done.stderr, done.stderr
    assert sqlite3.connect(db).execute("PRAGMA user_version").fetchone() == (1,)  # not even migrated


def test_the_target_may_be_the_new_nodes_config_file(tmp_path, postgres):
    """``--to-config FILE``: the DSN as the nodes read it (here ``{file: PATH}``); ``--json``: the summary as data."""
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_bebe064(db, "http://127.0.0.1:9")
    dsn = postgres.create_database()[1]
    (tmp_path / "dsn").write_text(dsn + "\n")
    config = tmp_path / "cluster.yaml"
    config.write_text(f"state_dir: {tmp_path / 'new-state'}\nnode_id: node-a\n"
                      "store: {backend: postgresql, dsn: {file: dsn}}\n")
    done = mtad("store", "copy", "--from", f"sqlite:{tmp_path / 'state'}", "--to-config", str(config), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["source_versions"] == [1, SCHEMA_VERSION] and report["target_versions"] == [0, SCHEMA_VERSION]
    assert report["tables"]["messages"] == {"source": 7, "target": 7, "claims_cleared": 0}
    assert report["tables"]["deliveries"]["claims_cleared"] == 1
    database = dsn.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*) FROM messages", database) == "7"
    assert postgres.psql("SELECT DISTINCT node FROM mtad_schema", database) == "node-a"


@pytest.mark.parametrize("args, env, words", [
    (["--from", "/var/lib/mtad", "--to-env", DSN_ENV], {DSN_ENV: "postgresql://u@127.0.0.1:9/x"},
     "--from: expected sqlite:PATH"),
    (["--from", "sqlite:X", "--to", "mysql://u:p@127.0.0.1/x"], {}, "--to: expected a postgresql://"),
    (["--from", "sqlite:X", "--to-env", "MTAD_TEST_UNSET_DSN"], {}, "--to-env MTAD_TEST_UNSET_DSN: environment"
                                                                   " variable MTAD_TEST_UNSET_DSN is not set"),
], ids=["from-without-scheme", "to-not-postgresql", "to-env-unset"])
def test_bad_options_are_one_line_with_exit_2(args, env, words):
    done = mtad("store", "copy", *args, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("mtad: configuration error: ") and words in line, line


def test_a_source_that_is_not_an_mtad_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a database at all\n" * 100)
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)").connection.close()
    for name, words in (("nothing.sqlite3", "no SQLite store at"), ("notes.txt", "is not an SQLite database"),
                        ("other.db", "is not an mtad store")):
        done = mtad("store", "copy", "--from", f"sqlite:{tmp_path / name}", "--to", "postgresql://u@127.0.0.1:9/x")
        assert done.returncode == 1 and words in done.stderr and "Traceback" not in done.stderr, done.stderr
