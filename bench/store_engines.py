"""The two store engines side by side: N concurrent ``enqueue`` calls (what N SMTP sessions committing at once do),
on SQLite (a file) and on PostgreSQL (a server on this machine), through the same typed method.

For each engine and concurrency: messages committed per second, commits (transactions) per second, messages per
commit (the group-commit factor), and for PostgreSQL the writer's round trips per message. A small, quick
comparison for the notes, not the ingress benchmark (bench/ingress.sh drives the whole daemon over SMTP).

    python bench/store_engines.py --dsn postgresql://USER:PASSWORD@127.0.0.1:PORT/DB [--messages 2000]
        [--concurrency 1,20,100] [--sqlite-dir /tmp]

Without ``--dsn`` it starts a private PostgreSQL server (tests/support/postgres.py) for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions  # noqa: E402
from mtad.events import shape  # noqa: E402
from mtad.store import queue as spool  # noqa: E402

BODY = b"From: s@example.com\r\nSubject: bench\r\n\r\n" + b"x" * 1000 + b"\r\n"


def message(n: int) -> NewMessage:
    rcpt = f"r{n}@gmail.com"
    return NewMessage(Envelope("s@example.com", (rcpt,), auth_user="u@example.com"), BODY, "outbound",
                      "example.com", HeaderSummary(f"{n}@example.com", "s@example.com", rcpt, "bench"),
                      SendOptions())


async def run(store, total: int, concurrency: int) -> dict:
    queue = list(range(total))

    async def session() -> None:
        while queue:
            n = queue.pop()
            qid = spool.new_queue_id()
            msg = message(n)
            now = time.time()
            await store.enqueue([spool.Enqueue(qid, msg, tuple(shape.accepted(msg, qid, now)))], now)
    commits, trips = store.commits, getattr(store, "round_trips", 0)
    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(concurrency)))
    seconds = time.perf_counter() - started
    commits = store.commits - commits
    result = {"msgs/s": total / seconds, "commits/s": commits / seconds, "msgs/commit": total / max(commits, 1)}
    if hasattr(store, "round_trips"):
        result["round trips/msg"] = (store.round_trips - trips) / total
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsn")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--concurrency", default="1,20,100")
    parser.add_argument("--sqlite-dir", default=None)
    args = parser.parse_args()
    server = None
    dsn = args.dsn
    if dsn is None:
        from tests.support.postgres import PostgresServer, find_binaries
        server = PostgresServer(find_binaries()).start()
        dsn = server.dsn()
    import psycopg
    from mtad.store.postgres.store import PostgresStore
    from mtad.store.sqlite import SqliteStore
    try:
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            folder = Path(tempfile.mkdtemp(dir=args.sqlite_dir, prefix="mtad-bench-"))
            sqlite = SqliteStore(folder / "bench.sqlite3")
            name = f"bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {name}")
            db = dsn.rsplit("/", 1)[0] + "/" + name
            pg = PostgresStore(lambda: psycopg.connect(db, autocommit=True), name, pool_size=3)
            plain = PostgresStore(lambda: psycopg.connect(db, autocommit=True), name, pool_size=3)
            plain.pipeline = False  # one round trip per statement: what the pipeline saves
            for label, store in (("sqlite", sqlite), ("postgresql", pg), ("pg-no-pipe", plain)):
                store.open()
                try:
                    figures = asyncio.run(run(store, args.messages, concurrency))
                finally:
                    store.close()
                print(f"{label:10} sessions={concurrency:<4} " + "  ".join(f"{k} {v:,.1f}" for k, v in figures.items()),
                      flush=True)
    finally:
        if server is not None:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
