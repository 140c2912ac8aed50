#!/usr/bin/env python3
"""Drive smtp-source (from the postfix package) against one running SMTP server and record
throughput, server CPU and server memory. Adapted from ../shared/bench/run_ingress.py.

For each (size, sessions) pair: one warm-up/calibration run of --warmup messages, then --repeats
measured runs of N messages, N chosen so a run lasts about --target-s seconds (clamped to
[--min-msgs, --max-msgs]). Every smtp-source run is killed after --run-timeout seconds, so a run is
bounded in count and in time. smtp-source opens a new connection per message (no -d), like the
shared reference figures.

Server accounting: the process tree rooted at --pid (or the PID read from --pidfile).
CPU = delta of sum(utime+stime+cutime+cstime) over the live tree (cutime covers children that exited
and were reaped, e.g. Postfix's smtpd). Memory = peak of the summed RSS and of the summed PSS of the
tree, sampled every 100 ms (PSS splits shared pages between processes, so it does not overcount a
multi-process server like Postfix). Client CPU = rusage of the smtp-source child.

Additions over the shared script:
  --spec FILE       several servers (all running), driven in turn inside each cell: for every repeat
                    each server gets one run, in an order rotated per repeat, so slow drifts of the
                    machine's speed (other work, thermal) hit every server alike. One line per server:
                    label|port|pid|pidfile|stored-cmd|between-cmd[|db-pid|db-xacts-cmd]: a server whose store
                    is a database server (mtad-pg) names that server's root PID (its tree's CPU is recorded as
                    db_cpu_s) and a command printing its committed transactions (recorded as the delta db_xacts).
  --prewarm N       N unmeasured messages first (1 KB, 20 sessions): Haraka's JIT needs a few thousand
                    messages before it reaches its speed; every server gets the same.
  --stored-cmd CMD  run after every run (before --between); prints how many messages the server
                    holds durably. Recorded as "stored" so the summary can show that every message that
                    got 250 was really queued (Postfix hold queue files, mtad's messages rows).
  --quiet-wait S    before each measured run, wait up to S seconds until the machine is idle (other
                    work on a shared 2-core machine skews figures); each record also has
                    machine_busy_pct and other_cpu_pct (CPU used by neither the server nor smtp-source).
  peak memory is sampled every 100 ms (200 ms in the shared script).
"""
import argparse
import json
import os
import statistics
import subprocess
import threading
import time

TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def proc_table():
    table = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2:].split()
        # after comm: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14) ... rss(21)
        table[int(d)] = {
            "ppid": int(rest[1]),
            "cpu": sum(int(x) for x in rest[11:15]),
            "rss": int(rest[21]) * PAGE,
        }
    return table


def system_cpu():
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle + iowait
    return sum(v[:8]) - idle, sum(v[:8])


def wait_quiet(max_s, threshold_pct):
    """Before a measured run: wait (at most max_s) until the machine is nearly idle, so that other
    work on the machine (a test suite, a build) disturbs the figure less. Returns (waited s, busy %)."""
    t0 = time.monotonic()
    while True:
        a = system_cpu()
        time.sleep(0.5)
        b = system_cpu()
        pct = 100 * (b[0] - a[0]) / TCK / 0.5
        waited = time.monotonic() - t0
        if pct <= threshold_pct or waited >= max_s:
            return round(waited, 1), round(pct, 1)


def tree(root, table):
    kids = {}
    for pid, t in table.items():
        kids.setdefault(t["ppid"], []).append(pid)
    out, todo = [], list(root) if isinstance(root, tuple) else [root]  # a tuple: several nodes, one tree each
    while todo:
        p = todo.pop()
        if p in table:
            out.append(p)
            todo.extend(kids.get(p, []))
    return out


def tree_cpu_rss(root):
    t = proc_table()
    pids = tree(root, t)
    return sum(t[p]["cpu"] for p in pids) / TCK, sum(t[p]["rss"] for p in pids), pids


