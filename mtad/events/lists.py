"""The events of mailing lists, in Mailgun's shape: the ``mailing-list`` block of a list copy's events and the
``unsubscribed`` event of a member who left a list through its link. Pure functions (see ``events.shape``)."""

from __future__ import annotations

from typing import Any, Mapping

from mtad.base.types import DSN_TRANSPORT, Envelope, SendOptions, domain_of
from mtad.events import shape
from mtad.store.events import NewEvent


def mailing_list(address: str) -> dict[str, Any]:
    """Mailgun's ``mailing-list`` block: the list the message was sent to."""
    return {"address": address, "list-id": address}


def with_list(events: tuple[NewEvent, ...], address: str) -> tuple[NewEvent, ...]:
    """``events`` (a list copy's ``accepted``) with the list named."""
    block = mailing_list(address)
    return tuple(NewEvent(e.domain, {**e.data, "mailing-list": block}, e.system) for e in events)


class CopyEvents:
    """``with_list(shape.accepted(copy, queue_id, now), list_address)`` for the copies of one message to one list:
    outbound, one recipient each, sharing their envelope (but its recipient), options, attachments and domain.
    What they share (tags, campaigns, variables, flags, the envelope's fields, the list's block) is built once;
    each copy's event is then a few dicts (the copies of a large list are made by the hundred thousand)."""

    def __init__(self, envelope: Envelope, options: SendOptions, attachments: tuple, domain: str, list_address: str):
        self.domain = domain
        self.system = envelope.transport == DSN_TRANSPORT
        self.sender, self.transport, self.client_ip = envelope.sender, envelope.transport, envelope.client_ip
        self.attachments = attachments
        self.tags = list(options.tags)
        self.campaigns = [{"id": c} for c in options.campaigns]
        self.variables = dict(options.variables)
        self.flags = {"is-authenticated": envelope.auth_user is not None, "is-test-mode": options.test_mode,
                      "is-routed": False, "is-delayed-bounce": False, "is-system-test": False}
        self.block = mailing_list(list_address)

    def accepted(self, queue_id: str, now: float, recipient: str, headers: Mapping[str, str],
                 size: int, event_id: str = "") -> tuple[NewEvent, ...]:
        """The copy's events; ``headers``: its ``HeaderSummary.to_json()`` (kept as given); ``event_id``: its
        ``accepted`` event's id (a new one when empty: ``shape.new_event_id``)."""
        event = {
            "id": event_id or shape.new_event_id(), "event": "accepted", "timestamp": now, "log-level": "info",
            "recipient": recipient, "recipient-domain": domain_of(recipient),
            "message": {"headers": headers, "attachments": list(self.attachments), "size": size},
            "tags": self.tags, "campaigns": self.campaigns, "user-variables": self.variables,
            "envelope": {"sender": self.sender, "targets": recipient, "transport": self.transport,
                         "sending-ip": self.client_ip},
            "flags": self.flags, "storage": {"key": queue_id},
            "method": self.transport, "originating-ip": self.client_ip, "direction": "outgoing",
            "mailing-list": self.block,
        }
        return (NewEvent(self.domain, event, self.system),)


def unsubscribed(list_address: str, member: str, now: float, client_ip: str = "",
                 user_agent: str = "") -> NewEvent:
    """A member unsubscribed from a list (its ``%mailing_list_unsubscribe_url%``), in the list's domain's log."""
    event = shape.base_event(
        "unsubscribed", timestamp=now, recipient=member, queue_id="", message=shape.message_part({}, 0),
        options={}, envelope={}, flags={"is-authenticated": False, "is-test-mode": False},
        extra={"mailing-list": mailing_list(list_address), "ip": client_ip,
               "client-info": {"user-agent": user_agent[:500]}})
    return NewEvent(domain_of(list_address), event)
