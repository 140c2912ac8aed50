"""The PostgreSQL backend: the engine (``store.postgres.engine.PgEngine``: writer thread, group commit, readers)
composed with the same typed methods as the SQLite backend (``store.sqlite.SqliteStore``). One set of methods and
one set of SQL serve both; ``store.dialect`` holds the few fragments that differ.
"""

from __future__ import annotations

from typing import Any, Callable

from mtad.store.events import EventBus
from mtad.store.methods import METHODS
from mtad.store.postgres.engine import PgEngine
from mtad.store.postgres.shaping import ShapingMethods


class PostgresStore(ShapingMethods, PgEngine, *METHODS):  # type: ignore[misc] - the typed methods of SqliteStore
    """``StoreProtocol`` over one PostgreSQL database, and ``ShapingStore`` (provider shaping shared by the nodes:
    ``store.postgres.shaping``; first in the bases, so that its ``close`` closes its connection too).

    ``connect``: makes one new connection (``probe.connect``, with the node's settings); ``where`` names the
    database in messages (``HOST:PORT/DATABASE``, never the password); ``explain``: one line for a failure to
connect at ``open`` (``probe.explain``). ``bus``: as ``SqliteStore``'s. ``read_only``: for a command that only
reads: ``open()`` checks the schema is current and starts no writer; writes fail."""

    def __init__(self, connect: Callable[[], Any], where: str, *, max_group: int = 256, lease: float = 300.0,
                 pool_size: int = 10, bus: EventBus | None = None, node_id: str = "",
                 explain: Callable[[BaseException], str] | None = None, read_only: bool = False):
        super().__init__(connect, where, max_group=max_group, lease=lease, pool_size=pool_size, explain=explain,
                         read_only=read_only)
        self.bus = bus
        self.node_id = node_id

    def _write_loop(self, conn: Any) -> None:
        conn.bus = self.bus  # what store.events.record tells
        super()._write_loop(conn)
