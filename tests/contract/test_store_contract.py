"""The store's contract, written once and run against every backend (``tests.support.stores.BACKENDS``: SQLite and
PostgreSQL).

What any backend must do, checked through what the store does for its callers, not through its SQL:
- group commit: writes that arrive together are committed together (fewer commits than writes), and a caller
  gets its result only once its write is durable (a read from another connection then sees it);
- a failing write rolls back alone: the others of its batch commit, and nothing it wrote or staged survives;
- staged rows (the events and counters a write produces, applied once per batch) are exactly as durable as the
  writes that staged them: counters equal the events that are there;
- durability: what was acknowledged is there after close and open, claims included;
- claims are leases: a claimed row is not claimed by anybody else until its lease runs out, its holder may renew
  it, a claimer never takes again the rows it holds (``skip``), another takes the row over once the lease ran out
  and the former holder can then neither renew nor release it; claimers racing over the same due rows never get
  the same row.

Adding a backend: one entry in ``tests.support.stores`` (how a fresh store of it is opened).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions

# --- adapter: the store's operations as this contract uses them ---------------------------------------------------
# Each is one call (or a few) of the store's typed methods (``StoreProtocol``): what every backend implements. The
# tests below use only these.

from mtad.events import shape  # noqa: E402 - the adapter's imports, kept with it
from mtad.store import queue as spool  # noqa: E402
from mtad.store.counters import CounterQuery  # noqa: E402
from mtad.store.eventquery import EventQuery, Match  # noqa: E402
from tests.support.stores import BACKENDS, Opener  # noqa: E402
from mtad.store.work import WorkOutcome  # noqa: E402

ALL_TIME = 4e9  # an end of every query's time range later than any test's clock




def message(rcpts: tuple[str, ...] = ("a@x.test",), tag: str = "t1") -> NewMessage:
    return NewMessage(Envelope("s@example.com", rcpts, auth_user="u@example.com"), b"Subject: t\r\n\r\nhi\r\n",
                      "outbound", "example.com", HeaderSummary("id@example.com", "s@example.com", rcpts[0], "t"),
                      SendOptions(tags=(tag,)))


def new_id() -> str:
    return spool.new_queue_id()


async def enqueue(store, queue_id: str, msg: NewMessage, now: float = 1.0) -> None:
    """Accept a message: its body once, a delivery per destination domain, an accepted event per recipient."""
    await store.enqueue([spool.Enqueue(queue_id, msg, tuple(shape.accepted(msg, queue_id, now)))], now)


async def enqueue_with_forwards(store, queue_id: str, urls: list[str], now: float = 1.0) -> None:
    rows = tuple(spool.ForwardRow("r@in.test", "route", "http", url) for url in urls)
    msg = message(("r@in.test",))
    await store.enqueue([spool.Enqueue(queue_id, msg, tuple(shape.accepted(msg, queue_id, now)), forwards=rows)],
                        now)


async def message_ids(store) -> set[str]:
    """The messages with pending work (every message of these tests has some)."""
    return {entry.queue_id for entry in await store.list_queue(limit=100_000)}


async def accepted_events(store) -> int:
    return await store.count_events(EventQuery(None, (Match("event", "accepted"),), limit=100_000))


async def accepted_counter(store, tag: str = "") -> int:
    """The daily counter of accepted outgoing mail (``tag`` '' is the domain's total)."""
    [found] = await store.counter_rows(CounterQuery(("accepted",), 0.0, ALL_TIME, "day", domains=("example.com",),
                                                    tag=tag, by_time=False))
    return sum(row.count for row in found if row.key == "accepted:outgoing")


async def claim_deliveries(store, worker: str, now: float, lease_until: float, limit: int = 10,
                           skip=()) -> list[int]:
    claim = await store.claim_due(worker, now, limit, lease_until=lease_until, skip=skip)
    return [job.id for job in claim.jobs]


async def claim_forwards(store, worker: str, now: float, lease_until: float, limit: int = 10) -> list[int]:
    items = await store.claim_work("forwards", worker, now, limit, ("http",), lease_until=lease_until)
    return [item.id for item in items]


async def renew(store, table: str, worker: str, ids: list[int], until: float) -> int:
    return await store.renew_leases(table, worker, ids, until)


async def release(store, table: str, row_id: int, worker: str, due: float) -> bool:
    return await store.release_claim(table, row_id, worker, due)


async def finish_forward(store, row_id: int) -> None:
    await store.finish_work("forwards", [WorkOutcome(row_id, "done", 1, None, 200, "", time.time())])


async def holders(store, table: str = "deliveries") -> dict[int, str | None]:
    """Row id -> the claimer holding it (None: free), over the messages with pending work."""
    found: dict[int, str | None] = {}
    for queue_id in await message_ids(store):
        detail = await store.message_detail(queue_id)
        rows = detail.deliveries if table == "deliveries" else detail.forwards
        found.update((row.id, row.locked_by) for row in rows)
    return found


def commits(store) -> int:
    """Transactions committed so far (the engine's counter, also in /metrics)."""
    return store.commits


# --- the fixture --------------------------------------------------------------------------------------------------

@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path) -> Callable[[Path], Any]:
    """``open(path)``: the test's store of one backend, opened (a SQLite file in ``path``, or a fresh PostgreSQL
    database); opened again, the same file or database."""
    opener = Opener(request.param, tmp_path, request)
    yield lambda path: opener()
    opener.close_all()


