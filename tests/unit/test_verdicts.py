"""Pieces of the inbound authentication verdicts (mtad/inbound/verdicts) that need no daemon: the RFC 7208
evaluation on a scripted resolver (macros, include, redirect, the lookup limits), DMARC records and alignment,
the policy decision, and dkimpy's integer conversions replaced in the verification job (same results)."""

from __future__ import annotations

import asyncio
import random

import dkim.crypto
import pytest

from mtad.base.errors import TempFailure
from mtad.config.schema import AuthPolicyConfig
from mtad.inbound.verdicts import dkimjob, dmarc, results, spf


ZONE = {
    ("a.test", "TXT"): ("v=spf1 include:inc.a.test -all", "unrelated text"),
    ("inc.a.test", "TXT"): ("v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 ~all",),
    ("r.test", "TXT"): ("v=spf1 redirect=a.test",),
    ("m.test", "TXT"): ("v=spf1 exists:%{ir}.%{l}._spf.m.test -all",),
    ("1.2.0.192.bob._spf.m.test", "A"): ("127.0.0.2",),
    ("two.test", "TXT"): ("v=spf1 -all", "v=spf1 +all"),
    ("loop.test", "TXT"): ("v=spf1 " + " ".join(f"a:x{i}.loop.test" for i in range(12)) + " -all",),
    ("mx.test", "TXT"): ("v=spf1 mx/24 -all",),
    ("mx.test", "MX"): ("mail.mx.test",),
    ("mail.mx.test", "A"): ("198.51.100.7",),
}


class Zone:
    """A scripted resolver: ``records`` from a dict; names in ``broken`` time out."""

    def __init__(self, zone: dict, broken: tuple[str, ...] = ()):
        self.zone, self.broken = zone, broken

    async def records(self, name: str, rdtype: str) -> tuple[str, ...]:
        if name in self.broken:
            raise TempFailure(f"{name}: timed out")
        return self.zone.get((name, rdtype), ())


def check(ip: str, sender: str, zone: dict = ZONE, broken: tuple[str, ...] = ()) -> str:
    return asyncio.run(spf.check_host(Zone(zone, broken), ip, sender, "helo.test")).result


@pytest.mark.parametrize("ip,sender,expected", [
    ("192.0.2.1", "x@a.test", "pass"),  # through include
    ("2001:db8::5", "x@a.test", "pass"),
    ("::ffff:192.0.2.9", "x@a.test", "pass"),  # an IPv4-mapped client is its IPv4 address
    ("198.51.100.1", "x@a.test", "fail"),  # include's softfail is no match; then -all
    ("192.0.2.1", "x@r.test", "pass"),  # redirect
    ("192.0.2.1", "bob@m.test", "pass"),  # exists with macros %{ir} and %{l}
    ("192.0.2.2", "bob@m.test", "fail"),
    ("198.51.100.99", "x@mx.test", "pass"),  # mx/24
    ("192.0.2.1", "x@two.test", "permerror"),  # two SPF records
    ("192.0.2.1", "x@loop.test", "permerror"),  # more than 10 DNS-querying terms
    ("192.0.2.1", "x@none.test", "none"),
    ("192.0.2.1", "x@not_a_domain", "none"),
])
def test_spf_evaluation(ip, sender, expected):
    assert check(ip, sender) == expected


def test_spf_temperror_and_malformed_records():
    assert check("192.0.2.1", "x@a.test", broken=("inc.a.test",)) == "temperror"
    for record in ("v=spf1 ip4:999.1.1.1 -all", "v=spf1 frobnicate -all", "v=spf1 exists:%{z} -all",
                   "v=spf1 a:%{d5r.} -all" + "x" * 300, "v=spf1 ip4:192.0.2.1/99"):
        assert check("192.0.2.1", "x@bad.test", {("bad.test", "TXT"): (record,)}) in ("permerror", "fail", "neutral")


