"""Route and webhook signatures: what the seed manual's verify() accepts."""

from __future__ import annotations

import hashlib
import hmac
import re
import time

from mtad.mail.signing import sign_token, verify


def seed_verify(api_key, token, timestamp, signature):
    """The seed manual's Python verify(), as printed (Python 2); only .encode() added for Python 3's hmac."""
    return signature == hmac.new(
        key=api_key.encode(),
        msg='{}{}'.format(timestamp, token).encode(),
        digestmod=hashlib.sha256).hexdigest()


def test_the_manuals_verify_accepts_sign_token_output():
    timestamp, token, signature = sign_token("key-3ax6xnjp29jd6fds4gc373sgvjxteol0")
    assert seed_verify("key-3ax6xnjp29jd6fds4gc373sgvjxteol0", token, timestamp, signature)
    assert not seed_verify("key-other", token, timestamp, signature)


def test_token_is_50_lowercase_alphanumerics_and_fresh_each_time():
    tokens = {sign_token("k")[1] for _ in range(20)}
    assert len(tokens) == 20
    assert all(re.fullmatch(r"[a-z0-9]{50}", t) for t in tokens)


def test_timestamp_defaults_to_now_and_can_be_given():
    assert abs(int(sign_token("k")[0]) - time.time()) < 5
    assert sign_token("k", "1700000000")[0] == "1700000000"


def test_verify_accepts_its_own_signature_and_rejects_any_change():
    timestamp, token, signature = sign_token("secret", "1700000000")
    assert verify("secret", timestamp, token, signature)
    assert not verify("secret", "1700000001", token, signature)
    assert not verify("secret", timestamp, token[:-1] + ("a" if token[-1] != "a" else "b"), signature)
    assert not verify("other", timestamp, token, signature)
    assert not verify("secret", timestamp, token, signature.upper())
    assert not verify("secret", timestamp, token, "")
    assert not verify("secret", timestamp, token, "é" * 64)
