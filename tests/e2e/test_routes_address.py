"""Forwards to addresses, end to end: a route's ``forward("someone@fwd-dest.test")`` puts a copy into the
outbound queue, and mtad delivers it (DNS from the loopback DNS server, never the system resolver) to an
aiosmtpd server playing fwd-dest.test's MX. The envelope sender is an SRS0 address of the receiving domain,
the original message arrives byte for byte after mtad's trace header (its DKIM signature still verifies), and
a bounce sent back to that SRS address reaches the original sender's MX; a forged SRS address is refused."""

from __future__ import annotations

import re

import dkim as dkimpy
import pytest
import yaml

from mtad.mail import dkim as mtad_dkim
from tests.e2e.apihelpers import txt_lookup
from tests.e2e.outbound_support import DEFAULT_SHAPING, serve_domain, write_ca
from tests.e2e.routes_support import (accepted, assert_clean_exit, forward_events, inbound, route, routing_config,
    simple)
from tests.support.wait import wait_until
from tests.support.daemon import Mtad, base_config

ORIGIN = "orig-sender.test"
DEST = "fwd-dest.test"
SRS0 = re.compile(r"SRS0=[A-Z2-7]{4}=[A-Z2-7]{2}=orig-sender\.test=alice@inbound\.test", re.IGNORECASE)


@pytest.fixture(scope="module")
def mailboxes(loopback_dns, mx_farm):
    """The MX of the forward's destination and the MX of the original sender's domain."""
    return serve_domain(loopback_dns, mx_farm, DEST), serve_domain(loopback_dns, mx_farm, ORIGIN)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app, loopback_dns, mx_farm, mailboxes):
    tmp = tmp_path_factory.mktemp("routes-address")
    shaping = tmp / "shaping.yaml"
    shaping.write_text(yaml.safe_dump(DEFAULT_SHAPING))
    cfg = routing_config(base_config(tmp, certs), [
        route("match_recipient('fwd@inbound.test')", f"forward('someone@{DEST}, {app.url('mixed')}')", "stop()"),
        route(r"match_recipient('(?P<user>[a-z]+)-fwd@inbound\.test')", f"forward('\\g<user>@{DEST}')", "stop()"),
    ])
    cfg["delivery"] = {"dns_nameservers": ["127.0.0.1"], "dns_port": loopback_dns.port, "dns_timeout": "2s",
                       "port": mx_farm.port, "tls_ca_file": str(write_ca(certs, tmp)), "poll_interval": "0.2s",
                       "retry": {"schedule": ["1s"]}, "shaping_file": str(shaping)}
    d = Mtad(tmp, cfg).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def signed_message() -> tuple[bytes, dict[str, str]]:
    """A message DKIM-signed by dkimpy for orig-sender.test, and the TXT record that verifies it."""
    pem = mtad_dkim.generate_key("rsa", 1024)
    name, value = mtad_dkim.dns_record(mtad_dkim.load_key(ORIGIN, "s1", pem))
    message = simple("forward me intact", to="fwd@inbound.test", body="Keep every byte of this.\r\n").replace(
        b"From: Alice <alice@sender.test>", f"From: Alice <alice@{ORIGIN}>".encode())
    signature = dkimpy.sign(message, b"s1", ORIGIN.encode(), pem,
                            include_headers=[b"From", b"To", b"Subject", b"Message-ID"])
    return signature + message, {name.rstrip(".").lower(): value}


def test_forward_to_an_address_keeps_the_message_and_rewrites_the_envelope_sender(daemon, app, mailboxes):
    dest_mx, _ = mailboxes
    message, records = signed_message()
    qid = accepted(daemon, ["fwd@inbound.test"], message, sender=f"alice@{ORIGIN}")
    got = wait_until(lambda: [m for m in dest_mx.messages if m.data.endswith(message)], what="the forwarded copy")
    assert len(got) == 1
    copy = got[0]
    assert SRS0.fullmatch(copy.mail_from), copy.mail_from  # bounces come back to mtad; SPF checks mtad
    assert copy.rcpt_tos == [f"someone@{DEST}"]
    assert copy.data.startswith(b"Received: from mta.sender.test") and copy.data.count(b"DKIM-Signature:") == 1
    assert copy.data[copy.data.index(b"DKIM-Signature:"):] == message  # byte for byte, signature header included
    assert dkimpy.verify(copy.data, dnsfunc=txt_lookup(records))  # an independent verifier agrees
    # the same route's URL destination got its POST (a comma list mixing an address and a URL)
    post = wait_until(lambda: app.to("mixed"), what="the POST")[0]
    assert post.get("recipient") == "fwd@inbound.test" and post.get("subject") == "forward me intact"
    # the outbound row carries the SRS sender; the URL forward is a forwards row
    wait_until(lambda: daemon.query("SELECT sender, domain, state FROM deliveries WHERE message = ?", (qid,)) ==
               [(copy.mail_from, DEST, "done")], what="the delivery row, with its SRS sender, to be done")
    # the POST's outcome is written once the application has answered, which may be just after it got the POST
    wait_until(lambda: [e["event"] for e in forward_events(daemon, qid) if e["envelope"]["transport"] == "http"]
               == ["delivered"], what="the POST's delivered event")


def test_captures_fill_an_address_local_part(daemon, mailboxes):
    dest_mx, _ = mailboxes
    accepted(daemon, ["bob-fwd@inbound.test"], simple("for bob", to="bob-fwd@inbound.test"), sender=f"alice@{ORIGIN}")
    copy = wait_until(lambda: [m for m in dest_mx.messages if f"bob@{DEST}" in m.rcpt_tos], what="bob's copy")[0]
    assert SRS0.fullmatch(copy.mail_from) and b"Subject: for bob" in copy.data


def test_a_bounce_to_the_srs_address_reaches_the_original_sender(daemon, mailboxes):
    dest_mx, origin_mx = mailboxes
    message = simple("will bounce", to="fwd@inbound.test", body="This one bounces later.\r\n")
    accepted(daemon, ["fwd@inbound.test"], message, sender=f"alice@{ORIGIN}")
    copy = wait_until(lambda: [m for m in dest_mx.messages if m.data.endswith(message)], what="the copy")[0]
    srs_address = copy.mail_from
    # fwd-dest.test's MTA later bounces it, as any MTA would: to the envelope sender, with a null sender
    dsn = (f"From: MAILER-DAEMON@{DEST}\r\nTo: {srs_address}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
           "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\nsomeone@fwd-dest.test: mailbox full\r\n").encode()
    accepted(daemon, [srs_address], dsn, sender="")
    bounce = wait_until(lambda: [m for m in origin_mx.messages if b"mailbox full" in m.data], what="the bounce")
    assert len(bounce) == 1
    assert bounce[0].rcpt_tos == [f"alice@{ORIGIN}"]
    assert bounce[0].mail_from == "<>"  # still a null sender: a bounce is never bounced again
    assert bounce[0].data.endswith(dsn)
    # an SRS address with a forged hash is nobody's: refused at RCPT time
    forged = "SRS0=AAAA=" + srs_address.split("=", 2)[2]
    assert forged != srs_address
    code, text = inbound(daemon, [forged], dsn, sender="")
    assert (code, text[:5]) == (550, "5.1.1"), text