def test_dmarc_records_alignment_and_pct():
    policy = dmarc.parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s", "example.co.uk", True)
    assert (policy.p, policy.sp, policy.adkim, policy.aspf) == ("reject", "quarantine", "s", "r")
    assert dmarc.parse_record("p=reject; v=DMARC1", "x", False) is None
    assert dmarc.parse_record("v=DMARC1; p=bogus", "x", False) is None
    assert dmarc.organizational_domain("mail.example.co.uk") == "example.co.uk"
    assert dmarc.aligned("bounce.example.co.uk", "example.co.uk", "r")
    assert not dmarc.aligned("bounce.example.co.uk", "example.co.uk", "s")
    # the record of the organizational domain: sp applies to a subdomain
    sub = dmarc.evaluate(policy, "news.example.co.uk", "fail", "other.test", [], sample=0.0)
    assert (sub.result, sub.policy) == ("fail", "quarantine")
    assert dmarc.evaluate(policy, "news.example.co.uk", "pass", "x.example.co.uk", []).result == "pass"
    half = dmarc.parse_record("v=DMARC1; p=reject; pct=50", "a.test", False)
    assert dmarc.evaluate(half, "a.test", "fail", "", [], sample=0.2).policy == "reject"
    assert dmarc.evaluate(half, "a.test", "fail", "", [], sample=0.7).policy == "quarantine"  # outside pct
    assert dmarc.author_domain(["A <a@x.test>, B <b@y.test>"]) is None
    assert dmarc.author_domain(["A <a@X.Test>"]) == "x.test"


def test_the_strictest_policy_of_the_recipient_domains_applies():
    failing = results.Verdicts(spf.SpfResult("fail", "s.test", "mailfrom"), (),
                               dmarc.DmarcResult("fail", "s.test", "reject"), "none")
    lenient = AuthPolicyConfig(dmarc_reject="quarantine")
    assert results.decide(failing, [lenient]).action == "quarantine"
    decision = results.decide(failing, [lenient, AuthPolicyConfig()])
    assert decision.action == "reject" and decision.reply.startswith("550 5.7.1")
    temp = results.Verdicts(spf.SpfResult("temperror", "s.test", "mailfrom"), (),
                            dmarc.DmarcResult("temperror", "s.test"), "none")
    assert results.decide(temp, [AuthPolicyConfig()]).action == "accept"  # a temperror never refuses


def test_hostile_values_cannot_break_the_header():
    sig = dkimjob.Signature("permerror", "evil.test;\r\nX-Injected: yes", "s(1)", "rsa-sha256", "AAAA",
                            "bad)\r\nX-Injected: yes")
    verdicts = results.Verdicts(spf.SpfResult("none", "x.test", "mailfrom"), (sig,),
                                dmarc.DmarcResult("none", "x.test"), "none")
    value = results.authentication_results("mx.test", verdicts)
    assert "\r\nX-Injected" not in value and "\r\n\t" in value


def test_the_replaced_integer_conversions_give_dkimpys_results():
    dkimjob._dkimpy()  # installs the replacements, keeping dkimpy's own in REPLACED
    original_int2str, original_str2int = dkimjob.REPLACED["int2str"], dkimjob.REPLACED["str2int"]
    assert dkim.crypto.int2str is dkimjob._int2str
    rng = random.Random(7)
    for _ in range(300):
        n = rng.getrandbits(rng.choice((0, 1, 8, 9, 2048, 4096)))
        for length in (-1, 0, 1, 256, 512):
            assert dkimjob._int2str(n, length) == original_int2str(n, length), (n, length)
        data = n.to_bytes(600, "big")
        assert dkimjob._str2int(data) == original_str2int(data)


# --- dkimpy with its RSA verification, key parsing and whitespace compression replaced (dkimjob._dkimpy) --------

def _outcome(f, *args):
    try:
        return ("returned", f(*args))
    except Exception as exc:  # noqa: BLE001 - the comparison is of what each does
        return ("raised", type(exc))


class _DkimpysOwn:
    """Within: dkimpy's own functions back in place of dkimjob's replacements, and its own ``DKIM.verify``."""

    NAMES = {"evaluate_pk": "dkim", "RSASSA_PKCS1_v1_5_verify": "dkim",
             "compress_whitespace": "dkim.canonicalization", "unfold_header_value": "dkim.canonicalization",
             "RE_BTAG": "dkim", "int2str": "dkim.crypto", "str2int": "dkim.crypto"}

    def __enter__(self):
        import importlib
        dkimjob._dkimpy()
        self.saved = {}
        for name, module in self.NAMES.items():
            mod = importlib.import_module(module)
            self.saved[name] = (mod, getattr(mod, name))
            setattr(mod, name, dkimjob.REPLACED[name])
        dkimjob.OWN_STEPS = False  # each signature by dkimpy's DKIM.verify

    def __exit__(self, *exc):
        for name, (mod, value) in self.saved.items():
            setattr(mod, name, value)
        dkimjob.OWN_STEPS = True


