"""Events, stats and webhooks: what they cost and how fast they answer (issue 5, "Benchmark").

    python bench/events_bench.py [--quick | --tiny] [--only drain,query,stats,webhooks] [--events 1000000]

1. **drain** — the store side of draining the queue: claim due deliveries (``store.claim_due``, batches of 100)
   and record each one's outcome (``store.finish_attempt``: the row update, plus the ``delivered`` event, its
   hourly counters and webhook lookup), 200 outcomes in flight so group commit works as in the scheduler;
   ``synchronous=FULL``. Run twice on identical queues: with events, and with ``events.record`` replaced by
   a no-op, alternating which goes first. Reported: outcomes/s each way and the drop (also each round's own,
   steadier on a shared machine). The enqueue side (``accepted`` events) likewise.
   Then the real thing: mtad's scheduler draining the queue over SMTP (smarthost, no TLS) into a minimal
   pipelining sink in another process, with 20 and 100 connections, on an empty store and on one already
   holding 300,000 events; deliveries/s and the process CPU per delivery, with and without events.
2. **query** — ``GET /v3/{domain}/events`` and ``POST /v1/analytics/logs`` through mtad's aiohttp app on
   loopback, against a store holding ``--events`` events (one domain, 30 days, a realistic mix: 50,000
   recipients, 20 tags): latency p50/p99 per query kind (first page, each filter, a boolean expression, the
   next page of a deep traversal, a logs query with totals).
3. **stats** — ``/v3/{domain}/stats/total`` over 90 days (day and hour resolution), the account total and a
   group-by-tag filter, from 90 days of hourly counters for 5 domains x 10 tags.
4. **webhooks** — POSTs per second of the webhook work loop (JSON format, signed) to a local aiohttp
   receiver in another process, ``max_per_url`` 100.

The stores live in a temporary folder (``--keep`` to keep them). Figures vary between machines and runs; the
ratios and the orders of magnitude are what to read. ``--tiny`` runs every part at a smoke-test size (a check
that the bench still runs against the tree, not a measurement).

Everything goes through the store's typed methods (``enqueue``, ``claim_due``, ``finish_attempt``,
``record_events``, ``sync_webhooks``), as the daemon does; plain SQL on the database file only where the store
has no method for what a bench needs: 1.2 million hourly counter rows seeded at once (stats) and ``ANALYZE``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.events import shape  # noqa: E402
from mtad.store import events  # noqa: E402
from mtad.store.events import NewEvent  # noqa: E402
from mtad.store.queue import Enqueue, new_queue_id  # noqa: E402
from mtad.outbound.attempts import AttemptRecord, finished  # noqa: E402
from mtad.events import webhooks  # noqa: E402
from mtad.config.schema import WebhookConfig, WebhooksConfig  # noqa: E402
from mtad.base.rates import Duration  # noqa: E402
from mtad.store.sqlite import SqliteStore as Store  # noqa: E402
from mtad.base.types import Envelope, HeaderSummary, NewMessage, Outcome, SendOptions  # noqa: E402

KEY = "key-bench"


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def message(i: int) -> NewMessage:
    body = (f"From: Shop <news@example.com>\r\nTo: user{i}@dest{i % 50}.test\r\nSubject: Your order {i}\r\n"
            f"Message-ID: <{i}.bench@example.com>\r\n\r\n" + "x" * 1000 + "\r\n").encode()
    return NewMessage(Envelope("news@example.com", (f"user{i}@dest{i % 50}.test",), "127.0.0.1", "client.test",
                               "news@example.com", True), body, "outbound", "example.com",
                      HeaderSummary(f"{i}.bench@example.com", "Shop <news@example.com>", f"user{i}@dest{i % 50}.test",
                                    f"Your order {i}"),
                      SendOptions(tags=("orders",), variables={"order": str(i)}))


async def enqueue_all(store: Store, msgs: list[NewMessage], in_flight: int = 200) -> None:
    """Commit ``msgs`` with their ``accepted`` events, ``in_flight`` calls at once (group commit, as sessions do)."""
    sem = asyncio.Semaphore(in_flight)

    async def one(m: NewMessage) -> None:
        async with sem:
            queue_id, now = new_queue_id(), time.time()
            await store.enqueue([Enqueue(queue_id, m, shape.accepted(m, queue_id, now))], now)
    await asyncio.gather(*(one(m) for m in msgs))


# --- 1. drain ------------------------------------------------------------------------------------------------

async def drain_once(folder: Path, n: int, with_events: bool) -> tuple[float, float, float]:
    """(enqueue/s, drain outcomes/s, process CPU µs per drained outcome) on a fresh store."""
    store = Store(folder / f"drain-{with_events}-{time.monotonic_ns()}.sqlite3")
    store.open()
    real_record = events.record
    if not with_events:
        events.record = lambda conn, domain, event, system=False: None  # type: ignore[assignment]
    try:
        await store.sync_webhooks(WebhooksConfig(domains={"example.com": {
            "opened": WebhookConfig(("http://127.0.0.1:9/opened",))}}), time.time())  # a lookup, no match
        msgs = [message(i) for i in range(n)]
        started = time.perf_counter()
        await enqueue_all(store, msgs)
        enq_rate = n / (time.perf_counter() - started)
        outcome = Outcome("delivered", 250, "2.0.0", "Ok: queued", "mx.dest.test", True, True)
        started, cpu = time.perf_counter(), time.process_time()
        done = 0
        pending: set[asyncio.Future] = set()
        claimed: set[int] = set()  # rows this loop took (their outcome may not be committed yet)
        while done < n:
            jobs = (await store.claim_due("bench", time.time(), 100, skip=claimed)).jobs
            if not jobs and not pending:
                break
            for job in jobs:
                claimed.add(job.id)
                now = time.time()
                attempt = finished(job, AttemptRecord({job.recipients[0]: outcome}, 1, None, 0.05), now)
                pending.add(asyncio.ensure_future(store.finish_attempt(job, attempt, now)))
            while len(pending) >= 200 or (not jobs and pending):
                settled, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                done += len(settled)
        if pending:
            await asyncio.wait(pending)
            done += len(pending)
        drain_rate = done / (time.perf_counter() - started)
        return enq_rate, drain_rate, (time.process_time() - cpu) / done * 1e6
    finally:
        events.record = real_record
        store.close()


SINK = r"""
import asyncio, sys
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
class Sink(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf, self.data = t, b"", False
        t.write(b"220 sink ESMTP\r\n")
    def data_received(self, chunk):
        self.buf += chunk
        out = []
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    break
                self.buf, self.data = self.buf[end + 5:], False
                out.append(b"250 2.0.0 Ok: kept\r\n")
                continue
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                break
            self.buf = rest
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                out.append(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"DATA":
                self.data = True
                out.append(b"354 go ahead\r\n")
            elif verb == b"QUIT":
                out.append(b"221 bye\r\n")
                self.t.write(b"".join(out))
                self.t.close()
                return
            else:
                out.append(b"250 Ok\r\n")
        if out:
            self.t.write(b"".join(out))
async def main():
    server = await asyncio.get_running_loop().create_server(Sink, "127.0.0.1", int(sys.argv[1]), backlog=512)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def scheduler_drain_once(folder: Path, n: int, with_events: bool, sink_port: int,
                               seed_db: Path | None, connections: int = 20) -> tuple[float, float]:
    """(deliveries/s, process CPU µs per delivery) of mtad's real scheduler, over SMTP to a local sink."""
    from mtad.outbound import providers
    from mtad.config.schema import DeliveryConfig, SmarthostConfig
    from mtad.outbound.delivery import BrokenTls, Connector, TlsContexts
    from mtad.net.resolver import Resolver
    from mtad.outbound.scheduler import Scheduler
    path = folder / f"sched-{with_events}-{time.monotonic_ns()}.sqlite3"
    if seed_db is not None:
        shutil.copy(seed_db, path)
    store = Store(path)
    store.open()
    real_record = events.record
    if not with_events:
        events.record = lambda conn, domain, event, system=False: None  # type: ignore[assignment]
    try:
        cfg = DeliveryConfig(smarthost=SmarthostConfig("127.0.0.1", sink_port, "none", False,
                                                       max_connections=connections),
                             dsn=False, max_inflight=2000, poll_interval=Duration(0.05))
        shaping = providers.build({"default": {"max_connections": connections, "max_message_rate": None,
                                               "max_deliveries_per_connection": 1000}})
        resolver = Resolver(["127.0.0.1"], 9, 1)
        scheduler = Scheduler(store=store, connector=Connector("bench.test", resolver, TlsContexts(None), BrokenTls(60)),
                              resolver=resolver, shaping=shaping, config=cfg, hostname="bench.test", dkim_keys={})
        await enqueue_all(store, [message(i) for i in range(n)])
        started, cpu = time.perf_counter(), time.process_time()
        task = asyncio.create_task(scheduler.run())
        while scheduler.counters["delivered"] + scheduler.counters["failed"] + scheduler.counters["deferred"] < n:
            await asyncio.sleep(0.01)
        elapsed, used = time.perf_counter() - started, time.process_time() - cpu
        await scheduler.stop()
        task.cancel()
        assert scheduler.counters["delivered"] == n, scheduler.counters
        return n / elapsed, used / n * 1e6
    finally:
        events.record = real_record
        store.close()


async def bench_scheduler_drain(folder: Path, n: int, rounds: int, seed_events: int, connections: int = 20) -> None:
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
    seed_db = None
    try:
        if seed_events:
            seed_db = folder / "seed.sqlite3"
            await fill_events(seed_db, seed_events)
        await asyncio.sleep(0.5)
        runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
        for r in range(rounds):
            for with_events in _order(r):
                runs[with_events].append(await scheduler_drain_once(folder, n, with_events, port, seed_db,
                                                                    connections))
        off, on = (statistics.median(r[0] for r in runs[k]) for k in (False, True))
        cpu_off, cpu_on = (statistics.median(r[1] for r in runs[k]) for k in (False, True))
        where = (f"store holding {seed_events:,} events" if seed_events else "empty store") + f", {connections} connections"
        print(f"| scheduler drain, SMTP to a local sink, {where}: deliveries/s | {off:,.0f} | {on:,.0f} |"
              f" {100 * (on / off - 1):+.1f}% |")
        print(f"| scheduler drain, {where}: mtad CPU µs per delivery | {cpu_off:,.0f} | {cpu_on:,.0f} |"
              f" {100 * (cpu_on / cpu_off - 1):+.1f}% |")
        print(f"| scheduler drain, {where}: rate change per round (with / without of the same round) | | |"
              f" {_ratios(runs[True], runs[False])} |")
    finally:
        sink.terminate()
        sink.wait(5)


def _order(round_no: int) -> tuple[bool, bool]:
    """Without events first in even rounds, with events first in odd ones: a machine that speeds up or slows
    down during a round (other load, caches, the disk) favours neither side."""
    return (False, True) if round_no % 2 == 0 else (True, False)


def _ratios(on: list[tuple[float, ...]], off: list[tuple[float, ...]], index: int = 0) -> str:
    """Each round's rate with events against the rate without, and their median: on a shared machine these
    are steadier than the ratio of the two medians."""
    changes = [100 * (a[index] / b[index] - 1) for a, b in zip(on, off)]
    return " ".join(f"{c:+.1f}%" for c in changes) + f" (median {statistics.median(changes):+.1f}%)"


async def bench_drain(folder: Path, n: int, rounds: int, seed_events: int | None = None) -> None:
    print(f"\n## 1. Event write cost per delivered message ({n} messages, 1 recipient, {rounds} rounds, median)")
    results: dict[bool, list[tuple[float, float, float]]] = {True: [], False: []}
    for r in range(rounds):
        for with_events in _order(r):
            results[with_events].append(await drain_once(folder, n, with_events))
    enq = {k: statistics.median(r[0] for r in v) for k, v in results.items()}
    drain = {k: statistics.median(r[1] for r in v) for k, v in results.items()}
    cpu = {k: statistics.median(r[2] for r in v) for k, v in results.items()}
    print("| loop | without events | with events + counters | change |")
    print("|---|---:|---:|---:|")
    print(f"| bare store loop (claim + record outcome): outcomes/s | {drain[False]:,.0f} | {drain[True]:,.0f} |"
          f" {100 * (drain[True] / drain[False] - 1):+.1f}% |")
    print(f"| bare store loop: outcomes/s change per round | | | {_ratios(results[True], results[False], 1)} |")
    print(f"| bare store loop: CPU µs per outcome | {cpu[False]:,.0f} | {cpu[True]:,.0f} |"
          f" {100 * (cpu[True] / cpu[False] - 1):+.1f}% |")
    print(f"| enqueue (message + work rows + accepted event): messages/s | {enq[False]:,.0f} | {enq[True]:,.0f} |"
          f" {100 * (enq[True] / enq[False] - 1):+.1f}% |")
    per_msg = 1e6 / drain[True] - 1e6 / drain[False]
    await bench_scheduler_drain(folder, n, rounds, 0, 20)
    await bench_scheduler_drain(folder, n, rounds, 0, 100)
    if seed_events is None:
        seed_events = 300_000 if n >= 20000 else 50_000
    await bench_scheduler_drain(folder, n, rounds, seed_events, 20)
    print(f"\nwall time added per outcome in the bare store loop: {per_msg:.1f} µs")


# --- 2. events query -----------------------------------------------------------------------------------------

async def fill_events(path: Path, n: int, seed: int = 1) -> dict:
    """``n`` events of example.com over 30 days, recorded through ``store.record_events`` in batches of 50,000
    (one transaction each), then ``ANALYZE``."""
    rng = random.Random(seed)
    store = Store(path)
    store.open()
    events.invalidate_webhooks()
    now = time.time()
    start = now - 30 * 86400
    kinds = [("accepted", None)] * 40 + [("delivered", None)] * 38 + [("failed", "temporary")] * 15 + \
        [("failed", "permanent")] * 5 + [("opened", None)] * 2
    tags = [f"tag{i}" for i in range(20)]
    sample: dict = {"recipients": [], "message_ids": []}
    batch: list[NewEvent] = []
    try:
        for i in range(n):
            kind, severity = rng.choice(kinds)
            rcpt = f"user{rng.randrange(50000)}@dest{rng.randrange(200)}.test"
            mid = f"{i // 2}.bench@example.com"
            extra = {"severity": severity, "reason": "bounce" if severity == "permanent" else "generic",
                     "delivery-status": {"code": 550 if severity == "permanent" else 451, "message": "nope"}} \
                if severity else ({"delivery-status": {"code": 250, "message": "OK"}} if kind == "delivered" else {})
            e = shape.base_event(kind, timestamp=start + (30 * 86400) * i / n, recipient=rcpt, queue_id=f"Q{i // 2}",
                                  message=shape.message_part({"message-id": mid, "from": "Shop <news@example.com>",
                                                               "to": rcpt, "subject": f"Your order {i // 2}"}, 2048),
                                  options={"tags": [rng.choice(tags)], "variables": {"order": str(i)}},
                                  envelope={"sender": "news@example.com", "targets": rcpt, "transport": "smtp",
                                            "sending-ip": ""}, flags={"is-authenticated": True}, extra=extra)
            batch.append(NewEvent("example.com", e))
            if i % 5000 == 0:
                sample["recipients"].append(rcpt)
                sample["message_ids"].append(mid)
            if len(batch) == 50000:
                await store.record_events(batch)
                batch = []
        if batch:
            await store.record_events(batch)
    finally:
        store.close()
    analyze(path)
    return sample


def analyze(path: Path) -> None:
    """``ANALYZE`` the SQLite file (the store has no method for it; plain SQL on the closed file)."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("ANALYZE")
    finally:
        conn.close()


async def api_client(store: Store):
    """mtad's real API app on a loopback port; returns (session, base_url, runner)."""
    import aiohttp
    from aiohttp import web
    from mtad.api import ApiContext, ApiKey, create_app, hash_key
    from mtad.api import events as events_api, stats as stats_api
    from mtad.config.schema import ApiConfig
    keys = [ApiKey(hash_key(KEY))]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ctx = ApiContext(config=ApiConfig(), store=store, base_url=base, keys=lambda: keys, running_config=lambda: None,
                     allowed_networks=(), ingress=None, routing=None, accounts=lambda: None,
                     apply_accounts=lambda accounts: None, metrics=lambda: None)  # what the events/stats API reads
    runner = web.AppRunner(create_app(ctx, [events_api.setup, stats_api.setup]), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    session = aiohttp.ClientSession(headers={"Authorization": aiohttp.encode_basic_auth("api", KEY)})
    return session, base, runner


async def timed(session, method: str, url: str, **kw) -> tuple[float, dict]:
    started = time.perf_counter()
    async with session.request(method, url, **kw) as resp:
        data = await resp.json()
        assert resp.status == 200, (url, resp.status, data)
    return time.perf_counter() - started, data


async def bench_query(folder: Path, n: int, repeats: int) -> None:
    path = folder / "events.sqlite3"
    started = time.perf_counter()
    sample = await fill_events(path, n)
    size = path.stat().st_size / 1e6
    print(f"\n## 2. Events query latency, {n:,} events stored ({size:,.0f} MB, filled in"
          f" {time.perf_counter() - started:.0f} s); {repeats} requests per kind through the HTTP API")
    store = Store(path)
    store.open()
    session, base, runner = await api_client(store)
    rng = random.Random(2)
    now = time.time()
    try:
        kinds = {
            "first page (300, newest first)": lambda: ("GET", "/v3/example.com/events", {}),
            "event=failed": lambda: ("GET", "/v3/example.com/events", {"event": "failed"}),
            "event=failed OR delivered, 1-day window": lambda: (
                "GET", "/v3/example.com/events", {"event": "failed OR delivered",
                                                  "begin": str(now - rng.uniform(2, 29) * 86400), "ascending": "yes",
                                                  "limit": "100"}),
            "recipient=ADDRESS": lambda: ("GET", "/v3/example.com/events", {"recipient": rng.choice(sample["recipients"])}),
            "message-id=ID": lambda: ("GET", "/v3/example.com/events", {"message-id": rng.choice(sample["message_ids"])}),
            "tags=TAG (limit 100)": lambda: ("GET", "/v3/example.com/events", {"tags": f"tag{rng.randrange(20)}", "limit": "100"}),
            "severity=permanent AND event=NOT accepted": lambda: (
                "GET", "/v3/example.com/events", {"severity": "permanent", "event": "NOT accepted"}),
            "logs: 1 day, failed, limit 100": lambda: (
                "POST", "/v1/analytics/logs", {"json": {"start": _rfc(now - rng.uniform(2, 29) * 86400), "duration": "1d",
                                                        "events": ["failed"], "pagination": {"limit": 100}}}),
            "logs: 1 day + include_totals": lambda: (
                "POST", "/v1/analytics/logs", {"json": {"start": _rfc(now - rng.uniform(2, 29) * 86400), "duration": "1d",
                                                        "include_totals": True, "pagination": {"limit": 100}}}),
        }
        print("| query | p50 ms | p99 ms | items/page |")
        print("|---|---:|---:|---:|")
        everything = []
        for name, make in kinds.items():
            lat, items = [], []
            for _ in range(repeats):
                method, path_, params = make()
                kw = params if method == "POST" else {"params": params}
                seconds, data = await timed(session, method, base + path_, **kw)
                lat.append(seconds * 1000)
                items.append(len(data["items"]))
            everything += lat
            print(f"| {name} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {statistics.mean(items):.0f} |")
        # a deep traversal: next pages of a descending default query
        lat = []
        _, data = await timed(session, "GET", base + "/v3/example.com/events", params={"limit": "300"})
        for _ in range(repeats):
            seconds, data = await timed(session, "GET", data["paging"]["next"])
            lat.append(seconds * 1000)
        everything += lat
        print(f"| next page (traversal, 300/page) | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | 300 |")
        print(f"\nall kinds together: p50 {pct(everything, 50):.1f} ms, p99 {pct(everything, 99):.1f} ms")
    finally:
        await session.close()
        await runner.cleanup()
        store.close()


def _rfc(ts: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(ts))


# --- 3. stats ------------------------------------------------------------------------------------------------

def fill_stats(path: Path) -> int:
    """90 days of hourly counters (and their daily sums) for 5 domains x 11 tag keys x 10 counters. The schema is
    the store's (opened once); the 1.2 million rows are plain INSERTs into its counter tables, as no typed method
    writes counters other than by recording events (which would take hours for this much)."""
    store = Store(path)
    store.open()
    store.close()
    rng = random.Random(3)
    hour_now = int(time.time() // 3600)
    keys = ["accepted:incoming", "accepted:outgoing", "delivered:smtp", "delivered:http", "failed:temporary",
            "failed:permanent:bounce", "failed:permanent:suppress-bounce", "opened", "clicked", "stored"]
    rows = []
    for d in range(5):
        for tag in [""] + [f"tag{i}" for i in range(10)]:
            for hour in range(hour_now - 90 * 24, hour_now + 1):
                for key in keys:
                    rows.append((f"domain{d}.test", tag, key, hour, rng.randrange(1, 500)))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO stats (domain, tag, event, hour, count) VALUES (?, ?, ?, ?, ?)", rows)
        conn.execute("INSERT INTO stats_daily (domain, tag, event, day, count) SELECT domain, tag, event, hour / 24,"
                     " sum(count) FROM stats GROUP BY domain, tag, event, hour / 24")
        conn.execute("COMMIT")
    finally:
        conn.close()
    analyze(path)
    return len(rows)


async def bench_stats(folder: Path, repeats: int) -> None:
    path = folder / "stats.sqlite3"
    rows = fill_stats(path)
    print(f"\n## 3. Stats query latency over 90 days ({rows:,} hourly counter rows: 5 domains x 11 tag keys x 10"
          f" counters x 2,161 hours, and their daily sums); {repeats} requests each")
    store = Store(path)
    store.open()
    session, base, runner = await api_client(store)
    ev = [("event", "accepted"), ("event", "delivered"), ("event", "failed")]
    try:
        kinds = {
            "domain total, 90 days, resolution=day": ("/v3/domain1.test/stats/total", ev + [("duration", "90d")]),
            "domain total, 90 days, resolution=hour": ("/v3/domain1.test/stats/total",
                                                       ev + [("duration", "90d"), ("resolution", "hour")]),
            "domain total, 3 months, resolution=month": ("/v3/domain1.test/stats/total",
                                                         ev + [("duration", "3m"), ("resolution", "month")]),
            "account total (5 domains), 90 days, day": ("/v3/stats/total", ev + [("duration", "90d")]),
            "tag stats, 90 days, day": ("/v3/domain2.test/tags/tag3/stats", ev + [("duration", "90d")]),
            "filter group=tag, 90 days": ("/v3/stats/filter", ev + [("duration", "90d"), ("group", "tag"),
                                                                     ("filter", "domain:domain0.test")]),
        }
        print("| query | p50 ms | p99 ms | buckets |")
        print("|---|---:|---:|---:|")
        for name, (path_, params) in kinds.items():
            lat = []
            for _ in range(repeats):
                seconds, data = await timed(session, "GET", base + path_, params=params)
                lat.append(seconds * 1000)
            print(f"| {name} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {len(data['stats'])} |")
    finally:
        await session.close()
        await runner.cleanup()
        store.close()


# --- 4. webhooks ---------------------------------------------------------------------------------------------

RECEIVER = r"""
import asyncio, sys
from aiohttp import web
async def ok(request):
    await request.read()
    return web.Response(text="ok")
app = web.Application()
app.router.add_post("/hook", ok)
try:
    import uvloop; uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


async def bench_webhooks(folder: Path, n: int) -> None:
    import socket
    from mtad.net.httpclient import HttpClient
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
    store = Store(folder / "webhooks.sqlite3")
    store.open()
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        url = f"http://127.0.0.1:{port}/hook"
        cfg = WebhooksConfig(domains={"example.com": {"delivered": WebhookConfig((url,))}}, retry_schedule=(Duration(60),),
                             max_concurrent=100, max_per_url=100, timeout=Duration(10))
        await store.sync_webhooks(cfg, time.time())

        await store.record_events([NewEvent("example.com", shape.base_event(
            "delivered", timestamp=time.time(), recipient=f"u{i}@dest.test", queue_id="Q",
            message=shape.message_part({"message-id": f"{i}@x", "subject": "s"}, 1000), options={"tags": ["a"]},
            envelope={"sender": "a@example.com"}, flags={}, extra={"delivery-status": {"code": 250}}))
            for i in range(n)])
        http = HttpClient(("127.0.0.0/8",), 10)
        dispatcher = webhooks.Dispatcher(store=store, http=http, config=cfg, signing_key=KEY)
        loop = webhooks.WebhookLoop(store=store, dispatcher=dispatcher, config=cfg, poll_interval=0.05)
        started = time.perf_counter()
        task = asyncio.create_task(loop.run())
        while dispatcher.counters["done"] + dispatcher.counters["failed"] < n:
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        await loop.stop()
        task.cancel()
        await http.close()
        print(f"\n## 4. Webhook dispatch rate: {n:,} signed JSON POSTs to a local aiohttp receiver (another process),"
              f" 100 in flight")
        print(f"{n / elapsed:,.0f} POSTs/s ({dispatcher.counters['done']} answered 200, {dispatcher.counters['failed']}"
              f" failed) in {elapsed:.1f} s")
    finally:
        store.close()
        proc.terminate()
        proc.wait(5)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller runs (100,000 events, fewer repeats)")
    parser.add_argument("--only", default="drain,query,stats,webhooks")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tiny", action="store_true", help="smoke-test sizes: checks that the bench runs")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    only = set(args.only.split(","))
    folder = Path(tempfile.mkdtemp(prefix="mtad-events-bench-"))
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(f"# mtad events bench — {time.strftime('%Y-%m-%d %H:%M')}, python {sys.version.split()[0]},"
          f" {os.cpu_count()} CPUs, store in {folder}")
    try:
        small = args.quick or args.tiny
        if "drain" in only:
            await bench_drain(folder, 300 if args.tiny else 5000 if args.quick else 20000, 1 if small else 3,
                              2000 if args.tiny else None)
        if "query" in only:
            await bench_query(folder, 5000 if args.tiny else 100_000 if args.quick else args.events,
                              5 if args.tiny else 50 if args.quick else 200)
        if "stats" in only:
            await bench_stats(folder, 3 if args.tiny else 20 if args.quick else 100)
        if "webhooks" in only:
            await bench_webhooks(folder, 200 if args.tiny else 2000 if args.quick else 10000)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
