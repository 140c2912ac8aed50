#!/usr/bin/env python3
"""Per-connection cost of mtad's SMTP session set-up: connect, 220, QUIT, 221, close (issue 11 item 5).

    python bench/smtp_connect_bench.py [--connections 1000] [--src DIR]

Measures the server's CPU per connection for two ways of building a session, in one run:

* ``seam``           mtad's ``MtadSMTP`` as it is (``mtad/smtp/seam.py`` sets the aiosmtpd state it needs).
* ``aiosmtpd-init``  the same class, but every connection also runs aiosmtpd's own ``SMTP.__init__``
                     first (what the seam bypasses: it introspects the handler and the protocol object).

Each variant is served by its own child process (``--serve VARIANT``: an asyncio server on 127.0.0.1 with
the class as protocol factory, nothing else); this process is the client and opens the connections one
after the other with blocking sockets, reading the greeting, sending QUIT, reading the 221 and waiting for
the close. After 100 unmeasured connections the server's CPU clock is read (SIGUSR1) and read again after
the measured ones (SIGUSR2). ``--src DIR`` imports mtad from DIR (a ``git archive`` of another revision).
Prints µs of server CPU per connection and connections/s of the whole dialogue.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

VARIANTS = ("seam", "aiosmtpd-init")


def serve(variant: str) -> None:
    from aiosmtpd.smtp import SMTP

    from mtad.config.schema import LimitsConfig, ListenerConfig
    from mtad.smtp.server import MtadSMTP, Sessions

    class WithAiosmtpdInit(MtadSMTP):
        def __init__(self, policy, listener, limits, hostname, tls_context, sessions, loop):
            SMTP.__init__(self, None, hostname=hostname, data_size_limit=int(limits.max_message_size),
                          enable_SMTPUTF8=True, tls_context=tls_context, timeout=limits.command_timeout.seconds,
                          loop=loop)
            MtadSMTP.__init__(self, policy, listener, limits, hostname, tls_context, sessions, loop)

    cls = MtadSMTP if variant == "seam" else WithAiosmtpdInit
    limits = LimitsConfig()
    listener = ListenerConfig(address="127.0.0.1:0", role="mx", tls="none")
    sessions = Sessions()
    marks: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: cls(None, listener, limits, "bench.example", None, sessions, loop), "127.0.0.1", 0, backlog=128)
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGUSR1, lambda: marks.append(time.process_time()))
        loop.add_signal_handler(signal.SIGUSR2, lambda: (marks.append(time.process_time()), done.set()))
        print(server.sockets[0].getsockname()[1], flush=True)
        await done.wait()
        print(f"{marks[1] - marks[0]:.6f}", flush=True)
        server.close()

    asyncio.run(main())


def dialogue(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
        assert f.read() == b""


def measure(variant: str, n: int, src: str | None) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=src or os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, __file__, "--serve", variant], stdout=subprocess.PIPE, text=True,
                            env=env)
    try:
        port = int(proc.stdout.readline())
        for _ in range(100):
            dialogue(port)
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR1)
        time.sleep(0.2)
        start = time.perf_counter()
        for _ in range(n):
            dialogue(port)
        wall = time.perf_counter() - start
        time.sleep(0.2)
        proc.send_signal(signal.SIGUSR2)
        cpu = float(proc.stdout.readline())
        return cpu / n * 1e6, n / wall
    finally:
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--src", help="import mtad from this directory")
    ap.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {args.connections} connections per variant")
    print("| variant | server CPU µs/connection | connections/s |")
    print("|---|---:|---:|")
    for variant in VARIANTS:
        us, rate = measure(variant, args.connections, args.src)
        print(f"| {variant} | {us:.0f} | {rate:.0f} |", flush=True)


if __name__ == "__main__":
    main()
