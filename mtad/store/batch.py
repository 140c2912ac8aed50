"""The statements a group commit's writes share: staging rows into the running group commit (``stage``) and
multi-row INSERTs in chunks (``execute_rows``), for both engines (a PostgreSQL connection takes the same calls).

Kept apart from ``store.engine`` so that the store's SQL modules (events, queue, the text index...) and the
migrations that call them do not import the engine that runs the migrations.
"""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Callable, Sequence


def stage(conn: sqlite3.Connection, name: str, apply: Callable[[sqlite3.Connection, list], None], item: Any) -> None:
    """Add ``item`` to the running group commit's list ``name`` (``Staged``: ``apply`` runs once per batch, in its
    transaction); on a connection without a group commit (a command-line tool, a migration), ``apply`` runs at
    once for it, in the caller's transaction."""
    staged = getattr(conn, "staged", None)
    if staged is None:
        apply(conn, [item])
    else:
        staged.pending(name, apply).append(item)


_MAX_ROWS = 512  # rows per multi-row statement: 512 x 9 columns stays far below SQLite's 32,766 variables


@functools.lru_cache(maxsize=64)
def _rows_sql(head: str, width: int, count: int, tail: str) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"{head} VALUES {', '.join([row] * count)}{tail}"


def execute_rows(conn: sqlite3.Connection, head: str, width: int, rows: Sequence[tuple], tail: str = "") -> None:
    """``head VALUES (row), (row)... tail`` over ``rows``, in chunks of power-of-two sizes (each shape prepared
    once, from the statement cache). One statement step per chunk instead of one per row as with ``executemany``:
    every step releases and re-takes the GIL, and on the writer thread re-taking it waits for the busy event
    loop, so steps, not rows, are what a batch costs."""
    i, n = 0, len(rows)
    while i < n:
        count = min(_MAX_ROWS, 1 << ((n - i).bit_length() - 1))
        conn.execute(_rows_sql(head, width, count, tail), [v for row in rows[i:i + count] for v in row])
        i += count
