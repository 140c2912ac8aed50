#!/usr/bin/env python3
"""Inbound end to end: SMTP in, route POST out, beside mtad's own accept rate, in one run (issue 4, "Benchmark").

    python bench/inbound_bench.py [--msgs 3000] [--sessions 20] [--size 1024] [--rounds 3]
                                  [--format parsed|mime] [--max-concurrent 50] [--out results.jsonl] [--keep]
                                  [--profile FILE [--gil]] [--mtad-src DIR] [--no-fasthttp]
                                  [--base-src DIR | --base-rev REV]

One mtad (``python -m mtad run``, the work tree) with one MX listener on 127.0.0.1 (``tls: none``,
``example.net`` a receiving domain, log level warning, no outbound delivery, no HTTP API) and two routes:

    match_recipient("keep@example.net")  -> stop()                            accept: stored, no work made
    match_recipient("fwd@example.net")   -> forward("http://127.0.0.1:P/post"), stop()   end to end

A local aiohttp application on 127.0.0.1:P (in this process, its own event loop) reads each POST whole and
answers 200; it counts them and notes when each arrived. Each round measures both modes at the same
concurrency, alternating which goes first so that drift in the machine's speed affects them alike:

* accept     smtp-source (Postfix's load generator: ``-s SESSIONS -m N -l SIZE``, a new connection per
             message) sends N messages to keep@; the clock runs from its start until it exits (every
             message answered 250, which mtad gives after the durable commit).
* end2end    the same to fwd@; the clock runs from smtp-source's start until the application has received
             the N-th POST (``--format mime``: URL ending in ``mime``, the raw format; default parsed).

Before/after in one run: ``--base-src DIR`` (a folder holding an ``mtad/`` package) or ``--base-rev REV``
(``git archive REV mtad``) starts a second mtad, labelled base-mtad, with the same configuration (its own
port and state), and every round measures both trees, both modes, in an order reversed every other round
(mtad accept, mtad end2end, base accept, base end2end; then the reverse), so drift hits both alike.
The summary then adds each tree's rows and a table of **mtad/base-mtad** per mode with the run-to-run
spread of the rounds and whether mtad is slower than the base by more than that spread.

Between runs the store is emptied (every message and its rows deleted, as bench/mtad_store.py does: plain
SQL on the file, so any revision's layout, flat modules or packages, is measured alike).
After each end2end run the bench checks that exactly N forwards are ``done`` and the application got
exactly N POSTs. Printed: msgs/s of each mode per round, the medians, mtad's CPU (% of one core and µs per
message), and **end2end / accept** (issue 4's target: at least 0.5). All traffic stays on 127.0.0.1.
Needs smtp-source (``apt-get install postfix``; the package's own instance can stay unconfigured).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from ab import compare, runs_text  # noqa: E402
from inbound_setup import (TABLES, Daemon, Store, base_source, export_rev, free_port,  # noqa: E402,F401
                           mx_config, wait_port)
from inbound_setup import smtp_source as send  # noqa: E402
from run_ingress import tree_cpu_rss  # noqa: E402

# ``python -m mtad`` with every HttpClient made with fast_post=False (--no-fasthttp): the aiohttp path alone.
# The module is imported by the layout found (mtad.net.httpclient; mtad.httpclient before the packages); a
# revision whose HttpClient has no fast_post runs unchanged, with a warning in its log.
NO_FASTHTTP = """
import functools, importlib, inspect, os, sys
import mtad
try:
    httpclient = importlib.import_module("mtad.net.httpclient")
    if not httpclient.__file__.startswith(os.path.dirname(mtad.__file__) + os.sep):  # an editable install's
        raise ImportError  # finder served the work tree's module: this tree is the flat layout
except ImportError:
    from mtad import httpclient
if "fast_post" in inspect.signature(httpclient.HttpClient.__init__).parameters:
    httpclient.HttpClient.__init__ = functools.partialmethod(httpclient.HttpClient.__init__, fast_post=False)
