#!/usr/bin/env python3
"""Outbound drain rate: how fast a full queue empties into smtp-sink, mtad beside Postfix (bench/drain.sh).

  python drain.py run --sink-port 2530 --sink-pid PID --work DIR --out results.jsonl \\
                      [--postfix-dir PF --postfix-port 2525] [--postfix-dkim-dir PFD --postfix-dkim-port 2526 \\
                       --opendkim-pid PID --dkim-key KEY_PEM] [--mtad off,rsa] [--msgs 5000] [--size 1024] \\
                      [--rounds 3] [--mtad-src DIR] [--base-src DIR] [--profile DIR]
  python drain.py summarize results.jsonl     (with base-mtad-... rows: + a before/after table, mtad/base-mtad)

Every server measures the same thing, per round: N messages of SIZE bytes, one recipient each, are put in
its queue while delivery is held back, then released; the clock runs until the queue is empty (every
message handed over SMTP to smtp-sink, which answers 250 and keeps nothing). The servers take turns
round by round (Postfix, mtad variant 1, mtad variant 2, Postfix, ...), the order rotated by one every
round so that none always goes first, so that a machine whose speed drifts (other work on it) affects
them alike.

postfix  As ../shared/bench/postfix/drain.py measured the reference 3,619 msgs/s: smtp-source (20 sessions)
         fills the private instance's hold queue (bench/postfix/setup_postfix.sh, relayhost = the sink);
         the clock starts at `postsuper -H ALL; postqueue -f` and stops when no queue file is left.
postfix-dkim  The same with a second private instance that DKIM-signs (RSA-2048, d=sender.bench.test s=rsa,
         relaxed/relaxed, mtad's header fields) with a private OpenDKIM milter (bench/postfix/opendkim.sh) while the
         queue drains: an after-queue content filter hands each released message to a re-injection smtpd with
         the milter, which queues it signed for the relay (bench/postfix/setup_postfix.sh). smtp-source's sender
         is mtad's (bench@sender.bench.test). Its CPU is Postfix's process tree plus OpenDKIM's process (also
         recorded alone: milter_cpu_us_per_msg). --dkim-key KEY_PEM: that key, which mtad's rsa and both variants
         then sign with too (instead of one `mtad dkim keygen` key each). drain.sh has checked before the rounds
         that the instance's output verifies (bench/postfix/dkim_check.py).
mtad     `python -m mtad run` with a submission listener; a DNS server on 127.0.0.1 (tests/support/
         dns_server.py) answers MX bench.test -> sink.bench.test -> 127.0.0.1, and delivery.port is the
         sink's. Delivery to bench.test is paused (`mtad queue pause --domain bench.test`) while 20 SMTP
         sessions (aiosmtplib, STARTTLS, AUTH) submit the N messages; the clock starts when the pause is
         lifted (the store update `mtad queue resume --domain` makes, done here so that the CLI's Python
         start-up is not counted) and stops when no delivery row is pending. Shaping file: default policy
         max_connections 20 (Postfix's default_destination_concurrency_limit), no rate limit, 1000 deliveries
         per connection; poll_interval 100 ms. DKIM variants: off, rsa (RSA-2048), ed25519, both, with keys
         made by `mtad dkim keygen`; a suffix /wN sets delivery.dkim_workers to N (rsa/w0: sign in-process).
         --base-src DIR measures a second copy of mtad (labels base-mtad-...) in the same rounds. Every round
         checks that N `delivered` events were recorded, none failed. A suffix +track (rsa+track, rsa/w2+track)
         turns click and open tracking on for every message (tracking.defaults: each copy rendered per recipient
         by the signing worker, its link list committed once per message); --html sends every variant the same
         HTML message with 10 links, so `rsa` and `rsa+track` compare the same mail untracked and tracked.
mtad-pg  (--pg VARIANTS) the same mtad with `store: {backend: postgresql}` on a private PostgreSQL server started
         here (bench/pg_bench.py: tests/support/postgres.py's PostgresServer), a database per variant; the round
         also records the database server's CPU per message (its process tree, over the drain's clock) and its
         committed transactions per message (pg_stat_database.xact_commit delta).
mtad-pg-xN  (--pg-nodes N, N >= 2, with --pg VARIANTS) N mtad nodes (node_id n1..nN, each with its API on
         loopback for /metrics) on one database of that server, per DKIM variant: the submission is split among the
         nodes (20 sessions each), the drain runs on all of them at once, and the clock stops when the cluster's
         queue is empty. The record adds, per node, its CPU (process tree) and the deliveries it made (the delta of
         its /metrics mtad_deliveries{outcome="delivered"}), hence its CPU per message it delivered; server CPU
         is the sum over the nodes.

Each round's record (JSON line): msgs/s, wall seconds, CPU of the server's process tree (% of one core,
and µs per message; mtad's DKIM workers included), of its main process alone, and of the sink. --profile DIR
samples each mtad with py-spy during its last round.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(REPO))  # tests.support.dns_server
from ab import compare, runs_text  # noqa: E402
from run_ingress import TCK, proc_table, tree_cpu_rss  # noqa: E402

DOMAIN = "bench.test"
SENDER_DOMAIN = "sender.bench.test"
LOGIN, PASSWORD = f"bench@{SENDER_DOMAIN}", "bench-password"
MAX_S = 240.0  # one fill, one drain
IDLE = ["--idle"] if os.environ.get("DRAIN_PROFILE_IDLE") else []  # also sample threads waiting (epoll, locks)
STATEMENTS = bool(os.environ.get("DRAIN_PG_STATEMENTS"))  # --pg: count the statements each drain ran


HTML = False  # --html: every message an HTML one with 10 links (the tracking variants' comparison)


def message(i: int, size: int) -> bytes:
    head = (f"From: Bench <{LOGIN}>\r\nTo: <b{i}@{DOMAIN}>\r\nSubject: drain {i}\r\n"
            f"Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{i}.{time.time_ns()}@{SENDER_DOMAIN}>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/{'html' if HTML else 'plain'}; charset=us-ascii\r\n\r\n")
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    if HTML:
        links = "".join(f'<p><a href="https://shop.example/item/{k}?ref=drain">item {k}</a></p>\r\n' for k in range(10))
        html = f"<html><body>\r\n{links}"
        fill = (line * (size // len(line) + 1))[:max(0, size - len(head) - len(html) - 20)]
        return (head + html + fill + "</body></html>\r\n").encode()
    body = (line * (size // len(line) + 1))[:max(0, size - len(head) - 2)]
    return (head + body).encode() + b"\r\n"


def cpu(pid: int) -> float:
    return tree_cpu_rss(pid)[0]


def own_cpu(pid: int) -> float:
    """CPU seconds of the process alone (without its children: Postfix's daemons, mtad's signing workers)."""
    return proc_table().get(pid, {"cpu": 0})["cpu"] / TCK


# mtad's queue, polled every 20 ms during a drain: whether any delivery is pending, then (if the drain did not
# finish) how many are left. On PostgreSQL the poll's connection plans without sequential scans (the bench's own
# session only): a count of the pending rows read the table whole, ~0.6-1 ms of the database server's CPU per poll,
# ~60 µs per message delivered charged to mtad-pg's database CPU; the probe reads the index, ~0.2 ms.
PENDING_SQL = "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'deferred', 'held')"
ANY_PENDING_SQL = ("SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE state IN ('queued', 'deferred', 'held')"
                   " LIMIT 1) AS x")


def timed_drain(label: str, server_pid: int | list[int], sink_pid: int, held: int, release, pending,
                size: int, count=None) -> dict:
    """Release the queue, poll ``pending()`` until 0; the round's record. Several server pids (the nodes of a
    cluster): their CPU is summed, and each node's CPU seconds are in ``node_cpu_s``. ``count()``: how many are
    left when the drain did not finish (``pending()`` may only say whether any is)."""
    pids = server_pid if isinstance(server_pid, list) else [server_pid]
    n0 = [cpu(pid) for pid in pids]
    c0, s0, m0 = sum(n0), cpu(sink_pid), sum(own_cpu(pid) for pid in pids)
    t0 = time.monotonic()
    release()
    left, polls = held, 0
    while time.monotonic() - t0 < MAX_S:
        left, polls = pending(), polls + 1
        if left == 0:
            break
        time.sleep(0.02)
    wall = time.monotonic() - t0
    if left and count is not None:
        left = count()
    n1 = [cpu(pid) for pid in pids]
    c1, s1, m1 = sum(n1), cpu(sink_pid), sum(own_cpu(pid) for pid in pids)
    done = held - left
    rec = {"label": label, "size": size, "msgs": held, "left": left, "wall_s": round(wall, 3),
           "msgs_per_s": round(done / wall, 1), "server_cpu_pct": round(100 * (c1 - c0) / wall, 1),
           "server_cpu_us_per_msg": round(1e6 * (c1 - c0) / max(1, done)),
           "main_cpu_pct": round(100 * (m1 - m0) / wall, 1),
           "sink_cpu_pct": round(100 * (s1 - s0) / wall, 1)}
    rec["polls"] = polls  # the bench's own queries (each one transaction: not counted in db_commits_per_msg)
    if len(pids) > 1:
        rec["node_cpu_s"] = [round(b - a, 3) for a, b in zip(n0, n1)]
    return rec


# --- Postfix -----------------------------------------------------------------------------------------------

class Postfix:
    def __init__(self, folder: str, port: int, label: str = "postfix", sender: str = "a@example.com",
                 milter_pid: int | None = None):
        self.dir, self.port, self.label, self.sender, self.milter_pid = folder, port, label, sender, milter_pid
        self.etc = os.path.join(folder, "etc")
        self.master = int(open(os.path.join(folder, "spool/pid/master.pid")).read().split()[0])

    def queued(self) -> int:
        n = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _root, _dirs, files in os.walk(os.path.join(self.dir, "spool", sub)):
                n += len(files)
        return n

    def round(self, a: argparse.Namespace, profile: bool) -> dict:
        subprocess.run(["postsuper", "-c", self.etc, "-d", "ALL"], capture_output=True)
        subprocess.run(["smtp-source", "-s", "20", "-m", str(a.msgs), "-l", str(a.size), "-f", self.sender,
                        "-t", "b@example.net", "-M", "bench.localdomain", f"127.0.0.1:{self.port}"],
                       check=True, timeout=MAX_S)
        held = self.queued()
        time.sleep(1)

        def release() -> None:
            subprocess.run(["postsuper", "-c", self.etc, "-H", "ALL"], capture_output=True)
            subprocess.run(["postqueue", "-c", self.etc, "-f"], capture_output=True)
        if self.milter_pid is None:
            return timed_drain(self.label, self.master, a.sink_pid, held, release, self.queued, a.size)
        rec = timed_drain(self.label, [self.master, self.milter_pid], a.sink_pid, held, release, self.queued, a.size)
        milter_s = rec.pop("node_cpu_s")[1]  # not a cluster: Postfix + its milter, one server
        rec["milter_cpu_us_per_msg"] = round(1e6 * milter_s / max(1, held - rec["left"]))
        return rec

    def stop(self) -> None:
        pass


# --- mtad --------------------------------------------------------------------------------------------------

def import_hash_password():
    """mtad's password hasher, by the layout of the mtad first on sys.path (--mtad-src): mtad.base.passwords
    since the packages, mtad.passwords before (bebe064). Its scrypt format is the same in both, so the one
    hash serves the base tree's config too."""
    from mtad_layout import mtad_module
    return mtad_module("mtad.base.passwords").hash_password


