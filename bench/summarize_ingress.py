#!/usr/bin/env python3
"""Markdown tables from bench/run_ingress.py JSON lines: mtad beside its baselines, as ratios.

  python summarize_ingress.py RESULTS.jsonl [--mtad mtad] [--postfix postfix-hold]
                              [--haraka haraka-discard] [--sink sink] [--base base-mtad]

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

When the results hold a second mtad (label ``base-mtad``: bench/ingress.sh --base-rev/--base-src, the tree
before a change measured in the same rotation), the tables gain its column and the ratio mtad/base-mtad,
and a fifth table compares the two per cell: the ratio of the medians, the ratios of each repeat's pair of
runs, the run-to-run spread (the larger (max-min)/median of the two), and whether mtad is slower than
base-mtad by more than that spread.
"""
import argparse
import json
import statistics
from collections import OrderedDict
from pathlib import Path
import sys

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab import compare  # noqa: E402

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
    ap.add_argument("--base", default="base-mtad", help="label of the base tree's mtad (before/after)")
    ap.add_argument("--pg", default="mtad-pg", help="label of mtad on PostgreSQL (bench/ingress.sh --pg)")
    args = ap.parse_args()
    groups = load(args.results)
    names = {"mtad": args.mtad, "postfix": args.postfix, "haraka": args.haraka, "sink": args.sink,
             "base": args.base}
    has_base = any(label == args.base for label, _, _ in groups)
    bcol = lambda text: text if has_base else ""  # noqa: E731  (columns only shown with a base-mtad)
    cells = sorted({(size, sess) for (_, size, sess) in groups})

    def rate(who, size, sess):
        rs = groups.get((names[who], size, sess))
        return med(rs, "msgs_per_s") if rs else None

    def ratio(a, b):
        return a / b if a is not None and b else None

    print("### Throughput (msgs/s accepted, median of the repeats; new connection per message)\n")
    print(f"| size | sessions | mtad | {bcol('base-mtad | ')}Postfix (durable, hold) | Haraka (discard) | smtp-sink | "
          f"mtad/Postfix | mtad/Haraka | mtad/smtp-sink | {bcol('mtad/base-mtad | ')}target |")
    print(f"|---|---:|---:|{bcol('---:|')}---:|---:|---:|---:|---:|---:|{bcol('---:|')}---|")
    for size, sess in cells:
        m, p, h, s, b = (rate(w, size, sess) for w in ("mtad", "postfix", "haraka", "sink", "base"))
        checks = []
        for who, need in TARGETS.get(size, ()):
            got = ratio(m, {"postfix": p, "haraka": h}[who])
            label = {"postfix": "Postfix", "haraka": "Haraka"}[who]
            if got is None:
                checks.append(f"{label} ≥{need:g}x: n/a")
            else:
                checks.append(f"{label} ≥{need:g}x: {'met' if got >= need else 'MISSED'}")
        f = lambda x: "—" if x is None else f"{x:,.0f}"  # noqa: E731
        print(f"| {size_name(size)} | {sess} | {f(m)} | {bcol(f(b) + ' | ')}{f(p)} | {f(h)} | {f(s)} | "
              f"{fmt_ratio(ratio(m, p))} | {fmt_ratio(ratio(m, h))} | {fmt_ratio(ratio(m, s))} | "
              f"{bcol(fmt_ratio(ratio(m, b)) + ' | ')}{'; '.join(checks)} |")

    top = max((sess for _, sess in cells), default=None)
    if top is not None:
        print(f"\n### Peak memory at {top} sessions (process tree, max over the repeats)\n")
        print(f"| size | mtad PSS MB | {bcol('base-mtad PSS MB | ')}Postfix PSS MB | Haraka PSS MB | "
              f"smtp-sink PSS MB | mtad/Postfix PSS | {bcol('mtad/base-mtad PSS | ')}"
              "mtad RSS MB | Postfix RSS MB | target (PSS ≤ 0.25x Postfix) |")
        print(f"|---|---:|{bcol('---:|')}---:|---:|---:|---:|{bcol('---:|')}---:|---:|---|")
        worst = None
        for size in sorted({size for size, sess in cells if sess == top}):
            def mem(who, field):
                rs = groups.get((names[who], size, top))
                return max(r[field] for r in rs) if rs else None
            mp, pp, hp, sp = (mem(w, "server_peak_pss_mb") for w in ("mtad", "postfix", "haraka", "sink"))
            mr, pr = mem("mtad", "server_peak_rss_mb"), mem("postfix", "server_peak_rss_mb")
            bp = mem("base", "server_peak_pss_mb")
            r = ratio(mp, pp)
            if r is not None:
                worst = r if worst is None else max(worst, r)
            f = lambda x: "—" if x is None else f"{x:,.1f}"  # noqa: E731
            verdict = "n/a" if r is None else ("met" if r <= MEM_TARGET else "MISSED")
            print(f"| {size_name(size)} | {f(mp)} | {bcol(f(bp) + ' | ')}{f(pp)} | {f(hp)} | {f(sp)} | {fmt_ratio(r)} | "
                  f"{bcol(fmt_ratio(ratio(mp, bp)) + ' | ')}{f(mr)} | {f(pr)} | {verdict} |")
        if worst is not None:
            print(f"\nPeak memory ratio at {top} sessions (mtad PSS / Postfix PSS, worst size): {worst:.2f}x")

    print("\n### Server CPU per accepted message (µs, median; less sensitive to other work than msgs/s)\n")
    print(f"| size | sessions | mtad | {bcol('base-mtad | ')}Postfix | Haraka | smtp-sink | mtad/Postfix | "
          f"mtad/Haraka | {bcol('mtad/base-mtad | ')}quietest mtad run: msgs/s (other CPU%) |")
    print(f"|---|---:|---:|{bcol('---:|')}---:|---:|---:|---:|---:|{bcol('---:|')}---|")
    for size, sess in cells:
        def cpu(who):
            rs = groups.get((names[who], size, sess))
            return statistics.median(1e6 * r["server_cpu_s"] / r["msgs"] for r in rs) if rs else None
        m, p, h, k, b = (cpu(w) for w in ("mtad", "postfix", "haraka", "sink", "base"))
        rs = groups.get((names["mtad"], size, sess)) or []
        quiet = min(rs, key=lambda r: r.get("other_cpu_pct", 0)) if rs else None
        qtxt = f"{quiet['msgs_per_s']:,.0f} ({quiet.get('other_cpu_pct', 0):.0f}%)" if quiet else "—"
        f = lambda x: "—" if x is None else f"{x:,.0f}"  # noqa: E731
        print(f"| {size_name(size)} | {sess} | {f(m)} | {bcol(f(b) + ' | ')}{f(p)} | {f(h)} | {f(k)} | "
              f"{fmt_ratio(ratio(m, p))} | {fmt_ratio(ratio(m, h))} | {bcol(fmt_ratio(ratio(m, b)) + ' | ')}{qtxt} |")

    print("\n### Details per server\n")
    print("| server | size | sessions | msgs/run | msgs/s median | min-max | server CPU% | server CPU µs/msg | "
          "peak RSS MB | peak PSS MB | procs | client CPU µs/msg | other CPU% | stored ok | bad runs |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    noisy = []
    order = [names[w] for w in ("sink", "postfix", "haraka", "mtad", "base")]
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
    if has_base:
        before_after(groups, cells, names["mtad"], names["base"])
    base_pg = names["base"] + "-pg"  # the base tree on PostgreSQL (ingress.sh --pg with --base-rev/--base-src)
    for pg in sorted({label for label, _, _ in groups
                      if label in (args.pg, base_pg) or label.startswith(args.pg + "-x")}):
        postgresql(groups, cells, names["mtad"], pg, names["postfix"])  # mtad-pg, and mtad-pg-xN (N nodes)
    if any(label == base_pg for label, _, _ in groups):
        before_after(groups, cells, args.pg, base_pg)


def postgresql(groups, cells, mtad, pg, postfix):
    """mtad on PostgreSQL beside mtad on SQLite and Postfix: rates, ratios, CPU per message of mtad and of the
    database server, and the database's committed transactions per accepted message."""
    nodes = max((r.get("nodes", 1) for (label, _, _), rs in groups.items() if label == pg for r in rs), default=1)
    print(f"\n### mtad on PostgreSQL ({pg}{f', {nodes} nodes on one database' if nodes > 1 else ''}) beside mtad on SQLite and Postfix (same run, same rotation)\n")
    print(f"| size | sessions | {pg} msgs/s | {mtad} msgs/s | Postfix msgs/s | {pg}/Postfix | {pg}/{mtad} | "
          f"CPU µs/msg: {pg} | PostgreSQL | {pg}+PostgreSQL | {mtad} | Postfix | DB commits/msg | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    f = lambda x, d=0: "—" if x is None else f"{x:,.{d}f}"  # noqa: E731
    for size, sess in cells:
        g, m, p = (groups.get((who, size, sess)) for who in (pg, mtad, postfix))
        if not g:
            continue
        rate = lambda rs: med(rs, "msgs_per_s") if rs else None  # noqa: E731
        cpu = lambda rs, k="server_cpu_s": (statistics.median(1e6 * r.get(k, 0) / r["msgs"] for r in rs)  # noqa: E731
                                          if rs else None)
        rg, rm, rp = rate(g), rate(m), rate(p)
        cg, cdb, cm, cp = cpu(g), cpu(g, "db_cpu_s"), cpu(m), cpu(p)
        xs = [r["db_xacts"] / r["msgs"] for r in g if r.get("db_xacts") is not None]
        ratio = lambda a, b: a / b if a is not None and b else None  # noqa: E731
        target = "—"
        if size == 1024 and sess == 20:
            r = ratio(rg, rp)
            target = "Postfix ≥1x: " + ("n/a" if r is None else "met" if r >= 1 else "MISSED")
        print(f"| {size_name(size)} | {sess} | {f(rg)} | {f(rm)} | {f(rp)} | {fmt_ratio(ratio(rg, rp))} | "
              f"{fmt_ratio(ratio(rg, rm))} | {f(cg)} | {f(cdb)} | {f(None if cg is None else cg + cdb)} | {f(cm)} | "
              f"{f(cp)} | {f(statistics.median(xs) if xs else None, 2)} | {target} |")
    print(f"\nCPU µs/msg: {pg} = the mtad process{'es of all nodes together' if nodes > 1 else ''}; PostgreSQL = the database server's process tree (postmaster and "
          "backends) during the run; DB commits/msg = pg_stat_database.xact_commit delta over the run / accepted "
          "messages: every transaction the database committed, the writer's group commits and the readers' "
          "(issue 12 target: ≤ 1 database round trip per accepted message, amortised by group commit).")


def runs_txt(rs):
    mps = [r["msgs_per_s"] for r in rs]
    return f"{statistics.median(mps):,.0f} ({min(mps):,.0f}-{max(mps):,.0f})"


def before_after(groups, cells, new, base):
    """The fifth table: mtad (this tree) against base-mtad (the tree before), cell by cell, in one run."""
    print(f"\n### Before/after: {new} against {base} (same run, same rotation)\n")
    print(f"| size | sessions | {new} msgs/s (min-max) | {base} msgs/s (min-max) | {new}/{base} | "
          f"per-repeat ratios | spread | verdict | CPU µs/msg {new}/{base} |")
    print("|---|---:|---:|---:|---:|---|---:|---|---:|")
    slower, unread = [], []
    for size, sess in cells:
        a, b = groups.get((new, size, sess)), groups.get((base, size, sess))
        if not a or not b:
            continue
        c = compare([x["msgs_per_s"] for x in a], [y["msgs_per_s"] for y in b]) if med(b, "msgs_per_s") else None
        r = c.ratio if c else None
        pairs = c.per_round if c else []  # run i of each was driven in the same repeat, minutes apart at most
        cpu_a = statistics.median(1e6 * x["server_cpu_s"] / x["msgs"] for x in a)
        cpu_b = statistics.median(1e6 * y["server_cpu_s"] / y["msgs"] for y in b)
        cell = f"{size_name(size)}/{sess}"
        if c is None:
            verdict = "n/a"
        elif c.status == "single":
            verdict = "no spread (1 repeat)"
            unread.append(cell)
        else:
            verdict = c.verdict
            if c.status == "slower":
                slower.append(cell)
        sp = c.spread if c else 0.0
        print(f"| {size_name(size)} | {sess} | {runs_txt(a)} | {runs_txt(b)} | {fmt_ratio(r)} | "
              f"{', '.join(f'{p:.2f}' for p in pairs)} | {f'±{sp:.0%}' if len(pairs) > 1 else '—'} | {verdict} | "
              f"{fmt_ratio(cpu_a / cpu_b if cpu_b else None)} |")
    print(f"\nspread = the larger run-to-run spread (max-min)/median of {new} and {base} in the cell; "
          f"a cell is slower by more than the spread when {new}/{base} < 1 - spread. CPU µs/msg moves less "
          "with other work on the machine than msgs/s: a ratio above 1 there means more CPU per message.")
    if slower:
        print(f"\nBEFORE/AFTER: {new} slower than {base} by more than the spread in: {', '.join(slower)}")
    elif unread:
        print(f"\nBEFORE/AFTER: one repeat only in {', '.join(unread)}: no spread to judge by "
              "(run without --quick, or --repeats 3)")
    else:
        print(f"\nBEFORE/AFTER: no cell slower than {base} by more than the spread")


if __name__ == "__main__":
    main()