def _rsa(bits: int):
    from cryptography.hazmat.primitives.asymmetric import rsa
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def test_rsa_verification_by_openssl_gives_dkimpys_results_on_good_bad_and_garbage_signatures():
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    dkim = dkimjob._dkimpy()
    ours, theirs = dkimjob._rsa_verify, dkimjob.REPLACED["RSASSA_PKCS1_v1_5_verify"]
    assert dkim.RSASSA_PKCS1_v1_5_verify is ours
    rng = random.Random(11)
    key = _rsa(2048)
    nums = key.public_key().public_numbers()
    pk = {"modulus": nums.n, "publicExponent": nums.e}
    size = 256

    def h(data: bytes, algo: str = "sha256"):
        return dkim.HashThrough(hashlib.new(algo, data))

    good = key.sign(b"message", padding.PKCS1v15(), hashes.SHA256())
    sha1 = key.sign(b"message", padding.PKCS1v15(), hashes.SHA1())
    # DigestInfo without its NULL parameters, signed by the raw private operation: not what RFC 8017 encodes
    d = key.private_numbers().d
    info = bytes.fromhex("302f300b0609608648016503040201") + b"\x04\x20" + hashlib.sha256(b"message").digest()
    em = b"\x00\x01" + b"\xff" * (size - len(info) - 3) + b"\x00" + info
    no_null = pow(int.from_bytes(em, "big"), d, nums.n).to_bytes(size, "big")
    # a valid signature whose first byte is zero, sent without it (shorter than the modulus)
    data = 0
    while True:
        zero = key.sign(b"m%d" % data, padding.PKCS1v15(), hashes.SHA256())
        if zero[0] == 0:
            break
        data += 1
    cases = [
        (h(b"message"), good, pk, True),
        (h(b"message", "sha1"), sha1, pk, True),
        (h(b"other message"), good, pk, False),
        (h(b"message"), good[:-1] + bytes([good[-1] ^ 1]), pk, False),
        (h(b"message", "sha1"), good, pk, False),
        (h(b"message"), no_null, pk, False),
        (h(b"m%d" % data), zero[1:], pk, True),
        (h(b"m%d" % data), zero, pk, True),
        (h(b"message"), b"\xff" * size, pk, False),
        (h(b"message"), nums.n.to_bytes(size, "big"), pk, False),
        (h(b"message"), good + b"\x00", pk, None),
        (h(b"message"), b"", pk, False),
        (h(b"message"), bytes(rng.getrandbits(8) for _ in range(size)), pk, False),
        (h(b"message"), good, {"modulus": nums.n, "publicExponent": 3}, False),
        (h(b"message"), good, {"modulus": nums.n + 2, "publicExponent": nums.e}, False),
        (h(b"message"), good[:60], {"modulus": nums.n >> (8 * 196), "publicExponent": nums.e}, None),  # too small
    ]
    for small in (_rsa(1024),):
        n = small.public_key().public_numbers().n
        cases.append((h(b"x"), small.sign(b"x", padding.PKCS1v15(), hashes.SHA256()), {"modulus": n,
                                                                                       "publicExponent": 65537},
                      True))
    for i, (hashed, signature, key_data, expected) in enumerate(cases):
        mine = _outcome(ours, hashed, signature, key_data)
        hashed.hasher = hashed.hasher.copy()
        reference = _outcome(theirs, hashed, signature, key_data)
        assert mine == reference, (i, mine, reference)
        if expected is not None:
            assert mine == ("returned", expected), i


def test_the_replaced_whitespace_compression_and_unfolding_give_dkimpys_results():
    dkimjob._dkimpy()
    original, unfold = dkimjob.REPLACED["compress_whitespace"], dkimjob.REPLACED["unfold_header_value"]
    rng = random.Random(3)
    for _ in range(3000):
        text = b"".join(rng.choice((b" ", b"\t", b"a", b"\r\n", b"  ", b"\xc3\xa9", b"\r", b"\n"))
                        for _ in range(rng.randint(0, 40)))
        assert dkimjob._compress_whitespace(text) == original(text), text
        assert dkimjob._unfold_header_value(text) == unfold(text), text


