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
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mtad.outbound.providers import AutomationRule, ProviderPolicy
from mtad.base.rates import Rate

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

    async def wait(self, key: str, rate: Rate) -> None:
        while (seconds := self.delay(key, rate)) > 0:
            await asyncio.sleep(seconds)


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

    def _forget_old_matches(self, now: float) -> None:
        if len(self._matches) > self._sweep_at:
            self._matches = {k: (period, seen) for k, (period, seen) in self._matches.items()
                             if seen[-1] > now - period}
            self._sweep_at = max(_SWEEP_MIN, 2 * len(self._matches))


def _live(table: dict[str, tuple[_V, float]], key: str, now: float) -> _V | None:
    """The value of ``table[key]`` while its ``until`` is ahead; an expired entry is removed."""
    entry = table.get(key)
    if entry is not None and entry[1] <= now:
        del table[key]
        return None
    return None if entry is None else entry[0]
