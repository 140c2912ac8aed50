"""Events stay small whatever a message carries (issue 10, item 3), over real sockets.

- a message's user variables are stored once, not in each of its events, yet every event's JSON (events API,
  webhooks) shows them as before;
- one page of the events API holds a bounded number of bytes (it ends early, its ``next`` link goes on), and
  one event a bounded number too (longer strings are shortened);
- a state file of the previous schema (events with inline variables) opens, is migrated, and serves its old
  events beside new ones: the module's daemon starts on the state file of release bebe064
  (``tests/e2e/data/state_bebe064.sql``, also read by test_store_migration.py).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import aiohttp
import pytest

from mtad.store.migrations.sqlite import SCHEMA_VERSION
from tests.e2e.events_support import World, events, running_world
from tests.e2e.old_state import restore_bebe064
from tests.support.api import api
from tests.support.wait import wait_for

FROM = "Sender <postmaster@example.com>"
BLOB = "0123456789abcdef" * 250  # 4,000 bytes: 4,011 with the names, under Mailgun's 4 KB


def from_v1_state(cfg: dict, world: World) -> None:
    """The daemon starts on a state file as the previous schema wrote it, its old events dated now (kept)."""
    db = Path(cfg["state_dir"]) / "mtad.sqlite3"
    restore_bebe064(db, world.receiver.url(""))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE events SET timestamp = ?", (time.time() - 60,))
    conn.commit()
    conn.close()
    cfg["webhooks"]["domains"] = {"example.com": {"delivered": {"urls": [world.receiver.url("delivered")]}}}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "eventvars", from_v1_state) as w:
        yield w


async def send(world: World, fields: list[tuple[str, str]]) -> str:
    form = aiohttp.FormData()
    for name, value in fields:
        form.add_field(name, value)
    return (await api(world, "POST", "/v3/example.com/messages", data=form))["id"].strip("<>")


async def message_events(world: World, message_id: str, count: int, **params) -> list[dict]:
    async def enough():
        got = await events(world, "example.com", **{"message-id": message_id, "ascending": "yes", **params})
        return got if len(got) >= count else None
    return await wait_for(enough, timeout=60, what=f"{count} events of {message_id}")


def store_bytes(world: World) -> int:
    """Bytes the store's data takes (pages in use, WAL included): what the events of a message cost."""
    (pages, free, size), = world.mtad.query("SELECT * FROM pragma_page_count, pragma_freelist_count,"
                                            " pragma_page_size")
    return (pages - free) * size


# --- the state file of the previous schema --------------------------------------------------------------------------

async def test_a_state_file_of_the_previous_schema_is_migrated_and_its_events_kept(world):
    assert world.mtad.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert "variables" in {row[1] for row in world.mtad.query("PRAGMA table_info(events)")}
    old = await events(world, "example.com", recipient="old@dest.test")
    assert sorted(e["event"] for e in old) == ["accepted", "delivered"]  # its events in bebe064's store
    for event in old:  # whose variables bebe064 kept inline in each event
        assert event["user-variables"] == {"order": "old-42", "blob": "x" * 2000}
        assert event["message"]["headers"]["subject"] == "Before the upgrade" and event["tags"] == ["legacy"]


# --- variables stored once ------------------------------------------------------------------------------------------

async def test_variables_of_a_message_are_stored_once_not_per_event(world):
    rcpts = [f"r{i}@dest.test" for i in range(100)]
    base = [("from", FROM), ("subject", "Hundred"), ("text", "Hi")] + [("to", r) for r in rcpts]
    before = store_bytes(world)
    plain = await send(world, base + [("v:order", "p-1")])
    await message_events(world, plain, 200, event="accepted OR delivered")
    middle = store_bytes(world)
    with_vars = await send(world, base + [("v:order", "v-1"), ("v:blob", BLOB)])
    got = await message_events(world, with_vars, 200, event="accepted OR delivered")
    after = store_bytes(world)
    # every event still shows the variables, as a Mailgun client reads them
    assert len(got) == 200 and all(e["user-variables"] == {"order": "v-1", "blob": BLOB} for e in got)
    # 200 events x 4 KB would be 800 KB more than the same message without them; stored once, about 4 KB
    growth_plain, growth_vars = middle - before, after - middle
    assert growth_vars - growth_plain < 64_000, (growth_plain, growth_vars)
    assert world.mtad.query("SELECT count(*) FROM event_variables") == [(1,)]


async def test_webhooks_and_batch_copies_show_the_variables_too(world):
    rcpts = ["w1@dest.test", "w2@dest.test"]
    fields = [("from", FROM), ("subject", "Batch"), ("text", "Hi %recipient.n%"),
              ("recipient-variables", json.dumps({r: {"n": r[:2]} for r in rcpts})),
              ("v:who", "%recipient.n%"), ("v:blob", BLOB)] + [("to", r) for r in rcpts]
    message_id = await send(world, fields)
    got = await message_events(world, message_id, 4, event="accepted OR delivered")
    assert sorted((e["recipient"], e["user-variables"]["who"]) for e in got) == \
        sorted([(r, r[:2]) for r in rcpts] * 2)
    assert all(e["user-variables"]["blob"] == BLOB for e in got)
    hooks = await wait_for(lambda: [h for h in world.receiver.to("delivered")
                                    if h.json()["event-data"]["message"]["headers"]["message-id"] == message_id]
                           if len(world.receiver.to("delivered")) >= 2 else None, what="delivered webhooks")
    for hook in hooks:
        data = hook.json()["event-data"]
        assert data["user-variables"] == {"who": data["recipient"][:2], "blob": BLOB}


# --- bounded answers ------------------------------------------------------------------------------------------------

async def test_an_events_page_is_bounded_in_bytes_and_its_next_link_goes_on(world):
    rcpts = [f"big{i}@dest.test" for i in range(150)]
    subject = " ".join(["subject"] * 3100)  # 25 KB: each of the 300 events is about 28 KB, 8 MB in all
    message_id = await send(world, [("from", FROM), ("subject", subject), ("text", "Hi")] + [("to", r) for r in rcpts])
    await message_events(world, message_id, 300, event="accepted OR delivered")
    seen, sizes = [], []
    url = f"/v3/example.com/events?limit=300&ascending=yes&message-id={message_id}"
    while True:
        async with aiohttp.ClientSession(headers=world_auth()) as session:
            async with session.get(url if url.startswith("http") else world.api_url + url) as resp:
                assert resp.status == 200
                body = await resp.read()
        page = json.loads(body)
        if not page["items"]:
            break
        sizes.append(len(body))
        seen += [e["id"] for e in page["items"]]
        url = page["paging"]["next"]
    assert len(seen) == len(set(seen)) == 300, "every event once, following next"
    assert len(sizes) >= 3 and max(sizes) <= 4_100_000, sizes


async def test_one_event_is_bounded_in_bytes(world):
    subject = " ".join(["long"] * 40_000)  # 200 KB
    message_id = await send(world, [("from", FROM), ("to", "one@dest.test"), ("subject", subject), ("text", "Hi")])
    got = await message_events(world, message_id, 2, event="accepted OR delivered")  # delivered: none in flight
    size = len(json.dumps(got[0], ensure_ascii=False).encode())
    assert size <= 32_768, size
    for event in got:
        shown = event["message"]["headers"]["subject"]
        assert subject.startswith(shown[:-1]) and shown.endswith("…") and len(shown) > 100


def world_auth() -> dict[str, str]:
    from tests.support.api import AUTH
    return AUTH
