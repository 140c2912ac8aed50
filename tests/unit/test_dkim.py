"""mtad.dkim: signatures made here must verify with dkimpy, an independent verifier."""

from __future__ import annotations

import base64
import re

import dkim as dkimpy
import nacl  # noqa: F401  # dkimpy verifies Ed25519 with PyNaCl (a test dependency)
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtad.mail import dkim

# cryptography refuses to generate keys under 1024 bits; this one was made by `openssl genpkey`.
RSA_512_PEM = b"""-----BEGIN PRIVATE KEY-----
MIIBVQIBADANBgkqhkiG9w0BAQEFAASCAT8wggE7AgEAAkEA1NYWznRuX3Gx53R/
FDfITsLrtvQ9sUm2Hoqqb4wF5Ge3nWqvTVWk7uwHnd9Hc8e5XhKKHbTimKefrBGe
rMU6OQIDAQABAkA/dFC6XsYlWI1U10un6HWk3cJO+oSGHdbZRjhIJ3P+Q06oqXdX
mypmVmR+0azxUI95rAkim719674aXNgHObSBAiEA7lQG5j3RGfS+odddx/FtO1k1
lWBqfzdA3+wLUWbjQokCIQDknivTogs7O1zNg6g+aygGrtQkEYm/iAKIELG/4BIO
MQIhAIQM2qXHqowPJ3DUu4mFI1i23RGfEmLaYn+vcbXwpArBAiBNFEcSg3/l6I3R
fKIs6VQFbMx5nLAks2anGXnUh2ePAQIhAI0BgnNsydowdVsIWQdeWSyIeU8+n4oR
BKFcQHJA9bKq
-----END PRIVATE KEY-----
"""
RSA_PEM = dkim.generate_key("rsa", bits=2048)
ED_PEM = dkim.generate_key("ed25519")
RSA = dkim.load_key("Example.com", "rsa1", RSA_PEM)
ED = dkim.load_key("example.com", "ed1", ED_PEM)

BASE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: hello\r\n"
    b"Date: Sat, 22 Nov 2025 12:00:00 +0000\r\n"
    b"Message-ID: <1@example.com>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)


def dnsfunc_for(*keys: dkim.DkimKey):
    records = dict(dkim.dns_record(k) for k in keys)

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        return records[name.decode().rstrip(".")].encode()

    return dnsfunc


def verify_all(signed: bytes, *keys: dkim.DkimKey) -> list[bool]:
    verifier = dkimpy.DKIM(signed)
    results = []
    for i in range(len(keys)):
        try:
            results.append(verifier.verify(idx=i, dnsfunc=dnsfunc_for(*keys)))
        except dkimpy.ValidationError:  # e.g. "body hash mismatch"
            results.append(False)
    return results


@pytest.mark.parametrize("key", [RSA, ED], ids=["rsa2048", "ed25519"])
def test_signature_verifies_with_dkimpy(key):
    signed = dkim.sign(BASE, [key])
    assert signed.endswith(BASE)
    assert verify_all(signed, key) == [True]


def test_both_keys_sign_one_message_and_both_verify():
    signed = dkim.sign(BASE, [RSA, ED])
    assert signed.count(b"DKIM-Signature:") == 2
    assert b"a=rsa-sha256" in signed.split(b"DKIM-Signature:")[1]
    assert b"a=ed25519-sha256" in signed.split(b"DKIM-Signature:")[2]
    assert verify_all(signed, RSA, ED) == [True, True]


TRICKY = {
    "folded_headers": BASE.replace(b"Subject: hello\r\n", b"Subject: a long\r\n\tsubject   folded\r\n  twice \r\n"),
    "header_twice": BASE.replace(b"To: bob@example.net\r\n", b"To: bob@example.net\r\nTo: carol@example.org\r\n"),
    "empty_body": BASE.split(b"\r\n\r\n")[0] + b"\r\n\r\n",
    "headers_only": BASE.split(b"\r\n\r\n")[0] + b"\r\n",
    "trailing_blank_lines": BASE + b"\r\n\r\n \r\n\t\r\n",
    "no_final_crlf": BASE + b"last line",
    "eight_bit_body": BASE + "Grüße, ça va? 日本語\r\n".encode(),
    "tabs_and_runs": BASE + b"a \t b\t\tc   \t\r\n\t lead\r\n",
    "odd_header_spacing": BASE.replace(b"Date: ", b"Date:\t ").replace(b"From:", b"FROM:"),
}


