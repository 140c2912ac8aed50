"""The shared shaping state of ``ShapingStore`` (``mtad.store.shaping``) on PostgreSQL, with several stores on one
database standing for several nodes, each calling from many tasks at once:

- connection slots: concurrent takers on all nodes never hold more than the limit, a slot whose lease ran out is
  taken over (and its former holder can then neither renew nor release it), a lowered limit waits for holders to
  leave, a released slot is free at once;
- the shared rate: grants from all nodes together never exceed the token bucket (burst + rate x time), a fresh
  provider gets its burst at once and then one message per interval, and the rate is used, not just bounded.

SQLite stores do not share shaping (one node shapes in memory): ``shares_shaping`` is false for them.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from mtad.store.shaping import shares_shaping
from tests.support.stores import Opener


@pytest.fixture
def nodes(tmp_path, request):
    """``make(n)`` -> n PostgresStores opened on one fresh database (the nodes of one cluster)."""
    opener = Opener("postgresql", tmp_path, request)
    yield lambda n: [opener(node_id=f"node-{i}") for i in range(n)]
    opener.close_all()


def test_only_a_store_shared_by_nodes_shares_shaping(tmp_path, request, nodes):
    sqlite = Opener("sqlite", tmp_path, request)
    try:
        assert not shares_shaping(sqlite())
    finally:
        sqlite.close_all()
    assert shares_shaping(nodes(1)[0])


async def test_concurrent_takers_on_all_nodes_never_hold_more_than_the_limit(nodes):
    stores = nodes(4)
    limit, held, peak, taken = 3, set(), [0], [0]

    async def worker(store, name: str) -> None:
        deadline = time.monotonic() + 3
        n = 0
        while time.monotonic() < deadline:
            n += 1
            holder = f"{name}-{n}"
            slot = await store.take_slot("prov", limit, holder, 30)
            if slot is None:
                await asyncio.sleep(random.uniform(0, 0.01))
                continue
            assert slot not in {s for s, _ in held}, "a slot number held twice"
            held.add((slot, holder))
            peak[0] = max(peak[0], len(held))
            taken[0] += 1
            await asyncio.sleep(random.uniform(0, 0.02))
            held.discard((slot, holder))  # before the release: a taker may get the slot as soon as it is deleted
            assert await store.release_slots([holder]) == 1

    await asyncio.gather(*(worker(store, f"n{i}t{t}") for i, store in enumerate(stores) for t in range(6)))
    assert peak[0] == limit  # the slots were all used ...
    assert len(held) == 0
    assert taken[0] > 30  # ... many times over, and never more than the limit at once (asserted in worker)


async def test_a_slot_whose_lease_ran_out_is_taken_over(nodes):
    a, b = nodes(2)
    assert {await a.take_slot("p", 2, "a1", 0.3), await a.take_slot("p", 2, "a2", 0.3)} == {0, 1}
    assert await b.take_slot("p", 2, "b1", 30) is None  # both held
    await asyncio.sleep(0.4)  # node a stopped renewing: its leases ran out
    assert await b.take_slot("p", 2, "b1", 30) is not None
    assert await b.take_slot("p", 2, "b2", 30) is not None
    assert await b.take_slot("p", 2, "b3", 30) is None
    # the former holder can neither renew nor release what was taken over
    assert await a.renew_slots(["a1", "a2"], 30) == 0
    assert await a.release_slots(["a1", "a2"]) == 0
    assert await b.renew_slots(["b1", "b2"], 30) == 2
    assert await b.release_slots(["b1"]) == 1
    assert await a.take_slot("p", 2, "a3", 30) is not None  # a released slot is free at once


async def test_a_renewed_slot_is_not_taken_over(nodes):
    a, b = nodes(2)
    assert await a.take_slot("p", 1, "a1", 0.3) == 0
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await a.renew_slots(["a1"], 0.3) == 1
        assert await b.take_slot("p", 1, "b1", 30) is None


async def test_a_lowered_limit_waits_until_fewer_slots_are_held(nodes):
    a, b = nodes(2)
    for holder in ("a1", "a2", "a3"):
        assert await a.take_slot("p", 3, holder, 30) is not None
    assert await b.take_slot("p", 2, "b1", 30) is None
    await a.release_slots(["a1"])
    assert await b.take_slot("p", 2, "b1", 30) is None  # two held: the lowered limit is reached
    await a.release_slots(["a2"])
    assert await b.take_slot("p", 2, "b1", 30) is not None
    assert await b.take_slot("p", 2, "b2", 30) is None
    # providers are independent
    assert await b.take_slot("other", 1, "b3", 30) == 0


async def test_a_fresh_provider_gets_its_burst_at_once_then_one_message_per_interval(nodes):
    (store,) = nodes(1)
    first = await store.take_rate("r", 10, 10, 10, 1.0)
    assert first.delays == (0.0,) * 10  # a full bucket: the burst
    then = await store.take_rate("r", 10, 10, 5, 1.0)
    assert len(then.delays) == 5
    gaps = [b - a for a, b in zip(then.delays, then.delays[1:])]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps), then.delays
    assert 0.05 < then.delays[0] <= 0.11
    # the next message is due in about 0.6 s: nothing fits a horizon of 0.2 s, an empty grant says when to come back
    empty = await store.take_rate("r", 10, 10, 1, 0.2)
    assert empty.delays == () and 0.3 < empty.retry_in <= 0.4
    # a grant never reaches past its horizon, whatever is asked for
    more = await store.take_rate("r", 10, 10, 100, 1.0)
    assert 3 <= len(more.delays) <= 5 and more.delays[-1] <= 1.0, more.delays


async def test_grants_of_all_nodes_together_never_exceed_the_bucket(nodes):
    stores = nodes(3)
    rate, burst, seconds = 50.0, 5, 3.0
    times: list[float] = []

    async def sender(store) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            grant = await store.take_rate("shared", rate, burst, 3, 0.5)
            now = time.monotonic()
            times.extend(now + d for d in grant.delays)  # when each granted message may go, on this clock
            await asyncio.sleep(min(grant.delays[-1] if grant.delays else grant.retry_in, 0.5))

    await asyncio.gather(*(sender(store) for store in stores for _ in range(3)))
    times.sort()
    # The bucket's bound: any k messages span at least (k - burst) / rate seconds. The times are the server's
    # schedule moved to this clock by each reply's latency, which varies: 30 ms of slack for that.
    slack = 0.03
    for i in range(len(times)):
        for j in range(i + burst, len(times)):
            assert times[j] - times[i] >= (j - i + 1 - burst) / rate - slack, (i, j, times[i:j + 1])
    # ... and the rate is used, not only bounded: about burst + rate x the span of the schedule
    span = times[-1] - times[0]
    assert len(times) >= 0.9 * (rate * span), (len(times), span)
    assert len(times) <= burst + rate * span + 2


async def test_an_automation_action_put_by_one_node_is_read_and_announced_on_every_node(nodes):
    from mtad.store.shaping import ProviderAction
    a, b = nodes(2)
    seen = asyncio.Event()

    async def changed() -> None:
        seen.set()
    b.on_change("shaping", changed)
    assert await b.start_changes()
    try:
        await a.put_provider_actions([ProviderAction("gmail", "suspend", 60.0, rule="tss04"),
                                      ProviderAction("yahoo", "max_connections", 30.0, 2.0, "slow")])
        await asyncio.wait_for(seen.wait(), 5)  # b is told at once (LISTEN/NOTIFY)
        got = {(x.provider, x.kind): x for x in await b.provider_actions()}
        assert set(got) == {("gmail", "suspend"), ("yahoo", "max_connections")}
        assert 58 < got[("gmail", "suspend")].seconds <= 60 and got[("gmail", "suspend")].node == "node-0"
        assert got[("yahoo", "max_connections")].value == 2.0 and got[("yahoo", "max_connections")].rule == "slow"
        # a shorter suspension does not shorten a longer one; a lowered limit replaces the earlier one
        await b.put_provider_actions([ProviderAction("gmail", "suspend", 5.0),
                                      ProviderAction("yahoo", "max_connections", 1.0, 1.0)])
        got = {(x.provider, x.kind): x for x in await a.provider_actions()}
        assert got[("gmail", "suspend")].seconds > 50
        assert got[("yahoo", "max_connections")].value == 1.0 and got[("yahoo", "max_connections")].node == "node-1"
        await asyncio.sleep(1.1)  # ran out: no longer in force
        assert {(x.provider, x.kind) for x in await a.provider_actions()} == {("gmail", "suspend")}
    finally:
        await b.stop_changes()
