#!/usr/bin/env python3
"""Inbound accept rate with spam filtering on vs off, in one run (issue 15, "report spamd's cost separately").

    python bench/spam_bench.py [--msgs 500] [--sessions 20] [--size 1024] [--rounds 3]
                               [--spamd-children 4] [--out results.jsonl] [--keep]

One mtad (``python -m mtad run``, the work tree) with one MX listener on 127.0.0.1 (``tls: none``, one route
``catch_all() -> stop()``: every message is stored, no work made; no outbound delivery, no HTTP API, log level warning) and two receiving domains:

    plain.net     spam_action disabled   off: not scanned
    scanned.net   spam_action tag        on:  every message scored by spamd, X-Mailgun-Sflag/Sscore added

and one real SpamAssassin ``spamd`` (tests/support/spamd.py: local rules only, ``--max-children`` =
``--spamd-children``, the same number as mtad's ``spam.spamd.max_concurrent``; timeout 30s so that no message
is let through untagged by a timeout). Each round sends N messages with Postfix's smtp-source
(``-s SESSIONS -m N -l SIZE``, a new connection per message) to keep@plain.net and to keep@scanned.net, in an
order reversed every other round; the clock runs from smtp-source's start until it exits (every message answered
250, after the durable commit). Printed per mode: msgs/s, mtad's CPU (µs per message) and spamd's (µs per
message: SpamAssassin's cost, not mtad's), the medians, and **on/off**. After each ``on`` run the bench checks
that all N stored messages carry ``X-Mailgun-Sflag`` (none accepted untagged by an error). All on 127.0.0.1.
Needs smtp-source (``apt-get install postfix``) and spamd (``apt-get install spamassassin spamd``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from inbound_bench import Store, free_port, smtp_source, wait_port  # noqa: E402
from run_ingress import tree_cpu_rss  # noqa: E402
from tests.support.spamd import Spamd, find_spamd  # noqa: E402

MODES = {"off": "keep@plain.net", "on": "keep@scanned.net"}


def write_config(work: Path, mx_port: int, spamd_port: int, children: int) -> Path:
    import yaml
    cfg = {
        "hostname": "bench.localdomain",
        "state_dir": str(work / "state"),
        "listeners": [{"address": f"127.0.0.1:{mx_port}", "role": "mx", "tls": "none", "name": "mx"}],
        "receiving_domains": ["plain.net", "scanned.net"],
        "limits": {"max_connections_per_ip": 1000},
        "delivery": {"enabled": False},
        "api": {"enabled": False},
        "signing_key": "key-spam-bench",
        "routing": {"routes": [{"expression": "catch_all()", "actions": ["stop()"], "description": "accept only"}]},
        "spam": {"spamd": {"address": f"127.0.0.1:{spamd_port}", "timeout": "30s", "max_concurrent": children},
                 "domains": {"scanned.net": {"action": "tag"}}},
        "log": {"level": "warning"},
    }
    path = work / "mtad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    check = subprocess.run([sys.executable, "-m", "mtad", "check-config", str(path)], capture_output=True, text=True,
                           cwd=REPO)
    if check.returncode != 0:
        sys.exit(f"mtad refuses the bench config: {check.stderr.strip()}")
    return path


async def run_mode(mode: str, args: argparse.Namespace, store: Store, mtad_pid: int, spamd_pid: int,
                   port: int) -> dict:
    store.empty()
    await asyncio.sleep(0.5)
    cpu0, spam0 = tree_cpu_rss(mtad_pid)[0], tree_cpu_rss(spamd_pid)[0]
    t0 = time.monotonic()
    await smtp_source(args, port, MODES[mode], args.msgs)
    wall = time.monotonic() - t0
    cpu, spam_cpu = tree_cpu_rss(mtad_pid)[0] - cpu0, tree_cpu_rss(spamd_pid)[0] - spam0
    n = args.msgs
    stored = store.count("SELECT count(*) FROM messages")
    tagged = store.count("SELECT count(*) FROM messages WHERE instr(body, CAST('X-Mailgun-Sflag: ' AS BLOB)) > 0")
    rec = {"mode": mode, "msgs": n, "stored": stored, "tagged": tagged, "wall_s": round(wall, 3),
           "msgs_per_s": round(n / wall, 1), "mtad_cpu_us_per_msg": round(1e6 * cpu / n),
           "spamd_cpu_us_per_msg": round(1e6 * spam_cpu / n)}
    expected_tagged = n if mode == "on" else 0
    if stored != n or tagged != expected_tagged:
        rec["problem"] = f"{stored} stored, {tagged} tagged; expected {n} and {expected_tagged}"
    return rec


async def main_async(args: argparse.Namespace) -> int:
    binary = find_spamd()
    if binary is None:
        sys.exit("spamd is not installed (apt-get install spamassassin spamd)")
    work = Path(args.work or tempfile.mkdtemp(prefix="mtad-spam-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    spamd = Spamd(binary, children=args.spamd_children).start()
    port = free_port()
    config = write_config(work, port, spamd.port, args.spamd_children)
    log = open(work / "mtad.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(config)], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT)
    records: list[dict] = []
    try:
        wait_port(port, proc)
        store = Store(work / "state" / "mtad.sqlite3")
        await smtp_source(argparse.Namespace(**{**vars(args), "sessions": 2}), port, MODES["on"], 20)  # warm up
        for r in range(args.rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for mode in order:
                rec = await run_mode(mode, args, store, proc.pid, spamd.proc.pid, port)
                rec.update(round=r + 1, sessions=args.sessions, size=args.size, spamd_children=args.spamd_children)
                records.append(rec)
                print(json.dumps(rec), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(rec) + "\n")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        spamd.close()
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    med = {m: statistics.median(r["msgs_per_s"] for r in records if r["mode"] == m) for m in MODES}
    for m in MODES:
        rows = [r for r in records if r["mode"] == m]
        print(f"{m:>3}: {med[m]:8.1f} msgs/s (runs {', '.join(str(r['msgs_per_s']) for r in rows)}); mtad "
              f"{statistics.median(r['mtad_cpu_us_per_msg'] for r in rows)} µs/msg, spamd "
              f"{statistics.median(r['spamd_cpu_us_per_msg'] for r in rows)} µs/msg CPU")
    print(f"on/off: {med['on'] / med['off']:.2f}")
    problems = [r for r in records if "problem" in r]
    for r in problems:
        print(f"PROBLEM round {r['round']} {r['mode']}: {r['problem']}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msgs", type=int, default=500)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spamd-children", type=int, default=4, help="spamd --max-children = spam.spamd.max_concurrent")
    ap.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    ap.add_argument("--work", help="folder for mtad's state (default: a temporary folder, deleted)")
    ap.add_argument("--out", help="append each run's record (JSON line) here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    return asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
