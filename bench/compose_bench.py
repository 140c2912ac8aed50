#!/usr/bin/env python3
"""Cost of composing API sends: mtad.mail.compose beside the standard library's builder (issue 11 item 5).

    python bench/compose_bench.py [--src DIR]

Cases (1 KB of content: 512 B text + 512 B html, ``multipart/alternative``):

* ``single``    ``compose.compose`` for one recipient, one copy (``POST /messages`` without batch).
* ``batch100``  ``compose.compose`` with 100 ``to`` recipients and ``recipient-variables``: 100 copies, the
                subject and both bodies substituted per recipient. Reported per request and per copy.
* ``stdlib``    the same copy built with ``email.message.EmailMessage`` (``email.policy.SMTP``:
                ``set_content`` + ``add_alternative``, headers set on the message) and ``as_bytes()``:
                what each copy would cost if mtad used the standard library's builder.

CPU time (``time.process_time``) of this process, after one warm-up call. ``--src DIR`` imports mtad
from DIR (a ``git archive`` of another revision) to compare before and after a change.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def cpu_per_call(fn, n: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", help="import mtad from this directory")
    args = ap.parse_args()
    if args.src:
        sys.path.insert(0, args.src)
    import email.message
    import email.policy

    sys.path.insert(1, os.path.dirname(os.path.abspath(__file__)))
    from mtad_layout import mtad_module
    compose = mtad_module("mtad.mail.compose")  # mtad/compose.py in a tree before the packages (bebe064)

    now = time.time()
    text = ("Hello %recipient.name%, " + "lorem ipsum dolor sit amet " * 20)[:512]
    html = ("<p>Hello %recipient.name%</p>" + "<p>lorem ipsum dolor sit amet</p>" * 20)[:512]
    rcpts = [f"user{i}@example.net" for i in range(100)]
    variables = {r: {"name": f"User {i}"} for i, r in enumerate(rcpts)}
    batch = [("from", "Sender <news@example.com>"), ("to", ", ".join(rcpts)), ("subject", "Hello %recipient.name%"),
             ("text", text), ("html", html), ("recipient-variables", json.dumps(variables))]
    single = [("from", "Sender <news@example.com>"), ("to", "a@example.net"), ("subject", "Hello"), ("text", text),
              ("html", html)]

    def stdlib() -> bytes:
        m = email.message.EmailMessage(policy=email.policy.SMTP)
        m["From"] = "Sender <news@example.com>"
        m["To"] = "a@example.net"
        m["Subject"] = "Hello"
        m["Message-ID"] = "<20260101000000.0123456789abcdef@example.com>"
        m["Date"] = email.utils.formatdate(now, usegmt=True)
        m.set_content(text)
        m.add_alternative(html, subtype="html")
        return m.as_bytes()

    s = cpu_per_call(lambda: compose.compose(single, [], domain="example.com", now=now, max_size=25_000_000), 2000)
    b = cpu_per_call(lambda: compose.compose(batch, [], domain="example.com", now=now, max_size=25_000_000), 50)
    std = cpu_per_call(stdlib, 300)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min); mtad from {compose.__file__}")
    print("| case | CPU per request | CPU per copy |")
    print("|---|---:|---:|")
    print(f"| single (compose) | {s * 1e6:.0f} µs | {s * 1e6:.0f} µs |")
    print(f"| batch100 (compose) | {b * 1e3:.2f} ms | {b / 100 * 1e6:.0f} µs |")
    print(f"| single (stdlib EmailMessage) | {std * 1e6:.0f} µs | {std * 1e6:.0f} µs |")


if __name__ == "__main__":
    main()
