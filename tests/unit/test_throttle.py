"""mtad.throttle: pure parts on a fake clock, the async parts on a real event loop (short waits only)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mtad.outbound.providers import AutomationRule, ProviderPolicy
from mtad.base.rates import Duration, Rate
from mtad.outbound.throttle import ConcurrencyLimiter, RateLimiter, Suspensions


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- ConcurrencyLimiter -------------------------------------------------------------------------------------------

async def test_never_more_holders_than_the_limit():
    limiter = ConcurrencyLimiter()
    active, peak, done = 0, 0, []

    async def deliver(i: int) -> None:
        nonlocal active, peak
        async with limiter.acquire("google", 3):
            active += 1
            peak = max(peak, active)
            await asyncio.sleep(0.01)
            active -= 1
        done.append(i)

    await asyncio.gather(*(deliver(i) for i in range(10)))
    assert peak == 3 and sorted(done) == list(range(10))
    assert limiter.in_use("google") == 0


async def test_waiters_enter_in_arrival_order_and_keys_are_independent():
    limiter = ConcurrencyLimiter()
    order: list[int] = []
    gate = asyncio.Event()

    async def hold() -> None:
        async with limiter.acquire("k", 1):
            await gate.wait()

    async def enter(i: int) -> None:
        async with limiter.acquire("k", 1):
            order.append(i)

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiters = [asyncio.create_task(enter(i)) for i in range(4)]
    await asyncio.sleep(0)
    async with limiter.acquire("other", 1):  # a different key is not blocked
        assert limiter.in_use("k") == 1
    gate.set()
    await asyncio.gather(holder, *waiters)
    assert order == [0, 1, 2, 3]


async def test_raising_the_limit_admits_earlier_waiters_first():
    limiter = ConcurrencyLimiter()
    entered: list[str] = []
    gate = asyncio.Event()

    async def use(name: str, limit: int) -> None:
        async with limiter.acquire("k", limit):
            entered.append(name)
            await gate.wait()

    tasks = [asyncio.create_task(use("a", 1))]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(use("b", 1)))  # waits: limit 1 is taken
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(use("c", 2)))  # raises the limit to 2: b goes in, c waits behind it
    await asyncio.sleep(0.01)
    assert entered == ["a", "b"] and limiter.in_use("k") == 2
    gate.set()
    await asyncio.gather(*tasks)
    assert entered == ["a", "b", "c"]


async def test_lowering_the_limit_waits_for_holders_to_leave():
    limiter = ConcurrencyLimiter()
    gate = asyncio.Event()

    async def hold() -> None:
        async with limiter.acquire("k", 3):
            await gate.wait()

    holders = [asyncio.create_task(hold()) for _ in range(3)]
    await asyncio.sleep(0)
    late = asyncio.create_task(_enter(limiter, "k", 1))
    await asyncio.sleep(0.01)
    assert not late.done() and limiter.in_use("k") == 3
    gate.set()
    await asyncio.gather(*holders, late)
    assert limiter.in_use("k") == 0


async def test_cancelled_waiter_leaves_no_trace():
    limiter = ConcurrencyLimiter()
    async with limiter.acquire("k", 1):
        waiter = asyncio.create_task(_enter(limiter, "k", 1))
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.in_use("k") == 1
    assert limiter.in_use("k") == 0
    assert limiter._slots == {}  # the idle key is forgotten


async def test_waiter_cancelled_after_being_granted_gives_its_place_back():
    limiter = ConcurrencyLimiter()
    holding = limiter.acquire("k", 1)
    await holding.__aenter__()
    waiter = asyncio.create_task(_enter(limiter, "k", 1))
    await asyncio.sleep(0)
    await holding.__aexit__(None, None, None)  # grants the place to the waiter, which has not run yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert limiter.in_use("k") == 0


async def test_limit_below_one_is_refused():
    with pytest.raises(ValueError):
        async with ConcurrencyLimiter().acquire("k", 0):
            pass


async def _enter(limiter: ConcurrencyLimiter, key: str, limit: int) -> None:
    async with limiter.acquire(key, limit):
        pass


# --- RateLimiter ----------------------------------------------------------------------------------------------------

def test_fast_rate_allows_one_second_burst_then_spaces():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    rate = Rate.parse("100/s")
    assert all(limiter.delay("k", rate) == 0.0 for _ in range(100))
    assert limiter.delay("k", rate) == pytest.approx(0.01)
    clock.now += 0.01
    assert limiter.delay("k", rate) == 0.0


def test_slow_rate_spaces_messages_evenly():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    rate = Rate.parse("10/min")
    assert limiter.delay("k", rate) == 0.0
    assert limiter.delay("k", rate) == pytest.approx(6.0)
    assert limiter.delay("k", rate) == pytest.approx(6.0)  # a refused call takes no token
    clock.now += 4
    assert limiter.delay("k", rate) == pytest.approx(2.0)
    clock.now += 2
    assert limiter.delay("k", rate) == 0.0
    assert limiter.delay("other", rate) == 0.0  # keys are independent


def test_lowered_rate_shrinks_the_burst():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    assert limiter.delay("k", Rate.parse("100/s")) == 0.0  # 99 tokens left
    assert limiter.delay("k", Rate.parse("2/s")) == 0.0  # capped to 2, one taken
    assert limiter.delay("k", Rate.parse("2/s")) == 0.0
    assert limiter.delay("k", Rate.parse("2/s")) == pytest.approx(0.5)


def test_memory_follows_active_keys():
    clock = FakeClock()
    limiter = RateLimiter(clock)
    rate = Rate.parse("1/s")
    for i in range(5000):  # a new domain every 10 ms, each bucket full again 1 s later: ~100 active at a time
        clock.now += 0.01
        limiter.delay(f"domain{i}.example", rate)
    assert len(limiter._buckets) <= 1025


async def test_wait_returns_when_a_token_is_available():
    limiter = RateLimiter()
    rate = Rate(count=1, period=0.04)  # 25/s: a burst of 25, then one every 40 ms
    for _ in range(25):
        await limiter.wait("k", rate)
    start = time.monotonic()
    for _ in range(3):
        await limiter.wait("k", rate)
    assert 0.10 <= time.monotonic() - start < 0.3


# --- Suspensions ----------------------------------------------------------------------------------------------------

def test_suspension_lasts_until_its_time():
    clock = FakeClock()
    s = Suspensions(clock)
    s.suspend("yahoo", clock.now + 60)
    s.suspend("yahoo", clock.now + 10)  # a shorter suspension does not cut the longer one
    assert s.is_suspended("yahoo") and s.remaining("yahoo") == 60
    assert not s.is_suspended("google")
    clock.now += 60
    assert not s.is_suspended("yahoo") and s.remaining("yahoo") == 0.0


def test_suspend_rule_acts_at_once_without_threshold():
    clock = FakeClock()
    s = Suspensions(clock)
    rule = AutomationRule(name="tss04", providers=("yahoo",), regex="TSS04", action="suspend",
                          duration=Duration.parse("2h"))
    assert s.apply("yahoo", rule) is True
    assert s.remaining("yahoo") == 7200


def test_threshold_counts_matches_within_its_period():
    clock = FakeClock()
    s = Suspensions(clock)
    rule = AutomationRule(name="r", regex="x", action="suspend", duration=Duration(600),
                          threshold=Rate.parse("2/h"))
    assert s.apply("k", rule) is False
    clock.now += 3601  # the first match has aged out of the window
    assert s.apply("k", rule) is False
    assert not s.is_suspended("k")
    clock.now += 60
    assert s.apply("k", rule) is True
    assert s.is_suspended("k")
    assert s.apply("k", rule) is False  # the count starts again after acting


def test_throttle_rule_lowers_limits_until_it_expires():
    clock = FakeClock()
    s = Suspensions(clock)
    policy = ProviderPolicy(name="outlook", max_connections=5, max_message_rate=Rate.parse("100/s"))
    s.apply("outlook", AutomationRule(name="conn", action="throttle", regex="x", max_connections=1,
                                      duration=Duration(3600)))
    s.apply("outlook", AutomationRule(name="busy", action="throttle", regex="y",
                                      max_message_rate=Rate.parse("1/min"), duration=Duration(900)))
    lowered = s.effective(policy)
    assert (lowered.max_connections, lowered.max_message_rate) == (1, Rate.parse("1/min"))
    assert s.effective(ProviderPolicy(name="google", max_connections=5)).max_connections == 5
    clock.now += 900  # the rate override ends first, the connection override stays
    assert (s.effective(policy).max_connections, s.effective(policy).max_message_rate) == (1, Rate.parse("100/s"))
    clock.now += 2700
    assert s.effective(policy) is policy


def test_override_never_loosens_a_limit():
    clock = FakeClock()
    s = Suspensions(clock)
    s.override("k", clock.now + 60, max_connections=20, max_message_rate=Rate.parse("1000/s"))
    strict = ProviderPolicy(name="k", max_connections=2, max_message_rate=Rate.parse("1/s"))
    assert s.effective(strict) is strict
    unlimited = ProviderPolicy(name="k", max_message_rate=None)
    assert s.effective(unlimited).max_message_rate == Rate.parse("1000/s")


def test_snapshot_lists_what_is_suspended_or_lowered_now_for_the_panel():
    now = [100.0]
    s = Suspensions(lambda: now[0])
    s.suspend("yahoo", 400.0)
    s.override("google", 160.0, max_connections=2, max_message_rate=Rate.parse("10/m"))
    got = s.snapshot()
    assert [(t.provider, t.kind, t.value, t.seconds_left) for t in got] == [
        ("google", "max_connections", "2", 60.0), ("google", "max_message_rate", "10/m", 60.0),
        ("yahoo", "suspended", "", 300.0)]
    now[0] = 200.0  # the overrides ran out
    assert [(t.provider, t.kind) for t in s.snapshot()] == [("yahoo", "suspended")]
