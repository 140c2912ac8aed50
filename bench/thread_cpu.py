#!/usr/bin/env python3
"""Where a node's CPU goes during bench/drain.sh's drains, thread by thread (py-spy counts a runnable thread
waiting for a core or for the GIL as busy; /proc does not).

  python3 bench/thread_cpu.py record OUT.jsonl &   # beside a drain.sh run; stop it with SIGTERM at the end
  python3 bench/thread_cpu.py report OUT.jsonl [--profiles DIR]

``record`` reads every 0.1 s the CPU ticks (utime + stime) of each thread of every ``mtad run`` of a drain.sh
scratch folder (``mtad-drain`` in its command line) and of its DKIM worker children, and writes one JSON line per
process when it ends. ``report`` sums, per process, each thread's ticks over the intervals in which its DKIM
worker used CPU (the drains: nothing else signs) and prints them per 100 worker ticks: the worker's CPU per
message is about constant, so the ratios compare the backends' threads in one run even when the rounds sampled
differ. ``--profiles``: a drain.sh --profile folder, to name the threads (py-spy's raw stacks carry the ids)."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import sys
import time


def _ticks(pid: int) -> dict[str, int]:
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        found[tid] = int(fields[11]) + int(fields[12])
    return found


def record(path: str) -> None:
    out = open(path, "a")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    hist: dict[int, list] = {}
    cmds: dict[int, str] = {}
    while not stop:
        now, seen, procs = time.time(), set(), {}
        for p in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            procs[int(p)] = (cmd, ppid)
        for pid, (cmd, _) in procs.items():
            if "mtad-drain" not in cmd or " -m mtad run " not in cmd:
                continue
            try:
                ticks = _ticks(pid)
                for child, (ccmd, ppid) in procs.items():
                    if ppid == pid and "mtad.workers" in ccmd:
                        ticks[f"worker:{child}"] = sum(_ticks(child).values())
            except OSError:
                continue
            seen.add(pid)
            hist.setdefault(pid, []).append((now, ticks))
            cmds.setdefault(pid, cmd)
        for pid in [p for p in hist if p not in seen]:
            out.write(json.dumps({"pid": pid, "cmd": cmds[pid], "samples": hist.pop(pid)}) + "\n")
            out.flush()
        time.sleep(0.1)
    for pid, samples in hist.items():
        out.write(json.dumps({"pid": pid, "cmd": cmds[pid], "samples": samples}) + "\n")


def report(path: str, profiles: str | None) -> None:
    names: dict[str, str] = {}
    for f in glob.glob(f"{profiles}/*.txt") if profiles else ():
        for line in open(f):
            if m := re.match(r"thread \((\d+)\): ([^;]+)", line):
                names[m.group(1)] = m.group(2).strip()
    for line in open(path):
        r = json.loads(line)
        label = r["cmd"].split("--config ")[-1].split("/")[-2]
        acc: dict[str, int] = {}
        for (_, a), (_, b) in zip(r["samples"], r["samples"][1:]):
            if sum(b[k] - a[k] for k in b if k.startswith("worker:") and k in a) <= 0:
                continue
            for k in b.keys() & a.keys():
                key = "DKIM worker" if k.startswith("worker:") else (
                    "main thread" if k == str(r["pid"]) else names.get(k, f"thread {k}"))
                acc[key] = acc.get(key, 0) + b[k] - a[k]
        worker = acc.get("DKIM worker", 0)
        if not worker:
            continue
        shown = ", ".join(f"{k} {100 * v / worker:.0f}" for k, v in sorted(acc.items(), key=lambda x: -x[1])
                          if 100 * v / worker >= 1)
        print(f"{label}: {worker} worker ticks in the drains; per 100: {shown}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "record":
        record(sys.argv[2])
    elif len(sys.argv) >= 3 and sys.argv[1] == "report":
        report(sys.argv[2], sys.argv[4] if len(sys.argv) >= 5 and sys.argv[3] == "--profiles" else None)
    else:
        sys.exit(__doc__)
