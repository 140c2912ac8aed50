"""Inbound authentication verdicts end to end (issue 15): SPF, DKIM, DMARC and ARC on mail to the MX listener.

Real parts only: the suite's loopback DNS server (tests/support/dns_server.py) publishes SPF, DKIM (RSA and
Ed25519) and DMARC records; messages are signed and ARC-sealed by dkimpy (an independent signer); smtplib sends
them from client addresses 127.0.0.2-127.0.0.9 (the client socket bound to each), so SPF sees different IPs;
routes forward to the suite's HTTP receiver (tests/support/receiver.py), which shows what an application gets:
``Authentication-Results`` (RFC 8601) with mtad's authserv-id, ``X-Mailgun-Spf``, ``X-Mailgun-Dkim-Check-Result``
and ``X-Mailgun-Dmarc-Check-Result`` as fields. A DMARC ``p=reject`` failure is refused ``550 5.7.1`` at the
end of DATA, or tagged for a domain whose policy says quarantine (config file, or the domains API). Broken
signatures, DNS timeouts and huge headers never crash anything.
"""

from __future__ import annotations

import base64
import smtplib
import time

import dkim
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e.routes_support import assert_clean_exit, forward_events, route, routing_config
from tests.support.api import api_sync
from tests.support.daemon import Mtad, base_config
from tests.support.dns_server import DnsServer
from tests.support.receiver import Receiver
from tests.support.wait import wait_until

AUTHSERV_ID = "mx.mtad.test"


def _rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


RSA_PEM, RSA_PUB = _rsa_key()
ARC_PEM, ARC_PUB = _rsa_key()
_ED = nacl.signing.SigningKey.generate()
ED_PRIVATE = base64.b64encode(bytes(_ED))
ED_PUB = base64.b64encode(bytes(_ED.verify_key)).decode()


@pytest.fixture(scope="module")
def dns():
    server = DnsServer(ttl=300).start()
    z = server
    # SPF by client address: .2 pass, .3 pass (a: mechanism), .4 softfail, .6 neutral, anything else fail
    z.add_txt("spf.test", "v=spf1 ip4:127.0.0.2 a:relay.spf.test ~ip4:127.0.0.4 ?ip4:127.0.0.6 -all")
    z.add_a("relay.spf.test", "127.0.0.3")
    z.zone.setdefault("nospf.test", {})["MX"] = [(10, "mx.nospf.test")]  # exists, publishes no SPF
    # signed.test signs with RSA and Ed25519 and asks receivers to reject what fails DMARC
    z.add_txt("signed.test", "v=spf1 ip4:127.0.0.2 -all")
    z.add_txt("rsa._domainkey.signed.test", f"v=DKIM1; k=rsa; p={RSA_PUB}")
    z.add_txt("ed._domainkey.signed.test", f"v=DKIM1; k=ed25519; p={ED_PUB}")
    z.add_txt("_dmarc.signed.test", "v=DMARC1; p=reject; adkim=r; aspf=r")
    # forwarder.test seals ARC sets
    z.add_txt("arc._domainkey.forwarder.test", f"v=DKIM1; k=rsa; p={ARC_PUB}")
    z.add_txt("forwarder.test", "v=spf1 ip4:127.0.0.7 -all")
    # slow.test: its lookups are never answered (a DNS timeout)
    for name in ("slow.test", "_dmarc.slow.test", "k._domainkey.slow.test"):
        server.drop(name)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def app(daemons_store):
    a = Receiver(multipart_only=True).start()
    yield a
    a.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app, dns, daemons_store):
    tmp = tmp_path_factory.mktemp("inbound-auth")
    cfg = routing_config(base_config(tmp, certs), [
        route("match_recipient('keep@inbound.test')", "store()", "stop()", priority=0),
        route("catch_all()", f'forward("{app.url("auth")}")', "stop()", priority=10),
    ])
    cfg["receiving_domains"] = ["inbound.test", "tagged.test"]
    cfg["delivery"].update({"enabled": False, "dns_port": dns.port, "dns_timeout": "1s"})
    cfg["authentication"] = {"authserv_id": AUTHSERV_ID, "timeout": "5s", "max_signatures": 3,
                             "domains": {"tagged.test": {"dmarc_reject": "quarantine"}}}
    d = Mtad(tmp, cfg).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


# --- sending ------------------------------------------------------------------------------------------------------

def message(from_: str, to: str = "app@inbound.test", subject: str = "hello", extra: str = "",
            body: str = "Hello there.\r\n") -> bytes:
    return (f"From: Sender <{from_}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@{from_.rpartition('@')[2]}>\r\nDate: Mon, 03 Jun 2024 10:00:00 +0000\r\n"
            f"{extra}\r\n{body}").encode()


