#!/usr/bin/env python3
"""Engagement tracking's costs (issue 13, "Benchmark"): rewriting per message, and the click endpoint under load.

  python bench/tracking_bench.py rewrite [--repeats 200]
  python bench/tracking_bench.py endpoint [--clients 200] [--requests 20000] [--rate 3000 [--duration 10]
                                          [--processes 2]] [--no-closed] [--listeners api|own|both]
                                          [--base-rev REV | --base-src DIR] [--profile FILE]

rewrite   ``mtad.mail.render.render`` of one message for one recipient (click tracking on, open pixel), for HTML
          bodies of about 1 KB and 100 KB with 50 links each (quoted-printable, as compose writes long lines), in
          µs per message: ``first`` is a message's first copy (its HTML parsed: the link list and the link
          positions), ``next`` each further recipient's copy (the parse remembered: tokens, splice, re-encode),
          plus ``link_list`` alone. In this process, no DKIM: what the signing worker adds per copy.
endpoint  The click endpoint (served on the API listener, then on a ``tracking.listen`` listener of its own;
          ``--listeners``) against a bare aiohttp handler that answers 302 and records nothing (the limit), one
          server after the other. mtad runs as ``python -m mtad run``; a tracked message with 50 links is put in
          its store first (``track_message``) and the click URL is sealed with its signing key, so every request
          is a valid click: token opened, message read (cached), event built (ua-parser, GeoIP none) and queued
          for the store's write. Each server gets:
          - closed loop (saturation; skipped with ``--no-closed``): ApacheBench, ``ab -k -c CLIENTS -n
            REQUESTS`` (keep-alive, a real browser's User-Agent; ``apt-get install apache2-utils`` when ``ab``
            is missing): each client sends its next request when the previous one is answered, so this is the
            most a server answers, and its latency is queueing (Little's law: clients / throughput).
          - open loop (``--rate R[,R2...]``, ``--duration`` seconds each): ``bench/openloop.py``, wrk2's method:
            R requests/s due at fixed instants over CLIENTS keep-alive connections split across ``--processes``
            client processes, latency measured from when each request was DUE (a stalled server pays for every
            request it delayed). Reports offered vs achieved rate, p50/p99/p99.9/max, errors, and the clients'
            CPU per request (the load generator must stay well below a core: check that the bare handler
            reaches the rate with a low p99).
          For both: ``clicked`` events counted in the store afterwards (every answered click must be one), and
          the server's CPU per request (user + system, all threads, ``/proc``): less noisy than latency on a
          shared machine. ``--base-rev REV`` / ``--base-src DIR``: the same runs for mtad as committed at REV
          (before/after in one run); each tree makes its own store (``prepare-store``) and gets the config
          less the keys it does not know (said on stderr; without ``tracking.listen`` its own-listener run is
          skipped). ``--profile FILE``: py-spy raw stacks of mtad during its runs
          (``bench/pyspy_top.py FILE``).
The machine is shared: figures are noisy; compare the lines of one run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 "
          "Safari/537.36")
SIGNING_KEY = "key-tracking-bench-0123456789"


def html_message(size: int, links: int = 50) -> bytes:
    import binascii
    anchors = "".join(f'<p><a href="https://shop.example/item/{i}?utm_source=bench&amp;n={i}">Item {i}</a></p>\n'
                      for i in range(links))
    filler = "<p>" + ("The quick brown fox jumps over the lazy dog. " * 40) + "</p>\n"
    body = "<html><body>\n" + anchors
    while len(body) < size:
        body += filler
    body = body[:max(len(body), size)] + "</body></html>\n"
    encoded = binascii.b2a_qp(body.encode(), istext=True).replace(b"\n", b"\r\n")
    return (b"From: a@example.com\r\nTo: r@example.net\r\nSubject: bench\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + encoded + b"\r\n")


def cmd_rewrite(a: argparse.Namespace) -> None:
    from mtad.base.keys import derive
    from mtad.mail import links, render
    print("| HTML | links | first copy µs | next copies µs | link_list µs |")
    print("|---|---|---|---|---|")
    for size in (1024, 100 * 1024):
        body = html_message(size)
        spec = render.RenderSpec("0123456789ABCDEF012", "r@example.net", "https://trk.example.com", "yes", True,
                                 False, tracking_key=derive(SIGNING_KEY, "tracking"),
                                 unsubscribe_key=derive(SIGNING_KEY, "unsubscribe"))
        firsts, nexts, lists = [], [], []
        for i in range(a.repeats):
            fresh = body.replace(b"Subject: bench", f"Subject: bench {i}".encode())  # a new message: nothing cached
            links._cache.clear()
            render._lists.clear()
            t = time.perf_counter()
            render.render(fresh, spec)
            firsts.append(time.perf_counter() - t)
            t = time.perf_counter()
            render.render(fresh, render.RenderSpec(**{**spec.__dict__, "recipient": f"n{i}@example.net"}))
            nexts.append(time.perf_counter() - t)
            links._cache.clear()
            render._lists.clear()
            t = time.perf_counter()
            render.link_list(fresh)
            lists.append(time.perf_counter() - t)
        med = lambda xs: sorted(xs)[len(xs) // 2] * 1e6  # noqa: E731
        assert len(render.link_list(body)) == 50
        print(f"| {len(body) // 1024} KB | 50 | {med(firsts):.0f} | {med(nexts):.0f} | {med(lists):.0f} |")


# --- the endpoint -------------------------------------------------------------------------------------------------

from inbound_setup import free_port, wait_port  # noqa: E402 (bench/ is the script's folder)


BARE = """
import sys
from aiohttp import web
async def click(request):
    return web.Response(status=302, headers={"Location": "https://shop.example/item/7"})
