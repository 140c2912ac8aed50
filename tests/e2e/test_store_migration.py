"""An upgrade keeps everything: today's daemon starts on a state folder written by the previous release (issue 11).

The state database is the one release bebe064 (schema version 1) left after real use (``data/state_bebe064.sql``,
made by ``data/make_state_bebe064.py`` with that release's code): delivered, failed and deferred mail, mail queued
for a paused domain (one delivery still claimed by a process that died), a route forward waiting for its retry,
webhook POSTs queued by ``mtad webhooks redeliver``, suppressions of each kind, an API route, webhook, domain and
credential, events and counters. Today's daemon migrates it at start and the module checks, as an operator and an
API client would, that every part of it is still there and still moves.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mtad.store.migrations.sqlite import SCHEMA_VERSION
from tests.e2e.events_support import World, events, running_world
from tests.support.api import api
from tests.support.wait import wait_for
from tests.e2e.old_state import assert_old_accounts_answered, restore_bebe064, restore_newer


def from_bebe064(cfg: dict, world: World) -> None:
    restore_bebe064(Path(cfg["state_dir"]) / "mtad.sqlite3", world.receiver.url(""))
    cfg.setdefault("store", {})["event_retention"] = "36500d"  # the fixture's events keep their date
    # the same webhook configuration as the old daemon had, at this test's receiver
    cfg["webhooks"]["domains"] = {"example.com": {"delivered": {"urls": [world.receiver.url("delivered")]},
                                                  "permanent_fail": {"urls": [world.receiver.url("hook")]},
                                                  "temporary_fail": {"urls": [world.receiver.url("hook")]}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "migration", from_bebe064) as w:
        yield w


def mtad_cli(world: World, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mtad", *args, "--config", str(world.mtad.config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def first_event_time(world: World) -> float:
    return world.mtad.query("SELECT min(timestamp) FROM events")[0][0]


def test_the_store_is_migrated_to_the_current_schema_version(world):
    assert world.mtad.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    log = world.mtad.log()
    for version in range(2, SCHEMA_VERSION + 1):
        assert f"migrated to schema version {version}:" in log


async def test_suppressions_routes_webhooks_domains_and_credentials_are_answered_by_the_api(world):
    await assert_old_accounts_answered(world)


def text_of(post) -> str:
    """Everything a route POST carried: its form fields, or its raw body."""
    return " ".join(value for _, value in post.fields) + post.body.decode(errors="replace")


async def test_the_api_route_made_before_the_upgrade_still_routes(world):
    world.receive("api@inbound.test", "After the upgrade")
    [hit] = await wait_for(lambda: world.receiver.to("api-route"), timeout=30, what="the API route's POST")
    assert "After the upgrade" in text_of(hit)


async def test_old_events_are_in_the_events_api(world):
    got = await events(world, "example.com", begin=str(first_event_time(world) - 1), ascending="yes")
    seen = {(e["event"], e["recipient"]) for e in got}
    assert {("accepted", r) for r in ("ok1@dest.test", "ok2@dest.test", "old@dest.test", "bad@dest.test",
                                      "soft@dest.test", "q1@yahoo.test", "q2@yahoo.test")} <= seen
    assert {("delivered", "ok1@dest.test"), ("delivered", "ok2@dest.test"), ("delivered", "old@dest.test"),
            ("failed", "bad@dest.test"), ("failed", "soft@dest.test")} <= seen
    [old] = [e for e in got if e["event"] == "delivered" and e["recipient"] == "old@dest.test"]
    assert old["user-variables"] == {"order": "old-42", "blob": "x" * 2000}
    assert old["tags"] == ["legacy"] and old["message"]["headers"]["subject"] == "Before the upgrade"
    [bounce] = [e for e in got if e["event"] == "failed" and e["recipient"] == "bad@dest.test"]
    assert bounce["severity"] == "permanent" and bounce["delivery-status"]["code"] == 550


async def test_stats_counters_are_kept(world):
    start = int(first_event_time(world)) - 86400
    answer = await api(world, "GET", "/v3/example.com/stats/total", params=[
        ("event", "accepted"), ("event", "delivered"), ("event", "failed"), ("start", str(start)),
        ("end", str(int(time.time()))), ("resolution", "day")])
    total = {"accepted": 0, "delivered": 0, "bounce": 0}
    for bucket in answer["stats"]:
        total["accepted"] += bucket["accepted"]["outgoing"]
        total["delivered"] += bucket["delivered"]["smtp"]
        total["bounce"] += bucket["failed"]["permanent"]["bounce"]
    # nothing was delivered by today's daemon yet (yahoo.test is still paused): these are the old counters
    assert total == {"accepted": 7, "delivered": 3, "bounce": 1}


def test_queue_list_shows_the_queued_and_deferred_mail(world):
    rows = json.loads(mtad_cli(world, "queue", "list", "--json"))
    by_rcpt = {tuple(r["recipients"]): r for r in rows}
    for rcpt in ("q1@yahoo.test", "q2@yahoo.test"):  # q1's claim by the dead old process was released at start
        row = by_rcpt[(rcpt,)]
        assert (row["kind"], row["state"], row["attempts"], row["locked_by"]) == ("delivery", "queued", 0, None)
    soft = by_rcpt[("soft@dest.test",)]
    assert soft["state"] == "deferred" and soft["attempts"] >= 1
    text = mtad_cli(world, "queue", "list")
    assert "q1@yahoo.test" in text and "q2@yahoo.test" in text


async def test_queued_mail_is_delivered_once_its_domain_is_resumed(world):
    assert "resumed domain yahoo.test" in mtad_cli(world, "queue", "resume", "--domain", "yahoo.test")
    await wait_for(lambda: world.sink.to("q1@yahoo.test") and world.sink.to("q2@yahoo.test"), timeout=30,
                   what="the queued mail at the sink")
    time.sleep(1)
    assert (len(world.sink.to("q1@yahoo.test")), len(world.sink.to("q2@yahoo.test"))) == (1, 1)
    assert b"Subject: Queued before the upgrade (claimed)" in world.sink.to("q1@yahoo.test")[0].data


async def test_the_pending_forward_is_posted(world):
    mtad_cli(world, "queue", "flush")  # its retry was an hour after the old daemon's failed try
    hits = await wait_for(lambda: [h for h in world.receiver.to("route") if "Forwarded before the upgrade" in text_of(h)],
                          timeout=30, what="the forward POST")
    assert len(hits) == 1


async def test_pending_webhooks_are_posted(world):
    def posted():
        got = {h.json()["event-data"]["recipient"] for h in world.receiver.to("hook")}
        return got if {"bad@dest.test", "soft@dest.test"} <= got else None
    await wait_for(posted, timeout=30, what="the queued webhook POSTs")
    for hit in world.receiver.to("hook"):
        data = hit.json()
        assert data["event-data"]["event"] == "failed" and set(data["signature"]) == {"timestamp", "token",
                                                                                       "signature"}


# --- queue commands on a store the daemon has not opened yet ----------------------------------------------------------

def test_a_queue_command_after_the_upgrade_migrates_the_store_before_writing(tmp_path):
    """The operator upgrades and runs ``mtad queue flush`` before starting the daemon: the store is brought to
    today's schema first (no traceback), the old claim is unlocked and the work made due."""
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_bebe064(db, "http://127.0.0.1:9")
    run = [sys.executable, "-m", "mtad", "queue"]
    done = subprocess.run([*run, "flush", "--state-dir", str(tmp_path / "state")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    assert conn.execute("SELECT count(*) FROM deliveries WHERE locked_by IS NOT NULL").fetchone() == (0,)
    conn.close()


def test_a_store_of_a_newer_mtad_is_refused_with_both_versions(tmp_path):
    db = tmp_path / "state" / "mtad.sqlite3"
    restore_newer(db)
    done = subprocess.run([sys.executable, "-m", "mtad", "queue", "flush", "--state-dir", str(tmp_path / "state")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"has schema version {SCHEMA_VERSION + 1}; this mtad knows versions up to {SCHEMA_VERSION}" in done.stderr
