"""Changes of shared configuration reach every store on the database (``store.changes``), and claims are the
node's: a store releases at start only the locks of its own node.

On PostgreSQL two stores on one database stand for two nodes: a change committed through one runs the other's
callbacks (LISTEN/NOTIFY); a write that fails notifies nobody. On SQLite the same interface calls back locally.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from mtad.store.accounts import Credential
from mtad.store.routes import RouteRecord, new_route_id
from tests.support.stores import backend_store  # noqa: F401 (fixture)


def _route(expression: str = 'match_recipient(".*@x.test")') -> RouteRecord:
    return RouteRecord(new_route_id(), 0, "t", expression, ("stop()",), time.time())


class Seen:
    """Records when each kind's callback ran."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}
        self.event = asyncio.Event()

    def callback(self, kind: str):
        async def called() -> None:
            self.calls.setdefault(kind, []).append(time.monotonic())
            self.event.set()
        return called

    async def wait(self, kind: str, count: int = 1, timeout: float = 5.0) -> float:
        deadline = time.monotonic() + timeout
        while len(self.calls.get(kind, [])) < count:
            self.event.clear()
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} callback ({self.calls})"
            try:
                await asyncio.wait_for(self.event.wait(), left)
            except asyncio.TimeoutError:
                pass
        return self.calls[kind][count - 1]


async def test_a_change_through_one_node_runs_the_callbacks_of_another(backend_store):
    if backend_store.backend != "postgresql":
        pytest.skip("two nodes need the shared database")
    a, b = backend_store(), backend_store()
    seen = Seen()
    for kind in ("routes", "accounts", "webhooks"):
        b.on_change(kind, seen.callback(kind))
    assert await a.start_changes() and await b.start_changes()
    try:
        latencies = []
        started = time.monotonic()
        await a.add_route(_route())
        latencies.append(await seen.wait("routes") - started)
        started = time.monotonic()
        await a.add_credential(Credential("u@x.test", "x.test", "hash", time.time()))
        latencies.append(await seen.wait("accounts") - started)
        started = time.monotonic()
        await a.put_webhook("x.test", "delivered", ["http://127.0.0.1:9/h"], "json", time.time(), create=True)
        latencies.append(await seen.wait("webhooks") - started)
        assert max(latencies) < 1.0, latencies
        print(f"notify latency (commit on A -> callback on B): {[round(x * 1000, 1) for x in latencies]} ms")
        assert b.changes.received >= 3
    finally:
        await a.stop_changes()
        await b.stop_changes()


async def test_a_write_that_fails_notifies_nobody(backend_store):
    if backend_store.backend != "postgresql":
        pytest.skip("notifications are PostgreSQL's")
    a, b = backend_store(), backend_store()
    seen = Seen()
    b.on_change("accounts", seen.callback("accounts"))
    await b.start_changes()
    try:
        record = Credential("v@x.test", "x.test", "hash", time.time())

        def fails(conn):
            from mtad.store.accounts import add_credential
            add_credential(conn, record)
            raise ValueError("refused after the insert")
        with pytest.raises(ValueError):
            await a.write(fails)
        await asyncio.sleep(0.5)
        assert "accounts" not in seen.calls
        assert await a.add_credential(record)  # and one that commits does
        await seen.wait("accounts")
    finally:
        await b.stop_changes()


async def test_callbacks_are_coalesced_and_run_again_after_a_change_during_a_run(backend_store):
    store = backend_store()
    runs: list[int] = []
    release = asyncio.Event()

    async def slow() -> None:
        runs.append(len(runs))
        await release.wait()
    store.on_change("routes", slow)
    await store.start_changes()
    try:
        await store.add_route(_route())
        for _ in range(50):
            if runs:
                break
            await asyncio.sleep(0.05)
        assert runs == [0]
        for _ in range(3):  # three changes while the first run is busy: one more run, not three
            await store.add_route(_route())
        await asyncio.sleep(0.3)
        release.set()
        for _ in range(50):
            if len(runs) >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert runs == [0, 1]
    finally:
        await store.stop_changes()


async def test_sqlite_calls_back_locally_after_the_commit(backend_store):
    if backend_store.backend != "sqlite":
        pytest.skip("SQLite's local call")
    store = backend_store()
    seen = Seen()
    store.on_change("routes", seen.callback("routes"))
    await store.start_changes()
    try:
        record = _route()
        await store.add_route(record)
        await seen.wait("routes")
        assert [r.id for r in await store.load_routes()] == [record.id]
    finally:
        await store.stop_changes()


async def test_start_releases_only_the_locks_of_its_own_node(backend_store):
    store = backend_store()
    conn = backend_store.direct()
    now = time.time()
    conn.execute("INSERT INTO messages (id, created_at, direction, domain, sender, recipients, headers, options,"
                 " envelope, size, body) VALUES ('Q1', 1, 'outbound', 'example.com', 's@example.com', '[]', '{}',"
                 " '{}', '{}', 2, ?)", (b"hi",))
    for domain, node in (("a.test", "node-a"), ("b.test", "node-b"), ("c.test", "node-a")):
        conn.execute("INSERT INTO deliveries (message, domain, recipients, state, next_attempt_at, locked_by,"
                     " locked_at, lease_until, created_at, updated_at) VALUES ('Q1', ?, '[]', 'queued', 1, ?, ?, ?,"
                     " 1, 1)", (domain, node, now, now + 300))
    assert await store.release_stale_locks("node-a") == 2
    rows = conn.execute("SELECT domain, locked_by FROM deliveries ORDER BY domain").fetchall()
    assert [tuple(r) for r in rows] == [("a.test", None), ("b.test", "node-b"), ("c.test", None)]
    # node-b's lease is live: nobody else claims the row; once it ran out, another node takes it over
    claim = await store.claim_due("node-c", now, 10, lease_until=now + 300)
    assert sorted(j.domain for j in claim.jobs) == ["a.test", "c.test"]
    later = now + 301
    claim = await store.claim_due("node-c", later, 10, lease_until=later + 300, skip={j.id for j in claim.jobs})
    assert [j.domain for j in claim.jobs] == ["b.test"]


async def test_a_broken_listen_connection_is_opened_again_and_everything_is_reloaded(backend_store):
    """A notification sent while a node's LISTEN connection is down is lost; so when it is up again, every
    callback runs (what changed meanwhile is reloaded), and later changes arrive as before."""
    if backend_store.backend != "postgresql":
        pytest.skip("LISTEN is PostgreSQL's")
    a, b = backend_store(), backend_store()
    seen = Seen()
    for kind in ("routes", "accounts", "webhooks"):
        b.on_change(kind, seen.callback(kind))
    assert await b.start_changes()
    try:
        conn = backend_store.direct()
        killed = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                              " WHERE query = 'LISTEN mtad_changes'").fetchall()
        assert killed == [(True,)]
        await a.add_route(_route())  # while B is not listening, or just after: either way B reloads its routes
        for kind in ("routes", "accounts", "webhooks"):
            await seen.wait(kind)
        assert await asyncio.to_thread(b.changes.listening.wait, 5)
        before = len(seen.calls["accounts"])
        await a.add_credential(Credential("w@x.test", "x.test", "hash", time.time()))
        await seen.wait("accounts", before + 1)
    finally:
        await b.stop_changes()