app = web.Application()
app.router.add_get("/c/{token}", click)
try:
    import uvloop
    uvloop.install()
except ImportError:
    pass
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def ab(url: str, clients: int, requests: int) -> dict:
    out = subprocess.run(["ab", "-k", "-q", "-c", str(clients), "-n", str(requests), "-H", f"User-Agent: {CHROME}",
                          url], capture_output=True, text=True, timeout=600).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    wall = float(re.search(r"Time taken for tests:\s+([\d.]+)", out).group(1))
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = {int(p): int(ms) for p, ms in re.findall(r"^\s+(\d+)%\s+(\d+)", out, re.M)}
    return {"rps": rps, "wall": wall, "failed": failed, "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "p50": pct.get(50), "p90": pct.get(90), "p99": pct.get(99)}


def prepare_store(state: Path) -> str:
    """A tracked message with 50 links in a fresh store; a click token of its 8th link."""
    from mtad.base.keys import derive
    from mtad.mail.tracktoken import CLICK, Sealer, Token
    from mtad.store.engagement import TrackedMessage
    from mtad.store.sqlite import SqliteStore
    state.mkdir(parents=True)
    store = SqliteStore(state / "mtad.sqlite3")
    store.open()
    links = tuple(f"https://shop.example/item/{i}" for i in range(50))
    msg = TrackedMessage("0123456789ABCDEF012", "example.com", time.time() - 3600,
                         {"headers": {"message-id": "bench@example.com", "subject": "bench"}, "size": 1000,
                          "options": {"tags": ["bench"]}}, links)

    async def put() -> None:
        await store.track_message(msg)
    asyncio.run(put())
    store.close()
    return Sealer(derive(SIGNING_KEY, "tracking")).seal(Token(CLICK, msg.queue_id, "r@example.net", 7))


def accepted_config(cfg: dict, path: Path, src: str | Path) -> dict:
    """``cfg`` written to ``path`` as the mtad in ``src`` accepts it (``mtad check-config``): a key that tree does
    not know (an older tree, ``--base-rev``) is dropped and said so; any other refusal ends the bench."""
    import yaml
    while True:
        path.write_text(yaml.safe_dump(cfg))
        checked = subprocess.run([sys.executable, "-m", "mtad", "check-config", str(path)], capture_output=True,
                                 text=True, env=dict(os.environ, PYTHONPATH=str(src)), cwd=path.parent)
        if checked.returncode == 0:
            return cfg
        refusal = (checked.stderr + checked.stdout).strip()
        unknown = re.search(r"configuration error: ([\w.]+): unknown key", refusal)
        if not unknown:
            sys.exit(f"mtad in {src} refuses the bench config: {refusal}")
        *parents, leaf = unknown.group(1).split(".")
        section = cfg
        for name in parents:
            section = section.get(name) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            sys.exit(f"mtad in {src} refuses the bench config: {refusal}")
        del section[leaf]
        print(f"# mtad in {src} does not know {unknown.group(1)}: left out of its config", file=sys.stderr)


def start_mtad(work: Path, own_listener: bool, src: str | Path = REPO) -> tuple[subprocess.Popen, str, Path] | None:
    """mtad (the package in ``src``) serving tracking on the API listener, or on ``tracking.listen``; (process,
    click URL, its store), or None when that tree has no ``tracking.listen``. The store is made by that tree's
    own code (a base tree refuses a store file newer than itself)."""
    made = subprocess.run([sys.executable, __file__, "prepare-store", str(work / "state"), "--src", str(src)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        sys.exit(f"cannot prepare a store with mtad in {src}: {made.stderr.strip()}")
    token = made.stdout.strip().splitlines()[-1]
    api_port, trk_port = free_port(), free_port()
    cfg = {"hostname": "mtad.bench.test", "state_dir": str(work / "state"), "listeners": [],
           "api": {"address": f"127.0.0.1:{api_port}"}, "signing_key": SIGNING_KEY,
           "delivery": {"enabled": False}, "log": {"level": "warning"}}
    if own_listener:
        cfg["tracking"] = {"listen": f"127.0.0.1:{trk_port}", "base_url": f"http://127.0.0.1:{trk_port}"}
    cfg = accepted_config(cfg, work / "mtad.yaml", src)
    if own_listener and "listen" not in cfg.get("tracking", {}):
        return None
    log = open(work / "mtad.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(work / "mtad.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(src)), cwd=work)
    log.close()
    port = trk_port if own_listener else api_port
    wait_port(port, proc)
    return proc, f"http://127.0.0.1:{port}/c/{token}", work / "state" / "mtad.sqlite3"


def clicked(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(*) FROM events WHERE event = 'clicked'").fetchone()[0]
    finally:
        conn.close()


def per_s(recorded: int | None, r: dict) -> str:
    return f"{recorded / r['wall']:.0f}" if recorded else "-"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``): a server's cost per request, which
    the machine's load does not change as much as it changes latency."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet(db: Path, wait: float = 0.5) -> int:
    """``clicked`` events once their count has not moved for ``wait`` seconds (earlier clicks committed)."""
    last, since = clicked(db), time.monotonic()
    while time.monotonic() - since < wait:
        time.sleep(0.05)
        now = clicked(db)
        if now != last:
            last, since = now, time.monotonic()
    return last


def settled(db: Path, expect: int, wait: float = 10.0) -> int:
    """``clicked`` events once their count reaches ``expect`` or stops moving (clicks answered before their
    commit are written a moment later)."""
    deadline = time.monotonic() + wait
    last, since = clicked(db), time.monotonic()
    while last < expect and time.monotonic() < deadline:
        time.sleep(0.1)
        now = clicked(db)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
    return last


def cmd_endpoint(a: argparse.Namespace) -> None:
    import openloop
    if a.closed and shutil.which("ab") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "apache2-utils"], check=True, capture_output=True)
    rates = [float(r) for r in a.rate.split(",")] if a.rate else []
    work = Path(tempfile.mkdtemp(prefix="mtad-tracking-bench-"))
    results: dict[str, dict] = {}
    recorded: dict[str, int] = {}
    opened: list[tuple[str, openloop.Result, int | None, float]] = []
    server_cpu: dict[str, float] = {}
    load = os.getloadavg()

    def open_loop(name: str, url: str, db: Path | None, pid: int) -> None:
        port, path = int(url.split(":")[2].split("/")[0]), "/" + url.split("/", 3)[3]
        for rate in rates:
            before, cpu = quiet(db) if db else 0, cpu_seconds(pid)
            r = openloop.run(port, path, {"User-Agent": CHROME}, rate=rate, duration=a.duration,
                             connections=a.clients, processes=a.processes)
            rec = settled(db, before + r.statuses.get(302, 0)) - before if db else None
            opened.append((name, r, rec, cpu_seconds(pid) - cpu))

    try:
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)])
        try:
            wait_port(bare_port, bare)
            url = f"http://127.0.0.1:{bare_port}/c/x"
            if a.closed:
                ab(url, 20, 500)
                cpu = cpu_seconds(bare.pid)
                results["bare aiohttp 302"] = ab(url, a.clients, a.requests)
                server_cpu["bare aiohttp 302"] = cpu_seconds(bare.pid) - cpu
            open_loop("bare aiohttp 302", url, None, bare.pid)
        finally:
            bare.terminate()
            bare.wait(30)
        listeners = {"api": (("API listener", False),), "own": (("tracking.listen", True),),
                     "both": (("API listener", False), ("tracking.listen", True))}
        if a.base_rev:
            from inbound_bench import export_rev
            a.base_src = export_rev(a.base_rev, work / "base-src")
        trees = [("mtad (base) click", a.base_src)] if a.base_src else []
        trees.append(("mtad click", str(REPO)))
        runs = [(lst, t) for lst in listeners[a.listeners] for t in trees]
        for n, ((where, own), (tree, src)) in enumerate(runs):
            name = f"{tree}, {where}"
            (work / f"mtad-{n}").mkdir()
            started = start_mtad(work / f"mtad-{n}", own, src)
            if started is None:
                print(f"# {name}: that tree has no tracking.listen, not measured", file=sys.stderr)
                continue
            proc, url, db = started
            try:
                time.sleep(2.0)  # ua-parser's rules load in a thread at start
                ab(url, 20, 500) if shutil.which("ab") else None  # warm-up (caches, connections)
                spy = None
                if a.profile and own == (a.listeners == "own") and src == str(REPO):  # py-spy over mtad: raw stacks, bench/pyspy_top.py
                    spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(proc.pid), "--rate", "200", "--format",
                                            "raw", "--threads", "--nonblocking", "-o", a.profile],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(1.0)
                if a.closed:
                    before, cpu = quiet(db), cpu_seconds(proc.pid)
                    results[name] = ab(url, a.clients, a.requests)
                    recorded[name] = settled(db, before + a.requests) - before
                    server_cpu[name] = cpu_seconds(proc.pid) - cpu
                open_loop(name, url, db, proc.pid)
                if spy is not None:
                    spy.send_signal(2)
                    spy.wait(60)
            finally:
                proc.terminate()
                proc.wait(30)
        print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; after: "
              + " ".join(f"{x:.2f}" for x in os.getloadavg()))
        if results:
            print(f"\nClosed loop (saturation): {a.clients} concurrent clients (ab -k), {a.requests} requests each run")
            print("| server | requests/s | p50 ms | p90 ms | p99 ms | failed | non-2xx (302s) | clicked events |"
                  " recorded/s | server CPU µs/req |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            for name, r in results.items():
                rec = recorded.get(name)
                print(f"| {name} | {r['rps']:.0f} | {r['p50']} | {r['p90']} | {r['p99']} | {r['failed']} |"
                      f" {r['non2xx']} | {rec if rec is not None else '-'} | {per_s(rec, r)} |"
                      f" {server_cpu[name] / a.requests * 1e6:.0f} |")
        if opened:
            print(f"\nOpen loop (constant rate, latency from the intended send time): {a.clients} keep-alive"
                  f" connections over {a.processes} client processes, {a.duration:g} s per rate")
            print("| server | offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | max ms | 302s | errors |"
                  " clicked events | server CPU µs/req | client CPU µs/req |")
            print("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for name, r, rec, cpu in opened:
                print(f"| {name} | {r.offered:.0f} | {r.achieved:.0f} | {r.pct(50):.1f} | {r.pct(99):.1f} |"
                      f" {r.pct(99.9):.1f} | {r.pct(100):.1f} | {r.statuses.get(302, 0)} |"
                      f" {r.errors + sum(n for s, n in r.statuses.items() if s != 302)} |"
                      f" {rec if rec is not None else '-'} | {cpu / max(1, r.sent) * 1e6:.0f} |"
                      f" {r.cpu / max(1, r.sent) * 1e6:.0f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("rewrite")
    r.add_argument("--repeats", type=int, default=200)
    e = sub.add_parser("endpoint")
    e.add_argument("--clients", type=int, default=200)
    e.add_argument("--requests", type=int, default=20000)
    e.add_argument("--profile", help="py-spy raw profile of mtad during its run, to this file")
    e.add_argument("--rate", help="open loop: offered requests/s (comma-separated for several), e.g. 3000")
    e.add_argument("--duration", type=float, default=10.0, help="open loop: seconds per rate")
    e.add_argument("--processes", type=int, default=2, help="open loop: client processes sharing the connections")
    e.add_argument("--no-closed", dest="closed", action="store_false", help="skip the closed-loop (ab) runs")
    e.add_argument("--base-rev", help="also measure mtad as committed at REV (git archive), before/after in one run")
    e.add_argument("--base-src", help="also measure the mtad package in this folder (holding mtad/)")
    e.add_argument("--listeners", choices=("api", "own", "both"), default="both",
                   help="which mtad listener(s) to measure (API listener, tracking.listen)")
    s = sub.add_parser("prepare-store")  # internal: start_mtad's store, made by the tree under test
    s.add_argument("state")
    s.add_argument("--src", default=str(REPO))
    a = p.parse_args()
    if a.cmd == "prepare-store":
        sys.path.insert(0, a.src)  # that tree's mtad, ahead of this one's
        print(prepare_store(Path(a.state)))
        return
    {"rewrite": cmd_rewrite, "endpoint": cmd_endpoint}[a.cmd](a)


if __name__ == "__main__":
    main()
