"""In-memory shaping mechanisms, keyed by provider name (or any string): concurrency, rate, suspension.

- ``ConcurrencyLimiter``: at most ``limit`` holders per key, first come first served. The limit passed with each
  ``acquire`` becomes the key's limit, so lowering it takes effect as holders leave and raising it wakes waiters.
- ``RateLimiter``: a token bucket per key, refilled at ``Rate.per_second``. A bucket holds at most one second's
  worth of tokens (and at least one), so ``100/s`` allows a burst of 100 while ``10/min`` spaces messages 6 s
  apart instead of letting 10 go at once.
- ``Suspensions``: keys suspended until a time, and temporary lower limits per key, each expiring on its own.
  ``apply`` turns a matched ``AutomationRule`` into one of them once the rule's threshold is reached.

All of it is memory only and may be lost (the store holds the truth). Time comes from an injectable monotonic
``clock``, so the pure parts are tested with a fake one. Expired entries and idle keys are dropped, so memory
follows the active keys.

Several nodes on one store (``store.shaping.ShapingStore``, PostgreSQL): ``SharedConcurrencyLimiter`` and
``SharedRateLimiter`` have the same interface and make ``max_connections`` and ``max_message_rate`` hold for the
cluster: a connection holds one of the provider's leased slots in the store, a message spends one of the
provider's shared rate, taken in batches (docs/scaling.md, "Provider shaping across the cluster").
``limiters(store, holder)`` picks the pair: the in-memory one unless the store shares shaping, so a single node
pays nothing. ``Suspensions`` are each node's, in memory; what an automation rule decides on one node is shared
through the store (``rule_actions``: the rows to put; ``Suspensions.adopt``: the rows every node applies), so a
provider suspended or throttled by one node is so on all of them (the scheduler does both).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mtad.base.errors import StoreError
from mtad.outbound.providers import AutomationRule, ProviderPolicy
from mtad.base.rates import Rate
from mtad.store.shaping import ProviderAction, ShapingStore, shares_shaping

Clock = Callable[[], float]
_V = TypeVar("_V")
_SWEEP_MIN = 1024  # tables are swept of idle keys when they grow past this (then past twice their live size)


@dataclass
class _Slot:
    limit: int
    in_use: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class ConcurrencyLimiter:
    """Per-key semaphores whose size can change: ``async with limiter.acquire(key, limit): ...``."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def in_use(self, key: str) -> int:
        slot = self._slots.get(key)
        return slot.in_use if slot else 0

    def waiting(self, key: str) -> int:
        """Tasks queued for a place under ``key``."""
        slot = self._slots.get(key)
        return len(slot.waiters) if slot else 0

    async def run(self) -> None:
        """Nothing to renew in memory (``SharedConcurrencyLimiter.run`` renews its leases)."""

    async def close(self) -> None:
        """Nothing to give back."""

    @asynccontextmanager
    async def acquire(self, key: str, limit: int) -> AsyncIterator[None]:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        slot = self._slots.setdefault(key, _Slot(limit))
        slot.limit = limit
        _wake(slot)  # a raised limit lets earlier waiters in first
        if slot.in_use < slot.limit and not slot.waiters:
            slot.in_use += 1
        else:
            waiter = asyncio.get_running_loop().create_future()
            slot.waiters.append(waiter)
            try:
                await waiter  # _wake counted us in before resolving it
            except asyncio.CancelledError:
                if waiter.cancelled():
                    slot.waiters.remove(waiter)
                    self._leave(key, slot, releasing=False)
                else:  # granted, then cancelled before running: give the place back
                    self._leave(key, slot, releasing=True)
                raise
        try:
            yield
        finally:
            self._leave(key, slot, releasing=True)

    def _leave(self, key: str, slot: _Slot, releasing: bool) -> None:
        slot.in_use -= releasing
        _wake(slot)
        if slot.in_use == 0 and not slot.waiters:
            del self._slots[key]


def _wake(slot: _Slot) -> None:
    while slot.waiters and slot.in_use < slot.limit:
        slot.in_use += 1
        slot.waiters.popleft().set_result(None)


@dataclass
class _Bucket:
    tokens: float
    at: float
    full_at: float  # when it will have refilled completely: after that it is as good as a new bucket


