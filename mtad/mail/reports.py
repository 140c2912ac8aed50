"""Reading the reports that come back about sent mail: DSNs (RFC 3464) and feedback reports (ARF, RFC 5965).

``parse(content)`` reads a message with the standard library's email parser and returns

- a ``DeliveryReport`` for ``multipart/report; report-type=delivery-status`` (or the RFC 6533
  ``global-delivery-status``): the reporting MTA and, per recipient block, ``Final-Recipient``,
  ``Original-Recipient``, ``Action``, ``Status``, ``Diagnostic-Code`` and ``Remote-MTA``;
- a ``FeedbackReport`` for ``multipart/report; report-type=feedback-report``: ``Feedback-Type``, ``User-Agent``,
  ``Original-Mail-From``, ``Original-Rcpt-To``, ``Source-IP``, ``Reported-Domain``, ``Arrival-Date``;
- None for anything else (an auto-reply, a challenge, a human's mail: not a report).

Both carry the header block of the original message (``OriginalHeaders``: from a ``text/rfc822-headers`` part or
the header of a ``message/rfc822`` one; empty when the report has neither), where the original's return path,
Message-ID and ``X-Mtad-Sid`` are looked for. A ``multipart/report`` that cannot be read as its report type says
(no status part, no recipient block, a recipient without an address) raises ``ReportError`` naming the problem.
The input is hostile: field values are unfolded and bounded, at most ``MAX_BLOCKS`` recipient blocks and
``MAX_FIELDS`` original header fields are read, and nothing here raises anything but ``ReportError``.
Pure: no I/O.
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import email.utils
import re
from dataclasses import dataclass

MAX_BLOCKS = 1000  # recipient blocks read from one DSN
MAX_FIELDS = 1000  # header fields read from the original's header block
MAX_VALUE = 1000  # characters kept of one field value
_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})")
_REPLY = re.compile(r"([245]\d\d)[ -]")
_DSN_TYPES = ("message/delivery-status", "message/global-delivery-status")
_HEADER_TYPES = ("text/rfc822-headers", "message/global-headers")
_MESSAGE_TYPES = ("message/rfc822", "message/global")


class ReportError(ValueError):
    """A ``multipart/report`` that cannot be read; the text says why."""


@dataclass(frozen=True)
class OriginalHeaders:
    """The header fields of the message a report is about, in order (names as written, values unfolded)."""

    fields: tuple[tuple[str, str], ...] = ()

    def get(self, name: str) -> str:
        lower = name.lower()
        return next((v for n, v in self.fields if n.lower() == lower), "")

    @property
    def message_id(self) -> str:
        """The Message-ID without its angle brackets ("" when none)."""
        return self.get("Message-ID").strip().strip("<>").strip()

    @property
    def return_path(self) -> str:
        """The address of the Return-Path field (the envelope sender the receiver saw), "" when none."""
        return email.utils.parseaddr(self.get("Return-Path"))[1] or self.get("Return-Path").strip().strip("<>")

    @property
    def to(self) -> tuple[str, ...]:
        return tuple(a for _, a in email.utils.getaddresses([v for n, v in self.fields if n.lower() == "to"]) if a)


@dataclass(frozen=True)
class DsnRecipient:
    """One per-recipient block of a DSN."""

    final_recipient: str
    original_recipient: str
    action: str  # failed | delayed | delivered | relayed | expanded (lower case)
    status: str  # e.g. 5.1.1
    diagnostic_type: str  # e.g. smtp, x-postfix ("" when no Diagnostic-Code)
    diagnostic: str  # the diagnostic text, e.g. "550 5.1.1 <x@y>: User unknown"
    remote_mta: str  # the host that said it ("" when none)

    @property
    def code(self) -> int:
        """The SMTP reply code: from an ``smtp`` diagnostic, else the status class's (550, 450, 250)."""
        m = _REPLY.match(self.diagnostic + " ")
        if m and self.diagnostic_type in ("smtp", ""):
            return int(m.group(1))
        return {"5": 550, "4": 450, "2": 250}[self.status[0]]

    @property
    def permanent(self) -> bool:
        """A final failure: the reporting system gave up (``Action: failed``), whatever the status class."""
        return self.action == "failed"


@dataclass(frozen=True)
class DeliveryReport:
    reporting_mta: str
    recipients: tuple[DsnRecipient, ...]
    original: OriginalHeaders


@dataclass(frozen=True)
class FeedbackReport:
    feedback_type: str  # abuse | fraud | virus | other | not-spam | ... (lower case)
    user_agent: str
    original_mail_from: str
    original_rcpt_to: tuple[str, ...]
    source_ip: str
    reported_domain: str
    arrival_date: str
    original: OriginalHeaders

    @property
    def is_complaint(self) -> bool:
        """Every feedback type but ``not-spam`` (RFC 6430) reports a complaint about the message."""
        return self.feedback_type != "not-spam"


Report = DeliveryReport | FeedbackReport


def _clean(value: object) -> str:
    text = " ".join(str(value).split())
    return text[:MAX_VALUE]


def _typed(value: str) -> tuple[str, str]:
    """``type; value`` -> (lower-case type, value); a value without a type gets "" as its type."""
    kind, sep, rest = value.partition(";")
    if not sep:
        return "", value.strip()
    return kind.strip().lower(), rest.strip()


def _address(value: str) -> str:
    return _typed(value)[1].strip().strip("<>").strip()


