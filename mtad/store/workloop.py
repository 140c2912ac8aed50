"""A durable work loop over one of the store's HTTP work tables (route forwards, webhooks).

Claims due rows (locked to this process), runs ``handle(row)`` for each with at most
``max_concurrent`` in flight (a slow receiver holds one slot, never the loop), and wakes early when
new work is committed. The handler records the outcome itself, in the store, with its events.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable

from mtad.store import queue as spool
from mtad.store.engine import Store

log = logging.getLogger("mtad.work")


class WorkLoop:
    def __init__(self, *, name: str, store: Store, table: str, handle: Callable[[dict[str, Any]], Awaitable[None]],
                 max_concurrent: int, poll_interval: float = 1.0, actions: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time):
        self.name = name
        self.store = store
        self.table = table
        self.handle = handle
        self.max_concurrent = max_concurrent
        self.poll_interval = poll_interval
        self.actions = actions
        self.clock = clock
        self.worker = f"{name}-{os.getpid()}-{os.urandom(3).hex()}"
        self.inflight = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            room = self.max_concurrent - self.inflight
            if room > 0:
                try:
                    rows = await self.claim(self.clock(), room)
                except Exception:  # noqa: BLE001 - keep looping; the store may recover
                    log.exception("%s: cannot claim work", self.name)
                    rows = []
                if self._stopping:  # stop() came during the claim: the rows stay locked until the next start
                    break
                for row in rows:
                    self.inflight += 1
                    self.started(row)
                    task = asyncio.create_task(self._run_one(row))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except asyncio.TimeoutError:
                pass

    async def claim(self, now: float, room: int) -> list[dict[str, Any]]:
        """Lock up to ``room`` due rows for this worker (subclasses may claim differently)."""
        return await self.store.write(lambda c: spool.claim_due_work(c, self.table, self.worker, now, room,
                                                                     self.actions))

    def started(self, row: dict[str, Any]) -> None:
        """Called when a claimed row starts (subclasses keep their own accounting)."""

    def finished(self, row: dict[str, Any]) -> None:
        """Called when a row's handling has ended, whatever the outcome."""

    async def _run_one(self, row: dict[str, Any]) -> None:
        try:
            await self.handle(row)
        except Exception:  # noqa: BLE001 - the row stays locked until restart rather than being lost
            log.exception("%s: work item %s failed", self.name, row.get("id"))
        finally:
            self.inflight -= 1
            self.finished(row)
            self._wake.set()

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