class RateLimiter:
    """Token buckets per key. ``delay`` answers at once; ``wait`` sleeps until it has taken a token."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._sweep_at = _SWEEP_MIN

    def delay(self, key: str, rate: Rate) -> float:
        """Take a token and return 0.0, or take nothing and return the seconds until a token is due."""
        now = self._clock()
        capacity = max(1.0, math.floor(rate.per_second))
        bucket = self._buckets.get(key)
        tokens = capacity if bucket is None else min(capacity, bucket.tokens + (now - bucket.at) * rate.per_second)
        wait = 0.0 if tokens >= 1 - 1e-9 else (1 - tokens) / rate.per_second  # 1e-9: float drift is not a wait
        if not wait:
            tokens = max(0.0, tokens - 1)
        self._buckets[key] = _Bucket(tokens, now, now + (capacity - tokens) / rate.per_second)
        if len(self._buckets) > self._sweep_at:
            self._buckets = {k: b for k, b in self._buckets.items() if b.full_at > now}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._buckets))
        return wait

    async def wait(self, key: str, rate: Rate, queued: int = 1) -> None:
        """Take a token, sleeping until one is due (``queued``: see ``SharedRateLimiter.wait``)."""
        while (seconds := self.delay(key, rate)) > 0:
            await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Throttled:
    """A provider suspended (``kind`` ``suspended``) or with a lowered limit (``max_connections``,
    ``max_message_rate``: ``value``), for ``seconds_left`` more."""

    provider: str
    kind: str
    value: str
    seconds_left: float


class Suspensions:
    """Suspended keys and temporary limit overrides, each expiring on its own; fed by automation rules."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._suspended: dict[str, float] = {}  # key -> until
        self._connections: dict[str, tuple[int, float]] = {}  # key -> (max_connections, until)
        self._rates: dict[str, tuple[Rate, float]] = {}  # key -> (max_message_rate, until)
        self._matches: dict[tuple[str, str], tuple[float, deque[float]]] = {}  # (key, rule) -> (period, times)
        self._sweep_at = _SWEEP_MIN

    def suspend(self, key: str, until: float) -> None:
        """Suspend ``key`` until ``until`` (clock time); an existing longer suspension stays."""
        self._suspended[key] = max(until, self._suspended.get(key, until))

    def remaining(self, key: str) -> float:
        """Seconds until ``key`` may be used again; 0.0 when it is not suspended."""
        left = self._suspended.get(key, 0.0) - self._clock()
        if left > 0:
            return left
        self._suspended.pop(key, None)
        return 0.0

    def is_suspended(self, key: str) -> bool:
        return self.remaining(key) > 0

    def override(self, key: str, until: float, max_connections: int | None = None,
                 max_message_rate: Rate | None = None) -> None:
        """Lower ``key``'s limits until ``until``; each limit given replaces an earlier override of that limit."""
        if max_connections is not None:
            self._connections[key] = (max_connections, until)
        if max_message_rate is not None:
            self._rates[key] = (max_message_rate, until)

    def effective(self, policy: ProviderPolicy) -> ProviderPolicy:
        """``policy`` with the live overrides for ``policy.name``; an override never loosens a limit."""
        now = self._clock()
        changes: dict[str, object] = {}
        connections = _live(self._connections, policy.name, now)
        if connections is not None and connections < policy.max_connections:
            changes["max_connections"] = connections
        rate = _live(self._rates, policy.name, now)
        if rate is not None and (policy.max_message_rate is None
                                 or rate.per_second < policy.max_message_rate.per_second):
            changes["max_message_rate"] = rate
        return replace(policy, **changes) if changes else policy

    def apply(self, key: str, rule: AutomationRule) -> bool:
        """Count a reply matching ``rule`` for ``key``; act once the rule's threshold is met. True if it acted."""
        now = self._clock()
        if rule.threshold is not None:
            period = rule.threshold.period
            _, seen = self._matches.setdefault((key, rule.name), (period, deque()))
            seen.append(now)
            while seen[0] <= now - period:
                seen.popleft()
            if len(seen) < rule.threshold.count:
                self._forget_old_matches(now)
                return False
            del self._matches[(key, rule.name)]
        until = now + rule.duration.seconds
        if rule.action == "suspend":
            self.suspend(key, until)
        else:
            self.override(key, until, rule.max_connections, rule.max_message_rate)
        return True

    def snapshot(self) -> tuple["Throttled", ...]:
        """What is suspended or limited now, by provider (the web panel's dashboard)."""
        now = self._clock()
        out = [Throttled(key, "suspended", "", until - now) for key, until in self._suspended.items() if until > now]
        out += [Throttled(key, "max_connections", str(n), until - now)
                for key, (n, until) in self._connections.items() if until > now]
        out += [Throttled(key, "max_message_rate", str(rate), until - now)
                for key, (rate, until) in self._rates.items() if until > now]
        return tuple(sorted(out, key=lambda t: (t.provider, t.kind)))

    def adopt(self, actions: "list[ProviderAction] | tuple[ProviderAction, ...]") -> None:
        """Apply actions decided on any node (``ProviderAction``, with the seconds each has left), as ``apply``
        would have: a suspension never shortened, a lowered limit replacing the earlier one of that limit."""
        now = self._clock()
        for a in actions:
            until = now + a.seconds
            if a.kind == "suspend":
                self.suspend(a.provider, until)
            elif a.kind == "max_connections" and a.value is not None:
                self.override(a.provider, until, max_connections=max(1, int(a.value)))
            elif a.kind == "max_message_rate" and a.value:
                self.override(a.provider, until, max_message_rate=Rate(a.value, 1.0))

    def _forget_old_matches(self, now: float) -> None:
        if len(self._matches) > self._sweep_at:
            self._matches = {k: (period, seen) for k, (period, seen) in self._matches.items()
                             if seen[-1] > now - period}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._matches))


