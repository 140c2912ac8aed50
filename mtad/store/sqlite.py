"""The SQLite backend: the engine (``store.engine.Store``: writer thread, group commit, readers) composed with the
typed methods of each kind of state. This is what the daemon and the command line open; everything outside
``mtad.store`` calls its typed methods (``StoreProtocol``), never ``write``/``read``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from mtad.base.errors import StoreError
from mtad.store.engine import Store
from mtad.store.events import EventBus
from mtad.store.methods import METHODS


class SqliteStore(Store, *METHODS):  # type: ignore[misc] - the typed methods of every kind of state
    """``StoreProtocol`` over one SQLite file.

    ``bus``: told of recorded events and new webhook work, on the writer thread (see ``store.events``); None:
    nobody is. ``read_only``: the file is only read, opened read-only (``mode=ro``: a command that reads never
    writes, not even a checkpoint); it is not ``open()``ed, and writes fail."""

    def __init__(self, path: Path, *, max_group: int = 256, lease: float = 300.0, bus: EventBus | None = None,
                 read_only: bool = False):
        super().__init__(path, max_group=max_group, lease=lease)
        self.bus = bus
        self.read_only = read_only

    def open(self) -> None:
        if self.read_only:
            raise StoreError(f"{self.path} is opened read-only")
        super().open()

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        conn.bus = self.bus  # type: ignore[attr-defined] - what store.events.record tells (engine.Connection)
        super()._write_loop(conn)

    def _reader(self) -> sqlite3.Connection:
        if not self.read_only:
            return super()._reader()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{quote(str(self.path))}?mode=ro", uri=True, timeout=30,
                                   check_same_thread=False, isolation_level=None)
            self._local.conn = conn
            self._read_conns.append(conn)
        return conn