def pss_of(pids):
    """Sum of PSS (shared pages split between sharers) over the pids, bytes."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            pass
    return total


class MemSampler(threading.Thread):
    def __init__(self, root, every=0.1):
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.peak, self.peak_procs, self.peak_pss = 0, 0, 0
        self.stop_ev = threading.Event()

    def sample(self):
        _, rss, pids = tree_cpu_rss(self.root)
        if rss > self.peak:
            self.peak, self.peak_procs = rss, len(pids)
        self.peak_pss = max(self.peak_pss, pss_of(pids))

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.every)
        self.sample()


def shell(cmd):
    return subprocess.run(cmd, shell=True, check=False, capture_output=True, text=True).stdout.strip()


class Target:
    """One server to drive: its label, port, process-tree root, and optional stored/between commands."""

    def __init__(self, label, port, root, stored_cmd=None, between=None, db_root=None, db_xacts=None):
        # port "2529+2531" and root (p1, p2): several nodes of one server, driven together (ingress.sh --pg-nodes)
        self.label, self.ports, self.root = label, [int(x) for x in str(port).split("+")], root
        self.stored_cmd, self.between = stored_cmd or None, between or None
        # a server whose store is a database server (mtad-pg): that server's process tree (its CPU is recorded
        # apart as db_cpu_s) and a command printing its committed-transaction counter (db_xacts delta)
        self.db_root = int(db_root) if db_root else None
        self.db_xacts = db_xacts or None


def read_root(pid, pidfile):
    if "+" in str(pid):
        return tuple(int(x) for x in pid.split("+"))
    if pidfile:
        with open(pidfile) as f:
            return int(f.read().split()[0])
    return int(pid)


def one_run(args, t, size, sessions, count, warmup=False):
    root = t.root
    waited, idle_busy = (0.0, None) if warmup or not args.quiet_wait else wait_quiet(args.quiet_wait, args.quiet_pct)
    # several nodes (ports a+b): one smtp-source per node, the messages and sessions split evenly between them
    cmds = []
    for i, port in enumerate(t.ports):
        n, k = count // len(t.ports) + (i < count % len(t.ports)), max(1, sessions // len(t.ports))
        cmd = [args.smtp_source, "-s", str(k), "-m", str(n), "-l", str(size),
               "-f", "a@example.com", "-t", "b@example.net", "-M", "bench.localdomain"]
        if args.reuse:
            cmd.append("-d")
        cmds.append(cmd + [f"127.0.0.1:{port}"])
    xacts0 = shell(t.db_xacts) if t.db_xacts and not warmup else ""
    cpu0, _, _ = tree_cpu_rss(root)
    db0 = tree_cpu_rss(t.db_root)[0] if t.db_root else 0.0
    sys0 = system_cpu()
    sampler = MemSampler(root)
    sampler.start()
    t0 = time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for cmd in cmds]
    killer = threading.Timer(args.run_timeout, lambda: [p.kill() for p in procs])
    killer.start()
    client, status = 0.0, 0
    for p in procs:
        _, st, ru = os.wait4(p.pid, 0)
        client += ru.ru_utime + ru.ru_stime
        status = status or st
    wall = time.monotonic() - t0
    killer.cancel()
    timed_out = wall >= args.run_timeout
    err = "".join(p.stderr.read().decode(errors="replace") for p in procs)
    time.sleep(0.05)  # let the last replies' work be accounted
    sampler.stop_ev.set()
    sampler.join()
    cpu1, _, _ = tree_cpu_rss(root)
    db1 = tree_cpu_rss(t.db_root)[0] if t.db_root else 0.0
    sys1 = system_cpu()
    busy = (sys1[0] - sys0[0]) / TCK
    rec = {
        "label": t.label,
        "nodes": len(t.ports),
        "size": size,
        "sessions": sessions,
        "reuse_conn": args.reuse,
        "warmup": warmup,
        "msgs": count,
        "wall_s": round(wall, 4),
        "msgs_per_s": round(count / wall, 1),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_pct": round(100 * (cpu1 - cpu0) / wall, 1),
        "server_peak_rss_mb": round(sampler.peak / 2**20, 1),
        "server_peak_pss_mb": round(sampler.peak_pss / 2**20, 1),
        "server_procs_at_peak": sampler.peak_procs,
        "client_cpu_s": round(client, 3),
        # whole machine: busy % of one core; "other" = neither the server tree nor smtp-source
        # (kernel softirq work for loopback TCP, and anything else running on the machine)
        "machine_busy_pct": round(100 * busy / wall, 1),
        "other_cpu_pct": round(100 * (busy - (cpu1 - cpu0) - client) / wall, 1),
        "quiet_wait_s": waited,
        "busy_before_pct": idle_busy,
        "rc": os.waitstatus_to_exitcode(status),
        "timed_out": timed_out,
        "stderr": err[-400:],
    }
    if t.db_root:
        rec["db_cpu_s"] = round(db1 - db0, 3)
        # the database server's CPU is neither the server tree's nor smtp-source's: take it out of "other"
        rec["other_cpu_pct"] = round(rec["other_cpu_pct"] - 100 * (db1 - db0) / wall, 1)
    if xacts0.isdigit():
        xacts1 = shell(t.db_xacts)
        rec["db_xacts"] = int(xacts1) - int(xacts0) if xacts1.isdigit() else None
    if t.stored_cmd:
        out = shell(t.stored_cmd)
        rec["stored"] = int(out) if out.isdigit() else None
    if t.between:
        subprocess.run(t.between, shell=True, check=False)
    return rec


def report(t, size, sessions, n, runs):
    mps = [r["msgs_per_s"] for r in runs]
    bad = [r for r in runs if r["rc"] != 0 or r["timed_out"]
           or (r.get("stored") is not None and r["stored"] < r["msgs"])]
    print(f"  {t.label:15s} {size // 1024:4d} KB {sessions:4d} sessions: "
          f"{statistics.median(mps):8,.0f} msgs/s (n={n} x{len(runs)}, "
          f"cpu {statistics.median(r['server_cpu_pct'] for r in runs):.0f}%, "
          f"pss {max(r['server_peak_pss_mb'] for r in runs):.0f} MB, "
          f"other {statistics.median(r['other_cpu_pct'] for r in runs):.0f}%)"
          + (f"  BAD RUNS: {len(bad)}: {bad[0]['stderr'][-200:]!r}" if bad else ""),
          flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--label")
    ap.add_argument("--port", type=int)
    ap.add_argument("--spec", help="file of servers to drive in turn within each cell, one per line: "
                                   "label|port|pid|pidfile|stored-cmd|between-cmd (empty fields allowed)")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--pidfile")
    ap.add_argument("--sizes", default="1024,102400")
    ap.add_argument("--sessions", default="1,20,100")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--prewarm", type=int, default=0,
                    help="unmeasured messages sent once at the start (1 KB, 20 sessions): JIT and caches warm")
    ap.add_argument("--target-s", type=float, default=4.0)
    ap.add_argument("--min-msgs", type=int, default=300)
    ap.add_argument("--max-msgs", type=int, default=12000)
    ap.add_argument("--run-timeout", type=float, default=90.0)
    ap.add_argument("--reuse", action="store_true", help="smtp-source -d: many messages per connection")
    ap.add_argument("--between", help="shell command run (unmeasured) after each run, e.g. to empty a queue")
    ap.add_argument("--stored-cmd", help="shell command printing how many messages the server has stored")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="before each measured run wait up to this many seconds for the machine to be idle")
    ap.add_argument("--quiet-pct", type=float, default=25,
                    help="'idle' = whole machine busy below this %% of one core (the server is idle then)")
    ap.add_argument("--smtp-source", default="smtp-source")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    targets = []
    if args.spec:
        with open(args.spec) as f:
            for line in f:
                if line.strip():
                    label, port, pid, pidfile, stored, between, db_root, db_xacts = (
                        line.rstrip("\n").split("|") + [""] * 8)[:8]
                    targets.append(Target(label, port, read_root(pid, pidfile), stored, between, db_root, db_xacts))
    else:
        if not (args.label and args.port and (args.pid or args.pidfile)):
            ap.error("--spec, or --label, --port and --pid/--pidfile")
        targets.append(Target(args.label, args.port, read_root(args.pid, args.pidfile),
                              args.stored_cmd, args.between))

    for t in targets:
        if args.prewarm:
            one_run(args, t, 1024, 20, args.prewarm, warmup=True)
    with open(args.out, "a") as out:
        for size in [int(x) for x in args.sizes.split(",")]:
            for sessions in [int(x) for x in args.sessions.split(",")]:
                counts = {}
                for t in targets:
                    w = one_run(args, t, size, sessions, max(args.warmup, sessions), warmup=True)
                    n = int(w["msgs_per_s"] * args.target_s)
                    counts[t.label] = max(args.min_msgs, min(args.max_msgs, n), sessions)
                runs = {t.label: [] for t in targets}
                for rep in range(args.repeats):
                    k = rep % len(targets)  # rotate the order so no server always runs first
                    for t in targets[k:] + targets[:k]:
                        r = one_run(args, t, size, sessions, counts[t.label])
                        out.write(json.dumps(r) + "\n")
                        out.flush()
                        runs[t.label].append(r)
                for t in targets:
                    report(t, size, sessions, counts[t.label], runs[t.label])


if __name__ == "__main__":
    main()