def rule_actions(key: str, rule: AutomationRule) -> list[ProviderAction]:
    """What ``rule`` firing for ``key`` decided, as the store shares it with every node (``ShapingStore``)."""
    seconds = rule.duration.seconds
    if rule.action == "suspend":
        return [ProviderAction(key, "suspend", seconds, rule=rule.name)]
    actions = []
    if rule.max_connections is not None:
        actions.append(ProviderAction(key, "max_connections", seconds, float(rule.max_connections), rule.name))
    if rule.max_message_rate is not None:
        actions.append(ProviderAction(key, "max_message_rate", seconds, rule.max_message_rate.per_second, rule.name))
    return actions


def _live(table: dict[str, tuple[_V, float]], key: str, now: float) -> _V | None:
    """The value of ``table[key]`` while its ``until`` is ahead; an expired entry is removed."""
    entry = table.get(key)
    if entry is not None and entry[1] <= now:
        del table[key]
        return None
    return None if entry is None else entry[0]


# --- shared by the nodes of one store -------------------------------------------------------------------------------

log = logging.getLogger("mtad.throttle")

SLOT_LEASE = 30.0  # seconds a connection slot stays held without renewal; renewed every third of it
SLOT_RETRY = (0.05, 0.25)  # first and longest pause between tries for a slot held by other nodes (doubling)
RATE_BATCH = 0.1  # a grant is up to this many seconds' worth of the rate (at least one message, at most the burst)
RATE_HORIZON = 1.0  # a grant reserves sending times at most this far ahead (or one interval of a slow rate)
RATE_HOLD = 0.5  # a granted message not sent within this long after its time is dropped: it bounds the burst
STORE_RETRY = 1.0  # seconds between tries while the store fails (the limits are kept: nothing is sent meanwhile)


def limiters(store: object, holder: str) -> tuple["ConcurrencyLimiter | SharedConcurrencyLimiter",
                                                  "RateLimiter | SharedRateLimiter"]:
    """The connection and rate limiters of a scheduler over ``store``: shared through the store when it shares
    shaping between nodes (``holder``: this scheduler's unique name, prefix of its slot holders), in memory
    otherwise. A slot's lease is ``SLOT_LEASE``, or the store's claim lease (``store.claim_lease``) when shorter:
    a node that dies holds its slots no longer than its work rows."""
    if shares_shaping(store):
        lease = min(SLOT_LEASE, float(getattr(store, "lease", SLOT_LEASE)))
        return (SharedConcurrencyLimiter(store, holder, lease=lease),  # type: ignore[arg-type]
                SharedRateLimiter(store))  # type: ignore[arg-type]
    return ConcurrencyLimiter(), RateLimiter()


