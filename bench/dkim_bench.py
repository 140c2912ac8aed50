#!/usr/bin/env python3
"""DKIM signatures per second on one core: mtad.dkim.sign beside dkimpy's dkim.sign and `openssl speed`.

For a typical ~2 KB message and each key type (RSA-2048, Ed25519) it measures, in one run:
  mtad      mtad.dkim.sign (relaxed/relaxed canonicalisation in Python, signature by `cryptography`)
  dkimpy    dkim.sign with the same headers and canonicalisation
  openssl   `openssl speed -seconds N rsa2048 ed25519`, the raw C signing rate (the floor)
and prints each figure with the ratios mtad/openssl and mtad/dkimpy. Every mtad signature kind is first checked
with dkimpy's verifier, so the figures are for signatures that verify.

--pool 0,1,2 also signs RSA-2048 through mtad.outbound.signer.DkimSigner with that many worker processes (0: in-process
on the event loop), 5,000 messages requested at once as the scheduler does after a claim, and prints messages/s
and the CPU the event loop's process spent per message (what the pool saves it).

    python bench/dkim_bench.py [--seconds 2] [--repeats 3] [--size 2048] [--json] [--pool 0,1,2]

Each figure is the median of --repeats timed loops of --seconds each.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import dkim as dkimpy
from cryptography.hazmat.primitives import serialization

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from mtad.mail import dkim  # noqa: E402

HEADERS = (
    b"From: Alice Example <alice@example.com>\r\n"
    b"To: Bob Example <bob@example.net>\r\n"
    b"Subject: DKIM benchmark message\r\n"
    b"Date: Sat, 22 Nov 2025 12:00:00 +0000\r\n"
    b"Message-ID: <bench-1@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
)
LINE = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n"


def make_message(size: int) -> bytes:
    body = LINE * max(1, (size - len(HEADERS) - 2) // len(LINE))
    return HEADERS + b"\r\n" + body


def rate(fn, seconds: float, repeats: int) -> float:
    fn()  # warm-up
    rates = []
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        deadline = start + seconds
        while True:
            fn()
            n += 1
            if n % 16 == 0 and time.perf_counter() >= deadline:
                break
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def pool_rates(msg: bytes, key, workers: list[int], n: int = 5000) -> dict[str, dict[str, float]]:
    """Through DkimSigner: msgs/s and the calling process's CPU µs per message, per worker count."""
    import asyncio

    from mtad.outbound.signer import DkimSigner

    async def run(w: int) -> dict[str, float]:
        signer = DkimSigner(w)
        try:
            await signer.sign(msg, [key])  # start the workers
            t, c = time.perf_counter(), time.process_time()
            await asyncio.gather(*(signer.sign(msg, [key]) for _ in range(n)))
            wall, cpu = time.perf_counter() - t, time.process_time() - c
        finally:
            await signer.close()
        return {"msgs_per_s": n / wall, "caller_cpu_us_per_msg": 1e6 * cpu / n}
    return {f"pool-{w}": asyncio.run(run(w)) for w in workers}


def openssl_speed(seconds: float) -> dict[str, float]:
    """Sign/s of `openssl speed` for rsa2048 and ed25519, parsed from its summary table."""
    out = subprocess.run(["openssl", "speed", "-seconds", str(int(seconds)), "rsa2048", "ed25519"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    rsa_line = re.search(r"^rsa\s+2048 bits\s+\S+s\s+\S+s\s+([\d.]+)", out, re.M)
    ed_line = re.search(r"EdDSA \(Ed25519\)\s+\S+s\s+\S+s\s+([\d.]+)", out)
    if not rsa_line or not ed_line:
        raise SystemExit(f"could not parse openssl speed output:\n{out}")
    return {"rsa2048": float(rsa_line.group(1)), "ed25519": float(ed_line.group(1))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--pool", help="worker counts for mtad.outbound.signer, e.g. 0,1,2")
    args = ap.parse_args()

    msg = make_message(args.size)
    names = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
    rsa_key = dkim.load_key("example.com", "bench", dkim.generate_key("rsa", 2048))
    ed_key = dkim.load_key("example.com", "bench", dkim.generate_key("ed25519"))
    # dkimpy takes traditional PEM for RSA and the base64 32-byte seed for Ed25519.
    rsa_pem = rsa_key.private_key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.TraditionalOpenSSL,
                                                serialization.NoEncryption())
    ed_seed = base64.b64encode(ed_key.private_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()))

    runs = {
        "rsa2048": (rsa_key, lambda: dkimpy.sign(msg, b"bench", b"example.com", rsa_pem, include_headers=names,
                                                 canonicalize=(b"relaxed", b"relaxed"))),
        "ed25519": (ed_key, lambda: dkimpy.sign(msg, b"bench", b"example.com", ed_seed, include_headers=names,
                                                canonicalize=(b"relaxed", b"relaxed"),
                                                signature_algorithm=b"ed25519-sha256")),
    }
    results: dict[str, dict[str, float]] = {}
    for kind, (key, dkimpy_sign) in runs.items():
        signed = dkim.sign(msg, [key])
        record = dkim.dns_record(key)[1].encode()
        if not dkimpy.verify(signed, dnsfunc=lambda name, timeout=5: record):
            raise SystemExit(f"{kind}: mtad signature does not verify with dkimpy")
        results[kind] = {
            "mtad": rate(lambda: dkim.sign(msg, [key]), args.seconds, args.repeats),
            "dkimpy": rate(dkimpy_sign, args.seconds, args.repeats),
        }
    for kind, per_s in openssl_speed(args.seconds).items():
        results[kind]["openssl"] = per_s
    pools = pool_rates(msg, rsa_key, [int(w) for w in args.pool.split(",")]) if args.pool else {}

    if args.json:
        print(json.dumps({"message_bytes": len(msg), **results, **pools}, indent=1))
        return
    print(f"DKIM signatures/s, one core, {len(msg)}-byte message "
          f"(median of {args.repeats} x {args.seconds:g}s; openssl speed -seconds {int(args.seconds)})")
    print(f"{'key':<9}{'mtad':>10}{'dkimpy':>10}{'openssl':>10}{'mtad/openssl':>14}{'mtad/dkimpy':>13}")
    for kind, r in results.items():
        print(f"{kind:<9}{r['mtad']:>10.0f}{r['dkimpy']:>10.0f}{r['openssl']:>10.0f}"
              f"{r['mtad'] / r['openssl']:>14.2f}{r['mtad'] / r['dkimpy']:>13.1f}")

    for name, r in pools.items():
        print(f"rsa2048 via signer {name}: {r['msgs_per_s']:.0f} msgs/s, event loop's process "
              f"{r['caller_cpu_us_per_msg']:.0f} µs CPU per message")


if __name__ == "__main__":
    main()