def test_the_replaced_b_tag_pattern_empties_b_as_dkimpys_does():
    dkim = dkimjob._dkimpy()
    ours, theirs = dkim.RE_BTAG, dkimjob.REPLACED["RE_BTAG"]
    assert ours is not theirs
    rng = random.Random(5)
    pieces = (b" ", b"\t", b"\r\n", b"\n", b"\r", b";", b"b", b"=", b"a", b"Z", b"+", b"/", b"h", b"b=", b";b=",
              b" b =", b"\r\n\t", b"\xff")
    for _ in range(20000):
        text = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert ours.sub(rb"\1", text) == theirs.sub(rb"\1", text), text


def test_verification_with_the_replacements_gives_dkimpys_verdicts():
    import base64

    import nacl.signing
    from cryptography.hazmat.primitives import serialization
    dkim = dkimjob._dkimpy()
    key = _rsa(2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ed = nacl.signing.SigningKey.generate()
    keys_ed = f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(ed.verify_key)).decode()}"
    keys = {"rsa._domainkey.a.test": f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}",
            "ed._domainkey.a.test": f"v=DKIM1; k=ed25519; p={base64.b64encode(bytes(ed.verify_key)).decode()}",
            "bad._domainkey.a.test": "v=DKIM1; k=rsa; p=AAAAnotakey",
            "temp._domainkey.a.test": dkimjob.TEMP,
            "tlsrpt._domainkey.a.test": f"v=DKIM1; k=rsa; s=tlsrpt; p={base64.b64encode(der).decode()}",
            "edrsa._domainkey.a.test": keys_ed}
    body = b"Hello \t there,  \r\n\ttabs\tand  spaces   \r\n\r\n\r\n"
    msg = b"From: A <a@a.test>\r\nTo: b@b.test\r\nSubject:  spaced \t subject\r\n\r\n" + body

    def sign(message: bytes, selector: bytes = b"rsa", canon=(b"relaxed", b"relaxed"), **kw) -> bytes:
        if selector == b"ed":
            return dkim.sign(message, b"ed", b"a.test", base64.b64encode(bytes(ed)),
                             signature_algorithm=b"ed25519-sha256", canonicalize=canon) + message
        return dkim.sign(message, selector, b"a.test", pem, canonicalize=canon, **kw) + message

    signed = sign(msg)
    messages = [
        signed,
        sign(msg, canon=(b"simple", b"simple")),
        sign(msg, canon=(b"relaxed", b"simple")),
        sign(msg, signature_algorithm=b"rsa-sha1"),
        sign(msg, b"ed"),
        sign(sign(msg), b"ed"),
        signed.replace(b"there", b"THERE"),  # body altered
        signed.replace(b"Subject:  spaced", b"Subject:  SPACED"),  # signed header altered
        signed.replace(b"b=", b"b=AAAA", 1),  # broken signature value
        sign(msg, b"bad"),  # a key record that is not a key
        sign(msg, b"temp"),  # its lookup failed
        sign(msg, b"none"),  # no key published
        b"DKIM-Signature: v=1; a=rsa-sha256; d=a.test; s=rsa; h=from; bh=AAAA; b=AAAA\r\n" + msg,
        b"DKIM-Signature: garbage\r\n" + msg,
        b"\x00\xff not a message at all",
        # dkimjob's own steps (one parse, one canonical body per canonicalisation, only the signed fields):
        sign(sign(msg, canon=(b"simple", b"simple")), canon=(b"relaxed", b"relaxed")),  # two bodies in one message
        sign(sign(msg, canon=(b"relaxed", b"relaxed"), length=True), canon=(b"relaxed", b"relaxed")) + b"added\r\n",
        sign(msg).replace(b"\r\n", b"\n"),  # bare LF line ends
        sign(msg).replace(b"\r\n\r\n", b"\r\nFrom: B <b@a.test>\r\n\r\n", 1),  # a second From added
        b"From mbox-line Mon Jun  3 10:00:00 2024\r\n" + signed,
        b"\tcontinuation first\r\n" + signed,
        b"Bad Name: x\r\n" + signed,
        sign(msg.replace(b"Subject:", b"Received: by x\r\nSubject:"), include_headers=[b"from", b"subject", b"to", b"x"]),
        signed.replace(b"a=rsa-sha256", b"a=rsa-sha512"),  # unknown algorithm
        signed.replace(b"c=relaxed/relaxed", b"c=relaxed/odd"),
        signed.replace(b"v=1;", b"v=1; v=1;"),  # a duplicate tag
        sign(msg, b"tlsrpt"),  # a key for TLS reports only
        sign(msg, b"edrsa"),  # an RSA signature under an Ed25519 key record
    ]
    for _ in range(2):  # the second time from the remembered keys
        for i, message in enumerate(messages):
            mine = dkimjob.verify(message, keys, 5)
            with _DkimpysOwn():
                reference = dkimjob.verify(message, keys, 5)
            assert mine == reference, (i, mine, reference)
    assert [s[0] for s in dkimjob.verify(messages[5], keys, 5)[0]] == ["pass", "pass"]
    assert dkimjob.verify(messages[6], keys, 5)[0][0][0] == "fail"


