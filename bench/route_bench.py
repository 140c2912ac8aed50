"""Route matching cost per recipient: mtad's RouteTable beside a plain loop over Python regexes.

    python bench/route_bench.py [--samples 20000] [--rounds 3] [--seed 1]

Routes are random but realistic: exact addresses, ``.*@domain``, ``[^@]+@domain``, prefixes with
a capture (``support-(.*)@domain``), named captures, a few match_header routes and a catch_all.
Recipients are three quarters addresses some route names and one quarter strangers. Both sides
walk the routes in priority order and end at the first matching route with stop(); the plain loop
does no capture expansion, so it is flattered. Each figure is the median of ``--rounds`` rounds,
so that another process stealing the CPU during one round does not decide the result.
"""

from __future__ import annotations

import argparse
import gc
import random
import re
import string
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.inbound.router import Route, RouteTable  # noqa: E402


def word(rng: random.Random, n: int) -> str:
    return "".join(rng.choices(string.ascii_lowercase, k=n))


def make_routes(n: int, rng: random.Random) -> tuple[list[Route], list[str]]:
    routes: list[Route] = []
    recipients: list[str] = []
    for i in range(n - 1):
        user, domain = word(rng, rng.randint(4, 9)), f"{word(rng, rng.randint(5, 10))}.{rng.choice(['com', 'org', 'io'])}"
        kind = i % 10
        esc = re.escape(domain)
        if kind < 4:
            expr, rcpt = f"match_recipient('{re.escape(user)}@{esc}')", f"{user}@{domain}"
        elif kind < 6:
            expr, rcpt = f"match_recipient('.*@{esc}')", f"{word(rng, 6)}@{domain}"
        elif kind == 6:
            expr, rcpt = f"match_recipient('[^@]+@{esc}')", f"{word(rng, 6)}@{domain}"
        elif kind < 9:
            expr, rcpt = f"match_recipient('{user}-(.*)@{esc}')", f"{user}-{word(rng, 5)}@{domain}"
        else:
            expr = f"match_recipient('(?P<user>{user}[0-9]+)@(?P<domain>{esc})') and match_header('Subject', 'ticket')"
            rcpt = f"{user}42@{domain}"
        action = ("forward('http://app.example/in/\\1')" if kind in (7, 8)
                  else f"forward('http://app.example/{i}')")
        actions = (action, "stop()") if rng.random() < 0.5 else (action,)
        routes.append(Route(str(i), rng.randint(0, 100), "", expr, actions))
        recipients.append(rcpt)
    routes.append(Route("catch-all", 1000, "", "catch_all()", ("forward('http://app.example/other')",)))
    return routes, recipients


def plain_loop(routes: list[Route]):
    """What a router without an index does: every route's regexes, in order, per recipient."""
    compiled = []
    for r in sorted(routes, key=lambda r: r.priority):
        pats = [re.compile(p, re.I) for p in re.findall(r"match_recipient\('([^']*)'\)", r.expression)]
        hdrs = [(h, re.compile(p, re.I)) for h, p in re.findall(r"match_header\('([^']*)', '([^']*)'\)", r.expression)]
        compiled.append((pats, hdrs, "catch_all" in r.expression, "stop()" in r.actions, r))

    def evaluate(recipient: str, headers: list[tuple[str, str]]):
        out = []
        for pats, hdrs, catch_all, stop, route in compiled:
            if catch_all and out:
                continue
            if all(p.match(recipient) for p in pats) and all(
                    any(p.search(v) for k, v in headers if k.lower() == h.lower()) for h, p in hdrs):
                out.append(route)
                if stop:
                    break
        return out
    return evaluate


def measure(fn, recipients: list[str], headers, rounds: int) -> tuple[float, float]:
    """Median over rounds of (p50, p99) in µs per recipient."""
    results = []
    for _ in range(rounds):
        times = []
        gc.collect()
        for rcpt in recipients:
            t = time.perf_counter_ns()
            fn(rcpt, headers)
            times.append(time.perf_counter_ns() - t)
        times.sort()
        results.append((times[len(times) // 2] / 1000, times[int(len(times) * 0.99)] / 1000))
    p50s, p99s = sorted(r[0] for r in results), sorted(r[1] for r in results)
    return p50s[rounds // 2], p99s[rounds // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    headers = [("From", "a@b.example"), ("Subject", "About ticket 42")]
    print(f"{'routes':>7} {'build ms':>9} {'mtad p50 µs':>12} {'mtad p99 µs':>12} {'loop p50 µs':>12} {'loop p99 µs':>12}")
    for n in (10, 1000, 10000):
        routes, known = make_routes(n, rng)
        sample = [rng.choice(known) if rng.random() < 0.75 else f"{word(rng, 7)}@{word(rng, 8)}.net"
                  for _ in range(args.samples)]
        t = time.perf_counter()
        table = RouteTable(routes)
        build = (time.perf_counter() - t) * 1000
        for rcpt in sample[:2000]:  # warm RE2's lazily built DFA states, as a running daemon has them
            table.evaluate(rcpt, headers)
        loop = plain_loop(routes)
        m50, m99 = measure(table.evaluate, sample, headers, args.rounds)
        l50, l99 = measure(loop, sample[: max(500, args.samples // (n // 100 or 1))], headers, args.rounds)
        print(f"{n:>7} {build:>9.1f} {m50:>12.1f} {m99:>12.1f} {l50:>12.1f} {l99:>12.1f}")


if __name__ == "__main__":
    main()
