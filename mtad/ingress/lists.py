"""Which recipients are mailing lists, and who may post to them: what ingress decides with at RCPT and DATA.

``ListDirectory`` keeps every list (address, id, access level; a few bytes each, never the members) in memory, a
snapshot swapped whole by ``reload()``: at start, after a change through this node's API (awaited by the API
before it answers) and when any node changes lists (``store.on_change("lists")``). Members are asked of the store
when it matters (``is_member``: a post over the MX listener to a ``members`` list).

Who may post (``access_level``, Mailgun's): ``readonly`` lists take mail only from authenticated senders (the HTTP
API, authenticated SMTP); ``members`` lists also from their subscribed members over the MX listener; ``everyone``
lists from anybody over the MX listener. A list address on a receiving domain may also have routes: those act as
for any address, whether or not the list takes the post.
"""

from __future__ import annotations

import logging
from typing import Mapping, Protocol

from mtad.store.lists import ListMember, MailingList

log = logging.getLogger("mtad.ingress")


class _Store(Protocol):
    async def load_lists(self) -> tuple[MailingList, ...]: ...
    async def get_member(self, list_address: str, address: str) -> ListMember | None: ...


class ListDirectory:
    def __init__(self, store: _Store):
        self.store = store
        self.by_address: Mapping[str, MailingList] = {}

    async def reload(self) -> None:
        lists = await self.store.load_lists()
        self.by_address = {lst.address: lst for lst in lists}

    def get(self, address: str) -> MailingList | None:
        return self.by_address.get(address.lower()) if self.by_address else None

    def open_to_outsiders(self, address: str) -> bool:
        """Whether posts over the MX listener may reach the list at all (``members`` or ``everyone``)."""
        lst = self.get(address)
        return lst is not None and lst.access_level in ("members", "everyone")

    async def may_post(self, lst: MailingList, sender: str) -> bool:
        """Whether an unauthenticated ``sender`` may post to ``lst`` (see the module doc)."""
        if lst.access_level == "everyone":
            return bool(sender)  # a bounce (null sender) is never sent to a list's members
        if lst.access_level == "members" and sender:
            member = await self.store.get_member(lst.address, sender)
            return member is not None and member.subscribed
        return False