else:
    print("inbound_bench: this mtad's HttpClient has no fast_post: --no-fasthttp has no effect", file=sys.stderr)
from mtad.cli import main
sys.argv[0] = "mtad"
raise SystemExit(main())
"""

class Application:
    """The route's destination: counts POSTs (each body read whole) and when the last one came."""

    def __init__(self) -> None:
        self.count = 0
        self.last_at = 0.0
        self.target = 0
        self.done = asyncio.Event()
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        self.count += 1
        self.last_at = time.monotonic()
        if self.target and self.count >= self.target:
            self.done.set()
        return web.Response(text="ok")

    def expect(self, n: int) -> None:
        self.count, self.last_at, self.target = 0, 0.0, n
        self.done = asyncio.Event()

    async def start(self) -> web.AppRunner:
        app = web.Application(client_max_size=50_000_000)
        app.router.add_post("/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, backlog=1024).start()
        return runner


def bench_config(work: Path, mx_port: int, app_port: int, fmt: str, max_concurrent: int) -> dict:
    """The bench config (inbound_setup's MX config and the two routes)."""
    url = f"http://127.0.0.1:{app_port}/" + ("post_mime" if fmt == "mime" else "post")
    return mx_config(
        work, mx_port, signing_key="key-inbound-bench",
        routing={
            "routes": [
                {"expression": "match_recipient('keep@example.net')", "actions": ["stop()"],
                 "description": "accept only"},
                {"expression": "match_recipient('fwd@example.net')", "actions": [f"forward('{url}')", "stop()"],
                 "description": "end to end"},
            ],
            "allowed_networks": ["127.0.0.0/8"], "max_concurrent": max_concurrent, "timeout": "30s",
            "retry_schedule": ["10s"],
        })


async def smtp_source(args: argparse.Namespace, port: int, rcpt: str, n: int) -> None:
    await send(args.smtp_source, port, args.sessions, n, rcpt, size=args.size, timeout=300)


async def run_mode(mode: str, args: argparse.Namespace, app: Application, store: Store, mtad_pid: int,
                   port: int, n: int, profile: bool = True) -> dict:
    store.empty()
    await asyncio.sleep(0.5)  # let the machine settle after the deletion
    app.expect(n if mode == "end2end" else 0)
    spy = None
    if profile and args.profile and mode == "end2end" and n == args.msgs:
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(mtad_pid), "--rate", "100", "--threads",
                                "--nonblocking", "--format", "raw", "-o", args.profile] + (["--gil"] if args.gil else []),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        await asyncio.sleep(1)
    cpu0 = tree_cpu_rss(mtad_pid)[0]
    t0 = time.monotonic()
    await smtp_source(args, port, "fwd@example.net" if mode == "end2end" else "keep@example.net", n)
    sent_s = time.monotonic() - t0
    if mode == "end2end":
        try:
            await asyncio.wait_for(app.done.wait(), timeout=300)
        except asyncio.TimeoutError:
            sys.exit(f"only {app.count} of {n} POSTs arrived")
        wall = app.last_at - t0
    else:
        wall = sent_s
    cpu = tree_cpu_rss(mtad_pid)[0] - cpu0
    if spy is not None:
        spy.send_signal(2)
        spy.wait(60)
    stored = store.count("SELECT count(*) FROM messages")
    rec = {"mode": mode, "msgs": n, "stored": stored, "wall_s": round(wall, 3), "msgs_per_s": round(n / wall, 1),
           "smtp_s": round(sent_s, 3), "mtad_cpu_pct": round(100 * cpu / wall, 1),
           "mtad_cpu_us_per_msg": round(1e6 * cpu / n)}
    if mode == "end2end":
        await asyncio.sleep(0.3)  # a duplicate POST would show up now
        rec["posts"] = app.count
        rec["forwards_done"] = store.count("SELECT count(*) FROM forwards WHERE state = 'done'")
        rec["accept_phase_msgs_per_s"] = round(n / sent_s, 1)  # SMTP side while forwarding runs
        if rec["posts"] != n or rec["forwards_done"] != n:
            rec["problem"] = f"{rec['posts']} POSTs, {rec['forwards_done']} forwards done, expected {n}"
    if stored != n:
        rec["problem"] = f"{stored} messages stored, expected {n}"
    return rec


