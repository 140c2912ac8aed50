"""Make ``state_bebe064.sql``: a state folder as the release before numbered migrations (commit bebe064) leaves it.

Run with that release's own code (not today's), from a worktree of it::

    git worktree add /tmp/mtad-bebe064 bebe064
    cd /tmp/mtad-bebe064 && PYTHONPATH=/tmp/mtad-bebe064 <venv>/bin/python <this file> <out.sql>

It starts the bebe064 daemon with its own test support (``tests.e2e.events_support.World``: a loopback DNS, an MX
sink that answers ``bad*`` with 550 and ``soft*`` with 451, an HTTP receiver), drives it as a user would (SMTP
submissions and MX mail, the HTTP API, ``mtad queue pause``), stops it, marks one queued delivery as claimed by a
process that died (with bebe064's own ``spool.claim_due_deliveries``: what a crash mid-delivery leaves), and dumps
the database with ``iterdump``. What it holds (read by ``test_store_migration.py`` and ``test_events_variables.py``):

- delivered mail (ok1/ok2@dest.test, tagged ``legacy``) and old@dest.test "Before the upgrade" whose 2 KB user
  variables are inline in its events (as bebe064 stored them);
- failed mail (bad@dest.test: 550, and so a bounce suppression), deferred mail (soft@dest.test: 451, 1 attempt);
- queued mail for the paused domain yahoo.test (q1@ and q2@; q1's delivery claimed by ``old-mtad:4242``);
- a route forward pending (mail to in@inbound.test, its POST answered 500: deferred, 1 attempt);
- webhook deliveries pending: ``permanent_fail`` and ``temporary_fail`` webhooks answered 500 (deferred, 1 attempt),
  the same two queued again by ``mtad webhooks redeliver`` after the daemon stopped (0 attempts, due), and done
  ``delivered`` ones;
- suppressions of each kind, an API route, an API webhook, an API domain with its DKIM key and a credential;
- events and their hourly/daily counters.

URLs of the test receiver are written as ``http://@RECEIVER@/...``: the test puts its own receiver's address there.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trustme

from tests.conftest import Certs
from tests.e2e.events_support import World, api, wait_for


def make_certs(folder: Path) -> Certs:
    ca = trustme.CA()
    server = ca.issue_cert("mtad.test", "localhost", "127.0.0.1")
    cert, key = folder / "cert.pem", folder / "key.pem"
    server.private_key_pem.write_to_path(key)
    server.cert_chain_pems[0].write_to_path(cert)
    return Certs(ca, cert, key)


def tweak(cfg: dict, world: World) -> None:
    cfg["routing"]["retry_schedule"] = ["1h"]
    cfg["webhooks"]["retry_schedule"] = ["1h"]
    cfg["webhooks"]["domains"] = {"example.com": {"delivered": {"urls": [world.receiver.url("delivered")]},
                                                  "permanent_fail": {"urls": [world.receiver.url("hook")]},
                                                  "temporary_fail": {"urls": [world.receiver.url("hook")]}}}
    world.receiver.modes.update({"route": "fail", "hook": "fail"})


def cli(world: World, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "mtad", *args, "--config", str(world.mtad.config_path)],
                          check=True, capture_output=True, text=True).stdout


def rows(world: World, sql: str) -> list[tuple]:
    return world.mtad.query(sql)


async def drive(world: World) -> None:
    await api(world, "POST", "/v3/domains", data={"name": "fresh.example"})
    await api(world, "POST", "/v3/domains/fresh.example/credentials",
              data={"login": "alice@fresh.example", "password": "alice-password-1"})
    await api(world, "POST", "/v3/routes", data=[
        ("priority", "2"), ("description", "API route made by bebe064"),
        ("expression", 'match_recipient("api@inbound.test")'),
        ("action", f'forward("{world.receiver.url("api-route")}")'), ("action", "stop()")])
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data={"id": "clicked", "url": world.receiver.url("clicked")})
    await api(world, "POST", "/v3/example.com/bounces",
              data={"address": "gone@dest.test", "code": "550", "error": "No such user (made by API)"})
    await api(world, "POST", "/v3/example.com/unsubscribes", data={"address": "unsub@dest.test", "tag": "news"})
    await api(world, "POST", "/v3/example.com/complaints", data={"address": "angry@dest.test"})
    await api(world, "POST", "/v3/example.com/whitelists", data={"address": "friend@dest.test"})

    cli(world, "queue", "pause", "--domain", "yahoo.test")
    await asyncio.sleep(0.5)  # the daemon's next poll sees the pause
    world.send(["ok1@dest.test", "ok2@dest.test"], "Delivered before the upgrade", tags=("legacy",))
    await api(world, "POST", "/v3/example.com/messages", data=[  # an API send: 2 KB of variables
        ("from", "Sender <postmaster@example.com>"), ("to", "old@dest.test"), ("subject", "Before the upgrade"),
        ("text", "Sent before the upgrade."), ("o:tag", "legacy"), ("v:order", "old-42"), ("v:blob", "x" * 2000)])
    world.send(["bad@dest.test"], "Bounced before the upgrade")
    world.send(["soft@dest.test"], "Deferred before the upgrade")
    world.send(["q1@yahoo.test"], "Queued before the upgrade (claimed)")
    world.send(["q2@yahoo.test"], "Queued before the upgrade")
    world.receive("in@inbound.test", "Forwarded before the upgrade")

    def settled():
        deliveries = sorted(rows(world, "SELECT state, attempts, last_code FROM deliveries"))
        fwd = rows(world, "SELECT state, attempts FROM forwards")
        hooks = sorted(rows(world, "SELECT url LIKE '%/hook', state, attempts FROM webhook_deliveries"))
        return (deliveries == [("deferred", 1, 451), ("done", 1, 250), ("done", 1, 250), ("done", 1, 550),
                               ("queued", 0, None), ("queued", 0, None)]
                and fwd == [("deferred", 1)] and hooks == [(0, "done", 1)] * 3 + [(1, "deferred", 1)] * 2)
    try:
        await wait_for(settled, timeout=30, what="every state reached")
    except AssertionError:
        for table in ("deliveries", "forwards", "webhook_deliveries"):
            print(table, rows(world, f"SELECT * FROM {table}"), file=sys.stderr)
        raise


def main(out: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mtad-bebe064-state-"))
    (tmp / "world").mkdir()
    world = World(tmp / "world", make_certs(tmp), tweak)
    problems: list[str] = []
    try:
        asyncio.run(drive(world))
    finally:
        receiver = world.receiver.url("")
        problems = world.close()
    if problems:
        raise SystemExit("\n".join(problems))
    db = world.mtad.db_path
    # the operator queued the failures' webhooks again after the receiver's outage (due now, not yet sent)
    said = cli(world, "webhooks", "redeliver", "--since", "1h", "--event", "failed", "--url", receiver + "hook")
    assert said.startswith("2 webhook POSTs queued"), said

    from mtad import spool  # bebe064's: a claim left behind by a process that died mid-delivery
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    jobs = spool.claim_due_deliveries(conn, "old-mtad:4242", time.time(), 1)
    assert [j.recipients for j in jobs] == [("q1@yahoo.test",)], jobs
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    dump = "\n".join(conn.iterdump()) + "\n"
    conn.close()
    dump = dump.replace(receiver.rstrip("/"), "http://@RECEIVER@")
    assert "127.0.0.1:" not in dump.replace("127.0.0.1:@", ""), "a test port left in the dump"
    header = "".join("-- " + line + "\n" for line in (
        "A state database as mtad's release before numbered migrations (commit bebe064, schema version 1) leaves it:",
        "made by tests/e2e/data/make_state_bebe064.py with that release's own code, dumped with sqlite3 iterdump().",
        "Every state of mail and work (see that script); http://@RECEIVER@ stands for the test's HTTP receiver.",
        f"user_version: 1 (a dump does not carry it: restore, then PRAGMA user_version=1). Made {time.strftime('%Y-%m-%d')}."))
    out.write_text(header + dump)
    print(f"wrote {out}: {len(dump)} bytes", json.dumps([r[0] for r in sqlite3.connect(db).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
