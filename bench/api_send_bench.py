#!/usr/bin/env python3
"""Messages accepted per second through ``POST /v3/{domain}/messages`` beside mtad's own SMTP accept rate.

One mtad (``python -m mtad run``, delivery off so only acceptance is measured, log level warning) on
127.0.0.1, driven in the same run by N concurrent clients (default 20) of each kind, in alternating
rounds (SMTP, API, API, SMTP, ... so drift and the growing store hit both alike):

- ``smtp``: mtad's MX listener (``tls: none``), as in the ingress benchmark, one persistent session per
  client, MAIL, RCPT, DATA per message as smtplib does (no pipelining), to a receiving domain whose
  only route is ``stop()`` (accepted and committed, no forward work). A message is ~1 KB.
  With ``--tls``: the submission listener instead, STARTTLS then AUTH PLAIN once per session.
- ``api``:  ``POST /v3/example.com/messages`` over persistent HTTP/1.1 connections (HTTPS with
  ``--tls``), one request per message with ``from``, ``to``, ``subject`` and ``text`` (the composed
  message is ~1 KB), urlencoded by default (``--form multipart`` for multipart/form-data, what SDKs
  send with files).

Both clients are raw asyncio streams with pre-encoded requests, so the client costs about the same
per message on either side and the figure is the server's. Every accepted message is committed
durably before its 250 / 200 (mtad's contract); the run checks that the store holds as many messages
as were accepted. Output: one line per round, then the medians and the ratio api/smtp (target >= 0.8).

    python bench/api_send_bench.py                 # 20 clients, 3 rounds of 5 s each per kind
    python bench/api_send_bench.py --seconds 3 --rounds 2 --clients 20 --form multipart
    python bench/api_send_bench.py --tls           # SMTP submission with STARTTLS+AUTH vs HTTPS
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mtad.api import hash_key  # noqa: E402
from mtad.base.passwords import hash_password  # noqa: E402

API_KEY = "key-bench0123456789abcdef01234567"
LOGIN, PASSWORD = "bench@example.com", "bench-password"
TEXT = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 14)[:760]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp: Path, tls: bool) -> dict:
    import yaml
    cfg = {
        "hostname": "bench.test",
        "state_dir": str(tmp / "state"),
        "listeners": [{"address": f"127.0.0.1:{free_port()}", "role": "mx", "tls": "none", "name": "mx"},
                      {"address": f"127.0.0.1:{free_port()}", "role": "submission", "tls": "starttls", "name": "sub"}],
        "sending_domains": {"example.com": {"users": {"bench": {"password_hash": hash_password(PASSWORD, n=2**10)}}}},
        "receiving_domains": ["dest.test"],
        "routing": {"routes": [{"expression": "match_recipient('.*@dest.test')", "actions": ["stop()"]}]},
        "api": {"address": f"127.0.0.1:{free_port()}", "keys": [{"key_hash": hash_key(API_KEY)}], "tls": tls},
        "delivery": {"enabled": False},
        "limits": {"max_connections_per_ip": 1000},
        "log": {"level": "warning"},
    }
    (tmp / "mtad.yaml").write_text(yaml.safe_dump(cfg))
    return cfg


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"mtad exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} did not open")


# --- clients --------------------------------------------------------------------------------------------

class Stop:
    def __init__(self) -> None:
        self.at = float("inf")


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("SMTP server closed the connection")
        if line[3:4] != b"-":
            return line


def smtp_message(n: int) -> bytes:
    return (f"From: Bench <{LOGIN}>\r\nTo: <rcpt{n}@dest.test>\r\nSubject: bench message {n}\r\n"
            f"Message-ID: <bench{n}.{time.time()}@example.com>\r\n\r\n{TEXT}\r\n").encode()


def client_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # mtad's self-signed certificate, on loopback
    return ctx


async def smtp_client(port: int, tls: bool, stop: Stop, counts: list[int], idx: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_reply(reader)
    writer.write(b"EHLO bench.client\r\n")
    await read_reply(reader)
    if tls:
        writer.write(b"STARTTLS\r\n")
        assert (await read_reply(reader)).startswith(b"220")
        await writer.start_tls(client_tls())
        writer.write(b"EHLO bench.client\r\n")
        await read_reply(reader)
        token = base64.b64encode(f"\0{LOGIN}\0{PASSWORD}".encode()).decode()
        writer.write(f"AUTH PLAIN {token}\r\n".encode())
        assert (await read_reply(reader)).startswith(b"235")
    sender = LOGIN if tls else "someone@sender.test"
    n = 0
    while time.monotonic() < stop.at:
        writer.write(f"MAIL FROM:<{sender}>\r\n".encode())
        assert (await read_reply(reader)).startswith(b"250")
        writer.write(f"RCPT TO:<rcpt{idx}@dest.test>\r\n".encode())
        assert (await read_reply(reader)).startswith(b"250")
        writer.write(b"DATA\r\n")
        assert (await read_reply(reader)).startswith(b"354")
        writer.write(smtp_message(n) + b".\r\n")
        reply = await read_reply(reader)
        assert reply.startswith(b"250"), reply
        counts[idx] += 1
        n += 1
    writer.write(b"QUIT\r\n")
    writer.close()


def api_request(port: int, form: str, idx: int) -> bytes:
    fields = [("from", f"Bench <{LOGIN}>"), ("to", f"rcpt{idx}@dest.test"), ("subject", f"bench message {idx}"),
              ("text", TEXT)]
    if form == "multipart":
        boundary = "benchboundary7d3f"
        body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
                       for k, v in fields) + f"--{boundary}--\r\n"
        ctype = f"multipart/form-data; boundary={boundary}"
    else:
        body = urllib.parse.urlencode(fields)
        ctype = "application/x-www-form-urlencoded"
    auth = base64.b64encode(f"api:{API_KEY}".encode()).decode()
    data = body.encode()
    head = (f"POST /v3/example.com/messages HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Basic {auth}\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n")
    return head.encode() + data


async def read_http(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


async def api_client(port: int, form: str, tls: bool, stop: Stop, counts: list[int], idx: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls() if tls else None)
    request = api_request(port, form, idx)
    while time.monotonic() < stop.at:
        writer.write(request)
        status, body = await read_http(reader)
        assert status == 200 and b"Queued" in body, (status, body)
        counts[idx] += 1
    writer.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of the mtad process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_round(kind: str, cfg: dict, clients: int, seconds: float, form: str, tls: bool,
                    pid: int) -> tuple[float, int, float]:
    counts = [0] * clients
    stop = Stop()
    if kind == "smtp":
        port = int(cfg["listeners"][1 if tls else 0]["address"].rsplit(":", 1)[1])
        tasks = [smtp_client(port, tls, stop, counts, i) for i in range(clients)]
    else:
        port = int(cfg["api"]["address"].rsplit(":", 1)[1])
        tasks = [api_client(port, form, tls, stop, counts, i) for i in range(clients)]
    running = [asyncio.ensure_future(t) for t in tasks]
    await asyncio.sleep(0.5)  # connect, authenticate, warm up: not measured
    start_counts, start, cpu = sum(counts), time.monotonic(), cpu_seconds(pid)
    stop.at = start + seconds
    await asyncio.gather(*running)
    elapsed = time.monotonic() - start
    done = sum(counts) - start_counts
    return done / elapsed, sum(counts), (cpu_seconds(pid) - cpu) * 1000 / max(done, 1)


def stored(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--form", choices=("urlencoded", "multipart"), default="urlencoded")
    ap.add_argument("--tls", action="store_true", help="SMTP submission with STARTTLS+AUTH vs the API over HTTPS")
    ap.add_argument("--keep", action="store_true", help="keep the state folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mtad-api-bench-"))
    cfg = write_config(tmp, args.tls)
    log = open(tmp / "mtad.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(tmp / "mtad.yaml")],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        for listener in cfg["listeners"]:
            wait_port(int(listener["address"].rsplit(":", 1)[1]), proc)
        wait_port(int(cfg["api"]["address"].rsplit(":", 1)[1]), proc)
        try:
            import uvloop
            runner = uvloop.run
        except ImportError:
            runner = asyncio.run
        rates: dict[str, list[float]] = {"smtp": [], "api": []}
        cpu_ms: dict[str, list[float]] = {"smtp": [], "api": []}
        accepted = 0
        order = []
        for r in range(args.rounds):
            order += ["smtp", "api"] if r % 2 == 0 else ["api", "smtp"]
        for kind in order:
            rate, total, ms = runner(run_round(kind, cfg, args.clients, args.seconds, args.form, args.tls, proc.pid))
            accepted += total
            rates[kind].append(rate)
            cpu_ms[kind].append(ms)
            label = {"smtp": "smtp-submission+tls" if args.tls else "smtp-mx", "api": "api-https" if args.tls else "api"}
            print(f"{label[kind]:20s} {args.clients} clients, 1 KB: {rate:8.0f} msgs/s, server CPU {ms:.3f} ms/msg",
                  flush=True)
        kept = stored(Path(cfg["state_dir"]) / "mtad.sqlite3")
        smtp, api = statistics.median(rates["smtp"]), statistics.median(rates["api"])
        ratio = api / smtp if smtp else float("nan")
        result = {"clients": args.clients, "seconds": args.seconds, "rounds": args.rounds, "form": args.form,
                  "tls": args.tls,
                  "smtp_msgs_per_s": round(smtp), "api_msgs_per_s": round(api), "ratio_api_smtp": round(ratio, 3),
                  "smtp_cpu_ms_per_msg": round(statistics.median(cpu_ms["smtp"]), 3),
                  "api_cpu_ms_per_msg": round(statistics.median(cpu_ms["api"]), 3),
                  "target": 0.8, "accepted": accepted, "stored": kept, "cpus": os.cpu_count(),
                  "load_avg_1m": os.getloadavg()[0]}
        print(f"median: smtp {smtp:.0f} msgs/s, api {api:.0f} msgs/s, api/smtp = {ratio:.2f} "
              f"(target >= 0.8: {'met' if ratio >= 0.8 else 'NOT met'}); accepted {accepted}, stored {kept}")
        print(json.dumps(result))
        if kept != accepted:
            print(f"MISMATCH: {accepted} accepted but {kept} stored", file=sys.stderr)
            return 1
        return 0
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"state kept in {tmp}")


if __name__ == "__main__":
    sys.exit(main())
