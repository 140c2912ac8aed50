"""The events of mailing lists, in Mailgun's shape: the ``mailing-list`` block of a list copy's events and the
``unsubscribed`` event of a member who left a list through its link. Pure functions (see ``events.shape``)."""

from __future__ import annotations

from typing import Any

from mtad.base.types import domain_of
from mtad.events import shape
from mtad.store.events import NewEvent


def mailing_list(address: str) -> dict[str, Any]:
    """Mailgun's ``mailing-list`` block: the list the message was sent to."""
    return {"address": address, "list-id": address}


def with_list(events: tuple[NewEvent, ...], address: str) -> tuple[NewEvent, ...]:
    """``events`` (a list copy's ``accepted``) with the list named."""
    block = mailing_list(address)
    return tuple(NewEvent(e.domain, {**e.data, "mailing-list": block}, e.system) for e in events)


def unsubscribed(list_address: str, member: str, now: float, client_ip: str = "",
                 user_agent: str = "") -> NewEvent:
    """A member unsubscribed from a list (its ``%mailing_list_unsubscribe_url%``), in the list's domain's log."""
    event = shape.base_event(
        "unsubscribed", timestamp=now, recipient=member, queue_id="", message=shape.message_part({}, 0),
        options={}, envelope={}, flags={"is-authenticated": False, "is-test-mode": False},
        extra={"mailing-list": mailing_list(list_address), "ip": client_ip,
               "client-info": {"user-agent": user_agent[:500]}})
    return NewEvent(domain_of(list_address), event)
