"""The shared limiters of ``mtad.outbound.throttle`` over a ``ShapingStore`` (here an in-memory stand-in with the
store's contract; the PostgreSQL store itself: tests/contract/test_shaping_store.py), and which limiters a
scheduler gets: in memory over a store that does not share shaping (SQLite: no store call per message)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mtad.base.errors import StoreError
from mtad.base.rates import Rate
from mtad.outbound import throttle
from mtad.outbound.throttle import (ConcurrencyLimiter, RateLimiter, SharedConcurrencyLimiter, SharedRateLimiter,
                                    limiters)
from mtad.store.shaping import RateGrant


class FakeShapingStore:
    """``ShapingStore``'s contract in memory, with a real clock and a switch to fail like a lost database."""

    shared_shaping = True

    def __init__(self) -> None:
        self.slots: dict[tuple[str, int], tuple[str, float]] = {}  # (provider, slot) -> (holder, lease until)
        self.tat: dict[str, float] = {}
        self.failing = False
        self.calls: list[str] = []

    def _check(self, name: str) -> None:
        self.calls.append(name)
        if self.failing:
            raise StoreError("connection lost")

    async def take_slot(self, provider, limit, holder, lease):
        self._check("take_slot")
        await asyncio.sleep(0.001)
        now = time.monotonic()
        live = [k for k, (_, until) in self.slots.items() if k[0] == provider and until > now]
        if len(live) >= limit:
            return None
        for n in range(limit):
            if (provider, n) not in live:
                self.slots[(provider, n)] = (holder, now + lease)
                return n
        return None

    async def renew_slots(self, holders, lease):
        self._check("renew_slots")
        renewed = 0
        for key, (holder, _) in list(self.slots.items()):
            if holder in holders:
                self.slots[key] = (holder, time.monotonic() + lease)
                renewed += 1
        return renewed

    async def release_slots(self, holders):
        self._check("release_slots")
        gone = [k for k, (holder, _) in self.slots.items() if holder in holders]
        for key in gone:
            del self.slots[key]
        return len(gone)

    async def take_rate(self, provider, per_second, burst, want, horizon):
        self._check("take_rate")
        now, interval = time.monotonic(), 1 / per_second
        tau = (burst - 1) * interval
        base = max(self.tat.get(provider, now), now)
        delays = []
        while len(delays) < want and base - tau + len(delays) * interval <= now + horizon:
            delays.append(max(0.0, base - tau + len(delays) * interval - now))
        self.tat[provider] = base + len(delays) * interval
        return RateGrant(tuple(delays), retry_in=0.0 if delays else base - tau - horizon - now)

    async def sweep_shaping(self):
        self._check("sweep_shaping")
        return 0


def test_a_store_that_does_not_share_shaping_gets_the_in_memory_limiters():
    class OneNode:  # SQLite: no shared_shaping
        pass
    limiter, rates = limiters(OneNode(), "w")
    assert type(limiter) is ConcurrencyLimiter and type(rates) is RateLimiter
    limiter, rates = limiters(FakeShapingStore(), "w")
    assert isinstance(limiter, SharedConcurrencyLimiter) and isinstance(rates, SharedRateLimiter)


async def test_two_nodes_never_hold_more_than_the_limit_together():
    store = FakeShapingStore()
    nodes = [SharedConcurrencyLimiter(store, f"n{i}", retry=(0.005, 0.02)) for i in range(2)]
    inside, peak, done = [0], [0], [0]

    async def connection(limiter: SharedConcurrencyLimiter) -> None:
        async with limiter.acquire("p", 3):
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
            await asyncio.sleep(0.01)
            inside[0] -= 1
            done[0] += 1

    await asyncio.gather(*(connection(nodes[i % 2]) for i in range(30)))
    assert peak[0] == 3 and done[0] == 30
    await asyncio.gather(*(node.close() for node in nodes))
    assert store.slots == {}  # every slot given back


