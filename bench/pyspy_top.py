#!/usr/bin/env python3
"""Rank where a py-spy profile spends its samples: per thread, self time by function, inclusive time
by function, self time by source file.

  python pyspy_top.py PROFILE.txt [--top 30] [--thread-filter SUBSTR]

PROFILE.txt is py-spy's collapsed format (``py-spy record --format raw --threads``): one stack per line,
frames separated by ';' (outermost first), then a space and the sample count. With --threads the first
frame names the thread. Percentages are of all samples (of the filtered threads).
"""
import argparse
import re
from collections import Counter

_LOC = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def short(frame: str, keep_line: bool = False) -> str:
    m = _LOC.match(frame)
    if not m:
        return frame
    path = m.group("file")
    for marker in ("site-packages/", "lib/python3.11/", "/work/main/", "/mtad-src/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    line = f":{m.group('line')}" if keep_line and m.group("line") else ""
    return f"{m.group('func')} ({path}{line})"


def file_of(frame: str) -> str:
    m = _LOC.match(frame)
    return short(frame).rsplit("(", 1)[1].rstrip(")") if m else frame


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("profile")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--thread-filter", default="")
    args = ap.parse_args()
    stacks: list[tuple[list[str], int]] = []
    threads: Counter = Counter()
    with open(args.profile) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, n = line.rpartition(" ")
            frames = stack.split(";")
            count = int(n)
            thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
            threads[thread] += count
            if args.thread_filter and args.thread_filter not in stack:
                continue
            stacks.append((frames, count))
    total = sum(n for _, n in stacks) or 1
    print(f"samples: {sum(threads.values())} in all threads; {total} after the filter\n")
    print("## Threads")
    for t, n in threads.most_common():
        print(f"{100 * n / sum(threads.values()):6.1f}%  {t}")
    selfc: Counter = Counter()
    incl: Counter = Counter()
    files: Counter = Counter()
    for frames, n in stacks:
        leaf = frames[-1]
        selfc[short(leaf, keep_line=False)] += n
        files[file_of(leaf)] += n
        for fr in {short(x) for x in frames}:
            incl[fr] += n
    print(f"\n## Self time by function (top {args.top})")
    for fr, n in selfc.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {fr}")
    print(f"\n## Inclusive time by function (top {args.top})")
    for fr, n in incl.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {fr}")
    print("\n## Self time by file")
    for fr, n in files.most_common(args.top):
        print(f"{100 * n / total:6.1f}%  {fr}")


if __name__ == "__main__":
    main()