class SharedConcurrencyLimiter:
    """``ConcurrencyLimiter``'s interface over the store's connection slots: at most ``limit`` holders per key on
    all nodes together.

    A task first takes a place in a local ``ConcurrencyLimiter`` of the same limit (so a node never asks for more
    than ``limit`` slots, and its own waiters queue in memory), then a slot of the store: one task per key asks at a
    time, again at once when a local holder leaves, else after a pause growing from ``SLOT_RETRY[0]`` to
    ``SLOT_RETRY[1]`` (slots freed on other nodes are seen that late). The slot is released when the task leaves
    (in the background; a release that fails leaves the slot to its lease). ``run()`` renews the held slots' leases
    and sweeps stale rows; ``close()`` releases every slot still held. While the store fails no slot is taken."""

    def __init__(self, store: ShapingStore, holder: str, *, lease: float = SLOT_LEASE,
                 retry: tuple[float, float] = SLOT_RETRY):
        self.store = store
        self.holder = holder
        self.lease = lease
        self.retry = retry
        self._local = ConcurrencyLimiter()
        self._held: dict[str, str] = {}  # holder -> key
        self._asking: dict[str, int] = {}  # key -> tasks holding a local place and waiting for a slot
        self._turn: dict[str, asyncio.Lock] = {}  # key -> the right to ask the store
        self._freed: dict[str, asyncio.Event] = {}  # key -> set when a local holder released its slot
        self._seq = itertools.count(1)
        self._releasing: set[asyncio.Task] = set()
        self.stats = {"slot_takes": 0, "slots_taken": 0, "slot_releases": 0, "slot_renewals": 0}  # store calls

    def in_use(self, key: str) -> int:
        return sum(1 for k in self._held.values() if k == key)

    def waiting(self, key: str) -> int:
        return self._local.waiting(key) + self._asking.get(key, 0)

    @asynccontextmanager
    async def acquire(self, key: str, limit: int) -> AsyncIterator[None]:
        async with self._local.acquire(key, limit):
            holder = await self._take(key, limit)
            try:
                yield
            finally:
                self._release(key, holder)

    async def _take(self, key: str, limit: int) -> str:
        holder = f"{self.holder}-{next(self._seq)}"
        self._asking[key] = self._asking.get(key, 0) + 1
        turn = self._turn.setdefault(key, asyncio.Lock())
        freed = self._freed.setdefault(key, asyncio.Event())
        try:
            async with turn:
                pause, failing = self.retry[0], False
                while True:
                    freed.clear()
                    try:
                        if await self._ask(key, limit, holder) is not None:
                            self.stats["slots_taken"] += 1
                            if failing:
                                log.info("provider %s: connection slots taken again", key)
                            self._held[holder] = key
                            return holder
                    except StoreError as exc:
                        if not failing:
                            log.warning("provider %s: no connection slot while the store fails (%s);"
                                        " no connection opened until it returns", key, exc)
                        failing, pause = True, STORE_RETRY
                    with suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(freed.wait(), pause * random.uniform(0.8, 1.2))
                    pause = min(pause * 2, self.retry[1]) if not failing else STORE_RETRY
        finally:
            self._asking[key] -= 1
            if not self._asking[key]:
                del self._asking[key], self._turn[key], self._freed[key]

    async def _ask(self, key: str, limit: int, holder: str) -> int | None:
        """One ``take_slot``; a slot granted to a task cancelled meanwhile is released."""
        self.stats["slot_takes"] += 1
        call = asyncio.ensure_future(self.store.take_slot(key, limit, holder, self.lease))
        try:
            return await asyncio.shield(call)
        except asyncio.CancelledError:
            def give_back(done: asyncio.Future) -> None:
                if not done.cancelled() and done.exception() is None and done.result() is not None:
                    self._spawn_release(key, [holder])
            call.add_done_callback(give_back)
            raise

    def _release(self, key: str, holder: str) -> None:
        self._held.pop(holder, None)
        self._spawn_release(key, [holder])

    def _spawn_release(self, key: str, holders: list[str]) -> None:
        async def release() -> None:
            self.stats["slot_releases"] += 1
            try:
                await self.store.release_slots(holders)
            except Exception as exc:  # noqa: BLE001 - the lease runs out instead
                log.warning("provider %s: connection slot not released (%s); free when its lease runs out", key, exc)
            freed = self._freed.get(key)
            if freed is not None:
                freed.set()  # a local task waiting for a slot asks at once
        task = asyncio.ensure_future(release())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def run(self) -> None:
        """Renew the held slots every third of the lease, and sweep stale shaping rows, until cancelled."""
        while True:
            await asyncio.sleep(self.lease / 3)
            held = list(self._held)
            try:
                if held:
                    self.stats["slot_renewals"] += 1
                    renewed = await self.store.renew_slots(held, self.lease)
                    if renewed < len(held):
                        log.warning("%d of %d connection slots had run out and were taken over by other nodes",
                                    len(held) - renewed, len(held))
                await self.store.sweep_shaping()
            except StoreError as exc:
                log.warning("cannot renew %d connection slots: %s", len(held), exc)
            except Exception:  # noqa: BLE001 - keep renewing
                log.exception("connection slot renewal failed")

    async def close(self) -> None:
        """Release every slot still held (at stop: the leases of a node that stops cleanly need not run out)."""
        if self._releasing:
            await asyncio.wait(list(self._releasing), timeout=5)
        held, self._held = list(self._held), {}
        if held:
            with suppress(Exception):
                await self.store.release_slots(held)