@pytest.fixture
async def store(backend, tmp_path):
    s = backend(tmp_path)
    yield s
    s.close()


# --- group commit -------------------------------------------------------------------------------------------------

async def test_concurrent_writes_share_commits_and_each_result_comes_after_its_commit(store):
    ids = [new_id() for _ in range(200)]
    before = commits(store)
    seen_at_result: list[bool] = []

    async def one(qid: str) -> None:
        await enqueue(store, qid, message(("a@x.test", "b@y.test")))
        seen_at_result.append(qid in await message_ids(store))  # another connection sees it: it is committed
    await asyncio.gather(*(one(q) for q in ids))
    assert all(seen_at_result) and len(seen_at_result) == 200
    assert commits(store) - before < 200  # fewer commits than writes
    assert await message_ids(store) == set(ids)
    assert await accepted_events(store) == 400


async def test_a_failing_write_rolls_back_alone_while_its_batch_commits(store):
    taken = new_id()
    await enqueue(store, taken, message())
    others = [new_id() for _ in range(30)]
    results = await asyncio.gather(*(enqueue(store, q, message()) for q in others[:15]),
                                   enqueue(store, taken, message(("z@x.test",))),  # its id is taken: it fails
                                   *(enqueue(store, q, message()) for q in others[15:]), return_exceptions=True)
    failed = [r for r in results if isinstance(r, BaseException)]
    assert len(failed) == 1 and results[15] is failed[0]
    assert await message_ids(store) == {taken, *others}
    assert await accepted_events(store) == 31  # the failed write's accepted event is gone with it


async def test_staged_counters_are_exactly_the_events_that_committed(store):
    ids = [new_id() for _ in range(60)]
    ids[30] = ids[0]  # a duplicate: one write of the batch fails after staging its event and counters
    await asyncio.gather(*(enqueue(store, q, message(tag="news")) for q in ids), return_exceptions=True)
    events = await accepted_events(store)
    assert events == 59
    assert await accepted_counter(store) == events and await accepted_counter(store, "news") == events


# --- durability ---------------------------------------------------------------------------------------------------

async def test_what_was_acknowledged_is_there_after_close_and_open(backend, tmp_path):
    store = backend(tmp_path)
    ids = [new_id() for _ in range(20)]
    await asyncio.gather(*(enqueue(store, q, message()) for q in ids))
    [held] = await claim_deliveries(store, "w1", 2.0, lease_until=100.0, limit=1)
    store.close()
    store = backend(tmp_path)
    try:
        assert await message_ids(store) == set(ids)
        assert await accepted_counter(store) == 20
        assert (await holders(store))[held] == "w1"  # a claim is durable too: it holds until its lease runs out
        assert held not in await claim_deliveries(store, "w2", 50.0, lease_until=150.0)
    finally:
        store.close()


# --- claims are leases --------------------------------------------------------------------------------------------