@pytest.mark.parametrize("message", TRICKY.values(), ids=TRICKY.keys())
def test_tricky_messages_verify_with_both_keys(message):
    assert verify_all(dkim.sign(message, [RSA, ED]), RSA, ED) == [True, True]


def test_tampered_body_fails_verification():
    signed = dkim.sign(BASE, [RSA, ED])
    assert verify_all(signed.replace(b"Hello Bob.", b"Hello Eve."), RSA, ED) == [False, False]


def test_tampered_signed_header_fails_but_whitespace_change_passes():
    signed = dkim.sign(BASE, [RSA])
    assert verify_all(signed.replace(b"Subject: hello", b"Subject: HELLO"), RSA) == [False]
    assert verify_all(signed.replace(b"Subject: hello", b"Subject:   hello  "), RSA) == [True]


def test_every_instance_of_a_signed_header_is_listed():
    signed = dkim.sign(TRICKY["header_twice"], [RSA])
    assert _tag(signed, "h") == "from:to:to:subject:date:message-id"


def test_only_listed_present_headers_are_signed_and_t_is_now():
    message = b"X-Other: 1\r\n" + BASE.replace(b"Subject: hello\r\n", b"")
    signed = dkim.sign(message, [RSA], headers=("From", "Subject", "x-other"), now=1_700_000_000)
    assert _tag(signed, "h") == "from:x-other"
    assert _tag(signed, "t") == "1700000000"
    assert _tag(signed, "d") == "example.com" and _tag(signed, "s") == "rsa1"
    assert verify_all(signed, RSA) == [True]


def test_message_without_from_is_refused():
    with pytest.raises(ValueError, match="From"):
        dkim.sign(BASE.replace(b"From:", b"X-From:"), [RSA])


def test_signature_lines_stay_short():
    signed = dkim.sign(BASE, [RSA, ED])
    header_block = signed.split(b"From:")[0]
    assert max(len(line) for line in header_block.split(b"\r\n")) <= 78


def test_no_keys_returns_message_unchanged():
    assert dkim.sign(BASE, []) is BASE


def test_rfc6376_canonicalization_examples():
    # RFC 6376 §3.4.5, relaxed/relaxed.
    assert dkim.canonicalize_header(b"A: X") == b"a:X"
    assert dkim.canonicalize_header(b"B : Y\t\r\n\tZ  ") == b"b:Y Z"
    assert dkim.canonicalize_body(b" C \r\nD \t E\r\n\r\n\r\n") == b" C\r\nD E\r\n"
    assert dkim.canonicalize_body(b"") == b""
    assert dkim.canonicalize_body(b"\r\n\r\n") == b""


def test_dns_record_text():
    name, rsa_txt = dkim.dns_record(RSA)
    assert name == "rsa1._domainkey.example.com"
    assert rsa_txt.startswith("v=DKIM1; k=rsa; p=MII")
    name, ed_txt = dkim.dns_record(ED)
    assert name == "ed1._domainkey.example.com"
    assert ed_txt.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_txt.split("p=")[1])) == 32  # raw key, RFC 8463


def test_load_key_rejects_small_rsa_and_other_key_types():
    with pytest.raises(ValueError, match="too small"):
        dkim.load_key("example.com", "s", RSA_512_PEM)
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(ValueError, match="unsupported key type"):
        dkim.load_key("example.com", "s", ec_pem)
    encrypted = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"))
    with pytest.raises(ValueError, match="cannot load"):
        dkim.load_key("example.com", "s", encrypted)
    with pytest.raises(ValueError):
        dkim.load_key("example.com", "s", b"not a key")
    with pytest.raises(ValueError, match="'rsa' or 'ed25519'"):
        dkim.generate_key("dsa")  # type: ignore[arg-type]


def _tag(signed: bytes, tag: str) -> str:
    """A tag of the first DKIM-Signature header, unfolded."""
    value = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", signed, re.S).group(1)
    tags = dict(part.split(b"=", 1) for part in re.sub(rb"\s+", b"", value).split(b";") if part)
    return tags[tag.encode()].decode()
