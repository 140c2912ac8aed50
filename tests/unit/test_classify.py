"""mtad.outbound.classify: outcomes chosen by exception types and attributes, never by what their text says."""

from __future__ import annotations

import asyncio
import errno
import ssl

import aiosmtplib
import dns.exception
import dns.resolver

from mtad.base.errors import PermFailure, TempFailure
from mtad.outbound import classify


def raised_from(exc: BaseException, cause: BaseException) -> BaseException:
    try:
        raise exc from cause
    except BaseException as caught:  # noqa: BLE001
        return caught


def codes(exc: BaseException) -> tuple[str, int, str]:
    o = classify.from_exception(exc, mx_host="mx.test")
    return o.kind, o.code, o.enhanced


def test_permanent_failures_carry_their_own_status_whatever_their_text():
    assert codes(PermFailure("example.com: domain does not exist (NXDOMAIN)", "5.1.2")) == ("failed", 550, "5.1.2")
    assert codes(PermFailure("my-domain.test: no address for its mail hosts (mx.my-domain.test)")) == \
        ("failed", 550, "5.4.4")  # "domain" in the name does not make it a bad-domain bounce


def test_smtp_replies_by_their_code_and_message():
    o = classify.from_exception(aiosmtplib.SMTPRecipientRefused(550, "5.1.1 no such user", "a@x.test"))
    assert (o.kind, o.code, o.enhanced, o.reason) == ("failed", 550, "5.1.1", "bounce")
    assert codes(aiosmtplib.SMTPResponseException(451, "try later")) == ("deferred", 451, "4.0.0")


def test_timeouts_by_type_anywhere_in_the_cause_chain():
    assert codes(asyncio.TimeoutError()) == ("deferred", 421, "4.4.2")
    assert codes(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response")) == ("deferred", 421, "4.4.2")
    refused_by_timeout = raised_from(aiosmtplib.SMTPConnectError("Error connecting to mx on port 25"),
                                     OSError(errno.ETIMEDOUT, "Connection timed out"))
    assert codes(refused_by_timeout) == ("deferred", 421, "4.4.2")
    assert codes(raised_from(TempFailure("x.test: MX lookup failed: timed out"), dns.exception.Timeout())) == \
        ("deferred", 421, "4.4.2")


def test_other_errors_are_4_4_1_even_when_their_text_mentions_a_timeout():
    assert codes(raised_from(TempFailure("x.test: MX lookup failed"), dns.resolver.NoNameservers())) == \
        ("deferred", 421, "4.4.1")
    assert codes(ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")) == ("deferred", 421, "4.4.1")
    assert codes(aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line: b'timed out'")) == \
        ("deferred", 421, "4.4.1")
    assert codes(TempFailure("the smarthost timed out last week")) == ("deferred", 421, "4.4.1")
    o = classify.from_exception(ssl.SSLCertVerificationError("certificate verify failed"))
    assert (o.kind, o.enhanced) == ("deferred", "4.4.1") and o.message.startswith("TLS failed:")
