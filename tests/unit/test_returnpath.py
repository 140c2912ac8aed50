"""Return paths (``mail.returnpath``: tokens that verify, forged or altered ones that do not) and the policy of which
delivery gets one (``outbound.returnpath``: user mail of a sending domain; never a DSN, a forward, another domain)."""

from __future__ import annotations

import pytest

from mtad.base.keys import derive
from mtad.base.types import DSN_TRANSPORT
from mtad.mail import returnpath
from mtad.outbound.returnpath import ReturnPaths, after_trace
from mtad.store.queue import DeliveryJob

KEY = derive("key-test", returnpath.PURPOSE)
QID = "018F2A3B4C5D6E7F8A9"


def test_a_token_verifies_in_any_case_and_names_its_message_and_recipient():
    address = returnpath.address(KEY, QID, "example.com", "Bob@Dest.test")
    local = address.split("@")[0]
    assert local.startswith("bounce+018f2a3b4c5d6e7f8a9.") and len(local) <= 64
    for form in (address, address.upper(), address.lower()):
        token = returnpath.verify(KEY, form)
        assert token is not None and token.queue_id == QID
        assert token.names(KEY, "bob@dest.test") and not token.names(KEY, "alice@dest.test")
    whole = returnpath.verify(KEY, returnpath.address(KEY, QID, "example.com"))
    assert whole == returnpath.Token(QID, "") and not whole.names(KEY, "bob@dest.test")
    assert returnpath.verify_token(KEY, returnpath.token(KEY, QID)) == whole


@pytest.mark.parametrize("forge", [
    lambda a: a.replace("bounce+0", "bounce+1"),  # another queue id, same MAC
    lambda a: a[:-len("@example.com") - 1] + ("a" if a[-len("@example.com") - 1] != "a" else "b") + "@example.com",
    lambda a: a.replace(".", ".x", 1),  # a tag of another shape
    lambda a: "bounce+nothing@example.com",
    lambda a: "bounce+@example.com",
    lambda a: "someone@example.com",
])
def test_a_forged_or_altered_return_path_does_not_verify(forge):
    address = returnpath.address(KEY, QID, "example.com", "bob@dest.test")
    assert returnpath.verify(KEY, forge(address)) is None
    assert returnpath.verify(derive("key-other", returnpath.PURPOSE), address) is None  # another installation


def job(**kw) -> DeliveryJob:
    values = dict(id=1, queue_id=QID, domain="dest.test", recipients=("bob@dest.test",), attempts=0,
                  sender="news@example.com", sending_domain="example.com", created_at=0.0, options={}, headers={},
                  envelope={"transport": "smtp"}, size=10)
    values.update(kw)
    return DeliveryJob(**values)


def paths(policies=None, smarthost=False) -> ReturnPaths:
    return ReturnPaths(KEY, policies or {}, smarthost=smarthost, is_sending_domain=lambda d: d == "example.com")


def test_user_mail_of_a_sending_domain_gets_its_return_path_unless_its_policy_says_otherwise():
    one = paths().sender(job())
    assert returnpath.verify(KEY, one).names(KEY, "bob@dest.test") and one.endswith("@example.com")
    several = paths().sender(job(recipients=("a@dest.test", "b@dest.test")))
    assert returnpath.verify(KEY, several) == returnpath.Token(QID, "")
    assert paths(smarthost=True).sender(job()) == "news@example.com"  # auto: a smarthost keeps the sender
    assert paths({"example.com": "verp"}, smarthost=True).sender(job()).startswith("bounce+")
    assert paths({"example.com": "sender"}).sender(job()) == "news@example.com"


def test_dsns_forwards_and_other_domains_keep_their_sender_and_get_no_header():
    body = b"Received: from a\r\n\tby b; date\r\nFrom: x\r\n\r\nhi\r\n"
    for other in (job(sender="", envelope={"transport": DSN_TRANSPORT}), job(direction="inbound",
                  sender="SRS0=ab=CD=x.test=y@inbound.test"), job(sending_domain="news.example.com",
                  sender="a@news.example.com")):
        assert paths({"example.com": "verp"}).sender(other) == other.sender
        assert paths().stamp(other, body) is body
    stamped = paths().stamp(job(), body)
    assert stamped == (b"Received: from a\r\n\tby b; date\r\nX-Mtad-Sid: " + returnpath.token(KEY, QID, "bob@dest.test")
                       .encode() + b"\r\nFrom: x\r\n\r\nhi\r\n")


def test_the_header_goes_after_the_opening_trace_fields_only():
    assert after_trace(b"From: x\r\n\r\n") == 0
    assert after_trace(b"Received: a\r\nReceived: b\r\n c\r\nSubject: s\r\nReceived: late\r\n") == len(
        b"Received: a\r\nReceived: b\r\n c\r\n")
    assert after_trace(b" folded first\r\nFrom: x\r\n") == 0
