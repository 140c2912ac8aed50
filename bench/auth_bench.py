#!/usr/bin/env python3
"""Inbound accept rate with authentication verdicts on vs off, in one run (issue 15, "Benchmark").

    python bench/auth_bench.py [--msgs 2000] [--sessions 20] [--rounds 3] [--workers 1] [--out results.jsonl]
                               [--base-rev REV | --base-src DIR]

Two mtads from the work tree (``python -m mtad run``), identical but for ``authentication.enabled``: each with one
MX listener on 127.0.0.1 (``tls: none``), ``example.net`` a receiving domain with one route
``match_recipient('keep@example.net') -> stop()`` (accepted and stored, no work made), no delivery, no API.
A DNS server on 127.0.0.1 (the test suite's, tests/support/dns_server.py; the DNS is answered locally) publishes
for ``example.com``: SPF ``v=spf1 ip4:127.0.0.1 -all``, an RSA-2048 DKIM key, DMARC ``p=reject``; both mtads use it.

Each message is the same DKIM-signed message (signed once by dkimpy, relaxed/relaxed, From example.com) sent by
smtp-source (``-F FILE -s SESSIONS -m N``, a new connection per message) from 127.0.0.1 with MAIL FROM
sender@example.com: with verification on, every message costs an SPF evaluation, a DKIM verification (in the
``authentication.workers`` processes) and a DMARC evaluation; the records are cached by mtad's resolver after the
first message, as a busy MX finds them. Every round measures both, in an order reversed every other round (A/B B/A),
the clock running from smtp-source's start to its exit (every message answered 250 after the durable commit).

Before/after in one run: ``--base-rev REV`` (``git archive REV mtad``) or ``--base-src DIR`` (a folder holding an
``mtad/`` package) adds a third mtad, ``base-on``: that tree with verification on, same configuration, measured in
every round with the others (the order reversed every other round); its ratio is to the work tree's ``off``
(the path with verification off is the same in both trees unless the base predates it).

Printed: msgs/s and mtad's CPU (its process tree: the verification workers too, and the main process and the
workers apart) per run, the medians, and
**on / off** (issue 15's target: at least 0.7 at 20 sessions). Checks that every message of a run was stored and,
with verification on, that the stored copy carries ``dkim=pass`` and ``dmarc=pass``.
Needs smtp-source (``apt-get install postfix``).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))
from inbound_setup import Daemon, base_source, mx_config, smtp_source  # noqa: E402

from tests.support.dns_server import DnsServer  # noqa: E402


def signed_message(path: Path, size: int) -> str:
    """A DKIM-signed message written to ``path`` (LF line ends: smtp-source -F sends each line with CRLF); the
    public key's base64, for the DNS record."""
    import base64

    import dkim
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    body = line * max(1, size // len(line))
    msg = ("From: Sender <sender@example.com>\r\nTo: keep@example.net\r\nSubject: bench\r\n"
           "Message-ID: <bench@example.com>\r\nDate: Mon, 03 Jun 2024 10:00:00 +0000\r\n\r\n" + body).encode()
    sig = dkim.sign(msg, b"bench", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"),
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    path.write_bytes((sig + msg).replace(b"\r\n", b"\n"))
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def bench_config(work: Path, port: int, dns_port: int, enabled: bool, workers: int) -> dict:
    return mx_config(
        work, port, signing_key="key-auth-bench",
        delivery={"enabled": False, "dns_nameservers": ["127.0.0.1"], "dns_port": dns_port, "dns_timeout": "2s"},
        routing={"routes": [{"expression": "match_recipient('keep@example.net')", "actions": ["stop()"]}]},
        authentication={"enabled": enabled, "workers": workers})


def Mtad(label: str, work: Path, dns_port: int, enabled: bool, workers: int, src: str = str(REPO)) -> Daemon:
    return Daemon(label, src, work, lambda port: bench_config(work, port, dns_port, enabled, workers))


async def run(args: argparse.Namespace, m: Daemon, message: Path, n: int) -> dict:
    m.store.empty()
    await asyncio.sleep(0.5)
    main0, workers0 = m.cpu()
    t0 = time.monotonic()
    await smtp_source(args.smtp_source, m.port, args.sessions, n, "keep@example.net", message=message,
                      helo="client.example.com")
    wall = time.monotonic() - t0
    main1, workers1 = m.cpu()
    main, workers = main1 - main0, workers1 - workers0
    cpu = main + workers
    stored = m.store.count("SELECT count(*) FROM messages")
    rec = {"mtad": m.label, "msgs": n, "wall_s": round(wall, 3), "msgs_per_s": round(n / wall, 1),
           "mtad_cpu_pct": round(100 * cpu / wall, 1), "mtad_cpu_us_per_msg": round(1e6 * cpu / n),
           "main_us_per_msg": round(1e6 * main / n), "workers_us_per_msg": round(1e6 * workers / n)}
    if stored != n:
        rec["problem"] = f"{stored} messages stored, expected {n}"
    if m.label.endswith("on"):
        row = m.store.conn.execute("SELECT body FROM messages LIMIT 1").fetchone()
        head = bytes(row[0])[:2000] if row else b""
        if b"dkim=pass" not in head or b"dmarc=pass" not in head:
            rec["problem"] = f"verdicts not pass: {head[:600]!r}"
    return rec


async def main_async(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="mtad-auth-bench-"))
    message = work / "message.eml"
    dns = DnsServer(ttl=3600).start()
    pub = signed_message(message, args.size)
    dns.add_txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
    dns.add_txt("bench._domainkey.example.com", f"v=DKIM1; k=rsa; p={pub}")
    dns.add_txt("_dmarc.example.com", "v=DMARC1; p=reject")
    trees = [Mtad("off", work / "off", dns.port, False, args.workers),
             Mtad("on", work / "on", dns.port, True, args.workers)]
    src = base_source(work, args.base_rev, args.base_src)
    if src:
        trees.append(Mtad("base-on", work / "base-on", dns.port, True, args.workers, src))
    records: list[dict] = []
    out = open(args.out, "a") if args.out else None
    try:
        for m in trees:
            m.ready()
        print(f"# {args.sessions} sessions, {args.msgs} messages per run of {message.stat().st_size} bytes, "
              f"authentication.workers {args.workers}, {os.cpu_count()} CPUs", flush=True)
        for m in trees:  # warm-up (resolver cache, worker start), unmeasured
            await run(args, m, message, min(200, args.msgs))
        for r in range(args.rounds):
            for m in (trees if r % 2 == 0 else trees[::-1]):
                rec = await run(args, m, message, args.msgs)
                rec["round"] = r + 1
                records.append(rec)
                print(json.dumps(rec), flush=True)
                if out:
                    out.write(json.dumps(rec) + "\n")
    finally:
        for m in trees:
            m.stop()
        dns.stop()
        if out:
            out.close()
        shutil.rmtree(work, ignore_errors=True)
    labels = [m.label for m in trees]
    med = {label: statistics.median(r["msgs_per_s"] for r in records if r["mtad"] == label) for label in labels}
    cpu, main, workers = ({label: statistics.median(r[key] for r in records if r["mtad"] == label) for label in labels}
                          for key in ("mtad_cpu_us_per_msg", "main_us_per_msg", "workers_us_per_msg"))
    print(f"\n| verification | msgs/s (median of {args.rounds}) | runs | mtad CPU µs/msg | main process | workers |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        runs = ", ".join(str(r["msgs_per_s"]) for r in records if r["mtad"] == label)
        print(f"| {label} | {med[label]:.0f} | {runs} | {cpu[label]} | {main[label]} | {workers[label]} |")
    ratio = med["on"] / med["off"]
    print(f"\non / off = {ratio:.2f} (target >= 0.7: {'met' if ratio >= 0.7 else 'NOT met'})")
    if "base-on" in med:
        print(f"base-on / off = {med['base-on'] / med['off']:.2f}; CPU per message on - off: "
              f"{cpu['on'] - cpu['off']} µs, base {cpu['base-on'] - cpu['off']} µs")
    problems = [r for r in records if "problem" in r]
    for r in problems:
        print(f"PROBLEM round {r['round']} {r['mtad']}: {r['problem']}")
    return 1 if problems else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--msgs", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--size", type=int, default=2048, help="body bytes of the signed message")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="authentication.workers of both mtads")
    ap.add_argument("--smtp-source", default=shutil.which("smtp-source") or "/usr/sbin/smtp-source")
    ap.add_argument("--out", help="append each run's record (JSON line) here")
    base = ap.add_mutually_exclusive_group()
    base.add_argument("--base-rev", help="also measure mtad as committed at REV with verification on (base-on)")
    base.add_argument("--base-src", help="also measure the mtad package in this folder with verification on")
    args = ap.parse_args()
    try:
        import uvloop
        return uvloop.run(main_async(args))
    except ImportError:
        return asyncio.run(main_async(args))


if __name__ == "__main__":
    raise SystemExit(main())
