"""A state folder written by an older mtad, for tests that start today's daemon on it.

``state_bebe064.sql`` (made by ``data/make_state_bebe064.py`` with release bebe064's own code, schema version 1)
holds mail and work in every state; its receiver URLs read ``http://@RECEIVER@``, replaced here by the test's own.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

BEBE064_STATE = Path(__file__).parent / "data" / "state_bebe064.sql"
RECEIVER = "http://@RECEIVER@"


def restore_bebe064(db: Path, receiver: str) -> None:
    """Write the bebe064 state database at ``db`` as that release left it (WAL, ``user_version`` 1), its HTTP
    receiver being ``receiver`` (``http://127.0.0.1:PORT``)."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(BEBE064_STATE.read_text().replace(RECEIVER, receiver.rstrip("/")))
    conn.execute("PRAGMA user_version=1")
    conn.close()