def _fields_of(text: str) -> list[tuple[str, str]]:
    """Header-like fields of a block of text (unfolded), at most ``MAX_FIELDS``."""
    msg = email.parser.HeaderParser(policy=email.policy.compat32).parsestr(text)
    return [(name, _clean(value)) for name, value in msg.items()[:MAX_FIELDS]]


def _text(part: email.message.Message) -> str:
    """A leaf part's text, its transfer encoding undone, decoded as UTF-8 (errors replaced)."""
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        return payload.decode("utf-8", "replace")
    return str(part.get_payload() or "")


def _blocks(part: email.message.Message) -> list[list[tuple[str, str]]]:
    """The field blocks of a delivery-status part: the per-message block then one per recipient."""
    payload = part.get_payload()
    if isinstance(payload, list) and all(isinstance(p, email.message.Message) for p in payload):
        if part.get_content_type() == "message/delivery-status":  # the parser split it into blocks already
            return [[(n, _clean(v)) for n, v in p.items()[:MAX_FIELDS]] for p in payload[:MAX_BLOCKS + 1]]
        # another message/* type was parsed as one message: its header is the first block, its body the rest
        text = payload[0].as_string() if payload else ""
    else:
        text = _text(part)
    text = text.replace("\r\n", "\n")
    return [_fields_of(block) for block in re.split(r"\n[ \t]*\n", text.strip())[:MAX_BLOCKS + 1] if block.strip()]


def _get(fields: list[tuple[str, str]], name: str) -> str:
    lower = name.lower()
    return next((v for n, v in fields if n.lower() == lower), "")


def _original(parts: list[email.message.Message]) -> OriginalHeaders:
    for part in parts:
        ctype = part.get_content_type()
        if ctype in _HEADER_TYPES:
            return OriginalHeaders(tuple(_fields_of(_text(part))))
        if ctype in _MESSAGE_TYPES:
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, email.message.Message):
                return OriginalHeaders(tuple((n, _clean(v)) for n, v in inner.items()[:MAX_FIELDS]))
            return OriginalHeaders(tuple(_fields_of(_text(part))))
    return OriginalHeaders()


def _delivery_report(parts: list[email.message.Message]) -> DeliveryReport:
    status_part = next((p for p in parts if p.get_content_type() in _DSN_TYPES), None)
    if status_part is None:
        raise ReportError("a delivery-status report without a message/delivery-status part")
    blocks = _blocks(status_part)
    if len(blocks) < 2:
        raise ReportError("a delivery-status report without a per-recipient block")
    recipients = []
    for fields in blocks[1:MAX_BLOCKS + 1]:
        final = _address(_get(fields, "Final-Recipient"))
        original = _address(_get(fields, "Original-Recipient"))
        if not final and not original:
            raise ReportError("a recipient block without Final-Recipient")
        action = _get(fields, "Action").lower().split(" ")[0] if _get(fields, "Action") else ""
        if action not in ("failed", "delayed", "delivered", "relayed", "expanded"):
            raise ReportError(f"a recipient block with the unknown Action {action[:40]!r}")
        m = _STATUS.search(_get(fields, "Status"))
        status = m.group(0) if m else {"failed": "5.0.0", "delayed": "4.0.0"}.get(action, "2.0.0")
        diagnostic_type, diagnostic = _typed(_get(fields, "Diagnostic-Code"))
        recipients.append(DsnRecipient(final or original, original, action, status, diagnostic_type, diagnostic,
                                       _typed(_get(fields, "Remote-MTA"))[1]))
    return DeliveryReport(_typed(_get(blocks[0], "Reporting-MTA"))[1], tuple(recipients), _original(parts))


def _feedback_report(parts: list[email.message.Message]) -> FeedbackReport:
    report = next((p for p in parts if p.get_content_type() == "message/feedback-report"), None)
    if report is None:
        raise ReportError("a feedback report without a message/feedback-report part")
    payload = report.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], email.message.Message):
        fields = [(n, _clean(v)) for n, v in payload[0].items()[:MAX_FIELDS]]
    else:
        fields = _fields_of(_text(report))
    feedback_type = _get(fields, "Feedback-Type").lower()
    if not feedback_type:
        raise ReportError("a feedback report without Feedback-Type")
    rcpt_to = tuple(_address(v) for n, v in fields if n.lower() == "original-rcpt-to" and _address(v))
    return FeedbackReport(feedback_type, _get(fields, "User-Agent"), _address(_get(fields, "Original-Mail-From")),
                          rcpt_to, _get(fields, "Source-IP"), _get(fields, "Reported-Domain").lower(),
                          _get(fields, "Arrival-Date"), _original(parts))


def parse(content: bytes) -> Report | None:
    """The report ``content`` is (see the module doc), None when it is not one; ``ReportError`` if unreadable."""
    try:
        msg = email.message_from_bytes(content, policy=email.policy.compat32)
        if msg.get_content_type() != "multipart/report":
            return None
        report_type = str(msg.get_param("report-type") or "").lower()
        payload = msg.get_payload()
        parts = [p for p in payload if isinstance(p, email.message.Message)] if isinstance(payload, list) else []
        if report_type in ("delivery-status", "global-delivery-status"):
            return _delivery_report(parts)
        if report_type == "feedback-report":
            return _feedback_report(parts)
        return None  # another report type (disposition-notification: a read receipt): not one of ours
    except ReportError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile input: whatever the parser trips on is "unreadable"
        raise ReportError(f"unreadable report: {exc.__class__.__name__}") from None
