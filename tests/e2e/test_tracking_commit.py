"""Opens and clicks are answered before their commit, and still never lost outside a crash (issue 13's endpoint
latency: ``mtad.api.tracking``).

A daemon whose store already holds a tracked message (as the signing worker writes it when the first tracked copy
goes out); its click URLs are sealed with the daemon's signing key, as the rendered copies carry them, and fetched
with aiohttp over the API listener. To show what the answer does and does not wait for, the test holds SQLite's
write lock from a connection of its own (``BEGIN IMMEDIATE``): the daemon's group commit then waits (its busy
timeout is 30 s), as it would behind a slow disk.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import aiohttp

from mtad.api.tracking import MAX_UNCOMMITTED
from mtad.base.keys import derive
from mtad.mail.tracktoken import CLICK, Sealer, Token
from mtad.store.engagement import TrackedMessage
from mtad.store.sqlite import SqliteStore
from tests.e2e.engagement_support import CHROME
from tests.support.wait import wait_for, wait_until

SIGNING_KEY = "key-tracking-commit-test-0123456789"
QUEUE_ID = "0123456789ABCDEF012"
LINKS = tuple(f"https://shop.example/item/{i}" for i in range(5))


async def tracked_daemon(mtad_factory, ingress_config: dict):
    """A started daemon with one tracked message in its store; (daemon, click URL of link i)."""
    ingress_config["signing_key"] = SIGNING_KEY
    state = Path(ingress_config["state_dir"])
    store = SqliteStore(state / "mtad.sqlite3")
    store.open()
    try:
        await store.track_message(TrackedMessage(QUEUE_ID, "example.com", time.time() - 3600,
                                                 {"headers": {"subject": "Sale"}, "size": 100}, LINKS))
    finally:
        store.close()
    daemon = mtad_factory(ingress_config).start()
    sealer = Sealer(derive(SIGNING_KEY, "tracking"))
    return daemon, lambda i, rcpt="reader@dest.test": \
        f"{daemon.api_url}/c/{sealer.seal(Token(CLICK, QUEUE_ID, rcpt, i))}"


def clicked(daemon) -> int:
    return daemon.query("SELECT count(*) FROM events WHERE event = 'clicked'")[0][0]


def write_lock(daemon) -> sqlite3.Connection:
    """SQLite's write lock on the daemon's store, held until the connection rolls back."""
    conn = sqlite3.connect(daemon.db_path, isolation_level=None, timeout=10)
    conn.execute("BEGIN IMMEDIATE")
    return conn


async def click(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", "")


async def test_a_click_is_answered_while_its_write_waits_and_recorded_once_the_store_can_commit(
        mtad_factory, ingress_config):
    daemon, url = await tracked_daemon(mtad_factory, ingress_config)
    lock = write_lock(daemon)
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": CHROME},
                                         timeout=aiohttp.ClientTimeout(total=10)) as session:
            started = time.monotonic()
            assert await click(session, url(3)) == (302, LINKS[3])
            assert await click(session, url(4)) == (302, LINKS[4])
            assert time.monotonic() - started < 5  # not after the store's write (blocked for up to 30 s)
        assert clicked(daemon) == 0  # answered, not committed yet
    finally:
        lock.rollback()
        lock.close()
    wait_until(lambda: clicked(daemon) == 2, 15, "the two clicks recorded")
    rows = daemon.query("SELECT data FROM events WHERE event = 'clicked' ORDER BY seq")
    assert [LINKS[3] in r[0] for r in rows] == [True, False] and LINKS[4] in rows[1][0]


async def test_a_stop_writes_the_clicks_already_answered_before_the_daemon_exits(mtad_factory, ingress_config):
    daemon, url = await tracked_daemon(mtad_factory, ingress_config)
    lock = write_lock(daemon)
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": CHROME},
                                         timeout=aiohttp.ClientTimeout(total=10)) as session:
            answers = await asyncio.gather(*(click(session, url(i % len(LINKS), f"r{i}@dest.test"))
                                             for i in range(20)))
        assert {status for status, _ in answers} == {302}
        daemon.signal(signal.SIGTERM)
        time.sleep(1.0)
        assert daemon.proc.poll() is None  # still writing what it answered
    finally:
        lock.rollback()
        lock.close()
    assert daemon.proc.wait(20) == 0
    assert clicked(daemon) == 20
    assert "not recorded" not in daemon.log()


async def test_past_the_bound_of_answered_but_uncommitted_clicks_each_answer_waits_for_its_commit(
        mtad_factory, ingress_config):
    daemon, url = await tracked_daemon(mtad_factory, ingress_config)
    extra = 30
    urls = [url(i % len(LINKS), f"r{i}@dest.test") for i in range(MAX_UNCOMMITTED + extra)]
    answered: list[int] = []
    lock = write_lock(daemon)
    try:
        async with aiohttp.ClientSession(headers={"User-Agent": CHROME},
                                         connector=aiohttp.TCPConnector(limit=100),
                                         timeout=aiohttp.ClientTimeout(total=60)) as session:
            async def one(u: str) -> None:
                answered.append((await click(session, u))[0])
            tasks = [asyncio.create_task(one(u)) for u in urls]
            await wait_for(lambda: len(answered) >= MAX_UNCOMMITTED, 25, f"{MAX_UNCOMMITTED} answers")
            await asyncio.sleep(1.0)
            assert len(answered) == MAX_UNCOMMITTED  # the rest wait for the store
            lock.rollback()
            await asyncio.gather(*tasks)
    finally:
        lock.rollback() if lock.in_transaction else None
        lock.close()
    assert answered == [302] * len(urls)
    wait_until(lambda: clicked(daemon) == len(urls), 15, "every click recorded")
