"""A state folder written by an older mtad, for tests that start today's daemon on it.

``state_bebe064.sql`` (made by ``data/make_state_bebe064.py`` with release bebe064's own code, schema version 1)
holds mail and work in every state; its receiver URLs read ``http://@RECEIVER@``, replaced here by the test's own.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

BEBE064_STATE = Path(__file__).parent / "data" / "state_bebe064.sql"
RECEIVER = "http://@RECEIVER@"


def restore_bebe064(db: Path, receiver: str) -> None:
    """Write the bebe064 state database at ``db`` as that release left it (WAL, ``user_version`` 1), its HTTP
    receiver being ``receiver`` (``http://127.0.0.1:PORT``).

    Work the old daemon had scheduled for later (a retry an hour away) stays that far ahead of now, whenever the
    test runs: ``next_attempt_at`` values after the fixture's last event keep their distance from it, counted
    from now. Everything else is history and keeps its time."""
    db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(BEBE064_STATE.read_text().replace(RECEIVER, receiver.rstrip("/")))
    made = conn.execute("SELECT max(timestamp) FROM events").fetchone()[0]
    shift = time.time() - made
    for table in ("deliveries", "forwards", "webhook_deliveries"):
        conn.execute(f"UPDATE {table} SET next_attempt_at = next_attempt_at + ? WHERE next_attempt_at > ?",
                     (shift, made))
    conn.execute("PRAGMA user_version=1")
    conn.close()