def test_the_author_domain_pattern_agrees_with_getaddresses():
    import email.utils

    def reference(value: str) -> str | None:
        addresses = [a for _, a in email.utils.getaddresses([value]) if a]
        if len(addresses) != 1 or "@" not in addresses[0]:
            return None
        return addresses[0].rpartition("@")[2].strip().rstrip(".>").lower() or None

    values = ["sender@Example.COM", "Sender <sender@example.com>", "  A B  C\t<a.b+c@mail.example.com>  ",
              "<x@y.test>", "x@y.test>", "<x@y.test", "J. Smith <j@x.test>", '"Smith, J" <j@x.test>',
              "a@b.test, c@d.test", "a@b.test <c@d.test>", "Name <a@b.test> (comment)", "a@b.test.",
              "=?utf-8?q?caf=C3=A9?= <c@cafe.test>", "Group: a@b.test;", "no address", "", "a..b@c.test",
              "a@[127.0.0.1]", "Evil <a@b.test>\r\n <c@d.test>", "a@b@c.test", "a@-b.test", "<>", "a@b_c.test",
              "Ann O'Neil <ann@x.test>", "first.last@sub.domain.example.co.uk", "a@b .test"]
    for value in values:
        assert dmarc.author_domain([value]) == reference(value), value
    assert dmarc.author_domain(["Sender <sender@Example.COM>"]) == "example.com"
    assert dmarc.author_domain(["a@b.test", "c@d.test"]) is None


def test_signature_tags_drop_all_whitespace_as_before():
    import re
    value = "v=1; a=rsa-sha256;\r\n\td=Example.COM; s=sel\u00a0ector; b=AB CD\r\n EF\u2003GH;\x0bbh=x\x1cy; D=second"
    expected = {}
    for name, val in dkimjob._TAG.findall(value):
        expected.setdefault(name.lower(), re.sub(r"\s+", "", val))
    assert dkimjob.tags(value) == expected
    assert expected["b"] == "ABCDEFGH" and expected["d"] == "Example.COM"


def test_the_verifier_hands_back_the_fields_a_second_parse_would_give():
    import dataclasses

    from mtad.config.schema import AuthenticationConfig
    from mtad.inbound.verdicts.check import Verifier
    from mtad.mail import headers

    zone = dict(ZONE)
    zone[("_dmarc.a.test", "TXT")] = ("v=DMARC1; p=quarantine",)
    config = dataclasses.replace(AuthenticationConfig(), enabled=True, workers=0)
    messages = [
        b"From: A <x@a.test>\r\nTo: b@b.test\r\nSubject: folded\r\n  on two lines\r\n\r\nbody\r\n",
        b"From: x@a.test\r\n\r\n",
        b"\r\nno header at all\r\n",
        b" leading folding white space\r\nFrom: x@a.test\r\n\r\nbody\r\n",
        b"Authentication-Results: mx.test; spf=pass\r\nFrom: x@a.test\r\n\r\nforged results removed\r\n",
        b"From: x@a.test\r\nnot a field line\r\nSubject: s\r\n\r\nb\r\n",
    ]

    async def run() -> None:
        verifier = Verifier(config, "mx.test", Zone(zone))
        try:
            for ip in ("192.0.2.1", "198.51.100.1"):  # pass; fail, quarantined (one more line added)
                for content in messages:
                    fields, _ = headers.parse_block(content, 100, len(content))
                    checked = await verifier.check(content, fields, client_ip=ip, helo="h.test", sender="x@a.test",
                                                   domains=["b.test"])
                    expected, _ = headers.parse_block(checked.content, 100, len(checked.content))
                    assert checked.fields is None or checked.fields == expected, content
                    assert (checked.fields is None) == (content[:1] == b" " or b"mx.test;" in content), content
        finally:
            await verifier.close()

    asyncio.run(run())
