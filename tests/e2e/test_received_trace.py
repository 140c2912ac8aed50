"""The Received: trace field on each way a message enters mtad, as the receiving MX (or the stored copy) shows it:
an SMTP session (MX and authenticated submission), the send API, and the resend of a stored message. One builder
makes them all (mtad.mail.headers.received); these are the exact bytes each path wrote before it was one."""

from __future__ import annotations

import re
import smtplib
import time

import pytest

from tests.e2e.helpers import send, submission
from tests.support.api import api

DEST = "trace.test"
DATE = rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d -0000"
MESSAGE = b"From: <postmaster@example.com>\r\nTo: <a@trace.test>\r\nSubject: trace\r\n\r\nHello.\r\n"


def trace(helo: bytes, protocol: bytes, queue_id: bytes, rcpt: bytes | None) -> re.Pattern:
    """The exact field, with only its date left open."""
    for_part = b"\r\n\tfor <" + re.escape(rcpt) + b">" if rcpt else b""
    return re.compile(b"Received: from " + re.escape(helo) + rb" \(\[127\.0\.0\.1\]\)\r\n\tby mtad\.test \(mtad\) with "
                      + protocol + b" id " + queue_id + for_part + b";\r\n\t" + DATE + b"\r\n")



async def test_an_authenticated_submission_gets_an_esmtpsa_trace_naming_its_one_recipient(delivering_env, certs):
    daemon, sink = delivering_env
    with submission(daemon, certs.client_context()) as s:
        code, text = send(s, "postmaster@example.com", [f"one@{DEST}"], MESSAGE)
    assert code == 250, text
    qid = re.search(r"queued as (\w+)", text).group(1).encode()
    got = (await sink.wait_for(f"one@{DEST}"))[0]
    assert trace(b"client.test", b"ESMTPSA", qid, f"one@{DEST}".encode()).match(got.data), got.data[:300]
    assert got.data.endswith(MESSAGE)


async def test_the_send_api_gets_an_http_trace_with_for_only_for_one_recipient(delivering_env):
    daemon, sink = delivering_env
    for to, rcpt in (([f"api1@{DEST}"], f"api1@{DEST}".encode()), ([f"api2@{DEST}", f"api3@{DEST}"], None)):
        sent = await api(daemon, "POST", "/v3/example.com/messages", data=[
            ("from", "postmaster@example.com"), ("subject", "trace"), ("text", "Hello."), *(("to", t) for t in to)])
        got = (await sink.wait_for(to[0]))[0]
        assert trace(b"api", b"HTTP", rb"\w+", rcpt).match(got.data), got.data[:300]
        assert f"Message-ID: {sent['id']}".encode() in got.data


async def test_the_mx_and_the_stored_resend_each_add_their_own_trace(delivering_env):
    daemon, sink = delivering_env
    created = await api(daemon, "POST", "/v3/routes", data=[
        ("expression", "match_recipient('keep@inbound.test')"), ("action", "store()")])
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        code, text = send(s, "alice@sender.test", ["keep@inbound.test"], MESSAGE)
    assert code == 250, text
    key = re.search(r"queued as (\w+)", text).group(1)
    for _ in range(100):
        events = await api(daemon, "GET", "/v3/inbound.test/events", params={"event": "stored"})
        if events["items"]:
            break
        time.sleep(0.05)
    [stored_event] = events["items"]
    path = stored_event["storage"]["url"].split("/v3/", 1)[1]
    raw = await api(daemon, "GET", f"/v3/{path}", headers={"Accept": "message/rfc2822"})
    stored = raw["body-mime"].encode()
    smtp_trace = trace(b"client.test", b"ESMTP", key.encode(), b"keep@inbound.test").match(stored)
    assert smtp_trace, stored[:300]
    assert stored[smtp_trace.end():] == MESSAGE

    await api(daemon, "POST", f"/v3/{path}", data={"to": f"again@{DEST}"})
    got = (await sink.wait_for(f"again@{DEST}"))[0]
    resend_trace = trace(b"api", b"HTTP", rb"\w+", f"again@{DEST}".encode()).match(got.data)
    assert resend_trace, got.data[:300]
    assert got.data[resend_trace.end():] == stored
    await api(daemon, "DELETE", f"/v3/routes/{created['route']['id']}")