def rsa_signed(msg: bytes, domain: str = "signed.test") -> bytes:
    return dkim.sign(msg, b"rsa", domain.encode(), RSA_PEM, include_headers=[b"from", b"to", b"subject", b"date"]) + msg


def ed_signed(msg: bytes) -> bytes:
    return dkim.sign(msg, b"ed", b"signed.test", ED_PRIVATE, signature_algorithm=b"ed25519-sha256",
                     include_headers=[b"from", b"to", b"subject"]) + msg


def send(daemon: Mtad, msg: bytes, *, client: str = "127.0.0.2", sender: str = "bounce@signed.test",
         to: tuple[str, ...] = ("app@inbound.test",), helo: str = "mta.example.test") -> tuple[int, str]:
    """One message from the client address ``client`` (the socket bound to it); (code, text) of DATA."""
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname=helo, timeout=20,
                      source_address=(client, 0)) as s:
        s.ehlo()
        assert s.mail(sender)[0] == 250
        for rcpt in to:
            assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(msg)
        return code, text.decode()


def post_for(app: Receiver, subject: str):
    """The route POST of the message with this subject (waits for it)."""
    return wait_until(lambda: next((p for p in app.to("/auth") if ("subject", subject) in p.fields), None),
                      15, f"the route POST of {subject!r}")


def auth_results(post) -> str:
    values = post.all("Authentication-Results")
    ours = [v for v in values if v.startswith(AUTHSERV_ID)]
    assert len(ours) == 1, values
    return ours[0]


def delivered(daemon: Mtad, msg_subject: str, app: Receiver, **kw) -> tuple[object, str]:
    code, text = send(daemon, msg_subject[1], **kw)
    assert code == 250, (code, text)
    return post_for(app, msg_subject[0]), text.rsplit(" ", 1)[-1]


def sent(subject: str, msg: bytes) -> tuple[str, bytes]:
    return subject, msg


# --- SPF --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("client,sender,result,mailgun", [
    ("127.0.0.2", "bounce@spf.test", "pass", "Pass"),
    ("127.0.0.3", "bounce@spf.test", "pass", "Pass"),
    ("127.0.0.4", "bounce@spf.test", "softfail", "SoftFail"),
    ("127.0.0.5", "bounce@spf.test", "fail", "Fail"),
    ("127.0.0.6", "bounce@spf.test", "neutral", "Neutral"),
    ("127.0.0.5", "bounce@nospf.test", "none", "None"),
])
def test_spf_verdict_for_the_client_address_reaches_the_route_post(daemon, app, client, sender, result, mailgun):
    subject = f"spf {client} {sender}"
    post, _ = delivered(daemon, sent(subject, message(sender, subject=subject)), app, client=client, sender=sender)
    assert post.get("X-Mailgun-Spf") == mailgun
    results = auth_results(post)
    assert f"spf={result}" in results
    assert f"smtp.mailfrom={sender.rpartition('@')[2]}" in results


# --- DKIM -------------------------------------------------------------------------------------------------------

def test_rsa_and_ed25519_signatures_pass_and_dmarc_passes_through_them(daemon, app):
    subject = "dkim both"
    signed = ed_signed(rsa_signed(message("news@signed.test", subject=subject)))
    # from .9: SPF fails for signed.test, so DMARC can only pass through an aligned DKIM signature
    post, _ = delivered(daemon, sent(subject, signed), app, client="127.0.0.9")
    results = auth_results(post)
    assert "dkim=pass header.d=signed.test header.s=rsa header.a=rsa-sha256" in results
    assert "dkim=pass header.d=signed.test header.s=ed header.a=ed25519-sha256" in results
    assert "spf=fail" in results and "dmarc=pass" in results
    assert post.get("X-Mailgun-Dkim-Check-Result") == "Pass"
    assert post.get("X-Mailgun-Dmarc-Check-Result") == "Pass"


def test_a_body_altered_after_signing_fails_dkim(daemon, app):
    subject = "dkim altered"
    signed = rsa_signed(message("news@signed.test", subject=subject)).replace(b"Hello there.", b"Hello thEre.")
    post, _ = delivered(daemon, sent(subject, signed), app, client="127.0.0.2")  # SPF pass: DMARC passes by SPF
    results = auth_results(post)
    assert "dkim=fail" in results and "header.d=signed.test" in results
    assert post.get("X-Mailgun-Dkim-Check-Result") == "Fail"
    assert "dmarc=pass" in results


def test_a_message_without_signature_is_dkim_none(daemon, app):
    subject = "dkim missing"
    post, _ = delivered(daemon, sent(subject, message("news@signed.test", subject=subject)), app, client="127.0.0.2")
    assert "dkim=none" in auth_results(post)
    assert post.get("X-Mailgun-Dkim-Check-Result") == "Fail"


