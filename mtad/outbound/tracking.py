"""Which deliveries get per-recipient copies, and how each copy is rendered: the tracking settings applied to a job.

A delivery job's message needs a copy per recipient (``Tracking.personal``) when open, click or unsubscribe
tracking is on for it, or when it names a system variable (``render.needs_render``, a byte search). Everything
else goes out as today, one transaction per domain, at no extra cost: the test is a few dictionary reads and,
for the variables, ``bytes.find`` over a body already in memory.

Which tracking is on for a message (Mailgun's rules): the sending domain's settings (``/v3/domains/{d}/tracking``,
else ``tracking.defaults``), then ``o:tracking`` / ``X-Mailgun-Track`` (on or off for clicks and opens together),
then ``o:tracking-clicks`` (yes, no, htmlonly) and ``o:tracking-opens``, each more specific one winning.
The URLs are made under the domain's tracking base URL (``tracking.base_url`` or the domain's own), on the host
of the message's ``tracking_host`` option when it has one (an InboxFirst campaign's ``url_domain``).
Unsubscribe tracking (the footer, the List-Unsubscribe headers) follows the domain. Inbound mail forwarded to an
address and mtad's own DSNs are never tracked, and never rendered.

``spec(job, recipient)`` is the ``RenderSpec`` a worker renders one copy with (tokens sealed with the purpose
keys ``derive(signing_key, "tracking")`` and ``derive(signing_key, "unsubscribe")``; ``%unsubscribe_email%``, the
``mailto:`` of ``List-Unsubscribe``, is the recipient's ``unsubscribe+TOKEN@<sending domain>``, ``mail.unsubaddr``,
domain scope); ``tracked(job, links)`` the
row the tracking endpoints read the message back from. Settings are a snapshot replaced after a change
(``update``); pure otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from mtad.base import keys as keys_mod
from mtad.base.types import DSN_TRANSPORT
from mtad.config.schema import TrackingConfig
from mtad.mail import render as render_mod
from mtad.mail import unsubaddr
from mtad.store.engagement import DomainTracking, TrackedMessage
from mtad.store.queue import DeliveryJob


@dataclass(frozen=True)
class Effective:
    """What is on for one message."""

    clicks: str  # yes | no | htmlonly
    opens: bool
    unsubscribe: bool
    settings: DomainTracking

    @property
    def any(self) -> bool:
        return self.clicks != "no" or self.opens or self.unsubscribe


def with_host(base_url: str, host: str) -> str:
    """``base_url`` on ``host``: its scheme, port and path kept (a campaign's ``url_domain`` is a name pointed at
    the tracking listener, served on the same port)."""
    parts = urlsplit(base_url)
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, host + port, parts.path, "", "")).rstrip("/")


class Tracking:
    def __init__(self, config: TrackingConfig, base_url: str, signing_key: str,
                 settings: Mapping[str, DomainTracking] | None = None):
        self.config = config
        self.base_url = base_url.rstrip("/")
        self.tracking_key = keys_mod.derive(signing_key, "tracking")
        self.unsubscribe_key = keys_mod.derive(signing_key, "unsubscribe")
        self.unsubscribe_email_key = keys_mod.derive(signing_key, unsubaddr.PURPOSE)
        d = config.defaults
        self.defaults = DomainTracking(open=d.open, click=d.click_mode, unsubscribe=d.unsubscribe)
        self.settings: dict[str, DomainTracking] = dict(settings or {})

    def update(self, settings: Mapping[str, DomainTracking]) -> None:
        self.settings = dict(settings)

    def settings_for(self, domain: str) -> DomainTracking:
        return self.settings.get(domain, self.defaults)

    def in_use(self) -> bool:
        """Whether the defaults or some domain's settings turn a kind of tracking on (per-message options aside)."""
        return any(s.open or s.click != "no" or s.unsubscribe for s in (self.defaults, *self.settings.values()))

    def effective(self, job: DeliveryJob) -> Effective | None:
        """What is on for ``job``'s message; None for a message never rendered (a forward, a DSN)."""
        if job.direction != "outbound" or job.envelope.get("transport") == DSN_TRANSPORT:
            return None
        s = self.settings_for(job.sending_domain)
        opts = job.options
        clicks, opens = s.click, s.open
        both = opts.get("tracking")
        if both is not None:
            clicks = (s.click if s.click != "no" else "yes") if both else "no"
            opens = bool(both)
        if opts.get("tracking_clicks") in render_mod.CLICK_MODES:
            clicks = opts["tracking_clicks"]
        if opts.get("tracking_opens") is not None:
            opens = bool(opts["tracking_opens"])
        return Effective(clicks, opens, s.unsubscribe, s)

    def personal(self, job: DeliveryJob, body: bytes) -> bool:
        """Whether each recipient of ``job`` gets a copy of their own (see the module doc)."""
        effective = self.effective(job)
        if effective is None:
            return False
        return effective.any or render_mod.needs_render(body)

    def base_for(self, settings: DomainTracking) -> str:
        return (settings.base_url or self.base_url).rstrip("/")

    def spec(self, job: DeliveryJob, recipient: str) -> render_mod.RenderSpec:
        e = self.effective(job)
        assert e is not None
        base = self.base_for(e.settings)
        if job.options.get("tracking_host"):
            base = with_host(base, str(job.options["tracking_host"]))
        return render_mod.RenderSpec(
            queue_id=job.queue_id, recipient=recipient, base_url=base, clicks=e.clicks,
            opens=e.opens, unsubscribe=e.unsubscribe, html_footer=e.settings.html_footer,
            text_footer=e.settings.text_footer, tracking_key=self.tracking_key, unsubscribe_key=self.unsubscribe_key,
            unsubscribe_email=unsubaddr.address(self.unsubscribe_email_key, job.queue_id, recipient,
                                                job.sending_domain) if job.sending_domain else "")

    def tracked(self, job: DeliveryJob, links: list[str] | None, now: float | None = None) -> TrackedMessage:
        """What the tracking endpoints need of ``job``'s message (its events' fields, its link list)."""
        opts = job.options
        data = {"headers": dict(job.headers), "size": job.size, "attachments": list(job.attachments),
                "sender": job.sender, "authenticated": job.envelope.get("auth_user") is not None,
                "options": {"tags": list(opts.get("tags") or ()), "campaigns": list(opts.get("campaigns") or ()),
                            "variables": dict(opts.get("variables") or {}),
                            "test_mode": bool(opts.get("test_mode"))}}
        return TrackedMessage(job.queue_id, job.sending_domain, time.time() if now is None else now, data,
                              tuple(links or ()))
