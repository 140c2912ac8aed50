#!/usr/bin/env python3
"""Markdown tables from bench/run_ingress.py JSON lines: mtad beside its baselines, as ratios.

  python summarize_ingress.py RESULTS.jsonl [--mtad mtad] [--postfix postfix-hold]
                              [--haraka haraka-discard] [--sink sink]

Prints four tables:
1. throughput: median msgs/s per (size, sessions) for each server and the ratios mtad/Postfix,
   mtad/Haraka, mtad/smtp-sink, with the issue's targets checked (1 KB: >= 1.3x Postfix and >= 1x
   Haraka; 100 KB: >= 1x Postfix);
2. peak memory at the largest session count (100): PSS and RSS of each server's process tree, and
   mtad/Postfix (target: PSS <= 0.25x Postfix);
3. server CPU per message for each server, and mtad's least disturbed run;
4. details per server: spread, server CPU (% of one core, and µs of CPU per message), peak RSS/PSS,
   smtp-source's own CPU per message, CPU used by anything else on the machine, failed runs
   (smtp-source error, time-out, or fewer messages stored than got 250).
"""
import argparse
import json
import statistics
from collections import OrderedDict

TARGETS = {1024: (("postfix", 1.3), ("haraka", 1.0)), 102400: (("postfix", 1.0),)}
MEM_TARGET = 0.25
NOISY_PCT = 40  # median "other CPU%" above which a cell is flagged


def load(paths):
    groups = OrderedDict()
    for path in paths:
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                if r.get("warmup"):
                    continue
                key = (r["label"], r["size"], r["sessions"])
                groups.setdefault(key, []).append(r)
    return groups


def med(rs, field):
    return statistics.median(r[field] for r in rs)


def bad(r):
    return r["rc"] != 0 or r["timed_out"] or (r.get("stored") is not None and r["stored"] < r["msgs"])


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}x"