async def test_a_claim_holds_until_its_lease_runs_out_and_is_then_taken_over(store):
    await enqueue(store, new_id(), message())
    [row] = await claim_deliveries(store, "w1", 2.0, lease_until=12.0)
    assert await claim_deliveries(store, "w2", 11.0, lease_until=21.0) == []  # held
    assert await renew(store, "deliveries", "w1", [row], 20.0) == 1  # renewed before it ran out
    assert await claim_deliveries(store, "w2", 13.0, lease_until=23.0) == []
    assert await claim_deliveries(store, "w1", 25.0, lease_until=35.0, skip={row}) == []  # its own: skipped
    assert await claim_deliveries(store, "w2", 25.0, lease_until=35.0) == [row]  # ran out: taken over
    assert (await holders(store))[row] == "w2"
    assert await renew(store, "deliveries", "w1", [row], 99.0) == 0  # the former holder lost it
    assert await release(store, "deliveries", row, "w1", 0.0) is False
    assert await release(store, "deliveries", row, "w2", 26.0) is True
    assert (await holders(store))[row] is None


async def test_a_claim_takes_every_due_row_once_with_its_suppressed_recipients(store):
    """A claim of many rows (their ids one array parameter on PostgreSQL) takes each due row once, with its job's
    data, and says which recipients the domain's lists suppress (their addresses one array parameter too)."""
    from mtad.store.suppressions import Suppression
    odd = 'o"dd\\{x},y@x.test'  # quotes, a backslash, braces and a comma in one address
    await store.add_suppressions("example.com", [
        Suppression("bounces", "gone@x.test", 1.0), Suppression("bounces", odd, 1.0),
        Suppression("unsubscribes", "unsub@x.test", 1.0, tags=("t2",)),
        Suppression("bounces", "vip@x.test", 1.0), Suppression("whitelists", "vip@x.test", 1.0)])
    sent = {}
    for n in range(30):
        rcpt = ("gone@x.test", odd, "unsub@x.test", "vip@x.test", f"ok{n}@x.test")[n % 5]
        queue_id = new_id()
        sent[queue_id] = rcpt
        await enqueue(store, queue_id, message((rcpt,), tag=f"t{n % 3}"))
    claim = await store.claim_due("w1", 2.0, 100, lease_until=12.0)
    assert sorted(job.queue_id for job in claim.jobs) == sorted(sent)
    assert len({job.id for job in claim.jobs}) == 30
    for job, suppressed in zip(claim.jobs, claim.suppressed):
        rcpt = sent[job.queue_id]
        assert job.recipients == (rcpt,)
        want = {"gone@x.test": "suppress-bounce", odd: "suppress-bounce"}.get(rcpt)
        if rcpt == "unsub@x.test" and job.options.get("tags") == ["t2"]:
            want = "suppress-unsubscribe"
        assert suppressed == ({rcpt: want} if want else {})
    assert (await store.claim_due("w2", 3.0, 100, lease_until=13.0)).jobs == ()


async def test_racing_claimers_never_get_the_same_row(store):
    await asyncio.gather(*(enqueue(store, new_id(), message((f"r{i}@d{i}.test",))) for i in range(60)))
    claims = await asyncio.gather(*(claim_deliveries(store, f"w{i}", 2.0, lease_until=100.0, limit=7)
                                    for i in range(12)))
    got = [row for rows in claims for row in rows]
    assert len(got) == len(set(got)) == 60
    owners = await holders(store)
    for i, rows in enumerate(claims):
        assert all(owners[row] == f"w{i}" for row in rows)


async def test_work_rows_are_leased_the_same_way_and_done_rows_are_not_claimed_again(store):
    await enqueue_with_forwards(store, new_id(), [f"http://127.0.0.1:9/{i}" for i in range(20)])
    claims = await asyncio.gather(*(claim_forwards(store, f"w{i}", 2.0, lease_until=100.0, limit=3)
                                    for i in range(10)))
    got = [row for rows in claims for row in rows]
    assert len(got) == len(set(got)) == 20
    first = claims[0][0]
    await finish_forward(store, first)
    assert first not in await claim_forwards(store, "late", 500.0, lease_until=600.0, limit=50)  # done: never again
    assert len(await claim_forwards(store, "late2", 500.0, lease_until=600.0, limit=50)) == 0  # all taken by late