class Mtad:
    def __init__(self, a: argparse.Namespace, variant: str, dns_port: int, submission_port: int, src: str,
                 prefix: str = "", pg=None, *, dsn: str | None = None, node_id: str | None = None,
                 api_port: int | None = None, kind: str = "-pg"):
        # pg: (PostgresServer, its postmaster PID) for mtad-pg: a database of its own on that server for the store,
        # or ``dsn``'s (a cluster's nodes share one: node_id names this one, api_port serves its /metrics)
        self.pg, self.dsn = pg, dsn
        self.node_id, self.api_port = node_id, api_port
        if pg is not None and dsn is None:
            name = f"drain_{prefix.replace('-', '_')}{variant.replace('/', '_')}"
            pg[0].psql(f"CREATE DATABASE {name}")
            self.dsn = pg[0].dsn(name)
        kind = kind if pg is not None else ""
        self.label = f"{prefix}mtad{kind}-dkim-{variant}"
        dkim_variant, _, track = variant.partition("+")  # "rsa+track": click and open tracking on
        self.track = track == "track"
        self.variant, _, workers = dkim_variant.partition("/w")  # "rsa/w2": delivery.dkim_workers 2
        self.dkim_workers = int(workers) if workers else None
        self.work = Path(a.work) / (f"{prefix}mtad{kind}-{variant.replace('/', '-')}"
                                    + (f"-{node_id}" if node_id else ""))
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, str(REPO)]))
        self.port = submission_port
        self.config = self._config(a, dns_port)
        self.db = self.work / "state" / "mtad.sqlite3"
        self.log = open(self.work / "mtad.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(self.config)],
                                     cwd=self.work, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)

    def _keygen(self, selector: str, algorithm: str) -> str:
        out = subprocess.run([sys.executable, "-m", "mtad", "dkim", "keygen", SENDER_DOMAIN, "--selector", selector,
                              "--algorithm", algorithm, "--out-dir", str(self.work / "dkim"), "--state-dir",
                              str(self.work / "keygen-state")],
                             env=self.env, capture_output=True, text=True, check=True).stdout
        return next(line.split("key written to ", 1)[1].split(";")[0] for line in out.splitlines()
                    if "key written to" in line)

    def _config(self, a: argparse.Namespace, dns_port: int) -> Path:
        import yaml
        hash_password = import_hash_password()
        keys = []
        if self.variant in ("rsa", "both"):  # --dkim-key: postfix-dkim's key (the same signing work)
            keys.append({"selector": "rsa", "key_file": a.dkim_key or self._keygen("rsa", "rsa")})
        if self.variant in ("ed25519", "both"):
            keys.append({"selector": "ed", "key_file": self._keygen("ed", "ed25519")})
        shaping = self.work / "shaping.yaml"
        shaping.write_text(yaml.safe_dump({"default": {
            "max_connections": 20, "max_message_rate": None, "max_deliveries_per_connection": 1000}}))
        cfg = {
            "hostname": "mtad.bench.test",
            "state_dir": str(self.work / "state"),
            "listeners": [{"address": f"127.0.0.1:{self.port}", "role": "submission", "tls": "starttls",
                           "name": "submission"}],
            "limits": {"max_connections_per_ip": 1000},
            "api": ({"enabled": True, "address": f"127.0.0.1:{self.api_port}"} if self.api_port
                    else {"enabled": False}),
            **({"node_id": self.node_id} if self.node_id else {}),
            "sending_domains": {SENDER_DOMAIN: {
                "users": {"bench": {"password_hash": hash_password(PASSWORD, n=2**10)}}, "dkim": keys}},
            "delivery": {"port": a.sink_port, "dns_nameservers": ["127.0.0.1"], "dns_port": dns_port,
                         "poll_interval": "100ms", "shaping_file": str(shaping),
                         **({} if self.dkim_workers is None else {"dkim_workers": self.dkim_workers})},
            "log": {"level": os.environ.get("DRAIN_LOG_LEVEL", "warning")},  # info: each delivery, shaping stats
            **({"store": {"backend": "postgresql", "dsn": self.dsn}} if self.dsn else {}),
            **({"tracking": {"base_url": "https://trk.bench.test", "defaults": {"open": True, "click": "yes"}}}
               if self.track else {}),
        }
        path = self.work / "mtad.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def round(self, a: argparse.Namespace, profile: bool) -> dict:
        subprocess.run([sys.executable, "-m", "mtad", "queue", "pause", "--domain", DOMAIN, "--config",
                        str(self.config)], env=self.env, check=True, capture_output=True)
        time.sleep(0.3)  # the scheduler sees the pause at its next poll (100 ms)
        asyncio.run(submit_all(self.port, a.msgs, a.size))
        if self.dsn:
            import psycopg
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute("SET enable_seqscan = off")  # this session's polls read the index (see PENDING_SQL)
            unpause = "DELETE FROM kv WHERE key = %s"
        else:
            conn = sqlite3.connect(f"file:{self.db}", uri=True, timeout=60, isolation_level=None)
            unpause = "DELETE FROM kv WHERE key = ?"
        try:
            held = conn.execute(PENDING_SQL).fetchone()[0]
            delivered0 = conn.execute("SELECT count(*) FROM events WHERE event = 'delivered'").fetchone()[0]
            time.sleep(1.2)  # also: PostgreSQL's backends report their counters at most once a second when idle
            xact_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            xacts0 = conn.execute(xact_sql).fetchone()[0] if self.dsn else None
            db0 = cpu(self.pg[1]) if self.pg else 0.0
            if self.dsn and STATEMENTS:
                conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                conn.execute("SELECT pg_stat_statements_reset()")
            spy = self._profile(a.profile) if profile else None
            rec = timed_drain(self.label, self.proc.pid, a.sink_pid, held,
                              lambda: conn.execute(unpause, (f"pause:domain:{DOMAIN}",)),
                              lambda: conn.execute(ANY_PENDING_SQL).fetchone()[0], a.size,
                              lambda: conn.execute(PENDING_SQL).fetchone()[0])
            if self.pg:  # the database server's process tree, over the same time as timed_drain's clock (+ a poll)
                rec["db_cpu_us_per_msg"] = round(1e6 * (cpu(self.pg[1]) - db0) / max(1, rec["msgs"] - rec["left"]))
                time.sleep(1.2)
                if self.dsn:  # a new transaction sees fresh statistics (psycopg autocommit: each statement is one)
                    rec["db_commits_per_msg"] = round((conn.execute(xact_sql).fetchone()[0] - xacts0 - bench_xacts(
                        rec, 2 if STATEMENTS else 0)) / max(1, rec["msgs"] - rec["left"]), 2)
                if self.dsn and STATEMENTS:
                    rec["db_statements_per_msg"] = statements(conn, Path(a.out).with_name(
                        f"{self.label.replace('/', '-')}-r{rnd_of(a)}-statements.log"), rec["msgs"] - rec["left"])
            if spy is not None:
                spy.send_signal(2)
                spy.wait(60)
            rec["delivered"] = conn.execute("SELECT count(*) FROM events WHERE event = 'delivered'"
                                            ).fetchone()[0] - delivered0
            rec["failed_total"] = conn.execute("SELECT count(*) FROM events WHERE event = 'failed'").fetchone()[0]
        finally:
            conn.close()
        if rec["delivered"] != held or rec["failed_total"]:
            print(f"WARNING: {self.label}: {rec['delivered']} delivered of {held}, {rec['failed_total']} failed"
                  " events", file=sys.stderr)
        return rec

    def _profile(self, folder: str) -> subprocess.Popen:
        Path(folder).mkdir(parents=True, exist_ok=True)
        out = Path(folder) / f"{self.label.replace('/', '-')}.txt"
        spy = subprocess.Popen(["py-spy", "record", "--pid", str(self.proc.pid), "--rate", "200", "--format", "raw",
                                "--threads", "--nonblocking", *IDLE, "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        return spy

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


class MtadCluster:
    """``nodes`` mtad nodes (node_id n1..nN) on one database of the bench's PostgreSQL server, measured as one
    server (see the module doc, mtad-pg-xN)."""

    def __init__(self, a: argparse.Namespace, variant: str, dns_port: int, first_port: int, src: str, pg, nodes: int):
        name = f"drain_x{nodes}_{variant.replace('/', '_')}"
        pg[0].psql(f"CREATE DATABASE {name}")
        self.pg, self.dsn = pg, pg[0].dsn(name)
        kind = f"-pg-x{nodes}"
        self.label = f"mtad{kind}-dkim-{variant}"
        self.nodes: list[Mtad] = []
        for n in range(nodes):  # one at a time: the first creates the schema
            self.nodes.append(Mtad(a, variant, dns_port, first_port + n, src, pg=pg, dsn=self.dsn,
                                   node_id=f"n{n + 1}", api_port=first_port + 100 + n, kind=kind))

    def delivered(self) -> list[int]:
        """Each node's deliveries so far (its /metrics ``mtad_deliveries{outcome="delivered"}``, summed over
        providers)."""
        import urllib.request
        counts = []
        for node in self.nodes:
            text = urllib.request.urlopen(f"http://127.0.0.1:{node.api_port}/metrics", timeout=30).read().decode()
            counts.append(round(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                    if line.startswith("mtad_deliveries_total{") and 'outcome="delivered"' in line)))
        return counts

    def round(self, a: argparse.Namespace, profile: bool) -> dict:
        import psycopg
        first = self.nodes[0]
        subprocess.run([sys.executable, "-m", "mtad", "queue", "pause", "--domain", DOMAIN, "--config",
                        str(first.config)], env=first.env, check=True, capture_output=True)
        time.sleep(0.3)
        share = -(-a.msgs // len(self.nodes))

        async def fill() -> None:
            await asyncio.gather(*(submit_all(node.port, min(share, a.msgs - n * share), a.size, first=n * share)
                                   for n, node in enumerate(self.nodes)))
        asyncio.run(fill())
        conn = psycopg.connect(self.dsn, autocommit=True)
        conn.execute("SET enable_seqscan = off")  # this session's polls read the index (see PENDING_SQL)
        try:
            held = conn.execute(PENDING_SQL).fetchone()[0]
            delivered0 = conn.execute("SELECT count(*) FROM events WHERE event = 'delivered'").fetchone()[0]
            time.sleep(1.2)
            xact_sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            xacts0 = conn.execute(xact_sql).fetchone()[0]
            per_node0 = self.delivered()
            db0 = cpu(self.pg[1])
            rec = timed_drain(self.label, [node.proc.pid for node in self.nodes], a.sink_pid, held,
                              lambda: conn.execute("DELETE FROM kv WHERE key = %s", (f"pause:domain:{DOMAIN}",)),
                              lambda: conn.execute(ANY_PENDING_SQL).fetchone()[0], a.size,
                              lambda: conn.execute(PENDING_SQL).fetchone()[0])
            done = max(1, rec["msgs"] - rec["left"])
            rec["db_cpu_us_per_msg"] = round(1e6 * (cpu(self.pg[1]) - db0) / done)
            time.sleep(1.2)
            rec["db_commits_per_msg"] = round((conn.execute(xact_sql).fetchone()[0] - xacts0 - bench_xacts(rec)) / done,
                                              2)
            rec["node_delivered"] = [b - a_ for a_, b in zip(per_node0, self.delivered())]
            rec["node_cpu_us_per_msg"] = [round(1e6 * c / d) if d else None for c, d in zip(rec["node_cpu_s"],
                                                                                          rec["node_delivered"])]
            rec["delivered"] = conn.execute("SELECT count(*) FROM events WHERE event = 'delivered'"
                                            ).fetchone()[0] - delivered0
            rec["failed_total"] = conn.execute("SELECT count(*) FROM events WHERE event = 'failed'").fetchone()[0]
        finally:
            conn.close()
        if rec["delivered"] != held or rec["failed_total"]:
            print(f"WARNING: {self.label}: {rec['delivered']} delivered of {held}, {rec['failed_total']} failed"
                  " events", file=sys.stderr)
        return rec

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def bench_xacts(rec: dict, more: int = 0) -> int:
    """Transactions the bench itself ran on the database between its two reads of xact_commit: the first read,
    the release (unpause), the polls, the count of what was left, ``more``."""
    return 2 + rec.get("polls", 0) + (1 if rec["left"] else 0) + more


def rnd_of(a: argparse.Namespace) -> int:
    return getattr(a, "current_round", 0)


def statements(conn, out: Path, done: int) -> float:
    """Statements this database ran since the reset (pg_stat_statements: BEGIN and COMMIT are not among them, the
    commits are db_commits_per_msg) per delivered message, the bench's own polls included (~0.1); each statement's
    calls, rows and execution time per message written to ``out``, most called first."""
    rows = conn.execute(
        "SELECT calls, rows, round(total_exec_time::numeric, 1), query FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE '%pg_stat_statements%' ORDER BY calls DESC").fetchall()
    done = max(1, done)
    with open(out, "w") as f:
        for calls, nrows, ms, query in rows:
            f.write(f"{calls / done:8.3f} calls/msg {nrows / done:8.3f} rows/msg {ms:10} ms  "
                    f"{' '.join(query.split())[:300]}\n")
    return round(sum(r[0] for r in rows) / done, 2)


async def submit_all(port: int, msgs: int, size: int, sessions: int = 20, first: int = 0) -> None:
    import ssl

    import aiosmtplib
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    counter = iter(range(first, first + msgs))

    async def session() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=True, tls_context=ctx, timeout=60)
        await client.connect()
        await client.login(LOGIN, PASSWORD)
        for i in counter:
            await client.sendmail(LOGIN, [f"b{i}@{DOMAIN}"], message(i, size))
        await client.quit()
    await asyncio.wait_for(asyncio.gather(*(session() for _ in range(sessions))), MAX_S)


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mtad exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"mtad did not open port {port}")