# --- DMARC and the policy ----------------------------------------------------------------------------------------

def test_dmarc_reject_failure_is_refused_at_the_end_of_data(daemon, app):
    subject = "dmarc reject"
    forged = rsa_signed(message("ceo@signed.test", subject=subject)).replace(b"Hello there.", b"Pay this.")
    code, text = send(daemon, forged, client="127.0.0.8")  # SPF fail, DKIM fail: DMARC fails, p=reject
    assert code == 550, (code, text)
    assert text.startswith("5.7.1") and "DMARC" in text and "signed.test" in text
    time.sleep(0.5)
    assert not [p for p in app.to("/auth") if ("subject", subject) in p.fields]
    assert not daemon.query("SELECT id FROM messages WHERE headers LIKE ?", (f"%{subject}%",))


def test_a_domain_whose_policy_quarantines_gets_the_message_tagged(daemon, app):
    subject = "dmarc quarantined"
    forged = message("ceo@signed.test", to="app@tagged.test", subject=subject)
    post, _ = delivered(daemon, sent(subject, forged), app, client="127.0.0.8", to=("app@tagged.test",))
    assert "dmarc=fail (p=reject) header.from=signed.test" in auth_results(post)
    assert post.get("X-Mailgun-Dmarc-Check-Result") == "Fail"
    assert post.get("X-Mailgun-Auth-Quarantine").startswith("Yes (dmarc")


# --- ARC ----------------------------------------------------------------------------------------------------------

def test_an_arc_sealed_message_validates(daemon, app):
    subject = "arc sealed"
    original = rsa_signed(message("news@signed.test", subject=subject))
    # forwarder.test received it, wrote its results, sealed it with dkimpy's ARC signer, and changed the body
    # (a list footer): the DKIM signature breaks, the ARC chain carries what forwarder.test saw
    received = (b"Authentication-Results: forwarder.test; dkim=pass header.d=signed.test; spf=pass "
                b"smtp.mailfrom=signed.test\r\n" + original)
    seal = b"".join(dkim.arc_sign(received, b"arc", b"forwarder.test", ARC_PEM, b"forwarder.test"))
    post, _ = delivered(daemon, sent(subject, seal + received), app, client="127.0.0.7",
                        sender="list@forwarder.test")
    results = auth_results(post)
    assert "arc=pass" in results, results
    assert "spf=pass" in results


def test_a_broken_arc_seal_fails(daemon, app):
    subject = "arc broken"
    received = (b"Authentication-Results: forwarder.test; spf=pass\r\n"
                + message("list@forwarder.test", subject=subject))
    seal = b"".join(dkim.arc_sign(received, b"arc", b"forwarder.test", ARC_PEM, b"forwarder.test"))
    tampered = seal + received.replace(b"Hello there.", b"Hello there!")  # changed after sealing
    post, _ = delivered(daemon, sent(subject, tampered), app, client="127.0.0.7", sender="list@forwarder.test")
    assert "arc=fail" in auth_results(post)


# --- forgeries, events ------------------------------------------------------------------------------------------

def test_forged_results_claiming_mtads_id_are_removed(daemon, app):
    subject = "forged results"
    extra = (f"Authentication-Results: {AUTHSERV_ID}; spf=pass smtp.mailfrom=bank.test; dkim=pass\r\n"
             "Authentication-Results: other.test; spf=pass\r\n"
             "X-Mailgun-Spf: Pass\r\nX-Mailgun-Dkim-Check-Result: Pass\r\nX-Mailgun-Dmarc-Check-Result: Pass\r\n")
    post, _ = delivered(daemon, sent(subject, message("x@nospf.test", subject=subject, extra=extra)), app,
                        client="127.0.0.5", sender="x@nospf.test")
    assert "spf=none" in auth_results(post)  # exactly one of ours, and it is mtad's verdict
    assert "Authentication-Results: other.test; spf=pass" not in post.all("Authentication-Results")
    assert "other.test; spf=pass" in post.all("Authentication-Results")  # another server's stays
    assert post.all("X-Mailgun-Spf") == ["None"]
    assert post.all("X-Mailgun-Dkim-Check-Result") == ["Fail"]
    assert post.all("X-Mailgun-Dmarc-Check-Result") == ["None"]


