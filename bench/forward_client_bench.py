#!/usr/bin/env python3
"""Route-forward HTTP client: mtad's aiohttp path beside its lean fasthttp path, in one run (issue 11 item 5).

    python bench/forward_client_bench.py [--seconds 5] [--concurrency 20] [--sizes 1024,10240,102400]

The receiver is a separate process (``--receiver``): an aiohttp application on 127.0.0.1 that reads each
POST whole and answers 200 ``OK``, keep-alive (aiohttp's defaults), like a web application taking
Mailgun-style forwards. This process is the client: ``mtad.net.httpclient.HttpClient`` posting to
``http://127.0.0.1:P/inbound`` (an IP literal, so the fast path applies when enabled) a
``multipart/form-data`` body made by mtad's own form encoder (``encode_form``: sender, recipient,
subject, ``body-plain`` padded to SIZE, ``body-html``, ``message-headers``), as ``Forwarder`` does
(``data=bytes``, ``Content-Type`` header). Two clients:

* ``aiohttp``   ``HttpClient(fast_post=False)``: aiohttp's ``ClientSession`` for every request.
* ``fasthttp``  ``HttpClient()``: ``mtad.net.fasthttp.FastPoster`` (httptools) for plain http to an IP.

For each size the two run one after the other (order alternated per size) for ``--seconds`` each with
``--concurrency`` requests in flight (workers posting in a loop, a new request as soon as one returns),
after a one-second warm-up. Printed per cell: requests/s and this process's CPU per request
(``time.process_time``: all the client's work, event loop included). Every answer must be 200.
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
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def receiver(port: int) -> None:
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text="OK")

    app = web.Application(client_max_size=10 * 1024 * 1024)
    app.router.add_post("/inbound", handle)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None, handle_signals=True)


def form_body(size: int) -> tuple[bytes, str]:
    from mtad.inbound.form.build import encode_form
    text = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * (size // 56 + 1))
    fields = [("recipient", "fwd@example.net"), ("sender", "a@example.org"), ("from", "A <a@example.org>"),
              ("subject", "Benchmark"), ("message-headers", '[["Subject", "Benchmark"]]'),
              ("stripped-text", "Lorem ipsum"), ("body-html", "<p>Lorem ipsum</p>")]
    fixed = len(encode_form(fields).body)
    form = encode_form(fields + [("body-plain", text[:max(0, size - fixed - 120)])])
    return form.body, form.content_type


async def run_cell(fast: bool, url: str, body: bytes, ctype: str, seconds: float, concurrency: int
                   ) -> tuple[float, float, int]:
    from mtad.net.httpclient import HttpClient
    client = HttpClient(("127.0.0.0/8",), 30.0, fast_post=fast)
    count = 0
    bad = 0
    stop_at = 0.0

    async def worker() -> None:
        nonlocal count, bad
        while time.monotonic() < stop_at:
            result = await client.post(url, data=body, headers={"Content-Type": ctype})
            if result.status != 200:
                bad += 1
            count += 1

    try:
        stop_at = time.monotonic() + 1.0  # warm-up: connections made, code paths hot
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        count = 0
        start, cpu0 = time.monotonic(), time.process_time()
        stop_at = start + seconds
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.monotonic() - start, time.process_time() - cpu0
    finally:
        await client.close()
    return count / wall, cpu / count * 1e6, bad


async def main_async(args: argparse.Namespace) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--receiver", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        url = f"http://127.0.0.1:{port}/inbound"
        print(f"load before: {os.getloadavg()[0]:.2f} (1 min); {args.concurrency} in flight, {args.seconds:g} s per cell")
        print("| body | client | requests/s | client CPU µs/request | non-200 |")
        print("|---:|---|---:|---:|---:|")
        for i, size in enumerate(int(s) for s in args.sizes.split(",")):
            body, ctype = form_body(size)
            order = (False, True) if i % 2 == 0 else (True, False)
            for fast in order:
                rate, cpu, bad = await run_cell(fast, url, body, ctype, args.seconds, args.concurrency)
                print(f"| {len(body) / 1024:.0f} KB | {'fasthttp' if fast else 'aiohttp'} | {rate:.0f} | {cpu:.0f} | {bad} |",
                      flush=True)
        print(f"load after: {os.getloadavg()[0]:.2f} (1 min)")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=20)
    ap.add_argument("--sizes", default="1024,10240,102400")
    ap.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.receiver:
        receiver(args.receiver)
        return
    try:
        import uvloop
        uvloop.install()  # mtad runs on uvloop (mtad/app.py)
    except ImportError:
        pass
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
