"""What provider shaping across the cluster costs per call: wall time, the node's CPU and the database's CPU.

    .venv/bin/python bench/shaping_cost.py [--calls 2000]

Starts a private PostgreSQL (tests/support/postgres.py), opens one PostgresStore, and times its ShapingStore calls
one after the other: ``take_rate`` (one per grant of messages), ``take_slot`` + ``release_slots`` (one pair per
SMTP connection), and a ``take_slot`` that finds every slot held (what a waiting node repeats). The node's CPU is
this process's (the calling event loop and the shaping thread); the database's is the CPU of the server process
serving the shaping connection (/proc/PID/stat). Per message, multiply by the statements per message that
docs/scaling.md gives (or that a node logs at stop: "shared shaping: ...").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psycopg  # noqa: E402

from mtad.store.postgres.store import PostgresStore  # noqa: E402
from tests.support.postgres import PostgresServer, find_binaries  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


def server_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


async def measure(store: PostgresStore, name: str, calls: int, call) -> None:
    pid = await store._shape(lambda conn: conn.execute("SELECT pg_backend_pid()").fetchone()[0])
    for i in range(50):  # warm up: prepared statements, caches
        await call(-i - 1)
    wall, cpu, db = time.perf_counter(), time.process_time(), server_cpu(pid)
    for i in range(calls):
        await call(i)
    wall, cpu, db = time.perf_counter() - wall, time.process_time() - cpu, server_cpu(pid) - db
    print(f"{name:<34} {wall / calls * 1e6:8.0f} us wall {cpu / calls * 1e6:8.0f} us node CPU"
          f" {db / calls * 1e6:8.0f} us database CPU")


async def main(calls: int) -> None:
    bin_dir = find_binaries()
    if bin_dir is None:
        sys.exit("no PostgreSQL binaries")
    server = PostgresServer(bin_dir, folder=Path(tempfile.mkdtemp(prefix="mtad-pg-bench-"))).start()
    try:
        _, dsn = server.create_database()
        store = PostgresStore(lambda: psycopg.connect(dsn, autocommit=True), "bench", node_id="bench")
        store.open()
        try:
            await measure(store, "take_rate (1 grant)", calls,
                          lambda i: store.take_rate("p", 1e6, 1000, 10, 1.0))

            async def slot(i: int) -> None:
                await store.take_slot("q", 5, f"h{i}", 30)
                await store.release_slots([f"h{i}"])
            await measure(store, "take_slot + release_slots (pair)", calls, slot)
            for n in range(3):
                await store.take_slot("full", 3, f"held{n}", 300)
            await measure(store, "take_slot, every slot held", calls,
                          lambda i: store.take_slot("full", 3, f"w{i}", 30))
        finally:
            store.close()
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    asyncio.run(main(parser.parse_args().calls))
