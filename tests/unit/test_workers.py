"""mtad.workers: the one helper-process pool, with a job kind of its own (not DKIM, not forms).

The child imports this module by name (``tests.unit.test_workers:work``) as it would a domain package's job.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from mtad.workers.pool import JobKind, RunHere, WorkerPool
from tests.support.wait import wait_for

HERE = os.getpid()


def work(payload: list, memo: dict) -> list:
    """In the child: each item ``n`` gives ``(n * 2, batch size, pid)``; ``"fail"`` fails the batch, ``"skip"``
    is left to the parent, ``"sleep"`` stalls, ``"nap"`` takes half a second."""
    memo["batches"] = memo.get("batches", 0) + 1
    out = []
    for n in payload:
        if n == "fail":
            raise RuntimeError("this batch is broken")
        if n == "sleep":
            time.sleep(30)
        if n == "nap":
            time.sleep(0.5)
        out.append(None if n == "skip" else (n * 2, len(payload), os.getpid(), memo["batches"]))
    return out


class Doubling(JobKind):
    name = "doubling"
    target = "tests.unit.test_workers:work"  # pytest imports this file under another name
    batch = 8

    def decode(self, item, answer):
        if answer is None:
            raise RunHere
        return answer

    def run_here(self, item):
        if item == "bad":
            raise ValueError("bad item")
        return (item * 2 if isinstance(item, int) else item, 0, os.getpid(), 0)

    def offload(self, item):
        return item == 1000


@pytest.fixture
def fast_restart(monkeypatch):
    monkeypatch.setattr("mtad.workers.pool.RESTART_DELAY", 0.05)


async def test_no_processes_means_in_process_and_offload_means_a_thread():
    pool = WorkerPool(Doubling(), 0)
    try:
        assert await pool.run(3) == (6, 0, HERE, 0)
        assert await pool.run(1000) == (2000, 0, HERE, 0)  # in a thread: the same answer
        with pytest.raises(ValueError, match="bad item"):
            await pool.run("bad")
        assert pool.pids == []
    finally:
        await pool.close()


async def test_children_start_on_first_use_and_take_batches():
    pool = WorkerPool(Doubling(), 2)
    assert pool.pids == []  # nothing before the first item
    try:
        out = await pool.run_many(list(range(40)))  # one loop iteration: 5 writes of 8
        assert [r[0] for r in out] == [n * 2 for n in range(40)]
        assert {r[1] for r in out} == {8}
        assert {r[2] for r in out} == set(pool.pids) and len(pool.pids) == 2 and HERE not in pool.pids
        assert max(r[3] for r in out) >= 2  # a child kept its memo across batches
    finally:
        await pool.close()


class Holding(Doubling):
    hold_while_busy = True


async def test_items_that_come_while_the_children_are_busy_go_out_together():
    pool = WorkerPool(Holding(), 1)
    try:
        await pool.run(1)
        busy = asyncio.ensure_future(pool.run("nap"))
        await asyncio.sleep(0.05)  # the nap is with the child
        later = []
        for n in range(5):  # one at a time, in separate loop iterations
            later.append(asyncio.ensure_future(pool.run(n)))
            await asyncio.sleep(0.01)
        out = await asyncio.gather(*later)
        assert await busy == ("napnap", 1, pool.pids[0], 2)
        assert [r[0] for r in out] == [0, 2, 4, 6, 8]
        assert {r[1] for r in out} == {5} and {r[3] for r in out} == {3}  # one batch of 5, the child's third
        plain = WorkerPool(Doubling(), 1)  # without hold_while_busy: one write per item
        try:
            await plain.run(1)
            busy = asyncio.ensure_future(plain.run("nap"))
            await asyncio.sleep(0.05)
            later = []
            for n in range(3):
                later.append(asyncio.ensure_future(plain.run(n)))
                await asyncio.sleep(0.01)
            assert {r[1] for r in await asyncio.gather(*later)} == {1}
            await busy
        finally:
            await plain.close()
    finally:
        await pool.close()


async def test_items_held_for_a_child_that_dies_are_not_lost(fast_restart):
    pool = WorkerPool(Holding(), 1)
    try:
        await pool.run(1)
        (pid,) = pool.pids
        busy = asyncio.ensure_future(pool.run("nap"))
        await asyncio.sleep(0.05)
        held = [asyncio.ensure_future(pool.run(n)) for n in range(3)]
        await asyncio.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
        assert [r[0] for r in await asyncio.gather(*held)] == [0, 2, 4]
        assert (await busy)[0] == "nap"  # done in process
    finally:
        await pool.close()


async def test_a_killed_child_loses_nothing_and_is_replaced(fast_restart):
    pool = WorkerPool(Doubling(), 1)
    try:
        await pool.run(1)
        (pid,) = pool.pids
        pending = asyncio.ensure_future(pool.run_many(list(range(200))))
        await asyncio.sleep(0)  # the batches are written
        os.kill(pid, signal.SIGKILL)
        out = await pending
        assert [r[0] for r in out] == [n * 2 for n in range(200)]
        assert any(r[2] == HERE for r in out)  # the unanswered ones were done in process
        await wait_for(lambda: pool.pids and pool.pids[0] != pid, 10, "a new child")
        assert (await pool.run(5))[2] == pool.pids[0]  # the new child works
    finally:
        await pool.close()


async def test_a_child_that_cannot_start_its_job_means_in_process_with_backoff(fast_restart):
    kind = Doubling()
    kind.target = "tests.unit.no_such_module:work"
    pool = WorkerPool(kind, 1)
    try:
        for _ in range(3):
            assert await pool.run(4) == (8, 0, HERE, 0)
            await asyncio.sleep(0.2)
        assert pool._delay > 0.1  # each failure doubles the wait before the next start
    finally:
        await pool.close()


async def test_failed_batches_and_refused_answers_are_done_in_process():
    pool = WorkerPool(Doubling(), 1)
    try:
        out = await pool.run_many([1, "skip", 2])
        assert out[0][2] == out[2][2] == pool.pids[0] and out[1] == ("skip", 0, HERE, 0)
        pid = pool.pids[0]
        out = await pool.run_many([1, "fail"])  # the job function raised: the whole batch here, the child stays
        assert out == [(2, 0, HERE, 0), ("fail", 0, HERE, 0)] and pool.pids == [pid]
    finally:
        await pool.close()


async def test_a_child_that_does_not_answer_in_time_is_replaced(fast_restart):
    kind = Doubling()
    kind.timeout = 30.0  # a loaded machine may take seconds to start the child: let the first job reach it
    pool = WorkerPool(kind, 1)
    try:
        await pool.run(1)  # starts the child
        await wait_for(lambda: pool.pids, 30, "the child")
        (pid,) = pool.pids
        assert (await pool.run(1))[2] == pid
        kind.timeout = 0.5
        assert await pool.run_many(["sleep", 3]) == [("sleep", 0, HERE, 0), (6, 0, HERE, 0)]
        await wait_for(lambda: pool.pids and pool.pids[0] != pid, 10, "a new child")
    finally:
        await pool.close()


async def test_close_ends_the_children_cleanly_and_later_jobs_run_here():
    pool = WorkerPool(Doubling(), 2)
    await pool.run(1)
    procs = [c.proc for c in pool._children]
    await pool.close()
    assert [p.returncode for p in procs] == [0, 0]
    assert await pool.run(2) == (4, 0, HERE, 0)
