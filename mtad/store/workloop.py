"""A durable work loop over one of the store's leased work tables (route forwards, webhooks; and, claiming
with their own ``claim``, mailing-list expansions and campaigns: ``outbound.lists``, ``outbound.dispatch``).

Claims due rows (``WorkItem``s, leased to this process, ``store.leases``: renewed while held), runs ``handle(item)`` for each
with at most ``max_concurrent`` in flight (a slow receiver holds one slot, never the loop), and wakes early when
new work is committed. The handler records the outcome itself, in the store, with its events, through
``leases.settle_call`` (kept and tried again while the store fails). A handler that fails (the store refused a write
before the work was done, or a bug) has its row given back at once (``Leases.give_back``), so a running daemon
never keeps a row locked that it is not working on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable

from mtad.base.errors import StoreError
from mtad.store.leases import Leases
from mtad.store.work import WorkItem, WorkStore

log = logging.getLogger("mtad.work")


class WorkLoop:
    def __init__(self, *, name: str, store: WorkStore, table: str, handle: Callable[[WorkItem], Awaitable[None]],
                 max_concurrent: int, poll_interval: float = 1.0, actions: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time, node_id: str = ""):
        self.name = name
        self.store = store
        self.table = table
        self.handle = handle
        self.max_concurrent = max_concurrent
        self.poll_interval = poll_interval
        self.actions = actions
        self.clock = clock
        self.worker = node_id or f"{name}-{os.getpid()}-{os.urandom(3).hex()}"  # ``locked_by``: the node
        self.leases = Leases(store, table, self.worker, clock)
        self.inflight = 0
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        renewing = asyncio.create_task(self.leases.run(), name=f"{self.name}-leases")
        try:
            await self._run()
        finally:
            renewing.cancel()

    async def _run(self) -> None:
        while not self._stopping:
            room = self.max_concurrent - self.inflight
            if room > 0:
                try:
                    rows = await self.claim(self.clock(), room)
                except StoreError as exc:  # keep looping; the store may recover
                    log.error("%s: cannot claim work: %s", self.name, exc)
                    rows = []
                except Exception:  # noqa: BLE001 - keep looping
                    log.exception("%s: cannot claim work", self.name)
                    rows = []
                self.leases.claimed(row.id for row in rows)
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

    async def claim(self, now: float, room: int) -> list[WorkItem]:
        """Lock up to ``room`` due rows for this worker (subclasses may claim differently), skipping the rows it
        holds (``self.leases.held``)."""
        return await self.store.claim_work(self.table, self.worker, now, room, self.actions,
                                           lease_until=self.leases.until(now), skip=self.leases.held)

    def started(self, row: WorkItem) -> None:
        """Called when a claimed row starts (subclasses keep their own accounting)."""

    def finished(self, row: WorkItem) -> None:
        """Called when a row's handling has ended, whatever the outcome."""

    async def _run_one(self, row: WorkItem) -> None:
        try:
            try:
                await self.handle(row)
            except Exception as exc:  # noqa: BLE001 - the row is given back, not kept locked
                if isinstance(exc, StoreError):
                    log.error("%s: work item %s failed: %s; given back", self.name, row.id, exc)
                else:
                    log.exception("%s: work item %s failed; given back", self.name, row.id)
                await self.leases.give_back(row.id, exc, f"{self.name}: release of work item {row.id}")
            else:
                self.leases.done(row.id)
        except Exception as exc:  # noqa: BLE001 - the store closed: the next start releases the row
            log.error("%s: work item %s could not be given back: %s", self.name, row.id, exc,
                      exc_info=not isinstance(exc, StoreError))
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
