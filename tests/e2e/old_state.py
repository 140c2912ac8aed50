"""A state folder written by an older mtad, for tests that start today's daemon on it.

``state_bebe064.sql`` (made by ``data/make_state_bebe064.py`` with release bebe064's own code, schema version 1)
holds mail and work in every state; its receiver URLs read ``http://@RECEIVER@``, replaced here by the test's own.
"""

from __future__ import annotations

import smtplib
import sqlite3
import time
from pathlib import Path
from typing import Any

from mtad.store.migrations.sqlite import SCHEMA_VERSION
from tests.support.api import api

BEBE064_STATE = Path(__file__).parent / "data" / "state_bebe064.sql"
RECEIVER = "http://@RECEIVER@"


def restore_bebe064(db: Path, receiver: str) -> None:
    """Write the bebe064 state database at ``db`` as that release left it (WAL, ``user_version`` 1), its HTTP
    receiver being ``receiver`` (``http://127.0.0.1:PORT``).

    Work the old daemon had scheduled for later (a retry an hour away) stays that far ahead of now, whenever the
    test runs: ``next_attempt_at`` values after the fixture's last event keep their distance from it, counted
    from now. Everything else is history and keeps its time."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(BEBE064_STATE.read_text().replace(RECEIVER, receiver.rstrip("/")))
    made = conn.execute("SELECT max(timestamp) FROM events").fetchone()[0]
    shift = time.time() - made
    for table in ("deliveries", "forwards", "webhook_deliveries"):
        conn.execute(f"UPDATE {table} SET next_attempt_at = next_attempt_at + ? WHERE next_attempt_at > ?",
                     (shift, made))
    conn.execute("PRAGMA user_version=1")
    conn.close()


def restore_newer(db: Path) -> None:
    """The bebe064 state at ``db``, stamped with a schema version newer than this mtad knows."""
    restore_bebe064(db, "http://127.0.0.1:9")
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()


async def assert_old_accounts_answered(world: Any) -> None:
    """What the bebe064 node held besides mail — suppressions, the API route, a webhook, a domain with its SMTP
    credential — is answered by the API of the daemon now running on it, and the old password still logs in."""
    bounces = await api(world, "GET", "/v3/example.com/bounces")
    assert sorted(i["address"] for i in bounces["items"]) == ["bad@dest.test", "gone@dest.test"]
    gone = await api(world, "GET", "/v3/example.com/bounces/gone@dest.test")
    assert (gone["code"], gone["error"]) == ("550", "No such user (made by API)")
    assert (await api(world, "GET", "/v3/example.com/unsubscribes/unsub@dest.test"))["tags"] == ["news"]
    assert [i["address"] for i in (await api(world, "GET", "/v3/example.com/complaints"))["items"]] == \
        ["angry@dest.test"]
    assert [i["value"] for i in (await api(world, "GET", "/v3/example.com/whitelists"))["items"]] == \
        ["friend@dest.test"]
    [route] = [r for r in (await api(world, "GET", "/v3/routes"))["items"]
               if r["description"] == "API route made by bebe064"]
    assert route["expression"] == 'match_recipient("api@inbound.test")'
    assert route["actions"] == [f'forward("{world.receiver.url("api-route")}")', "stop()"]
    hooks = (await api(world, "GET", "/v3/domains/example.com/webhooks"))["webhooks"]
    assert hooks["clicked"]["urls"] == [world.receiver.url("clicked")]
    domain = await api(world, "GET", "/v3/domains/fresh.example")
    assert domain["domain"]["name"] == "fresh.example"
    creds = await api(world, "GET", "/v3/domains/fresh.example/credentials")
    assert [c["login"] for c in creds["items"]] == ["alice@fresh.example"]
    with smtplib.SMTP("127.0.0.1", world.mtad.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=world.certs.client_context())
        s.ehlo()
        assert s.login("alice@fresh.example", "alice-password-1")[0] == 235  # the stored password hash
