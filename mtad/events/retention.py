"""Event retention: events older than ``store.event_retention`` are deleted, a little at a time.

A background task wakes every ``interval`` (a tenth of the retention, between 1 s and 5 minutes) and
deletes old events in batches of ``batch`` rows, each batch its own short write transaction with a
pause between batches, so pruning millions of rows never holds the writer for long: ingress commits
and deliveries interleave with it. Finished webhook rows older than the retention go the same way.
Stats counters are not pruned (they are small and are what long-range stats queries read). The same loop prunes
tracked messages after ``tracking.retention`` (``Pruner(..., prune=store.prune_tracking, what=...)``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable

from mtad.store.events import EventStore

log = logging.getLogger("mtad.retention")


class Pruner:
    """Deletes what is older than ``retention`` seconds (``EventStore.prune_events``), ``batch`` rows per write."""

    def __init__(self, store: EventStore, retention: float, *, batch: int = 500, pause: float = 0.01,
                 clock: Callable[[], float] = time.time,
                 prune: Callable[[float, int], Awaitable[int]] | None = None,
                 what: str = "events and webhook rows"):
        self.store = store
        self.prune = prune or store.prune_events
        self.what = what
        self.retention = retention
        self.batch = batch
        self.pause = pause
        self.clock = clock
        self.interval = min(300.0, max(1.0, retention / 10))
        self.pruned = 0

    async def prune_once(self) -> int:
        cutoff = self.clock() - self.retention
        total = 0
        while True:
            n = await self.prune(cutoff, self.batch)
            total += n
            if n < self.batch:
                break
            await asyncio.sleep(self.pause)  # let other writers in between batches
        self.pruned += total
        if total:
            log.info("pruned %d %s older than %ds", total, self.what, int(self.retention))
        return total

    async def run(self) -> None:
        while True:
            try:
                await self.prune_once()
            except Exception:  # noqa: BLE001 - try again next round
                log.exception("pruning %s failed", self.what)
            await asyncio.sleep(self.interval)
