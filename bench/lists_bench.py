"""Mailing-list expansion: copies per second and peak memory (issue 14, "Benchmark").

    python bench/lists_bench.py [--members 10000,100000] [--batch 500] [--plain] [--rounds 1]
                                [--base-rev REV | --base-src DIR]

For each size, in a fresh child process (so each peak RSS is its own): a SQLite store in a temporary folder
(``synchronous=FULL``, as the daemon runs it), one list of N members (each with a name and vars, added 1,000 at a
time as the bulk API does), one message to the list committed as the API commits it (its expansion row), then
mtad's ``Expander`` (``outbound.lists``) expanding it to N queued copies, page by page, each page's copies and
cursor in one transaction. Timed from the expander's start to the expansion row's ``done``; reported: copies/s
(wall clock) and copies per CPU-second of the process (what a shared, busy machine distorts least),
the peak RSS of the process before the expansion (list loaded) and after it, and the growth. The message names
variables (``%recipient_fname%``, ``%recipient.city%``, ``%mailing_list_unsubscribe_url%``), so every copy is
personalised; ``--plain`` sends one without variables (one body for every copy).

``--base-rev REV`` (a ``git archive`` of REV, made in a temporary folder) or ``--base-src DIR`` (a checkout) runs
the same sizes with that tree's mtad and bench too, alternating base and this tree ``--rounds`` times, each run a
child process of its own: before/after figures from one session, as comparable as a shared machine allows.

Targets (the issue): >= 5,000 copies/s; memory flat in the list's size (the growth of 100,000 about that of 10,000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions  # noqa: E402
from mtad.events import shape  # noqa: E402
from mtad.mail import listlinks  # noqa: E402
from mtad.outbound.lists import Expander  # noqa: E402
from mtad.store import queue as spool  # noqa: E402
from mtad.store.lists import ListMember, MailingList  # noqa: E402
from mtad.store.sqlite import SqliteStore  # noqa: E402

PERSONAL = (b"From: News <news@example.com>\r\nTo: list@example.com\r\nSubject: Hello %recipient_fname%\r\n"
            b"Message-ID: <bench@example.com>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            + b"Dear %recipient_fname% %recipient_lname% of %recipient.city%,\r\n" + b"news line\r\n" * 40
            + b"Leave: %mailing_list_unsubscribe_url%\r\n")
PLAIN = PERSONAL.replace(b"%recipient_fname%", b"you").replace(b"%recipient_lname%", b"").replace(
    b"%recipient.city%", b"here").replace(b"%mailing_list_unsubscribe_url%", b"-")


def cpu_seconds() -> float:
    """CPU time of this process (all threads): what the expansion costs, whatever else runs on the machine."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def one(members: int, batch: int, plain: bool, folder: Path) -> dict:
    store = SqliteStore(folder / "bench.sqlite3")
    store.open()
    try:
        lst = await store.create_list(MailingList(0, "list@example.com", created_at=time.time()))
        for start in range(0, members, 1000):
            await store.add_members("list@example.com", [
                ListMember(f"member{i:07d}@example.net", f"First{i} Last{i}", {"city": f"City {i % 97}"})
                for i in range(start, min(start + 1000, members))], "ignore", time.time())
        body = PLAIN if plain else PERSONAL
        msg = NewMessage(Envelope("news@example.com", ("list@example.com",), auth_user="api", transport="http"),
                         body, "outbound", "example.com",
                         HeaderSummary("bench@example.com", "news@example.com", "list@example.com", "Hello"),
                         SendOptions(tags=("bench",)))
        qid = spool.new_queue_id()
        await store.enqueue([spool.Enqueue(qid, msg, shape.accepted(msg, qid, time.time()), deliver_to=(),
                                           lists=(lst.id,))], time.time())
        rss_before = peak_rss_mb()
        key = b"k" * 32
        expander = Expander(store=store, batch_size=batch, poll_interval=0.05,
                            unsubscribe_url=lambda list_id, a: listlinks.url("https://mtad.example", key, list_id, a))
        started = time.perf_counter()
        cpu_started = cpu_seconds()
        task = asyncio.create_task(expander.run())
        while True:
            await asyncio.sleep(0.05)
            state = await store.read(lambda c: c.execute("SELECT state, copies FROM list_expansions").fetchone())
            if state[0] == "done":
                break
        seconds = time.perf_counter() - started
        cpu = cpu_seconds() - cpu_started
        await expander.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        made = await store.read(lambda c: c.execute("SELECT count(*) FROM deliveries").fetchone()[0])
        assert made == members == state[1], (made, members, state)
        return {"members": members, "seconds": round(seconds, 2), "copies_per_s": round(members / seconds),
                "cpu_seconds": round(cpu, 2), "copies_per_cpu_s": round(members / cpu),
                "rss_before_mb": round(rss_before, 1), "rss_peak_mb": round(peak_rss_mb(), 1),
                "rss_growth_mb": round(peak_rss_mb() - rss_before, 1), "personalised": not plain,
                "db_mb": round((folder / "bench.sqlite3").stat().st_size / 1e6, 1)}
    finally:
        store.close()


def run_child(script: Path, n: int, batch: int, plain: bool) -> dict:
    cmd = [sys.executable, str(script), "--child", str(n), "--batch", str(batch)] + (["--plain"] if plain else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(out)


def report(label: str, r: dict) -> None:
    print(f"{label}{r['members']:>7} members: {r['copies_per_s']:>6} copies/s ({r['seconds']} s wall;"
          f" {r['copies_per_cpu_s']} copies per CPU-second); peak RSS"
          f" {r['rss_before_mb']} MB before, {r['rss_peak_mb']} MB after (+{r['rss_growth_mb']} MB);"
          f" store {r['db_mb']} MB; personalised={r['personalised']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--members", default="10000,100000")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--plain", action="store_true")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base-rev", help="also run this git revision's tree (git archive), alternating")
    ap.add_argument("--base-src", help="also run the tree checked out in this folder, alternating")
    ap.add_argument("--child", type=int)
    args = ap.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix="mtad-lists-bench-") as tmp:
            print(json.dumps(asyncio.run(one(args.child, args.batch, args.plain, Path(tmp)))))
        return
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory(prefix="mtad-lists-base-") as tmp:
        trees = [("", here)]
        if args.base_rev:
            archive = subprocess.run(["git", "-C", str(here.parents[1]), "archive", args.base_rev], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
            trees = [(f"base {args.base_rev}: ", Path(tmp) / "bench" / "lists_bench.py"), ("this tree: ", here)]
        elif args.base_src:
            trees = [("base: ", Path(args.base_src).resolve() / "bench" / "lists_bench.py"), ("this tree: ", here)]
        per_cpu: dict[tuple[str, int], list[int]] = {}
        for _ in range(args.rounds):
            for n in (int(x) for x in args.members.split(",")):
                for label, script in trees:
                    r = run_child(script, n, args.batch, args.plain)
                    per_cpu.setdefault((label, n), []).append(r["copies_per_cpu_s"])
                    report(label, r)
        if len(trees) > 1:
            for n in (int(x) for x in args.members.split(",")):
                base, mine = (statistics.median(per_cpu[(label, n)]) for label, _ in trees)
                print(f"{n} members, median copies per CPU-second: base {base:.0f}, this tree {mine:.0f}"
                      f" ({mine / base - 1:+.0%})")


if __name__ == "__main__":
    main()
