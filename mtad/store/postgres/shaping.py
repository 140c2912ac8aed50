"""``ShapingStore`` over PostgreSQL: connection slots and rate grants shared by every node (``store.shaping``).

Tables (schema version 5, both ``UNLOGGED``: the state is worth nothing after a crash, and a transaction that
writes only unlogged tables commits without waiting for a WAL flush):
- ``shaping_slots(provider, slot_no, holder, node, lease_until)``: one row per connection slot held. A take
  inserts the row of a free slot number in ``0 .. limit - 1``, or takes over the row of one whose lease ran out
  (``INSERT ... ON CONFLICT DO UPDATE ... WHERE lease_until <= now``); the primary key ``(provider, slot_no)``
  makes two takers of one slot number wait for each other, and the loser gets nothing (it tries again later). A
  release deletes the row, so the table holds only the connections open now.
- ``shaping_buckets(provider, tat, granted_from)``: the provider's token bucket as GCRA's theoretical arrival
  time ``tat`` (the time at which the bucket is full again, plus ``burst - 1`` intervals): message ``i`` of a grant
  may go at ``max(now, base - tau + i * T)`` where ``base = max(tat, now)``, ``T = 1 / per_second``, ``tau =
  (burst - 1) * T``; the grant moves ``tat`` on by ``n * T``. One upsert per grant; ``granted_from`` is the
  ``base`` of the last grant, so that ``RETURNING`` can say how many were granted.
- ``provider_actions(provider, kind, until, value, rule, node)``: what automation rules decided (a provider
  suspended or throttled), one row per provider and kind, until it runs out; a put notifies every node
  (``store.changes``, kind ``shaping``) in its own transaction.
Times are the server's (``clock_timestamp()``, seconds since the epoch), never a node's.

Every call is one statement in autocommit on a connection of its own (``synchronous_commit = off``), run on one
thread of its own: a take never waits for the group commit of the node's writes, nor for an fsync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any, Callable, Sequence, TypeVar

import psycopg

from mtad.base.errors import StoreError
from mtad.store.changes import CHANNEL
from mtad.store.shaping import ProviderAction, RateGrant

log = logging.getLogger("mtad.store")
T = TypeVar("T")

_NOW = "extract(epoch FROM clock_timestamp())::float8"

TAKE_SLOT = f"""
WITH now AS (SELECT {_NOW} AS t)
INSERT INTO shaping_slots AS s (provider, slot_no, holder, node, lease_until)
SELECT ?::text, g, ?::text, ?::text, now.t + ?::float8 FROM now, generate_series(0, ?::int - 1) AS g
WHERE NOT EXISTS (SELECT 1 FROM shaping_slots x WHERE x.provider = ?::text AND x.slot_no = g AND x.lease_until > now.t)
  AND (SELECT count(*) FROM shaping_slots x WHERE x.provider = ?::text AND x.lease_until > now.t) < ?::int
ORDER BY random() LIMIT 1
ON CONFLICT (provider, slot_no) DO UPDATE
    SET holder = excluded.holder, node = excluded.node, lease_until = excluded.lease_until
    WHERE s.lease_until <= {_NOW}
RETURNING slot_no
"""

RENEW_SLOTS = f"UPDATE shaping_slots SET lease_until = {_NOW} + ?::float8 WHERE holder = ANY(?::text[])"

RELEASE_SLOTS = "DELETE FROM shaping_slots WHERE holder = ANY(?::text[])"

# Parameters: provider, want, horizon + tau, T (fresh row); want, horizon + tau, T (existing row).
TAKE_RATE = f"""
WITH p AS (SELECT {_NOW} AS now)
INSERT INTO shaping_buckets AS b (provider, tat, granted_from)
SELECT ?::text, p.now + least(?::int, floor(?::float8 / ?::float8) + 1) * ?::float8, p.now FROM p
ON CONFLICT (provider) DO UPDATE SET
    granted_from = greatest(b.tat, excluded.granted_from),
    tat = greatest(b.tat, excluded.granted_from) + greatest(0, least(?::int, floor(
        (excluded.granted_from + ?::float8 - greatest(b.tat, excluded.granted_from)) / ?::float8) + 1)) * ?::float8
RETURNING granted_from, tat, (SELECT now FROM p)
"""

# A suspension keeps the later end; a lowered limit replaces the earlier one of that limit. The same statement tells
# every node (pg_notify is delivered when the statement's transaction commits: autocommit, at once).
PUT_ACTION = f"""
WITH p AS (SELECT {_NOW} AS now), up AS (
    INSERT INTO provider_actions AS a (provider, kind, until, value, rule, node)
    SELECT ?::text, ?::text, p.now + ?::float8, ?::float8, ?::text, ?::text FROM p
    ON CONFLICT (provider, kind) DO UPDATE SET
        until = CASE WHEN a.kind = 'suspend' THEN greatest(a.until, excluded.until) ELSE excluded.until END,
        value = excluded.value, rule = excluded.rule, node = excluded.node
    RETURNING 1)
