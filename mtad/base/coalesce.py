"""Micro-batching on the event loop: many callers' items, one call per burst.

``Coalescer(run)``: ``await c.submit(item)`` returns that item's result of ``await run(items)``, where
``items`` are all the items submitted since the previous call began (at most ``max_batch``).
``c.enqueue(item)`` submits without waiting: the future it returns gets that result (or exception) later.
``interval`` (seconds, 0 by default): a call starts at least that long after the previous one started, unless
``max_batch`` items wait. The first item after a quiet spell is run at once; under a steady flow of callers that
do not wait for their results (``enqueue``) each call takes what came in the interval, instead of one call per
item whenever items come slower than a call takes (a store write's cost is mostly per call). Calls
never overlap, so a burst that arrives while one call runs becomes the next call: one thread hop or
one store transaction for a whole burst instead of one per item. ``run`` returns one result per item,
in order; if it raises, every caller of that batch gets the exception.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Generic, Sequence, TypeVar

log = logging.getLogger("mtad.coalesce")

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_batch: int = 256,
                 interval: float = 0.0):
        self.run = run
        self.max_batch = max_batch
        self.interval = interval
        self._started = float("-inf")  # when the last call started (loop time)
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task | None = None
        self.calls = 0  # batches run (for tests and metrics)

    @property
    def idle(self) -> bool:
        """Nothing waits and no call runs."""
        return self._task is None and not self._pending

    async def submit(self, item: T) -> R:
        return await self.enqueue(item)

    def enqueue(self, item: T) -> asyncio.Future[R]:
        """Submit ``item`` for the next call; the future of its result (call from the event loop)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            loop = asyncio.get_running_loop()
            while self._pending:
                wait = self._started + self.interval - loop.time()
                if wait > 0 and len(self._pending) < self.max_batch:
                    await asyncio.sleep(wait)
                self._started = loop.time()
                batch, self._pending = self._pending[:self.max_batch], self._pending[self.max_batch:]
                batch = [(item, future) for item, future in batch if not future.cancelled()]
                if not batch:
                    continue
                self.calls += 1
                try:
                    results = await self.run([item for item, _ in batch])
                    if len(results) != len(batch):
                        raise RuntimeError(f"batch of {len(batch)} gave {len(results)} results")
                except BaseException as exc:  # noqa: BLE001 - belongs to every caller of the batch
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc if isinstance(exc, Exception) else RuntimeError(repr(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, future), result in zip(batch, results):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._task = None
            if self._pending:  # cancelled midway: whoever is still waiting must not hang
                for _, future in self._pending:
                    if not future.done():
                        future.cancel()
                self._pending = []