def Tree(label: str, src: str, work: Path, app: Application, args: argparse.Namespace) -> Daemon:
    """One mtad under test (inbound_setup.Daemon), its configuration checked by that tree's mtad."""
    return Daemon(label, src, work,
                  lambda port: bench_config(work, port, app.port, args.format, args.max_concurrent),
                  launch=("-c", NO_FASTHTTP) if args.no_fasthttp else ("-m", "mtad"), check=True)


async def main_async(args: argparse.Namespace) -> int:
    work = Path(args.work or tempfile.mkdtemp(prefix="mtad-inbound-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    app = Application()
    runner = await app.start()
    trees: list[Tree] = []
    records: list[dict] = []
    out = open(args.out, "a") if args.out else None
    try:
        trees.append(Tree("mtad", args.mtad_src, work, app, args))
        args.base_src = base_source(work, args.base_rev, args.base_src)
        if args.base_src:
            trees.append(Tree("base-mtad", args.base_src, work / "base-mtad", app, args))
        for tree in trees:
            tree.ready()
            print(f"# {tree.label} pid {tree.proc.pid} ({tree.src}), MX 127.0.0.1:{tree.port}, application "
                  f"127.0.0.1:{app.port}, format {args.format}, {args.sessions} sessions, {args.size}-byte messages, "
                  f"{args.msgs} per run, {os.cpu_count()} CPUs", flush=True)
        for tree in trees:
            for mode in ("accept", "end2end"):  # warm-up, unmeasured
                await run_mode(mode, args, app, tree.store, tree.proc.pid, tree.port, min(500, args.msgs),
                               profile=False)
        for r in range(args.rounds):
            # every round: each tree, each mode; the order reversed every other round (A/B B/A)
            order = [(tree, mode) for tree in trees for mode in ("accept", "end2end")]
            for tree, mode in (order if r % 2 == 0 else order[::-1]):
                rec = await run_mode(mode, args, app, tree.store, tree.proc.pid, tree.port, args.msgs,
                                     profile=tree.label == "mtad")
                rec["round"] = r + 1
                if len(trees) > 1:
                    rec["tree"] = tree.label
                records.append(rec)
                print(json.dumps(rec), flush=True)
                if out:
                    out.write(json.dumps(rec) + "\n")
    finally:
        for tree in trees:
            tree.stop()
        await runner.cleanup()
        if out:
            out.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    problems = [r for r in records if "problem" in r]
    for tree in trees:
        mine = [r for r in records if r.get("tree", "mtad") == tree.label]
        summarize(mine, args.rounds, tree.label if len(trees) > 1 else "")
    if len(trees) > 1:
        before_after(records, trees[0].label, trees[1].label)
    for r in problems:
        print(f"PROBLEM round {r['round']} {r.get('tree', 'mtad')} {r['mode']}: {r['problem']}")
    return 1 if problems else 0


def summarize(records: list[dict], rounds: int, label: str) -> None:
    """One tree's table (the only one without a base) and its end to end / accept ratio."""
    accept = statistics.median(r["msgs_per_s"] for r in records if r["mode"] == "accept")
    e2e = statistics.median(r["msgs_per_s"] for r in records if r["mode"] == "end2end")
    cpu = {m: statistics.median(r["mtad_cpu_us_per_msg"] for r in records if r["mode"] == m)
           for m in ("accept", "end2end")}
    print()
    if label:
        print(f"{label}:\n")
    print(f"| mode | msgs/s (median of {rounds}) | runs | mtad CPU µs/msg |")
    print("|---|---|---|---|")
    for mode, rate in (("accept (stop() only)", accept), ("end to end (SMTP in, POST out)", e2e)):
        key = "accept" if mode.startswith("accept") else "end2end"
        runs = ", ".join(str(r["msgs_per_s"]) for r in records if r["mode"] == key)
        print(f"| {mode} | {rate:.0f} | {runs} | {cpu[key]} |")
    ratio = e2e / accept
    print(f"\n{label + ': ' if label else ''}end to end / accept = {ratio:.2f} "
          f"(target >= 0.5: {'met' if ratio >= 0.5 else 'NOT met'})")


def before_after(records: list[dict], new: str, base: str) -> None:
    """mtad against base-mtad per mode: ratio of the medians, per round, the spread, and a verdict."""
    print(f"\n### Before/after: {new} against {base} (same run, same rounds)\n")
    print(f"| mode | {new} msgs/s (min-max) | {base} msgs/s (min-max) | {new}/{base} | per-round ratios | spread |"
          f" verdict | CPU µs/msg {new}/{base} |")
    print("|---|---:|---:|---:|---|---:|---|---:|")
    slower, single = [], False
    for mode in ("accept", "end2end"):
        a = [r for r in records if r["tree"] == new and r["mode"] == mode]
        b = [r for r in records if r["tree"] == base and r["mode"] == mode]
        ra, rb = [r["msgs_per_s"] for r in a], [r["msgs_per_s"] for r in b]
        c = compare(ra, rb)
        cpu = (statistics.median(r["mtad_cpu_us_per_msg"] for r in a)
               / statistics.median(r["mtad_cpu_us_per_msg"] for r in b))
        if c.status == "single":
            verdict, single = "no spread (1 round)", True
        else:
            verdict = c.verdict
        if c.status == "slower":
            slower.append(mode)
        print(f"| {mode} | {runs_text(ra)} | {runs_text(rb)} | {c.ratio:.2f}x | "
              f"{', '.join(f'{p:.2f}' for p in c.per_round)} | {c.spread_text()} | {verdict} | {cpu:.2f}x |")
    print(f"\nspread = the larger run-to-run spread (max-min)/median of {new} and {base}; slower by more than the "
          f"spread when {new}/{base} < 1 - spread.")
    if slower:
        print(f"BEFORE/AFTER: {new} slower than {base} by more than the spread in: {', '.join(slower)}")
    elif single:
        print("BEFORE/AFTER: one round only: no spread to judge by (--rounds 3)")
    else:
        print(f"BEFORE/AFTER: no mode slower than {base} by more than the spread")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msgs", type=int, default=3000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--format", choices=("parsed", "mime"), default="parsed")
    ap.add_argument("--max-concurrent", type=int, default=50, help="routing.max_concurrent (POSTs in flight)")
    ap.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    ap.add_argument("--mtad-src", default=str(REPO), help="measure the mtad package in this folder (default: the work tree)")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--base-src", help="also measure the mtad package in this folder (base-mtad), same rounds")
    base.add_argument("--base-rev", help="also measure mtad as committed at REV (git archive REV mtad), same rounds")
    ap.add_argument("--no-fasthttp", action="store_true",
                    help="mtad posts forwards with aiohttp only (HttpClient(fast_post=False)), not mtad.net.fasthttp")
    ap.add_argument("--work", help="folder for mtad's state (default: a temporary folder, deleted)")
    ap.add_argument("--out", help="append each run's record (JSON line) here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--profile", help="sample mtad with py-spy during the end2end runs into this file "
                                      "(raw stacks; rank them with bench/pyspy_top.py)")
    ap.add_argument("--gil", action="store_true", help="with --profile: only samples holding the GIL")
    args = ap.parse_args()
    try:
        import uvloop
        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