SELECT pg_notify(?::text, 'shaping') FROM up
"""
ACTIONS = f"""
SELECT provider, kind, until - p.now, value, rule, node FROM provider_actions, (SELECT {_NOW} AS now) AS p
WHERE until > p.now ORDER BY provider, kind
"""

SWEEP_SLOTS = f"DELETE FROM shaping_slots WHERE lease_until < {_NOW} - 60"
SWEEP_BUCKETS = f"DELETE FROM shaping_buckets WHERE tat < {_NOW} - 10"  # tat <= now: as good as absent
SWEEP_ACTIONS = f"DELETE FROM provider_actions WHERE until < {_NOW} - 60"


def take_slot(conn: Any, provider: str, limit: int, holder: str, node: str, lease: float) -> int | None:
    row = conn.execute(TAKE_SLOT, (provider, holder, node, lease, limit, provider, provider, limit)).fetchone()
    return None if row is None else int(row[0])


def renew_slots(conn: Any, holders: list[str], lease: float) -> int:
    return conn.execute(RENEW_SLOTS, (lease, holders)).rowcount


def release_slots(conn: Any, holders: list[str]) -> int:
    return conn.execute(RELEASE_SLOTS, (holders,)).rowcount


def take_rate(conn: Any, provider: str, per_second: float, burst: int, want: int, horizon: float) -> RateGrant:
    interval = 1.0 / per_second
    tau = (max(1, burst) - 1) * interval
    reach = horizon + tau
    base, tat, now = conn.execute(TAKE_RATE, (provider, want, reach, interval, interval,
                                              want, reach, interval, interval)).fetchone()
    granted = max(0, round((tat - base) / interval))
    first = base - tau  # the schedule's time of the first message granted
    if not granted:
        return RateGrant((), retry_in=max(0.005, first - horizon - now))
    return RateGrant(tuple(max(0.0, first + i * interval - now) for i in range(granted)))


def put_actions(conn: Any, actions: Sequence[ProviderAction], node: str) -> None:
    for a in actions:
        conn.execute(PUT_ACTION, (a.provider, a.kind, a.seconds, a.value, a.rule, a.node or node, CHANNEL)).fetchone()


def actions(conn: Any) -> tuple[ProviderAction, ...]:
    return tuple(ProviderAction(provider, kind, float(left), None if value is None else float(value), rule, node)
                 for provider, kind, left, value, rule, node in conn.execute(ACTIONS).fetchall())


def sweep(conn: Any) -> int:
    return (conn.execute(SWEEP_SLOTS).rowcount + conn.execute(SWEEP_BUCKETS).rowcount
            + conn.execute(SWEEP_ACTIONS).rowcount)


class ShapingMethods:
    """``ShapingStore`` for ``PgEngine`` (``shared_shaping``): its calls run on a connection and a thread of their
    own (see the module doc), made at the first call and closed with the store."""

    shared_shaping = True
    node_id: str
    _connection: Callable[[], Any]  # PgEngine's: a new PgConnection

    _shaping_conn: Any = None
    _shaping_thread: concurrent.futures.ThreadPoolExecutor | None = None

    async def take_slot(self, provider: str, limit: int, holder: str, lease: float) -> int | None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self._shape(lambda conn: take_slot(conn, provider, limit, holder, self.node_id, lease))

    async def renew_slots(self, holders: Sequence[str], lease: float) -> int:
        held = list(holders)
        return await self._shape(lambda conn: renew_slots(conn, held, lease)) if held else 0

    async def release_slots(self, holders: Sequence[str]) -> int:
        held = list(holders)
        return await self._shape(lambda conn: release_slots(conn, held)) if held else 0

    async def take_rate(self, provider: str, per_second: float, burst: int, want: int,
                        horizon: float) -> RateGrant:
        if per_second <= 0 or want < 1:
            raise ValueError(f"per_second and want must be positive, got {per_second}, {want}")
        return await self._shape(lambda conn: take_rate(conn, provider, per_second, burst, want, horizon))

    async def put_provider_actions(self, actions: Sequence[ProviderAction]) -> None:
        todo = tuple(actions)
        if todo:
            await self._shape(lambda conn: put_actions(conn, todo, self.node_id))

    async def provider_actions(self) -> tuple[ProviderAction, ...]:
        return await self._shape(actions)

    async def sweep_shaping(self) -> int:
        return await self._shape(sweep)

    # --- the connection of shaping -------------------------------------------------------------------------
    async def _shape(self, fn: Callable[[Any], T]) -> T:
        if not self.is_open:  # type: ignore[attr-defined] - PgEngine's
            raise StoreError("store is not open")
        if self._shaping_thread is None:
            self._shaping_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mtad-shaping")
            self._shaping_conn = self._connection()
        conn = self._shaping_conn

        def run() -> T:
            try:
                if conn.broken:
                    conn.ensure()
                    conn.command("SET synchronous_commit = off")  # only ever writes state a crash may lose
                return fn(conn)
            except psycopg.Error as exc:
                if conn.broken:
                    conn.discard()
                raise StoreError(f"PostgreSQL (shaping): {' '.join(str(exc).split())}") from None
        return await asyncio.get_running_loop().run_in_executor(self._shaping_thread, run)

    def close(self) -> None:
        super().close()  # type: ignore[misc] - PgEngine's
        if self._shaping_thread is not None:
            self._shaping_thread.shutdown(wait=True)
            self._shaping_thread = None
        if self._shaping_conn is not None:
            self._shaping_conn.discard()
            self._shaping_conn = None
