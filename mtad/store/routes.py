"""Routes created through the API, kept in the store's ``routes`` table.

The table holds the raw texts (expression, actions) as the API received them: a ``RouteRecord`` is data, and
the inbound layer compiles it (``inbound.routing.route_of``) together with the config file's routes. Ids
are 24 hex digits, like Mailgun's. Order of creation is kept (``created_at``, then ``rowid``), so routes of
equal priority run in the order they were made. ``RouteStore`` is the contract, ``RouteMethods`` its SQLite
implementation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Protocol

from mtad.store.changes import changed
from mtad.store.dialect import dialect_of


@dataclass(frozen=True)
class RouteRecord:
    """One API route as stored: the texts, never compiled here."""

    id: str
    priority: int
    description: str
    expression: str
    actions: tuple[str, ...]
    created_at: float


def new_route_id() -> str:
    """Like a MongoDB ObjectId (Mailgun's route ids): 4 bytes of seconds, 8 random bytes."""
    return f"{int(time.time()):08x}{os.urandom(8).hex()}"


def load(conn: sqlite3.Connection) -> list[RouteRecord]:
    rows = conn.execute("SELECT id, priority, description, expression, actions, created_at FROM routes"
                        f" ORDER BY created_at, {dialect_of(conn).creation_order}").fetchall()
    return [RouteRecord(r[0], r[1], r[2], r[3], tuple(json.loads(r[4])), r[5]) for r in rows]


def insert(conn: sqlite3.Connection, r: RouteRecord) -> None:
    conn.execute("INSERT INTO routes (id, priority, description, expression, actions, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (r.id, r.priority, r.description, r.expression, json.dumps(list(r.actions)), r.created_at))
    changed(conn, "routes")


def update(conn: sqlite3.Connection, r: RouteRecord) -> bool:
    if conn.execute("UPDATE routes SET priority = ?, description = ?, expression = ?, actions = ? WHERE id = ?",
                    (r.priority, r.description, r.expression, json.dumps(list(r.actions)), r.id)).rowcount == 0:
        return False
    changed(conn, "routes")
    return True


def delete(conn: sqlite3.Connection, route_id: str) -> bool:
    if conn.execute("DELETE FROM routes WHERE id = ?", (route_id,)).rowcount == 0:
        return False
    changed(conn, "routes")
    return True


class RouteStore(Protocol):
    """The API's routes. Each change commits before it returns; the caller rebuilds its route table, and every
    node's ``on_change("routes")`` callbacks run (``store.changes``)."""

    async def load_routes(self) -> tuple[RouteRecord, ...]:
        """Every API route in order of creation (``created_at``, then insertion order)."""
        ...

    async def add_route(self, route: RouteRecord) -> None:
        """Insert a route; its id must be new (``new_route_id``)."""
        ...

    async def update_route(self, route: RouteRecord) -> bool:
        """Replace the texts and priority of the route with ``route.id`` (its ``created_at`` stays); False if
        there is no such route."""
        ...

    async def delete_route(self, route_id: str) -> bool:
        """False if there was no such route."""
        ...


class RouteMethods:
    """``RouteStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def load_routes(self) -> tuple[RouteRecord, ...]:
        return tuple(await self.read(load))

    async def add_route(self, route: RouteRecord) -> None:
        await self.write(lambda c: insert(c, route))
        self._changed("routes")

    async def update_route(self, route: RouteRecord) -> bool:
        found = await self.write(lambda c: update(c, route))
        self._changed("routes")
        return found

    async def delete_route(self, route_id: str) -> bool:
        found = await self.write(lambda c: delete(c, route_id))
        self._changed("routes")
        return found
