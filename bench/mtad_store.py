#!/usr/bin/env python3
"""Bench helper for mtad's SQLite store while mtad runs (between measured runs, unmeasured).

  python mtad_store.py count DB   -> prints the number of stored messages
  python mtad_store.py empty DB   -> deletes every message and its rows, checkpoints the WAL

``empty`` is the counterpart of ``postsuper -d ALL hold`` for Postfix: each measured run starts from an
empty queue, so the 100 KB runs do not grow the database by gigabytes. mtad's writer holds no lock
between commits, so this waits at most for one commit (busy timeout). Plain SQL on the database file,
imports nothing of mtad: it serves the old flat layout (bebe064) and the packages alike.
"""
import sqlite3
import sys

# every table that grows with the messages taken in, at any revision (a missing one is skipped): plain SQL on
# the file, so the helper works whatever the layout of the mtad measured (flat modules before the packages)
TABLES = ("forwards", "deliveries", "webhook_deliveries", "events", "event_variables", "stats", "stats_daily",
          "stats_dims", "message_text", "messages")


def main() -> int:
    action, db = sys.argv[1], sys.argv[2]
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("PRAGMA busy_timeout=60000")
    if action == "count":
        print(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    elif action == "empty":
        conn.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            try:
                conn.execute(f"DELETE FROM {table}")
            except sqlite3.OperationalError:  # a table this version of mtad does not have
                pass
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(RESTART)")
    else:
        print(f"unknown action {action}", file=sys.stderr)
        return 2
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
