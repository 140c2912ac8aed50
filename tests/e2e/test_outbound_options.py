"""The message's options on the way out: DKIM (RSA and Ed25519 at once, verified by dkimpy against the DNS
record ``mtad dkim keygen`` printed), ``X-Mailgun-Dkim: no``, Deliver-By, test mode (Drop-Message), tags,
campaign and variables in the events, Require-TLS / Skip-Verification against MXes with a trusted
certificate, an untrusted one and no STARTTLS at all, and opportunistic TLS falling back to plaintext when the
handshake fails.
"""

from __future__ import annotations

import email.utils
import math
import os
import re
import ssl
import subprocess
import sys
import time

import dkim as dkimpy
import dns.resolver
import pytest
import trustme

from tests.e2e.outbound_support import deliveries, events, outcomes, serve_domain, submit, wait_final
from tests.support.sink import server_tls
from tests.support.api import api_sync
from tests.support.wait import wait_until
from tests.support.daemon import Mtad


def keygen(folder, selector: str, algorithm: str) -> tuple[str, str, str]:
    """Run ``mtad dkim keygen`` as an operator would; (key file, TXT name, TXT value) from its output."""
    out = subprocess.run([sys.executable, "-m", "mtad", "dkim", "keygen", "example.com", "--selector", selector,
                          "--algorithm", algorithm, "--out-dir", str(folder), "--state-dir", str(folder / "state")],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    name, value = re.search(r'^(\S+)\. IN TXT "(.+)"$', out, re.M).groups()
    key_file = re.search(r"key written to (\S+);", out).group(1)
    return key_file, name, value


@pytest.fixture(scope="module")
def dkim_records(tmp_path_factory, loopback_dns) -> list[tuple[str, str, str]]:
    folder = tmp_path_factory.mktemp("dkim")
    records = [keygen(folder, "rsa1", "rsa"), keygen(folder, "ed1", "ed25519")]
    for _, name, value in records:
        loopback_dns.add_txt(name, value)  # published, as the keygen output says
    return records


@pytest.fixture(scope="module")
def daemon(outbound_mtad, dkim_records) -> Mtad:
    daemon = outbound_mtad(dkim=[{"selector": "rsa1", "key_file": dkim_records[0][0]},
                                 {"selector": "ed1", "key_file": dkim_records[1][0]}])
    # a send naming an unknown campaign is refused
    api_sync(daemon, "POST", "/v3/example.com/campaigns", data={"name": "Autumn sale", "id": "autumn-sale"})
    return daemon


def dkim_results(message: bytes, nameserver_port: int) -> list[bool]:
    """dkimpy's verdict on every signature, its key fetched from the loopback DNS server."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.port = ["127.0.0.1"], nameserver_port

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        answer = resolver.resolve(name.decode(), "TXT")
        return b"".join(b"".join(r.strings) for r in answer)

    verifier = dkimpy.DKIM(message)
    count = len(re.findall(rb"^dkim-signature:", message.split(b"\r\n\r\n", 1)[0], re.I | re.M))
    results = []
    for i in range(count):
        try:
            results.append(verifier.verify(idx=i, dnsfunc=dnsfunc))
        except dkimpy.ValidationError:  # e.g. "body hash mismatch"
            results.append(False)
    return results


def test_dkim_rsa_and_ed25519_signatures_verify_independently(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "dkim.opt.test")
    sent = submit(daemon, certs, ["judy@dkim.opt.test"], headers="Cc: <copy@elsewhere.test>\r\n",
                  body="Signed  body\twith  spaces \r\n\r\n\r\n")
    assert wait_final(daemon, sent)["judy@dkim.opt.test"]["event"] == "delivered"

    [received] = mx.messages
    head = received.data.split(b"\r\n\r\n", 1)[0]
    sigs = received.message.get_all("DKIM-Signature")
    assert len(sigs) == 2
    assert "a=rsa-sha256" in sigs[0] and "s=rsa1" in sigs[0]
    assert "a=ed25519-sha256" in sigs[1] and "s=ed1" in sigs[1]
    assert all("d=example.com" in s and "c=relaxed/relaxed" in s for s in sigs)
    assert dkim_results(received.data, loopback_dns.port) == [True, True]
    # A changed body no longer verifies: the check above is not vacuous.
    assert dkim_results(received.data.replace(b"Signed", b"Forged"), loopback_dns.port) == [False, False]
    assert b"x-mailgun" not in head.lower()


def test_x_mailgun_dkim_no_leaves_the_message_unsigned(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "nodkim.opt.test")
    sent = submit(daemon, certs, ["ken@nodkim.opt.test"], headers="X-Mailgun-Dkim: no\r\n")
    assert wait_final(daemon, sent)["ken@nodkim.opt.test"]["event"] == "delivered"
    [received] = mx.messages
    head = received.data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"dkim-signature" not in head and b"x-mailgun-dkim" not in head


def test_deliver_by_is_not_attempted_before_its_time(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "later.opt.test")
    deliver_by = math.ceil(time.time()) + 2
    sent = submit(daemon, certs, ["leo@later.opt.test"],
                  headers=f"X-Mailgun-Deliver-By: {email.utils.formatdate(deliver_by)}\r\n")
    [row] = deliveries(daemon, sent.queue_id)
    assert row["next_attempt_at"] == deliver_by and row["attempts"] == 0

    event = wait_final(daemon, sent, timeout=10)["leo@later.opt.test"]
    [received] = mx.messages
    assert received.at >= deliver_by, received.at - deliver_by
    assert event["timestamp"] >= deliver_by
    assert mx.connections[0][1] >= deliver_by  # not even a connection before


def test_test_mode_records_650_and_sends_nothing(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "testmode.opt.test")
    sent = submit(daemon, certs, ["mia@testmode.opt.test", "ned@testmode.opt.test"],
                  headers="X-Mailgun-Drop-Message: yes\r\n")
    final = wait_final(daemon, sent)
    for event in final.values():
        assert event["event"] == "delivered"
        assert event["delivery-status"]["code"] == 650
        assert event["flags"]["is-test-mode"] is True
    assert deliveries(daemon, sent.queue_id)[0]["state"] == "done"
    assert mx.gauge.total == 0 and mx.messages == []


def test_tags_campaign_and_variables_are_carried_into_the_events(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "tags.opt.test")
    mx.data_replies.append("451 4.3.0 Not now")  # one temporary failure first: every event must carry them
    sent = submit(daemon, certs, ["olga@tags.opt.test"],
                  headers="X-Mailgun-Tag: newsletter\r\nX-Mailgun-Tag: october\r\n"
                          "X-Mailgun-Campaign-Id: autumn-sale\r\n"
                          'X-Mailgun-Variables: {"customer": 42, "plan": "gold"}\r\n')
    wait_final(daemon, sent)
    trail = events(daemon, sent.queue_id)
    assert [e["event"] for e in trail] == ["accepted", "failed", "delivered"]
    for event in trail:
        assert event["tags"] == ["newsletter", "october"]
        assert event["campaigns"] == [{"id": "autumn-sale"}]
        assert event["user-variables"] == {"customer": 42, "plan": "gold"}
    head = mx.messages[0].data.split(b"\r\n\r\n", 1)[0].lower()
    assert b"x-mailgun" not in head
    # The stats counters follow the tags as well.
    [(count,)] = daemon.query("SELECT sum(count) FROM stats WHERE domain = 'example.com' AND tag = 'october'"
                              " AND event = 'delivered'")
    assert count == 1


def test_require_tls_delivers_over_verified_tls(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "tls.opt.test", tls=server_tls(certs, "mx.tls.opt.test"))
    sent = submit(daemon, certs, ["pat@tls.opt.test"], headers="X-Mailgun-Require-TLS: yes\r\n")
    status = wait_final(daemon, sent)["pat@tls.opt.test"]["delivery-status"]
    assert (status["tls"], status["certificate-verified"]) == (True, True)
    assert mx.messages[0].tls


def test_require_tls_defers_when_the_mx_offers_no_starttls(daemon, certs, loopback_dns, mx_farm):
    mx = serve_domain(loopback_dns, mx_farm, "notls.opt.test")
    sent = submit(daemon, certs, ["quinn@notls.opt.test"], headers="X-Mailgun-Require-TLS: yes\r\n")

    event = wait_until(lambda: outcomes(daemon, sent.queue_id), 10, "an attempt")[0]
    assert (event["event"], event["severity"]) == ("failed", "temporary")
    assert "does not offer STARTTLS" in event["delivery-status"]["message"]
    assert deliveries(daemon, sent.queue_id)[0]["state"] == "deferred"
    assert mx.data_attempts == [] and mx.rcpt_attempts == []  # never handed over in plaintext
    # Without Require-TLS the same MX gets mail in plaintext (opportunistic TLS).
    plain = submit(daemon, certs, ["quinn@notls.opt.test"])
    status = wait_final(daemon, plain)["quinn@notls.opt.test"]["delivery-status"]
    assert status["tls"] is False and mx.message_ids() == [plain.message_id]


def test_require_tls_refuses_an_untrusted_certificate_unless_skip_verification(daemon, certs, loopback_dns,
                                                                                mx_farm):
    stranger = trustme.CA()  # not the CA in delivery.tls_ca_file
    ctx = server_tls(type("C", (), {"ca": stranger})(), "mx.badcert.opt.test")
    mx = serve_domain(loopback_dns, mx_farm, "badcert.opt.test", tls=ctx)
    refused = submit(daemon, certs, ["rita@badcert.opt.test"], headers="X-Mailgun-Require-TLS: yes\r\n")
    event = wait_until(lambda: outcomes(daemon, refused.queue_id), 10, "an attempt")[0]
    assert (event["event"], event["severity"]) == ("failed", "temporary")
    assert "certificate verify failed" in event["delivery-status"]["message"]
    assert mx.messages == []

    skipped = submit(daemon, certs, ["rita@badcert.opt.test"],
                     headers="X-Mailgun-Require-TLS: yes\r\nX-Mailgun-Skip-Verification: yes\r\n")
    status = wait_final(daemon, skipped)["rita@badcert.opt.test"]["delivery-status"]
    assert (status["tls"], status["certificate-verified"]) == (True, False)
    assert mx.message_ids() == [skipped.message_id] and mx.messages[0].tls


def test_opportunistic_tls_falls_back_to_plaintext_and_remembers_the_broken_host(daemon, certs, loopback_dns,
                                                                                  mx_farm):
    # STARTTLS is offered, but no handshake can succeed (the server offers only anonymous ciphers).
    broken = server_tls(certs, "mx.brokentls.opt.test")
    broken.maximum_version = ssl.TLSVersion.TLSv1_2
    broken.set_ciphers("aNULL:@SECLEVEL=0")
    mx = serve_domain(loopback_dns, mx_farm, "brokentls.opt.test", tls=broken)

    first = submit(daemon, certs, ["sue@brokentls.opt.test"])
    status = wait_final(daemon, first)["sue@brokentls.opt.test"]["delivery-status"]
    assert (status["tls"], status["attempt-no"]) == (False, 1)  # retried in plaintext at once, same attempt
    assert len(mx.connections) == 2  # the failed handshake, then plaintext
    wait_until(lambda: mx.gauge.current == 0, 10, "the idle plaintext connection closed")  # idle_timeout
    second = submit(daemon, certs, ["sue@brokentls.opt.test"])
    assert wait_final(daemon, second)["sue@brokentls.opt.test"]["delivery-status"]["tls"] is False
    assert len(mx.connections) == 3  # remembered: straight to plaintext, no second failed handshake
    assert mx.message_ids() == [first.message_id, second.message_id] and not any(m.tls for m in mx.messages)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_signing_workers_end_with_mtad_even_on_sigkill(outbound_mtad, dkim_records, certs, loopback_dns, mx_farm):
    """DKIM is signed in worker processes (delivery.dkim_workers): started at the first signature, gone when mtad
    is SIGKILLed (nothing to clean up; a restart signs again), and ended by a normal stop (the fixture's check)."""
    mx = serve_domain(loopback_dns, mx_farm, "workers.opt.test")
    daemon = outbound_mtad(delivery={"dkim_workers": 2}, dkim=[{"selector": "rsa1", "key_file": dkim_records[0][0]}])
    assert _children(daemon.proc.pid) == []  # no DKIM yet: no workers
    sent = submit(daemon, certs, ["olga@workers.opt.test"])
    assert wait_final(daemon, sent)["olga@workers.opt.test"]["event"] == "delivered"
    workers = _children(daemon.proc.pid)
    assert len(workers) == 2
    daemon.kill()
    assert wait_until(lambda: all(_gone(pid) for pid in workers), timeout=10)

    daemon.start()
    again = submit(daemon, certs, ["olga@workers.opt.test"])
    assert wait_final(daemon, again)["olga@workers.opt.test"]["event"] == "delivered"
    assert [dkim_results(m.data, loopback_dns.port) for m in mx.messages] == [[True], [True]]