def test_forward_and_stored_events_carry_the_verdicts(daemon, app):
    subject = "events verdicts"
    _, queue_id = delivered(daemon, sent(subject, rsa_signed(message("news@signed.test", subject=subject))), app)
    events = wait_until(lambda: forward_events(daemon, queue_id), 10, "the forward event")
    assert events[0]["authentication"] == {"spf": "pass", "dkim": "pass", "dmarc": "pass", "arc": "none",
                                           "action": "accept"}
    code, text = send(daemon, message("x@spf.test", to="keep@inbound.test", subject="stored verdicts"),
                      client="127.0.0.4", sender="x@spf.test", to=("keep@inbound.test",))
    assert code == 250, (code, text)
    stored_id = text.rsplit(" ", 1)[-1]
    import json
    rows = wait_until(lambda: daemon.query("SELECT data FROM events WHERE queue_id = ? AND event = 'stored'",
                                           (stored_id,)), 10, "the stored event")
    assert json.loads(rows[0][0])["authentication"]["spf"] == "softfail"


# --- bad input --------------------------------------------------------------------------------------------------

def test_broken_signatures_dns_timeouts_and_huge_headers_never_crash(daemon, app):
    garbage = ("DKIM-Signature: v=1; a=rsa-sha256; d=signed.test; s=rsa; h=from; bh=!!!; b=%%%\r\n"
               "DKIM-Signature: this is not a tag list\r\n"
               "DKIM-Signature: v=1; a=rsa-sha1024; d=; s=; b=\r\n"
               + "DKIM-Signature: v=1; a=rsa-sha256; d=signed.test; s=nokey; h=from; bh=AA==; b=AA==\r\n" * 40
               + "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=forwarder.test; s=arc; b=AA==\r\n"
               + "X-Long: " + "a" * 900 + "\r\n" + "".join(f"X-Many-{i}: {i}\r\n" for i in range(300)))
    subject = "garbage"
    post, _ = delivered(daemon, sent(subject, message("news@signed.test", subject=subject, extra=garbage)), app)
    results = auth_results(post)
    assert results.count("dkim=") == 3  # authentication.max_signatures
    assert "dkim=pass" not in results and "arc=fail" in results
    # every lookup of slow.test times out: temperror, and a temperror never refuses mail
    subject = "timeouts"
    slow = message("news@slow.test", subject=subject,
                   extra="DKIM-Signature: v=1; a=rsa-sha256; d=slow.test; s=k; h=from; bh=AA==; b=AA==\r\n")
    post, _ = delivered(daemon, sent(subject, slow), app, client="127.0.0.5", sender="bounce@slow.test")
    results = auth_results(post)
    assert "spf=temperror" in results and "dmarc=temperror" in results and "dkim=temperror" in results
    assert post.get("X-Mailgun-Spf") == "TempError"
    # a null sender is checked by its HELO name
    subject = "null sender"
    post, _ = delivered(daemon, sent(subject, message("mailer-daemon@spf.test", subject=subject)), app,
                        client="127.0.0.2", sender="", helo="spf.test")
    assert "spf=pass" in auth_results(post) and "smtp.helo=spf.test" in auth_results(post)


# --- the domains API --------------------------------------------------------------------------------------------

def test_the_policy_of_an_api_domain_is_read_and_changed_through_the_domains_api(daemon, app):
    api_sync(daemon, "POST", "/v3/domains", data={"name": "apidom.test"})
    got = api_sync(daemon, "GET", "/v3/domains/apidom.test/authentication")
    assert got["source"] == "default" and got["policy"]["dmarc_reject"] == "reject"
    assert got["authserv_id"] == AUTHSERV_ID and got["enabled"] is True
    subject = "api policy"
    forged = message("ceo@signed.test", to="app@apidom.test", subject=subject)
    code, text = send(daemon, forged, client="127.0.0.8", to=("app@apidom.test",))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    changed = api_sync(daemon, "PUT", "/v3/domains/apidom.test/authentication", data={"dmarc_reject": "quarantine"})
    assert changed["source"] == "api" and changed["policy"]["dmarc_reject"] == "quarantine"
    assert changed["policy"]["spf_fail"] == "ignore"  # the fields not given keep their value
    post, _ = delivered(daemon, sent(subject, forged), app, client="127.0.0.8", to=("app@apidom.test",))
    assert post.get("X-Mailgun-Auth-Quarantine").startswith("Yes")
    assert api_sync(daemon, "GET", "/v3/domains/apidom.test/authentication")["policy"]["dmarc_reject"] == "quarantine"
    # refusals, in the API's JSON error shape
    bad = api_sync(daemon, "PUT", "/v3/domains/apidom.test/authentication", data={"spf_fail": "explode"}, expect=400)
    assert "spf_fail" in bad["message"]
    assert api_sync(daemon, "PUT", "/v3/domains/apidom.test/authentication", data={}, expect=400)["message"]
    assert api_sync(daemon, "PUT", "/v3/domains/tagged.test/authentication", data={"no_auth": "reject"},
                    expect=403)["message"]
    assert api_sync(daemon, "GET", "/v3/domains/tagged.test/authentication")["source"] == "config"
    assert api_sync(daemon, "GET", "/v3/domains/nowhere.test/authentication", expect=404)["message"]
