#!/usr/bin/env python3
"""The web panel's pages with a large event log: each page's answer time over HTTP (issue 17: "each page rendered
in <= 100 ms with 1,000,000 events stored").

    python bench/panel_pages.py [--events 1000000] [--rounds 20] [--keep DIR] [--fill-only]

1. Fills a fresh SQLite store with ``--events`` events of two sending domains over the last 30 days (a mix of
   accepted, delivered, temporary and permanent failures, opens; 50,000 recipients, 20 tags) through the store's
   typed method ``record_events`` in batches of 5,000 (each batch one group commit, counters and all), plus a few
   hundred queued deliveries, suppressions and routes.
2. Starts ``mtad run`` on that state (port 0 for everything, delivery off, so nothing changes meanwhile), signs in
   to the panel with the API key, and GETs each page ``--rounds`` times over loopback (after one warm-up):
   the dashboard, the logs (first page, a filter on each indexed field, the text filters subject and from through
   their index, a common text, a short one that is a scan of the last hour, a period, the next page),
   a message's timeline, the queue, routes, domains, a domain, suppressions, webhooks.
3. Prints each page's median, p95 and max in milliseconds, and whether the median is within 100 ms.

``--fill-only``: step 1 only, printing events/s of ``record_events`` (copy this file into another checkout's
bench/ and run it there to compare the write cost of two versions). Figures depend on the machine and its load;
run it on an idle one. The store is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.api import hash_key  # noqa: E402
from mtad.base import ports  # noqa: E402
from mtad.base.types import Envelope, HeaderSummary, NewMessage  # noqa: E402
from mtad.events import shape  # noqa: E402
from mtad.store import queue as spool  # noqa: E402
from mtad.store.events import NewEvent  # noqa: E402
from mtad.store.routes import RouteRecord, new_route_id  # noqa: E402
from mtad.store.sqlite import SqliteStore  # noqa: E402
from mtad.store.suppressions import Suppression  # noqa: E402

KEY = "key-bench-panel-0123456789abcdef"
DOMAINS = ("shop.example.com", "news.example.org")
BATCH = 5000


def event(rng: random.Random, i: int, n: int, start: float) -> NewEvent:
    kinds = [("accepted", None)] * 40 + [("delivered", None)] * 38 + [("failed", "temporary")] * 15 + \
        [("failed", "permanent")] * 5 + [("opened", None)] * 2
    kind, severity = rng.choice(kinds)
    domain = DOMAINS[i % 2]
    rcpt = f"user{rng.randrange(50000)}@dest{rng.randrange(200)}.test"
    mid = f"{i // 2}.bench@{domain}"
    extra = {"severity": severity, "reason": "bounce" if severity == "permanent" else "generic",
             "delivery-status": {"code": 550 if severity == "permanent" else 451, "message": "nope",
                                 "attempt-no": 1, "mx-host": "mx.dest.test"}} if severity else \
        ({"delivery-status": {"code": 250, "message": "OK", "attempt-no": 1, "mx-host": "mx.dest.test"}}
         if kind == "delivered" else {})
    data = shape.base_event(kind, timestamp=start + (30 * 86400) * i / n, recipient=rcpt, queue_id=f"Q{i // 2}",
                            message=shape.message_part({"message-id": mid, "from": f"Shop <news@{domain}>",
                                                        "to": rcpt, "subject": f"Your order {i // 2}"}, 2048),
                            options={"tags": [f"tag{rng.randrange(20)}"], "variables": {"order": str(i)}},
                            envelope={"sender": f"news@{domain}", "targets": rcpt, "transport": "smtp",
                                      "sending-ip": ""}, flags={"is-authenticated": True}, extra=extra)
    return NewEvent(domain, data)


async def fill(path: Path, n: int) -> dict:
    """The store: ``n`` events through ``record_events``, a queue, suppressions, routes. Returns what to ask for."""
    store = SqliteStore(path)
    store.open()
    rng = random.Random(17)
    now = time.time()
    start = now - 30 * 86400
    sample: dict = {}
    t0 = time.perf_counter()
    for first in range(0, n, BATCH):
        batch = [event(rng, i, n, start) for i in range(first, min(n, first + BATCH))]
        await store.record_events(batch)
        if first == n // 2 - n // 2 % BATCH:
            e = batch[0].data
            sample.update(recipient=e["recipient"], message_id=e["message"]["headers"]["message-id"],
                          domain=batch[0].domain)
        if first % 100_000 == 0:
            print(f"  {first:>9,} events  {time.perf_counter() - t0:6.1f}s", file=sys.stderr, flush=True)
    fill_seconds = time.perf_counter() - t0
    items = []
    for i in range(300):  # queued deliveries (delivery is off in the daemon: they stay)
        rcpt = f"q{i}@dest{i % 30}.test"
        body = f"From: news@{DOMAINS[0]}\r\nTo: {rcpt}\r\nSubject: queued {i}\r\n\r\nhello\r\n".encode()
        msg = NewMessage(Envelope(f"news@{DOMAINS[0]}", (rcpt,)), body, "outbound", DOMAINS[0],
                         HeaderSummary(f"queued{i}@{DOMAINS[0]}", f"news@{DOMAINS[0]}", rcpt, f"queued {i}"))
        items.append(spool.Enqueue(f"QUEUED{i:06d}", msg))
    await store.enqueue(items, now)
    await store.add_suppressions(DOMAINS[0], [Suppression("bounces", f"gone{i}@dest.test", now, error="no such user")
                                              for i in range(2000)])
    for i in range(50):
        await store.add_route(RouteRecord(new_route_id(), i, f"bench route {i}", f'match_recipient("r{i}@.*")',
                                          ('forward("https://app.example.net/mail")',), now + i))
    store.close()
    sample["fill_seconds"] = fill_seconds
    return sample


def start_daemon(folder: Path) -> tuple[subprocess.Popen, str]:
    cfg = folder / "mtad.yaml"
    cfg.write_text(json.dumps({
        "hostname": "bench.test", "state_dir": str(folder / "state"),
        "listeners": [{"address": "127.0.0.1:0", "role": "mx", "tls": "none", "name": "mx"}],
        "sending_domains": {d: {} for d in DOMAINS}, "receiving_domains": ["in.bench.test"],
        "delivery": {"enabled": False}, "api": {"address": "127.0.0.1:0", "keys": [{"key_hash": hash_key(KEY)}]},
        "log": {"level": "warning"}}))  # JSON is YAML
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(cfg)],
                            stdout=open(folder / "mtad.log", "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = ports.read(folder / "state")
        if found is not None and found.get("pid") == proc.pid and found.get("api"):
            return proc, "http://" + found["api"]
        if proc.poll() is not None:
            raise SystemExit(f"mtad exited: {(folder / 'mtad.log').read_text()[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("mtad did not start")


async def measure(base: str, sample: dict, rounds: int) -> list[tuple[str, list[float], int]]:
    import aiohttp
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(cookie_jar=jar) as http:
        async with http.get(base + "/ui/login") as r:
            token = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
        async with http.post(base + "/ui/login", data={"csrf": token, "password": KEY, "next": "/ui/"},
                             allow_redirects=False) as r:
            assert r.status == 303, await r.text()
        async with http.get(base + "/ui/logs") as r:
            page2 = re.search(r'href="(/ui/logs\?page=[^"]+)"', await r.text()).group(1).replace("&amp;", "&")
        q = urllib.parse.urlencode
        pages = [
            ("dashboard", "/ui/"),
            ("logs: first page, every domain", "/ui/logs"),
            ("logs: next page", page2),
            ("logs: one domain, last day", "/ui/logs?" + q({"domain": DOMAINS[0], "last": "1d"})),
            ("logs: event=failed", "/ui/logs?" + q({"event": "failed"})),
            ("logs: failed OR delivered, one domain", "/ui/logs?" + q({"domain": DOMAINS[0],
                                                                         "event": "failed OR delivered"})),
            ("logs: recipient, one domain", "/ui/logs?" + q({"domain": sample["domain"],
                                                              "recipient": sample["recipient"]})),
            ("logs: recipient, every domain", "/ui/logs?" + q({"recipient": sample["recipient"]})),
            ("logs: message-id, one domain", "/ui/logs?" + q({"domain": sample["domain"],
                                                               "message-id": sample["message_id"]})),
            ("logs: tags=tag7", "/ui/logs?" + q({"tags": "tag7"})),
            ("logs: subject contains, any time (index)", "/ui/logs?" + q({"subject": "order 12345"})),
            ("logs: subject contains, last day (index)", "/ui/logs?" + q({"subject": "order 12345", "last": "1d"})),
            ("logs: subject, no match, last day (index)", "/ui/logs?" + q({"subject": "refund", "last": "1d"})),
            ("logs: from contains, last day (common)", "/ui/logs?" + q({"from": "news@shop", "last": "1d"})),
            ("logs: from, no match, last day (index)", "/ui/logs?" + q({"from": "nobody@nowhere", "last": "1d"})),
            ("logs: subject 'order' (common), 30 days", "/ui/logs?" + q({"subject": "order", "last": "30d"})),
            ("logs: subject of 2 chars (scan, last hour)", "/ui/logs?" + q({"subject": "12"})),
            ("message timeline", "/ui/message?" + q({"domain": sample["domain"], "id": sample["message_id"]})),
            ("queue (300 waiting)", "/ui/queue"),
            ("routes (50)", "/ui/routes"),
            ("domains", "/ui/domains"),
            ("a domain (without its DNS check)", f"/ui/domains/{DOMAINS[0]}"),
            ("suppressions (2,000 bounces)", "/ui/suppressions?" + q({"domain": DOMAINS[0]})),
            ("webhooks", "/ui/webhooks?" + q({"domain": DOMAINS[0]})),
        ]
        results = []
        for name, path in pages:
            times, status = [], 0
            for n in range(rounds + 1):
                t = time.perf_counter()
                async with http.get(base + path, allow_redirects=False) as r:
                    await r.read()
                    status = r.status
                if n:  # the first is a warm-up (templates compiled, pages cached)
                    times.append((time.perf_counter() - t) * 1000)
            results.append((name, times, status))
        return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--keep", help="build the store in this folder and keep it (reused if it holds one)")
    ap.add_argument("--fill-only", action="store_true",
                    help="fill a fresh store, print its events/s (the write cost of record_events) and stop")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mtad-panel-bench-"))
    (folder / "state").mkdir(parents=True, exist_ok=True)
    store_path = folder / "state" / "mtad.sqlite3"
    sample_path = folder / "sample.json"
    if args.fill_only:
        sample = asyncio.run(fill(store_path, args.events))
        print(f"filled {args.events:,} events in {sample['fill_seconds']:.1f}s:"
              f" {args.events / sample['fill_seconds']:,.0f} events/s; store"
              f" {sum(p.stat().st_size for p in store_path.parent.iterdir()) / 1e6:,.0f} MB")
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        return 0
    if store_path.exists() and sample_path.exists():
        sample = json.loads(sample_path.read_text())
        print(f"reusing the store in {folder} ({sample['events']:,} events)", file=sys.stderr)
    else:
        print(f"filling {store_path} with {args.events:,} events ...", file=sys.stderr)
        sample = asyncio.run(fill(store_path, args.events))
        sample["events"] = args.events
        sample_path.write_text(json.dumps(sample))
        print(f"filled in {sample['fill_seconds']:.0f}s ({args.events / sample['fill_seconds']:,.0f} events/s);"
              f" store {store_path.stat().st_size / 1e6:,.0f} MB", file=sys.stderr)
    proc, base = start_daemon(folder)
    try:
        results = asyncio.run(measure(base, sample, args.rounds))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    print(f"\nweb panel pages, {sample['events']:,} events stored, {args.rounds} GETs each (ms)")
    print(f"{'page':<42} {'status':>6} {'median':>8} {'p95':>8} {'max':>8}  <= 100 ms")
    slow = 0
    for name, times, status in results:
        times.sort()
        median, p95 = statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]
        ok = median <= 100
        slow += not ok
        print(f"{name:<42} {status:>6} {median:8.1f} {p95:8.1f} {times[-1]:8.1f}  {'yes' if ok else 'NO'}")
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return 1 if slow else 0


if __name__ == "__main__":
    sys.exit(main())
