#!/usr/bin/env python3
"""Prove that a Postfix instance's output is DKIM-signed (bench/drain.sh, before the postfix-dkim rounds).

  python dkim_check.py --postfix-dir PF --port 2526 --capture-port 2530 --key KEY_PEM --selector rsa \\
                       --domain sender.bench.test

Listens on 127.0.0.1:CAPTURE_PORT (the instance's relayhost; run this BEFORE smtp-sink takes that port), submits
one message exactly as the rounds do (smtp-source, sender bench@DOMAIN, SIZE bytes) to the instance's smtpd, releases its hold queue (`postsuper -H ALL; postqueue -f`),
waits for the message to arrive here, and verifies its DKIM-Signature with dkimpy against the public key of
KEY_PEM (the TXT record mtad would publish, answered without DNS). Exits 1, saying why, unless the message
arrived with exactly one signature by DOMAIN/SELECTOR, rsa-sha256, c=relaxed/relaxed, that verifies.
"""
from __future__ import annotations

import argparse
import base64
import subprocess
import sys
import threading

import dkim
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives import serialization


class Capture:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's hook name)
        self.messages.append(envelope.original_content or envelope.content)
        self.arrived.set()
        return "250 OK"


def txt_record(key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


def tags(header: bytes) -> dict[str, str]:
    value = b"".join(header.split(b":", 1)[1].split()).decode()
    return dict(part.split("=", 1) for part in value.split(";") if "=" in part)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--postfix-dir", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--capture-port", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--selector", required=True)
    ap.add_argument("--domain", required=True)
    ap.add_argument("--size", type=int, default=1024)
    a = ap.parse_args()
    capture = Capture()
    controller = Controller(capture, hostname="127.0.0.1", port=a.capture_port)
    controller.start()
    try:
        subprocess.run(["smtp-source", "-s", "1", "-m", "1", "-l", str(a.size), "-f", f"bench@{a.domain}",
                        "-t", "b@example.net", "-M", "bench.localdomain", f"127.0.0.1:{a.port}"],
                       check=True, timeout=60)
        etc = f"{a.postfix_dir}/etc"
        subprocess.run(["postsuper", "-c", etc, "-H", "ALL"], capture_output=True)
        subprocess.run(["postqueue", "-c", etc, "-f"], capture_output=True)
        if not capture.arrived.wait(20):
            print(f"postfix-dkim check: FAILED: nothing arrived on port {a.capture_port} in 20 s"
                  f" (see {a.postfix_dir}/maillog)", file=sys.stderr)
            return 1
    finally:
        controller.stop()
    data = capture.messages[0]
    head = data.split(b"\r\n\r\n", 1)[0]
    sigs = [field for field in head.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").split(b"\r\n")
            if field.lower().startswith(b"dkim-signature:")]
    if len(sigs) != 1:
        print(f"postfix-dkim check: FAILED: {len(sigs)} DKIM-Signature header fields in the relayed message:\n"
              f"{head.decode(errors='replace')}", file=sys.stderr)
        return 1
    t = tags(sigs[0])
    want = {"d": a.domain, "s": a.selector, "a": "rsa-sha256", "c": "relaxed/relaxed"}
    wrong = {k: t.get(k) for k, v in want.items() if t.get(k) != v}
    record = txt_record(open(a.key, "rb").read())
    name = f"{a.selector}._domainkey.{a.domain}."

    def dnsfunc(qname, timeout=5):
        return record if qname.decode().rstrip(".") == name.rstrip(".") else None
    ok = dkim.verify(data, dnsfunc=dnsfunc)
    if wrong or not ok:
        print(f"postfix-dkim check: FAILED: verified={ok}, unexpected tags {wrong}:\n{sigs[0].decode()}",
              file=sys.stderr)
        return 1
    print(f"postfix-dkim check: the relayed message is signed and verifies with dkimpy: d={t['d']} s={t['s']}"
          f" a={t['a']} c={t['c']} h={t['h']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