def size_name(size):
    return f"{size // 1024} KB" if size % 1024 == 0 else f"{size} B"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results", nargs="+")
    ap.add_argument("--mtad", default="mtad")
    ap.add_argument("--postfix", default="postfix-hold")
    ap.add_argument("--haraka", default="haraka-discard")
    ap.add_argument("--sink", default="sink")
    args = ap.parse_args()
    groups = load(args.results)
    names = {"mtad": args.mtad, "postfix": args.postfix, "haraka": args.haraka, "sink": args.sink}
    cells = sorted({(size, sess) for (_, size, sess) in groups})

    def rate(who, size, sess):
        rs = groups.get((names[who], size, sess))
        return med(rs, "msgs_per_s") if rs else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    print("### Throughput (msgs/s accepted, median of the repeats; new connection per message)\n")
    print("| size | sessions | mtad | Postfix (durable, hold) | Haraka (discard) | smtp-sink | "
          "mtad/Postfix | mtad/Haraka | mtad/smtp-sink | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, sess in cells:
        m, p, h, s = (rate(w, size, sess) for w in ("mtad", "postfix", "haraka", "sink"))
        checks = []
        for who, need in TARGETS.get(size, ()):
            got = ratio(m, {"postfix": p, "haraka": h}[who])
            label = {"postfix": "Postfix", "haraka": "Haraka"}[who]
            if got is None:
                checks.append(f"{label} ≥{need:g}x: n/a")
            else:
                checks.append(f"{label} ≥{need:g}x: {'met' if got >= need else 'MISSED'}")
        f = lambda x: "—" if x is None else f"{x:,.0f}"  # noqa: E731
        print(f"| {size_name(size)} | {sess} | {f(m)} | {f(p)} | {f(h)} | {f(s)} | {fmt_ratio(ratio(m, p))} | "
              f"{fmt_ratio(ratio(m, h))} | {fmt_ratio(ratio(m, s))} | {'; '.join(checks)} |")

    top = max((sess for _, sess in cells), default=None)
    if top is not None:
        print(f"\n### Peak memory at {top} sessions (process tree, max over the repeats)\n")
        print("| size | mtad PSS MB | Postfix PSS MB | Haraka PSS MB | smtp-sink PSS MB | mtad/Postfix PSS | "
              "mtad RSS MB | Postfix RSS MB | target (PSS ≤ 0.25x Postfix) |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        worst = None
        for size in sorted({size for size, sess in cells if sess == top}):
            def mem(who, field):
                rs = groups.get((names[who], size, top))
                return max(r[field] for r in rs) if rs else None
            mp, pp, hp, sp = (mem(w, "server_peak_pss_mb") for w in ("mtad", "postfix", "haraka", "sink"))
            mr, pr = mem("mtad", "server_peak_rss_mb"), mem("postfix", "server_peak_rss_mb")
            r = ratio(mp, pp)
            if r is not None:
                worst = r if worst is None else max(worst, r)
            f = lambda x: "—" if x is None else f"{x:,.1f}"  # noqa: E731
            verdict = "n/a" if r is None else ("met" if r <= MEM_TARGET else "MISSED")
            print(f"| {size_name(size)} | {f(mp)} | {f(pp)} | {f(hp)} | {f(sp)} | {fmt_ratio(r)} | {f(mr)} | {f(pr)} | "
                  f"{verdict} |")
        if worst is not None:
            print(f"\nPeak memory ratio at {top} sessions (mtad PSS / Postfix PSS, worst size): {worst:.2f}x")

    print("\n### Server CPU per accepted message (µs, median; less sensitive to other work than msgs/s)\n")
    print("| size | sessions | mtad | Postfix | Haraka | smtp-sink | mtad/Postfix | mtad/Haraka | "
          "quietest mtad run: msgs/s (other CPU%) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for size, sess in cells:
        def cpu(who):
            rs = groups.get((names[who], size, sess))
            return statistics.median(1e6 * r["server_cpu_s"] / r["msgs"] for r in rs) if rs else None
        m, p, h, k = (cpu(w) for w in ("mtad", "postfix", "haraka", "sink"))
        rs = groups.get((names["mtad"], size, sess)) or []
        quiet = min(rs, key=lambda r: r.get("other_cpu_pct", 0)) if rs else None
        qtxt = f"{quiet['msgs_per_s']:,.0f} ({quiet.get('other_cpu_pct', 0):.0f}%)" if quiet else "—"
        f = lambda x: "—" if x is None else f"{x:,.0f}"  # noqa: E731
        print(f"| {size_name(size)} | {sess} | {f(m)} | {f(p)} | {f(h)} | {f(k)} | {fmt_ratio(ratio(m, p))} | "
              f"{fmt_ratio(ratio(m, h))} | {qtxt} |")

    print("\n### Details per server\n")
    print("| server | size | sessions | msgs/run | msgs/s median | min-max | server CPU% | server CPU µs/msg | "
          "peak RSS MB | peak PSS MB | procs | client CPU µs/msg | other CPU% | stored ok | bad runs |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    noisy = []
    order = [names[w] for w in ("sink", "postfix", "haraka", "mtad")]
    keys = sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 99, k[0], k[1], k[2]))
    for key in keys:
        label, size, sess = key
        rs = groups[key]
        mps = [r["msgs_per_s"] for r in rs]
        cpu_us = statistics.median(1e6 * r["server_cpu_s"] / r["msgs"] for r in rs)
        cli_us = statistics.median(1e6 * r["client_cpu_s"] / r["msgs"] for r in rs)
        stored = [r.get("stored") for r in rs]
        stored_txt = "—" if all(s is None for s in stored) else (
            "yes" if all(s is not None and s >= r["msgs"] for s, r in zip(stored, rs)) else
            "NO: " + ",".join(f"{s}/{r['msgs']}" for s, r in zip(stored, rs)))
        nbad = sum(1 for r in rs if bad(r))
        other = statistics.median(r.get("other_cpu_pct", 0) for r in rs)
        if other > NOISY_PCT:
            noisy.append(f"{label} {size_name(size)}/{sess}")
        print(f"| {label} | {size_name(size)} | {sess} | {rs[0]['msgs']} | {statistics.median(mps):,.0f} | "
              f"{min(mps):,.0f}-{max(mps):,.0f} | {med(rs, 'server_cpu_pct'):.0f} | {cpu_us:,.0f} | "
              f"{max(r['server_peak_rss_mb'] for r in rs):.1f} | {max(r['server_peak_pss_mb'] for r in rs):.1f} | "
              f"{max(r['server_procs_at_peak'] for r in rs)} | {cli_us:,.0f} | {other:.0f} | {stored_txt} | {nbad}/{len(rs)} |")
    print("\nserver CPU% and other CPU% are % of one core (200% = the whole 2-core machine). other CPU = the "
          "machine's busy time used by neither the server's processes nor smtp-source: kernel work for loopback "
          "TCP, and anything else running.")
    if noisy:
        print(f"\nWARNING: other work used more than {NOISY_PCT}% of a core during: {', '.join(noisy)}. "
              "Those figures (and ratios built on them) are skewed; rerun on an idle machine.")


if __name__ == "__main__":
    main()
