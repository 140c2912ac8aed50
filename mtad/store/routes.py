"""Routes created through the API, kept in the store's ``routes`` table. Functions of a connection.

The table holds the raw texts (expression, actions) as the API received them; they are compiled
when the route table is built (``inbound.Routing``), together with the config file's routes. Ids
are 24 hex digits, like Mailgun's. Order of creation is kept (``created_at``, then ``rowid``), so
routes of equal priority run in the order they were made.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass

from mtad.inbound.router import Route
from mtad.store.dialect import dialect_of


@dataclass(frozen=True)
class StoredRoute:
    route: Route
    created_at: float


def new_route_id() -> str:
    """Like a MongoDB ObjectId (Mailgun's route ids): 4 bytes of seconds, 8 random bytes."""
    return f"{int(time.time()):08x}{os.urandom(8).hex()}"


def _row(row: tuple) -> StoredRoute:
    rid, priority, description, expression, actions, created_at = row
    return StoredRoute(Route(rid, priority, description, expression, tuple(json.loads(actions))), created_at)


def load(conn: sqlite3.Connection) -> list[StoredRoute]:
    rows = conn.execute("SELECT id, priority, description, expression, actions, created_at FROM routes"
                        f" ORDER BY created_at, {dialect_of(conn).creation_order}").fetchall()
    return [_row(tuple(r)) for r in rows]


def insert(conn: sqlite3.Connection, stored: StoredRoute) -> None:
    r = stored.route
    conn.execute("INSERT INTO routes (id, priority, description, expression, actions, created_at)"
                 " VALUES (?, ?, ?, ?, ?, ?)",
                 (r.id, r.priority, r.description, r.expression, json.dumps(list(r.actions)), stored.created_at))


def update(conn: sqlite3.Connection, route: Route) -> bool:
    return conn.execute("UPDATE routes SET priority = ?, description = ?, expression = ?, actions = ? WHERE id = ?",
                        (route.priority, route.description, route.expression, json.dumps(list(route.actions)),
                         route.id)).rowcount > 0


def delete(conn: sqlite3.Connection, route_id: str) -> bool:
    return conn.execute("DELETE FROM routes WHERE id = ?", (route_id,)).rowcount > 0
