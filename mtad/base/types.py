"""Frozen records that cross stages: ingress -> store -> scheduler/router -> delivery/forward.

Mutable protocol state (aiosmtpd's Session/Envelope) is copied into these at the stage boundary;
change them with ``dataclasses.replace``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Direction = Literal["outbound", "inbound"]


DSN_TRANSPORT = "dsn"  # ``envelope.transport`` of the delivery status notifications mtad makes (outbound.dsn)


def domain_of(address: str) -> str:
    """The domain of an address, lower-cased (``""`` for none)."""
    return address.rpartition("@")[2].lower()

OutcomeKind = Literal["delivered", "deferred", "failed"]


@dataclass(frozen=True)
class SendOptions:
    """Mailgun sending options, from ``X-Mailgun-*`` headers or ``o:``/``v:`` API fields (one parser)."""

    tags: tuple[str, ...] = ()
    campaigns: tuple[str, ...] = ()
    dkim: bool | None = None  # None: the domain's default
    deliver_by: float | None = None  # epoch seconds: not attempted before
    deliver_within: float | None = None  # seconds after acceptance: fail permanently after
    test_mode: bool = False
    tracking: bool | None = None
    tracking_clicks: str | None = None  # yes | no | htmlonly
    tracking_opens: bool | None = None
    variables: Mapping[str, Any] = field(default_factory=dict)
    require_tls: bool = False
    skip_verification: bool = False
    unknown: tuple[tuple[str, str], ...] = ()  # X-Mailgun-* headers not understood, recorded then removed
    tracking_host: str = ""  # the host of the tracking URLs instead of the tracking base URL's (a campaign's url_domain)

    def to_json(self) -> dict[str, Any]:
        return {
            "tags": list(self.tags), "campaigns": list(self.campaigns), "dkim": self.dkim,
            "deliver_by": self.deliver_by, "deliver_within": self.deliver_within,
            "test_mode": self.test_mode, "tracking": self.tracking,
            "tracking_clicks": self.tracking_clicks, "tracking_opens": self.tracking_opens,
            "variables": dict(self.variables), "require_tls": self.require_tls,
            "skip_verification": self.skip_verification, "unknown": [list(u) for u in self.unknown],
            **({"tracking_host": self.tracking_host} if self.tracking_host else {}),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "SendOptions":
        return cls(
            tags=tuple(data.get("tags", ())), campaigns=tuple(data.get("campaigns", ())),
            dkim=data.get("dkim"), deliver_by=data.get("deliver_by"),
            deliver_within=data.get("deliver_within"), test_mode=bool(data.get("test_mode")),
            tracking=data.get("tracking"), tracking_clicks=data.get("tracking_clicks"),
            tracking_opens=data.get("tracking_opens"), variables=dict(data.get("variables") or {}),
            require_tls=bool(data.get("require_tls")),
            skip_verification=bool(data.get("skip_verification")),
            unknown=tuple(tuple(u) for u in data.get("unknown", ())),  # type: ignore[misc]
            tracking_host=str(data.get("tracking_host") or ""),
        )


@dataclass(frozen=True)
class Envelope:
    """What an SMTP (or HTTP) client handed over, frozen at the end of DATA."""

    sender: str
    recipients: tuple[str, ...]
    client_ip: str = ""
    client_helo: str = ""
    auth_user: str | None = None
    tls: bool = False
    transport: str = "smtp"  # smtp | http
    listener: str = ""
    verdicts: Mapping[str, str] | None = None  # inbound authentication (spf, dkim, dmarc, arc, action): issue 15


@dataclass(frozen=True)
class HeaderSummary:
    """The headers events and queries show (Mailgun's ``message.headers``)."""

    message_id: str = ""
    from_: str = ""
    to: str = ""
    subject: str = ""

    def to_json(self) -> dict[str, str]:
        return {"message-id": self.message_id, "from": self.from_, "to": self.to, "subject": self.subject}


@dataclass(frozen=True)
class NewMessage:
    """A message ready to be committed: body bytes final (cleaned, options stripped, CRLF)."""

    envelope: Envelope
    body: bytes
    direction: Direction
    domain: str  # sending domain (outbound) or receiving domain (inbound)
    headers: HeaderSummary
    options: SendOptions = SendOptions()
    attachments: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class Outcome:
    """One recipient's (or a whole attempt's) result, classified once (see delivery/classify)."""

    kind: OutcomeKind
    code: int = 0
    enhanced: str = ""
    message: str = ""
    mx_host: str = ""
    tls: bool = False
    certificate_verified: bool = False
    reason: str = ""  # bounce | old | suppress-bounce | ... (Mailgun's reasons)
