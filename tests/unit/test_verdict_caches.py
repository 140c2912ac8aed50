"""The verdicts' caches (issue 15, "cost stays small"): SPF, DMARC and DKIM key records come from mtad's resolver,
kept as text for their DNS TTL (a "no such record" for ``NEGATIVE_TTL``), and each text is parsed once (SPF terms,
DMARC tags, dkimpy's key and cryptography's key object, remembered per text). What a user relies on: within the
TTL nothing is asked again; once it runs out, a changed record (a rotated DKIM key, a stricter SPF or DMARC
policy, a record published after a "none") decides the next message. A real DNS server on 127.0.0.1 answers."""

from __future__ import annotations

import asyncio
import base64
import dataclasses

import pytest

from mtad.config.schema import AuthenticationConfig
from mtad.inbound.verdicts.check import Verifier
from mtad.mail import headers
from mtad.net import resolver as resolver_mod
from mtad.net.resolver import Resolver
from tests.support.dns_server import DnsServer

TTL = 1  # seconds: the DNS server's TTL for every answer


def _key():
    import dkim  # noqa: F401 - the independent signer
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


def _signed(pem: bytes) -> bytes:
    import dkim
    msg = (b"From: A <a@example.com>\r\nTo: b@example.net\r\nSubject: cache\r\n"
           b"Message-ID: <c@example.com>\r\n\r\nHello.\r\n")
    return dkim.sign(msg, b"sel", b"example.com", pem, canonicalize=(b"relaxed", b"relaxed"),
                     include_headers=[b"from", b"to", b"subject"]) + msg


@pytest.fixture
def dns_server():
    server = DnsServer(ttl=TTL).start()
    yield server
    server.stop()


async def _check(verifier: Verifier, message: bytes, ip: str = "127.0.0.1") -> dict:
    fields, _ = headers.parse_block(message, 1000, len(message))
    checked = await verifier.check(message, fields, client_ip=ip, helo="client.example.com",
                                   sender="a@example.com", domains=["example.net"])
    return dict(checked.verdicts)


def _verifier(server: DnsServer) -> Verifier:
    config = dataclasses.replace(AuthenticationConfig(), enabled=True, workers=0)
    return Verifier(config, "mx.test", Resolver(["127.0.0.1"], server.port, 2.0))


async def test_records_are_kept_for_their_ttl_then_a_changed_record_decides(dns_server):
    old_pem, old_record = _key()
    new_pem, new_record = _key()
    dns_server.add_txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add_txt("sel._domainkey.example.com", old_record)
    dns_server.add_txt("_dmarc.example.com", "v=DMARC1; p=none")
    verifier = _verifier(dns_server)
    try:
        first = await _check(verifier, _signed(old_pem))
        assert (first["spf"], first["dkim"], first["dmarc"]) == ("pass", "pass", "pass")
        queries = len(dns_server.queries)
        # the domain rotates its key and tightens SPF: within the TTL mtad still has the old records
        dns_server.set_records("sel._domainkey.example.com", "TXT", [new_record])
        dns_server.set_records("example.com", "TXT", ["v=spf1 ip4:127.0.0.2 -all"])
        dns_server.set_records("_dmarc.example.com", "TXT", ["v=DMARC1; p=reject"])
        for _ in range(3):
            again = await _check(verifier, _signed(old_pem))
            assert (again["spf"], again["dkim"], again["dmarc"]) == ("pass", "pass", "pass")
        unsigned = b"From: A <a@example.com>\r\nTo: b@example.net\r\nSubject: x\r\n\r\nHi.\r\n"
        lax = await _check(verifier, unsigned, "127.0.0.9")
        assert (lax["dmarc"], lax["action"]) == ("fail", "accept")  # the cached p=none: not refused
        assert len(dns_server.queries) == queries  # nothing asked again
        await asyncio.sleep(TTL + 0.3)
        # the TTL ran out: the new key verifies the new signature, the old one fails; SPF fails from 127.0.0.1
        rotated = await _check(verifier, _signed(new_pem))
        assert (rotated["spf"], rotated["dkim"]) == ("fail", "pass")
        stale = await _check(verifier, _signed(old_pem))
        assert stale["dkim"] == "fail"
        assert (await _check(verifier, _signed(new_pem), "127.0.0.2"))["spf"] == "pass"
        # DMARC p=reject now applies to a message without an aligned pass (the default policy: refused)
        verdicts = await _check(verifier, unsigned, "127.0.0.9")
        assert (verdicts["dmarc"], verdicts["action"]) == ("fail", "reject")
    finally:
        await verifier.close()


async def test_a_no_record_answer_is_kept_for_the_negative_ttl_then_a_published_record_counts(dns_server,
                                                                                            monkeypatch):
    monkeypatch.setattr(resolver_mod, "NEGATIVE_TTL", 1.0)
    pem, record = _key()
    verifier = _verifier(dns_server)
    try:
        none = await _check(verifier, _signed(pem))
        assert (none["spf"], none["dkim"], none["dmarc"]) == ("none", "permerror", "none")
        queries = {name: len(dns_server.queries_for(name, "TXT"))
                   for name in ("example.com", "sel._domainkey.example.com", "_dmarc.example.com")}
        dns_server.add_txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
        dns_server.add_txt("sel._domainkey.example.com", record)
        dns_server.add_txt("_dmarc.example.com", "v=DMARC1; p=reject")
        still = await _check(verifier, _signed(pem))
        assert (still["spf"], still["dkim"], still["dmarc"]) == ("none", "permerror", "none")
        assert {name: len(dns_server.queries_for(name, "TXT")) for name in queries} == queries
        await asyncio.sleep(1.3)
        published = await _check(verifier, _signed(pem))
        assert (published["spf"], published["dkim"], published["dmarc"]) == ("pass", "pass", "pass")
    finally:
        await verifier.close()


async def test_a_failed_lookup_is_kept_for_the_failure_ttl_then_asked_again(dns_server, monkeypatch):
    """RFC 9520: while a domain's nameservers fail (SERVFAIL), each message gets ``temperror`` at once, without a
    query of its own; once ``FAILURE_TTL`` ran out the next message asks again and a repaired domain passes."""
    monkeypatch.setattr(resolver_mod, "FAILURE_TTL", 1.0)
    dns_server.add_txt("example.com", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.servfail("example.com")
    dns_server.servfail("_dmarc.example.com")
    unsigned = b"From: A <a@example.com>\r\nTo: b@example.net\r\nSubject: x\r\n\r\nHi.\r\n"
    verifier = _verifier(dns_server)
    try:
        failed = await _check(verifier, unsigned)
        assert (failed["spf"], failed["dmarc"]) == ("temperror", "temperror")
        asked = {name: len(dns_server.queries_for(name, "TXT")) for name in ("example.com", "_dmarc.example.com")}
        assert all(asked.values())
        for _ in range(5):
            again = await _check(verifier, unsigned)
            assert (again["spf"], again["dmarc"]) == ("temperror", "temperror")
        assert {name: len(dns_server.queries_for(name, "TXT")) for name in asked} == asked  # nothing asked again
        dns_server.heal("example.com")
        dns_server.heal("_dmarc.example.com")
        dns_server.add_txt("_dmarc.example.com", "v=DMARC1; p=none")
        await asyncio.sleep(1.3)
        repaired = await _check(verifier, unsigned)
        assert (repaired["spf"], repaired["dmarc"]) == ("pass", "pass")
    finally:
        await verifier.close()
