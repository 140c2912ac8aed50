"""One place turns every delivery error and reply into an ``Outcome`` (Postfix ``smtp_trouble.c``).

2xx -> delivered; 4xx -> deferred; 5xx -> failed; DNS permanent errors -> failed; everything else
(timeouts, refused connections, TLS failures, a lost reply after the final dot, unknown errors) ->
deferred: when in doubt, retry.

Exceptions are told apart by their types and attributes, never by their text: an SMTP reply by
aiosmtplib's ``code``/``message``, a permanent failure by its ``enhanced`` status, a timeout (4.4.2, else
4.4.1) by type anywhere in its chain of causes: ``TimeoutError`` (asyncio's and aiosmtplib's timeouts are
ones), ``ETIMEDOUT`` from the kernel, dnspython's ``Timeout``. The text only becomes the outcome's message.
"""

from __future__ import annotations

import asyncio
import errno
import re
import ssl

import aiosmtplib
import dns.exception

from mtad.base.errors import PermFailure, TempFailure
from mtad.base.types import Outcome

_ENHANCED = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})\s+")


def from_reply(code: int, message: str, *, mx_host: str = "", tls: bool = False,
               verified: bool = False) -> Outcome:
    text = " ".join(message.split())
    m = _ENHANCED.match(text)
    enhanced = m.group(1) if m else ""
    if 200 <= code < 300:
        kind = "delivered"
    elif 500 <= code < 600:
        kind = "failed"
    else:
        kind = "deferred"
    if not enhanced:
        enhanced = {"delivered": "2.0.0", "failed": "5.0.0"}.get(kind, "4.0.0")
    return Outcome(kind=kind, code=code, enhanced=enhanced, message=text, mx_host=mx_host, tls=tls,
                   certificate_verified=verified, reason="bounce" if kind == "failed" else "")


def from_exception(exc: BaseException, *, mx_host: str = "", tls: bool = False, verified: bool = False) -> Outcome:
    if isinstance(exc, PermFailure):
        return Outcome("failed", 550, exc.enhanced, str(exc), mx_host, reason="bounce")
    if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code >= 200:
        return from_reply(exc.code, exc.message, mx_host=mx_host, tls=tls, verified=verified)
    if isinstance(exc, (ssl.SSLError, ssl.CertificateError)):
        text = f"TLS failed: {exc}"
    elif isinstance(exc, (asyncio.TimeoutError, aiosmtplib.SMTPTimeoutError)):
        text = "timed out"
    elif isinstance(exc, aiosmtplib.SMTPServerDisconnected):
        text = f"connection lost: {exc}"
    elif isinstance(exc, (TempFailure, aiosmtplib.SMTPException, OSError)):
        text = str(exc) or exc.__class__.__name__
    else:
        text = f"{exc.__class__.__name__}: {exc}"
    return Outcome("deferred", 421, "4.4.2" if timed_out(exc) else "4.4.1", text, mx_host, tls, verified)


def timed_out(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from (``__cause__``), is a timeout."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, (TimeoutError, asyncio.TimeoutError, dns.exception.Timeout)) or \
                (isinstance(cause, OSError) and cause.errno == errno.ETIMEDOUT):
            return True
        cause = cause.__cause__
    return False


def is_mailbox_bounce(outcome: Outcome) -> bool:
    """A permanent failure saying the mailbox does not exist (5.1.x): the address goes on the bounce list."""
    return outcome.kind == "failed" and outcome.enhanced.startswith("5.1.") and outcome.code >= 500
