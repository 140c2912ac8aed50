"""Claims on work rows are leases; the writes that settle a claim are retried until they are written.

A claimer (the scheduler over ``deliveries``, a ``WorkLoop`` over ``forwards`` or ``webhook_deliveries``) locks
rows with ``locked_by`` = its worker id and ``lease_until`` = now + the store's ``lease`` (``store.claim_lease``).
The semantics are the store's, not SQLite's: any backend whose claims take free rows and rows whose lease ran out
(``spool.CLAIMABLE``) works the same way, one process or many nodes.

Contract of ``Leases`` (one per claimer):
- ``claimed(ids)`` when rows are claimed, ``done(id)`` once the row's outcome (or its release) is committed.
  ``held`` are the rows in between: a claim skips them (``skip=``), so a process never takes its own row twice,
  even when a renewal could not be written and the row's lease looks expired.
- ``run()`` renews the held rows' leases every third of the lease, in one write; a holder that dies stops renewing
  and its rows are claimed again once their lease ran out (by another node; at start-up by the next process).
- ``until(now)``: the lease expiry of a claim made at ``now``.

``settle_call(store, call, what)`` makes the write that ends a claim (``call()``: a typed store method writing an
outcome with its events, or a release): while the store fails (``StoreError``: disk full, I/O error) the write is
kept in memory and tried again with backoff (0.25 s doubling to ``MAX_BACKOFF``), so it lands seconds after the
store recovers, and a delivered message is not delivered again just because its result could not be recorded. It
gives up (raises) only when the store is closed (shutdown: the next start releases the row, at-least-once) or when
the write itself fails otherwise (a bug: not retried).

``give_back(...)`` is the error path of a claim that could not be handled: released at once (through
``settle_call``), due again ``RETRY_AFTER_STORE_ERROR`` after a store failure, ``RETRY_AFTER_ERROR`` after any
other error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Iterable, Protocol, TypeVar

from mtad.base.errors import StoreError
from mtad.store.queue import LEASED_TABLES
from mtad.store.work import WorkStore

log = logging.getLogger("mtad.leases")
T = TypeVar("T")

MAX_BACKOFF = 5.0  # seconds between tries of a write the store refused, at most
RETRY_AFTER_STORE_ERROR = MAX_BACKOFF  # seconds before a row whose handling the store refused is tried again
RETRY_AFTER_ERROR = 60.0  # seconds before a row whose handling failed otherwise is tried again


class _Opened(Protocol):
    @property
    def is_open(self) -> bool: ...


async def settle_call(store: _Opened, call: Callable[[], Awaitable[T]], what: str, *, first_delay: float = 0.25) -> T:
    """``await call()`` (a typed write of ``store``: ``lambda: store.finish_attempt(...)``), tried again while the
    store fails, until written (see the module doc)."""
    delay, failures = first_delay, 0
    while True:
        try:
            result = await call()
        except StoreError as exc:
            if not store.is_open:
                raise
            failures += 1
            if failures == 1:
                log.error("%s: not written (%s); kept in memory and tried again until the store takes it", what, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)
            continue
        if failures:
            log.info("%s: written after %d failed tries", what, failures)
        return result


class Leases:
    """The rows one claimer holds in one table, and the renewal of their leases (see the module doc)."""

    def __init__(self, store: WorkStore, table: str, worker: str, clock: Callable[[], float] = time.time):
        assert table in LEASED_TABLES
        self.store = store
        self.table = table
        self.worker = worker
        self.clock = clock
        self.held: set[int] = set()
        self.renewals = 0  # renewal writes made (tests)

    @property
    def duration(self) -> float:
        return self.store.lease

    def until(self, now: float) -> float:
        return now + self.duration

    def claimed(self, ids: Iterable[int]) -> None:
        self.held.update(ids)

    def done(self, row_id: int) -> None:
        self.held.discard(row_id)

    async def renew(self) -> int:
        ids = list(self.held)
        if not ids:
            return 0
        until = self.until(self.clock())
        renewed = await self.store.renew_leases(self.table, self.worker, ids, until)
        self.renewals += 1
        return renewed

    async def run(self) -> None:
        """Renew every third of the lease until cancelled; a renewal the store refuses is tried at the next one."""
        while True:
            await asyncio.sleep(max(self.duration / 3, 0.05))
            try:
                await self.renew()
            except StoreError as exc:
                log.warning("%s: cannot renew the leases of %d %s rows: %s", self.worker, len(self.held), self.table,
                            exc)
            except Exception:  # noqa: BLE001 - keep renewing
                log.exception("%s: lease renewal failed", self.worker)

    async def give_back(self, row_id: int, error: BaseException | None, what: str) -> None:
        """Release a row whose handling failed, at once (written as soon as the store takes writes again); due
        again soon after a store failure, after ``RETRY_AFTER_ERROR`` otherwise."""
        at = self.clock() + (RETRY_AFTER_STORE_ERROR if isinstance(error, StoreError) else RETRY_AFTER_ERROR)
        try:
            await settle_call(self.store, lambda: self.store.release_claim(self.table, row_id, self.worker, at), what)
        finally:
            self.done(row_id)