async def test_a_waiting_task_is_counted_and_takes_a_slot_freed_on_its_node_at_once():
    store = FakeShapingStore()
    limiter = SharedConcurrencyLimiter(store, "n", retry=(5.0, 5.0))  # no polling: only a local release wakes it
    release = asyncio.Event()

    async def holder() -> None:
        async with limiter.acquire("p", 1):
            await release.wait()
    first = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    second = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    assert limiter.waiting("p") == 1 and limiter.in_use("p") == 1
    started = time.monotonic()
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 2)
    assert time.monotonic() - started < 1  # woken by the release, not by the 5 s pause
    await asyncio.sleep(0.01)
    assert store.slots == {}


async def test_a_task_cancelled_while_taking_a_slot_gives_it_back():
    store = FakeShapingStore()
    limiter = SharedConcurrencyLimiter(store, "n")

    async def connection() -> None:
        async with limiter.acquire("p", 1):
            await asyncio.sleep(10)
    task = asyncio.create_task(connection())
    await asyncio.sleep(0)  # inside take_slot
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0.05)
    assert store.slots == {} and limiter.waiting("p") == 0


async def test_no_slot_is_taken_while_the_store_fails_and_slots_are_taken_again_after(monkeypatch):
    monkeypatch.setattr(throttle, "STORE_RETRY", 0.05)
    store = FakeShapingStore()
    store.failing = True
    limiter = SharedConcurrencyLimiter(store, "n")
    entered = asyncio.Event()

    async def connection() -> None:
        async with limiter.acquire("p", 2):
            entered.set()
    task = asyncio.create_task(connection())
    await asyncio.sleep(0.2)
    assert not entered.is_set() and store.calls.count("take_slot") >= 2
    store.failing = False
    await asyncio.wait_for(task, 2)


async def test_renewal_keeps_held_slots_and_close_releases_them():
    store = FakeShapingStore()
    limiter = SharedConcurrencyLimiter(store, "n", lease=0.15)
    renewing = asyncio.create_task(limiter.run())
    entered, leave = asyncio.Event(), asyncio.Event()

    async def connection() -> None:
        async with limiter.acquire("p", 1):
            entered.set()
            await leave.wait()
    task = asyncio.create_task(connection())
    await entered.wait()
    await asyncio.sleep(0.4)  # longer than the lease: renewed meanwhile
    assert await store.take_slot("p", 1, "other", 1) is None
    assert limiter.stats["slot_renewals"] >= 2
    renewing.cancel()
    await limiter.close()
    assert store.slots == {}
    leave.set()
    await task


async def test_the_shared_rate_is_spent_in_order_with_one_store_call_per_batch():
    store = FakeShapingStore()
    rates = SharedRateLimiter(store)
    rate = Rate(50, 1)  # burst 50, batches of 5 (0.1 s worth)
    started = time.monotonic()
    sent = []

    async def connection() -> None:
        for _ in range(20):
            await rates.wait("p", rate, queued=20)
            sent.append(time.monotonic() - started)
    await asyncio.gather(connection(), connection())
    assert len(sent) == 40
    assert store.calls.count("take_rate") == 8  # 40 messages in grants of 5
    assert sent[-1] < 0.5  # within the burst: no waiting


async def test_the_shared_rate_paces_after_the_burst():
    store = FakeShapingStore()
    rates = SharedRateLimiter(store)
    rate = Rate(20, 1)  # burst 20, batches of 2
    started = time.monotonic()
    for _ in range(30):
        await rates.wait("p", rate, queued=5)
    # 20 at once, then 10 at 20/s: about 0.5 s
    assert 0.4 <= time.monotonic() - started < 1.2
    assert store.calls.count("take_rate") <= 16


async def test_nothing_is_sent_while_the_store_fails(monkeypatch):
    monkeypatch.setattr(throttle, "STORE_RETRY", 0.05)
    store = FakeShapingStore()
    store.failing = True
    rates = SharedRateLimiter(store)
    task = asyncio.create_task(rates.wait("p", Rate(10, 1)))
    await asyncio.sleep(0.2)
    assert not task.done()
    store.failing = False
    await asyncio.wait_for(task, 2)