# --- commands ----------------------------------------------------------------------------------------------

def cmd_run(a: argparse.Namespace) -> None:
    global HTML
    HTML = a.html
    sys.path.insert(0, a.mtad_src)  # the mtad measured (mtad.passwords, for its config)
    from tests.support.dns_server import DnsServer
    dns = DnsServer(ttl=3600).start()
    dns.add_mx(DOMAIN, [(10, f"sink.{DOMAIN}")])
    dns.add_a(f"sink.{DOMAIN}", "127.0.0.1")
    servers: list = []
    pg = None
    try:
        if a.pg:  # a private PostgreSQL server for the mtad-pg variants (bench/pg_bench.py, tests/support/postgres.py)
            from pg_bench import _server
            server = _server()
            pg = (server.start(), int((server.data / "postmaster.pid").read_text().split()[0]))
            if STATEMENTS:  # pg_stat_statements loaded: statements per delivered message (costs the server a little)
                with open(server.data / "postgresql.conf", "a") as conf:
                    conf.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = all\n")
                server.halt()
                server.resume()
                pg = (server, int((server.data / "postmaster.pid").read_text().split()[0]))
        if a.postfix_dir:
            servers.append(Postfix(a.postfix_dir, a.postfix_port))
        if a.postfix_dkim_dir:
            servers.append(Postfix(a.postfix_dkim_dir, a.postfix_dkim_port, "postfix-dkim", LOGIN, a.opendkim_pid))
        variants = [v for v in a.mtad.split(",") if v]
        for n, variant in enumerate(variants):
            servers.append(Mtad(a, variant, dns.port, 2587 + n, a.mtad_src))
            if a.base_src and "/w" not in variant:  # the base may predate delivery.dkim_workers
                servers.append(Mtad(a, variant, dns.port, 2587 + len(variants) + n, a.base_src, prefix="base-"))
        pg_variants = [v for v in a.pg.split(",") if v]
        for n, variant in enumerate(pg_variants):
            servers.append(Mtad(a, variant, dns.port, 2640 + n, a.mtad_src, pg=pg))
            if a.base_src and "/w" not in variant:  # base-mtad-pg-dkim-V: the base tree on its own database
                servers.append(Mtad(a, variant, dns.port, 2640 + len(pg_variants) + n, a.base_src, prefix="base-",
                                    pg=pg))
            if a.pg_nodes >= 2:  # mtad-pg-xN-dkim-V: N nodes on one database
                servers.append(MtadCluster(a, variant, dns.port, 2660 + 10 * n, a.mtad_src, pg, a.pg_nodes))
        for rnd in range(1, a.rounds + 1):
            k = (rnd - 1) % len(servers)  # rotate the order so no server always goes first (as run_ingress.py)
            for server in servers[k:] + servers[:k]:
                a.current_round = rnd
                rec = {"round": rnd, **server.round(a, profile=bool(a.profile) and rnd == a.rounds)}
                with open(a.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(json.dumps(rec), flush=True)
    finally:
        for server in servers:
            server.stop()
        dns.stop()
        if pg is not None:
            pg[0].stop()


def before_after(runs: dict[str, list[dict]]) -> None:
    """Each mtad variant against its base-mtad twin (--base-src/--base-rev), measured in the same rounds."""
    pairs = [(label, f"base-{label}") for label in runs if not label.startswith("base-") and f"base-{label}" in runs]
    if not pairs:
        return
    print("\n### Before/after: mtad against base-mtad (same run, same rounds)\n")
    print("| variant | mtad msgs/s (min-max) | base-mtad msgs/s (min-max) | mtad/base-mtad | per-round ratios | spread |"
          " verdict | server CPU µs/msg mtad/base-mtad | PostgreSQL CPU µs/msg, DB commits/msg: mtad / base-mtad |")
    print("|---|---:|---:|---:|---|---:|---|---:|---|")
    slower, single = [], False
    for new, base in pairs:
        ra = [r["msgs_per_s"] for r in runs[new]]
        rb = [r["msgs_per_s"] for r in runs[base]]
        c = compare(ra, rb)
        cpu = (statistics.median(r["server_cpu_us_per_msg"] for r in runs[new])
               / max(1, statistics.median(r["server_cpu_us_per_msg"] for r in runs[base])))
        if c.status == "single":
            verdict, single = "no spread (1 round)", True
        else:
            verdict = c.verdict
        if c.status == "slower":
            slower.append(new)
        print(f"| {new.removeprefix('mtad-')} | {runs_text(ra)} | {runs_text(rb)} | {c.ratio:.2f}x | "
              f"{', '.join(f'{p:.2f}' for p in c.per_round)} | {c.spread_text()} | {verdict} | {cpu:.2f}x |"
              f" {pgtxt(runs[new]).replace(' | ', ', ')} / {pgtxt(runs[base]).replace(' | ', ', ')} |")
    print("\nspread = the larger run-to-run spread (max-min)/median of the two; slower by more than the spread when "
          "mtad/base-mtad < 1 - spread.")
    if slower:
        print(f"BEFORE/AFTER: slower than the base by more than the spread: {', '.join(slower)}")
    elif single:
        print("BEFORE/AFTER: one round only: no spread to judge by (--rounds 3)")
    else:
        print("BEFORE/AFTER: no variant slower than the base by more than the spread")


def pgtxt(recs: list[dict]) -> str:
    """The database columns of an mtad-pg row (the PostgreSQL server's CPU, its commits per message); — otherwise."""
    cpu_, commits = ([r[k] for r in recs if r.get(k) is not None] for k in ("db_cpu_us_per_msg", "db_commits_per_msg"))
    return (f"{statistics.median(cpu_):.0f}" if cpu_ else "—") + " | " + (
        f"{statistics.median(commits):.2f}" if commits else "—")


def cmd_summarize(a: argparse.Namespace) -> None:
    runs: dict[str, list[dict]] = {}
    for line in open(a.results):
        rec = json.loads(line)
        runs.setdefault(rec["label"], []).append(rec)
    med = {label: statistics.median(r["msgs_per_s"] for r in recs) for label, recs in runs.items()}
    base, signed = med.get("postfix"), med.get("postfix-dkim")
    print("| drain to smtp-sink | msgs | rounds | median msgs/s | min-max | server CPU % | server CPU µs/msg |"
          " main process CPU % | sink CPU % | ratio to Postfix | ratio to postfix-dkim | PostgreSQL CPU µs/msg |"
          " DB commits/msg |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, recs in runs.items():
        rates = [r["msgs_per_s"] for r in recs]
        ratio = f"{med[label] / base:.2f}" if base else "-"
        ratio += f" | {med[label] / signed:.2f}" if signed else " | -"
        print(f"| {label} | {recs[0]['msgs']} x {recs[0]['size']} B | {len(recs)} | {med[label]:,.0f} |"
              f" {min(rates):,.0f}-{max(rates):,.0f} | {statistics.median(r['server_cpu_pct'] for r in recs):.0f} |"
              f" {statistics.median(r['server_cpu_us_per_msg'] for r in recs):.0f} |"
              f" {statistics.median(r.get('main_cpu_pct', 0) for r in recs):.0f} |"
              f" {statistics.median(r['sink_cpu_pct'] for r in recs):.0f} | {ratio} | {pgtxt(recs)} |")
    milter = [r["milter_cpu_us_per_msg"] for r in runs.get("postfix-dkim", []) if "milter_cpu_us_per_msg" in r]
    if milter:
        print(f"\npostfix-dkim: Postfix signs with OpenDKIM after the queue (re-injection smtpd with the milter); its"
              f" server CPU includes OpenDKIM's {statistics.median(milter):.0f} µs/msg (median).")
    nodes_table(runs)
    before_after(runs)


def _median_text(values: list) -> str:
    known = [v for v in values if v is not None]
    return f"{statistics.median(known):.0f}" if known else "— (delivered none)"


def nodes_table(runs: dict[str, list[dict]]) -> None:
    """The clusters (mtad-pg-xN-...): each node's share and CPU per message it delivered, and the database's."""
    clusters = {label: recs for label, recs in runs.items() if recs and "node_cpu_s" in recs[0]}
    if not clusters:
        return
    print("\n### Nodes on one database: CPU per message per node (median of the rounds)\n")
    print("| cluster | node | msgs delivered | node CPU s | node CPU µs/msg it delivered | all nodes µs/msg |"
          " PostgreSQL CPU µs/msg | DB commits/msg | cluster msgs/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, recs in clusters.items():
        for n in range(len(recs[0]["node_cpu_s"])):
            print(f"| {label} | n{n + 1} | {statistics.median(r['node_delivered'][n] for r in recs):.0f} |"
                  f" {statistics.median(r['node_cpu_s'][n] for r in recs):.2f} |"
                  f" {_median_text([r['node_cpu_us_per_msg'][n] for r in recs])} |"
                  f" {statistics.median(r['server_cpu_us_per_msg'] for r in recs):.0f} | {pgtxt(recs)} |"
                  f" {statistics.median(r['msgs_per_s'] for r in recs):.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--sink-port", type=int, default=2530)
    r.add_argument("--sink-pid", type=int, required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--postfix-dir")
    r.add_argument("--postfix-port", type=int, default=2525)
    r.add_argument("--postfix-dkim-dir", help="the signing Postfix instance (label postfix-dkim)")
    r.add_argument("--postfix-dkim-port", type=int, default=2526)
    r.add_argument("--opendkim-pid", type=int, help="postfix-dkim's OpenDKIM milter (its CPU counts as the server's)")
    r.add_argument("--dkim-key", help="RSA key (PEM) for mtad's rsa/both variants; default: one keygen per mtad")
    r.add_argument("--mtad", default="off,rsa", help="DKIM variants: off, rsa, ed25519, both (comma-separated)")
    r.add_argument("--msgs", type=int, default=5000)
    r.add_argument("--size", type=int, default=1024)
    r.add_argument("--rounds", type=int, default=3)
    r.add_argument("--html", action="store_true", help="HTML messages with 10 links (for +track variants)")
    r.add_argument("--mtad-src", default=str(REPO))
    r.add_argument("--base-src", help="also measure the mtad in this folder (labels base-mtad-...), after each variant"
                                      " (its flat layout before the packages, e.g. bebe064, works too)")
    r.add_argument("--profile")
    r.add_argument("--pg", default="", help="DKIM variants of mtad on PostgreSQL (labels mtad-pg-dkim-...), a private"
                                           " server started here; empty: none")
    r.add_argument("--pg-nodes", type=int, default=0, help="with --pg: also N nodes on one database per variant"
                                                             " (labels mtad-pg-xN-dkim-...); 0: none")
    s = sub.add_parser("summarize")
    s.add_argument("results")
    a = ap.parse_args()
    {"run": cmd_run, "summarize": cmd_summarize}[a.cmd](a)


if __name__ == "__main__":
    main()
