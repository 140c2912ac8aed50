"""Delivery status notifications (RFC 3464) sent back to the envelope sender on permanent failure.

Whether a message gets one is its sending domain's ``dsn`` policy (``sending_domains.D.dsn``), by how the
message came in (``envelope.transport``): ``smtp`` (the default) for mail submitted over SMTP only, whose client
(a smarthost set-up) expects bounces; ``always`` for HTTP API sends too; ``never``. Mailgun reports API sends'
failures through events and webhooks only, hence the default. Never, whatever the policy: for a null-sender
message (a DSN itself: no loops), and for a recipient dropped because it is suppressed (code 605: the address is
known to fail or to refuse the mail; it is reported by its ``failed`` event).
"""

from __future__ import annotations

import email.utils
import secrets
from typing import Literal

from mtad.store.queue import DeliveryJob
from mtad.base.types import DSN_TRANSPORT, Envelope, HeaderSummary, NewMessage, Outcome

Policy = Literal["smtp", "always", "never"]
TRANSPORT = DSN_TRANSPORT  # ``envelope.transport`` of the DSNs mtad makes
_MAX_ORIGINAL_HEADERS = 64 * 1024
_SOURCES: dict[str, tuple[str, ...]] = {"smtp": ("smtp",), "always": ("smtp", "http"), "never": ()}


def wanted(job: DeliveryJob, policy: Policy = "smtp") -> bool:
    """Whether a permanent failure of ``job`` is reported to its sender under ``policy`` (see the module doc)."""
    return bool(job.sender) and job.envelope.get("transport") in _SOURCES[policy]


def is_dsn(job: DeliveryJob) -> bool:
    """A DSN mtad made: its own failure is neither reported nor put on the user's bounce list."""
    return job.envelope.get("transport") == TRANSPORT


def build(job: DeliveryJob, failed: dict[str, Outcome], hostname: str, original_headers: bytes = b"",
          now: float | None = None, policy: Policy = "smtp") -> NewMessage | None:
    """The DSN reporting ``failed`` (recipient -> final outcome) to ``job``'s sender, or None when none is due."""
    failed = {r: o for r, o in failed.items() if not (o.reason or "").startswith("suppress-")}
    if not failed or not wanted(job, policy):
        return None
    boundary = secrets.token_hex(12)
    date = email.utils.formatdate(now)
    msgid = f"<{secrets.token_hex(10)}@{hostname}>"
    lines = "\r\n".join(f"<{r}>: {o.code} {o.message}" for r, o in failed.items())
    human = (f"This is the mail system at host {hostname}.\r\n\r\nYour message could not be delivered to one or"
             f" more recipients. It has been returned to you.\r\n\r\n{lines}\r\n")
    per_rcpt = "".join(
        f"Final-Recipient: rfc822; {r}\r\nAction: failed\r\nStatus: {o.enhanced or '5.0.0'}\r\n"
        + (f"Remote-MTA: dns; {o.mx_host}\r\n" if o.mx_host else "")
        + f"Diagnostic-Code: smtp; {o.code} {o.message}\r\n\r\n" for r, o in failed.items())
    body = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\nTo: <{job.sender}>\r\n"
        f"Subject: Undelivered Mail Returned to Sender\r\nDate: {date}\r\nMessage-ID: {msgid}\r\n"
        f"Auto-Submitted: auto-replied\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: multipart/report; report-type=delivery-status; boundary=\"{boundary}\"\r\n\r\n"
        f"--{boundary}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{human}\r\n"
        f"--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
        f"Reporting-MTA: dns; {hostname}\r\nX-Mtad-Queue-ID: {job.queue_id}\r\n\r\n{per_rcpt}"
        f"--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ).encode() + original_headers[:_MAX_ORIGINAL_HEADERS] + f"\r\n--{boundary}--\r\n".encode()
    envelope = Envelope(sender="", recipients=(job.sender,), transport=TRANSPORT)
    return NewMessage(envelope=envelope, body=body, direction="outbound", domain=job.sending_domain,
                      headers=HeaderSummary(msgid.strip("<>"), f"MAILER-DAEMON@{hostname}", job.sender,
                                            "Undelivered Mail Returned to Sender"))
