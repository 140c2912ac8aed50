"""Delivery status notifications (RFC 3464) sent back to the envelope sender on permanent failure.

Only for mail relayed over SMTP with a non-null sender (never for a bounce: no loops).
"""

from __future__ import annotations

import email.utils
import secrets

from mtad.store.queue import DeliveryJob
from mtad.base.types import Envelope, HeaderSummary, NewMessage, Outcome

_MAX_ORIGINAL_HEADERS = 64 * 1024


def build(job: DeliveryJob, failed: dict[str, Outcome], hostname: str, original_headers: bytes = b"",
          now: float | None = None) -> NewMessage | None:
    if not job.sender or job.envelope.get("transport") not in ("smtp", "http"):
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
    envelope = Envelope(sender="", recipients=(job.sender,), transport="dsn")
    return NewMessage(envelope=envelope, body=body, direction="outbound", domain=job.sending_domain,
                      headers=HeaderSummary(msgid.strip("<>"), f"MAILER-DAEMON@{hostname}", job.sender,
                                            "Undelivered Mail Returned to Sender"))
