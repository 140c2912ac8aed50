"""Provider shaping shared by the nodes of one database: connection slots and message-rate grants.

``max_connections`` and ``max_message_rate`` of a provider (``outbound.providers.ProviderPolicy``) hold for the
whole cluster when the store is shared (docs/scaling.md, "Provider shaping across the cluster"). A backend whose
nodes share it implements ``ShapingStore`` and says so with ``shared_shaping = True`` (PostgreSQL:
``store.postgres.shaping``); a store of one node (SQLite) does not implement it, and the scheduler shapes in
memory (``outbound.throttle``) at no cost per message.

Contract of a ``ShapingStore``:
- ``take_slot(provider, limit, holder, lease)``: one of the provider's ``limit`` connection slots (its number),
  now held by ``holder`` (unique per connection) until ``lease`` seconds from now, or None when every slot is
  held. A slot whose lease ran out (its node died or stalled) is free. Concurrent takers on any nodes never hold
  more than ``limit`` slots of a provider together (the slot numbers are ``0 .. limit - 1``; after ``limit`` was
  lowered, takes wait until fewer than ``limit`` are held).
- ``renew_slots(holders, lease)``: the leases of these holders' slots run ``lease`` seconds from now; returns how
  many slots were renewed (fewer than ``holders``: a lease had run out and its slot was taken over).
- ``release_slots(holders)``: these holders' slots are free; returns how many were released.
- ``take_rate(provider, per_second, burst, want, horizon)``: up to ``want`` messages of the provider's rate,
  each with the delay after which it may be sent (``RateGrant``). The provider's messages, whoever takes them,
  follow one schedule: a token bucket of ``burst`` tokens refilled at ``per_second`` (kept as GCRA's theoretical
  arrival time). A grant reserves sending times no further than ``horizon`` seconds ahead; none fits: an empty
  grant with ``retry_in``. A message granted and not sent is lost to the rate (never lent to another node).
- ``put_provider_actions(actions)``: what an automation rule decided on one node (``ProviderAction``: a provider
  suspended, or one of its limits lowered, for ``seconds`` from now) holds for every node: each node's
  ``provider_actions()`` returns it until it runs out, and the store tells every node at once
  (``store.changes``, kind ``shaping``). A suspension never shortens a longer one already there; a lowered limit
  replaces the earlier one of that limit.
- ``provider_actions()``: the actions in force, each with the ``seconds`` it has left.
- ``sweep_shaping()``: forget slots whose lease ran out long ago, buckets that are full again and actions that ran
  out (their rows are as good as absent); returns the rows removed.
Time is the database server's clock, so the nodes' clocks need not agree. The state is not durable (a crash of
the database frees every slot and fills every bucket) and each call is one statement, outside the group commit.
A failure of the database raises ``StoreError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Sequence


@dataclass(frozen=True)
class RateGrant:
    """Messages granted by ``take_rate``: ``delays[i]`` is when message ``i`` may be sent, in seconds after the
    reply (non-decreasing; 0.0: at once). Empty: nothing fits the horizon; try again in ``retry_in`` seconds."""

    delays: tuple[float, ...]
    retry_in: float = 0.0


ActionKind = Literal["suspend", "max_connections", "max_message_rate"]


@dataclass(frozen=True)
class ProviderAction:
    """One effect of an automation rule on a provider, for ``seconds`` (from now when put; left when read):
    ``suspend``, or a lowered ``max_connections`` / ``max_message_rate`` (``value``: connections, or messages per
    second). ``rule`` and ``node``: which rule fired, on which node (for operators)."""

    provider: str
    kind: ActionKind
    seconds: float
    value: float | None = None
    rule: str = ""
    node: str = ""


class ShapingStore(Protocol):
    """Connection slots and rate grants shared by the nodes of one store (see the module doc)."""

    shared_shaping: bool

    async def take_slot(self, provider: str, limit: int, holder: str, lease: float) -> int | None: ...

    async def renew_slots(self, holders: Sequence[str], lease: float) -> int: ...

    async def release_slots(self, holders: Sequence[str]) -> int: ...

    async def take_rate(self, provider: str, per_second: float, burst: int, want: int,
                        horizon: float) -> RateGrant: ...

    async def put_provider_actions(self, actions: Sequence[ProviderAction]) -> None: ...

    async def provider_actions(self) -> tuple[ProviderAction, ...]: ...

    async def sweep_shaping(self) -> int: ...


def shares_shaping(store: object) -> bool:
    """True when ``store`` implements ``ShapingStore`` for several nodes (its ``shared_shaping`` flag)."""
    return bool(getattr(store, "shared_shaping", False))