class SharedRateLimiter:
    """``RateLimiter.wait`` over the store's shared rate: the provider's messages from all nodes follow one token
    bucket (``burst`` = one second's worth, at least one, as in memory).

    A node asks the store for several messages at once (up to ``RATE_BATCH`` seconds' worth, no more than the
    messages its waiting tasks have queued), each with its own sending time, and spends them locally; one task per key asks at a
    time, the others wait for its grant. A granted message not spent within ``RATE_HOLD`` of its time is dropped
    (the rate is never exceeded by more than that). While the store fails nothing is granted."""

    def __init__(self, store: ShapingStore, clock: Clock = time.monotonic):
        self.store = store
        self._clock = clock
        self._granted: dict[str, deque[float]] = {}  # key -> local clock times at which granted messages may go
        self._asking: dict[str, asyncio.Future[None]] = {}
        self._demand: dict[str, int] = {}  # key -> tasks in wait() without a message yet
        self._failing = False
        self.stats = {"rate_takes": 0, "rate_granted": 0, "rate_spent": 0}  # store calls, messages granted, spent

    async def wait(self, key: str, rate: Rate, queued: int = 1) -> None:
        """Return when the caller may send one message under ``key``'s shared rate. ``queued``: how many messages
        the caller has waiting (itself included), a hint of how many to ask the store for at once."""
        self._demand[key] = self._demand.get(key, 0) + max(1, queued)
        try:
            while (due := self._next(key)) is None:
                asking = self._asking.get(key)
                if asking is None:
                    asking = self._asking[key] = asyncio.ensure_future(self._ask(key, rate))
                    asking.add_done_callback(lambda done: self._asking.pop(key, None)
                                             if self._asking.get(key) is done else None)
                await asyncio.shield(asking)
        finally:
            self._demand[key] -= max(1, queued)
            if not self._demand[key]:
                del self._demand[key]
        self.stats["rate_spent"] += 1
        delay = due - self._clock()
        if delay > 0:
            await asyncio.sleep(delay)

    def _next(self, key: str) -> float | None:
        granted = self._granted.get(key)
        if not granted:
            return None
        stale = self._clock() - RATE_HOLD
        while granted and granted[0] < stale:
            granted.popleft()
        due = granted.popleft() if granted else None
        if not granted:
            del self._granted[key]
        return due

    async def _ask(self, key: str, rate: Rate) -> None:
        per_second = rate.per_second
        burst = max(1, math.floor(per_second))
        batch = max(1, min(burst, math.ceil(per_second * RATE_BATCH)))
        want = max(1, min(batch, self._demand.get(key, 1)))
        self.stats["rate_takes"] += 1
        try:
            grant = await self.store.take_rate(key, per_second, burst, want, max(RATE_HORIZON, 1 / per_second))
        except StoreError as exc:
            if not self._failing:
                log.warning("provider %s: no message rate while the store fails (%s); nothing sent until it returns",
                            key, exc)
            self._failing = True
            await asyncio.sleep(STORE_RETRY)
            return
        if self._failing:
            log.info("provider %s: message rate granted again", key)
            self._failing = False
        if grant.delays:
            self.stats["rate_granted"] += len(grant.delays)
            now = self._clock()
            self._granted.setdefault(key, deque()).extend(now + d for d in grant.delays)
        else:
            await asyncio.sleep(grant.retry_in * random.uniform(1.0, 1.1))
