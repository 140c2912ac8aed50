"""Expanding a message sent to a mailing list into one queued copy per subscribed member, durably.

The message was committed once with an expansion row per list (``Enqueue.lists``). An ``Expander`` claims those
rows (leases, renewed while it works: ``store.leases``) and expands each page by page: it reads the next
``batch_size`` subscribed members after the row's cursor, in address order (memory stays flat whatever the list's
size), makes their copies, and commits the copies (new messages, one recipient each, each with its ``accepted``
event naming the list) and the cursor's advance in one transaction (``store.expand_batch``), which writes nothing
unless this worker still holds the row at that cursor. A kill -9 at any point therefore leaves every member with
exactly one copy once the row is taken up again (by the next process: its locks are released at start; by another
node: once the lease ran out). From there the copies are ordinary outbound mail: the scheduler delivers them,
drops suppressed recipients with the usual ``failed`` events, and records each copy's own events.

A copy: the original's bytes with the member's variables written in (``mail.listcopy``: ``%recipient%``,
``%recipient_fname%``/``%recipient_lname%`` from the member's name, ``%recipient.KEY%`` from its vars,
``%mailing_list_unsubscribe_url%`` its own link); ``Reply-To: <list>`` when the list takes posts (``members``,
``everyone``) and prefers replies to the list; unless the message has its own, ``List-Unsubscribe: <its link>,
<mailto:its unsubscribe address>`` (RFC 2369; the address, ``mail.unsubaddr`` list scope, when the sending domain
takes them: ``unsubscribe_address``) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058: the
link takes any POST), which the delivery stage then leaves alone and DKIM signs; the original's options (tags, tracking, variables, delivery time).
A message that names no variable is the same bytes for everybody and is not edited per member. A message posted
over the MX listener is sent on from the list's domain, its envelope sender rewritten (SRS) as forwards are, so
bounces come back to the original sender.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions, domain_of
from mtad.events import lists as list_events
from mtad.events import shape
from mtad.mail import listcopy, srs
from mtad.mail import variables as variables_mod
from mtad.store import queue as spool
from mtad.store.leases import settle_call
from mtad.store.lists import CopyPage, CopyTemplate, ExpansionJob, ListMember, MailingList
from mtad.store.protocol import StoreProtocol
from mtad.store.workloop import WorkLoop

log = logging.getLogger("mtad.lists")

BATCH = 500  # copies per transaction
_THREAD_AT = 50  # members of a page from which its copies are made in a thread


@dataclass(frozen=True)
class CopyPlan:
    """What every member's copy of one message to one list shares (made once per expansion)."""

    queue_id: str
    list: MailingList
    body: bytes
    personal: listcopy.Personaliser | None  # set when the body names variables: edited per member
    list_unsubscribe: bool  # the copies get List-Unsubscribe (the message has none of its own)
    sender: str
    domain: str
    envelope: dict
    headers: dict
    options: SendOptions
    attachments: tuple
    envelope_fields: tuple = ()  # Envelope's fields after its recipients, as every copy has them
    subject: tuple[str, ...] = ("",)  # the subject cut at its variables (variables.split)
    events: list_events.CopyEvents | None = None  # the copies' accepted events
    rows: CopyTemplate | None = None  # the copies' rows (a page of them made here, executed by the store)
    fill_subject: variables_mod.Filler | None = None  # the subject's variables' values (variables.filler)


def plan(message: spool.QueuedMessage, lst: MailingList, *, srs_key: bytes | None, now: float) -> CopyPlan:
    body = message.body
    if lst.access_level != "readonly" and lst.reply_preference == "list":
        body = listcopy.with_reply_to(body, lst.address)
    inbound = message.direction != "outbound"
    sender = message.sender
    if inbound and srs_key is not None:
        sender = srs.forward_address(sender, domain_of(lst.address), srs_key, now)
    personal = listcopy.Personaliser(body) if listcopy.has_any_variable(body) else None
    env, headers = dict(message.envelope), dict(message.headers)
    fields = (env.get("client_ip") or "", env.get("client_helo") or "", env.get("auth_user"), bool(env.get("tls")),
              env.get("transport") or "smtp", env.get("listener") or "")
    domain, options, attachments = domain_of(lst.address) if inbound else message.domain, \
        SendOptions.from_json(message.options), tuple(message.attachments)
    subject = headers.get("subject", "")
    pieces = variables_mod.split(subject) if personal is not None else (subject,)
    envelope = Envelope(sender, (), *fields)
    summary = HeaderSummary(headers.get("message-id", ""), headers.get("from", ""), headers.get("to", ""), subject)
    return CopyPlan(message.id, lst, body, personal, not listcopy.has_header(body, "List-Unsubscribe"), sender,
                    domain, env, headers, options, attachments, fields, pieces,
                    list_events.CopyEvents(envelope, options, attachments, domain, lst.address),
                    CopyTemplate(envelope, domain, summary, options, attachments),
                    variables_mod.filler(pieces[1::2]) if len(pieces) > 1 else None)


def copy_content(p: CopyPlan, member: ListMember, unsubscribe_url: str,
                 unsubscribe_address: Callable[[int, str, str, str], str] | None, queue_id: str) -> tuple[bytes, str]:
    """(body, subject) of one member's copy (see ``member_copy``)."""
    system = {"mailing_list_unsubscribe_url": unsubscribe_url}
    body = p.personal.render_for(member.address, member.name, member.vars, system) if p.personal is not None \
        else p.body
    if p.list_unsubscribe:
        mailto = unsubscribe_address(p.list.id, queue_id, member.address, p.domain) if unsubscribe_address else ""
        body = listcopy.with_list_unsubscribe(body, unsubscribe_url, mailto)
    if len(p.subject) == 1:
        return body, p.subject[0]
    if p.fill_subject is not None:
        return body, variables_mod.join(p.subject, p.fill_subject(member.address, member.name, member.vars, system))
    ctx = variables_mod.RecipientContext(member.address, member.name, member.vars, system)
    return body, variables_mod.join(p.subject, variables_mod.values(p.subject[1::2], ctx))


def member_copy(p: CopyPlan, member: ListMember, unsubscribe_url: str, now: float,
                unsubscribe_address: Callable[[int, str, str, str], str] | None = None,
                queue_id: str = "") -> spool.Enqueue:
    """One member's copy with its ``accepted`` event, ready to commit. ``unsubscribe_address(list id, queue id,
    member, domain)``: the copy's ``mailto:`` unsubscribe address, or "" (none). ``queue_id``: the copy's (a new
    one when empty)."""
    queue_id = queue_id or spool.new_queue_id()
    body, subject = copy_content(p, member, unsubscribe_url, unsubscribe_address, queue_id)
    envelope = Envelope(p.sender, (member.address,), *p.envelope_fields)
    h = p.headers
    summary = HeaderSummary(h.get("message-id", ""), h.get("from", ""), h.get("to", ""), subject)
    msg = NewMessage(envelope, body, "outbound", p.domain, summary, p.options, p.attachments)
    if p.events is not None:
        events = p.events.accepted(queue_id, now, member.address, summary.to_json(), len(body))
    else:
        events = list_events.with_list(shape.accepted(msg, queue_id, now), p.list.address)
    return spool.Enqueue(queue_id, msg, events)


class Expander(WorkLoop):
    """Claims expansion rows and expands them (see the module doc): the durable claim loop of ``store.workloop``
    (leases renewed while held, a failed expansion given back) over ``list_expansions``. ``unsubscribe_url(list_id,
    address)`` makes a member's link, ``unsubscribe_address(list_id, queue_id, address, domain)`` its unsubscribe
    address (or ""); ``wake`` tells the scheduler that copies were committed."""

    def __init__(self, *, store: StoreProtocol, unsubscribe_url: Callable[[int, str], str],
                 unsubscribe_address: Callable[[int, str, str, str], str] | None = None,
                 wake: Callable[[], None] = lambda: None, srs_key: bytes | None = None, node_id: str = "",
                 batch_size: int = BATCH, max_concurrent: int = 2, poll_interval: float = 1.0,
                 clock: Callable[[], float] = time.time):
        super().__init__(name="lists", store=store, table="list_expansions", handle=self.expand,
                         max_concurrent=max_concurrent, poll_interval=poll_interval, clock=clock, node_id=node_id)
        self.store: StoreProtocol = store
        self.unsubscribe_url = unsubscribe_url
        self.unsubscribe_address = unsubscribe_address
        self.wake_scheduler = wake
        self.srs_key = srs_key
        self.batch_size = batch_size
        self.copies = 0  # copies committed by this process (metrics, tests)

    async def claim(self, now: float, room: int) -> list[ExpansionJob]:  # type: ignore[override]
        return await self.store.claim_expansions(self.worker, now, room, lease_until=self.leases.until(now),
                                                 skip=self.leases.held)

    async def expand(self, job: ExpansionJob) -> None:
        """Expand one claimed row to its end (or until the claim is lost)."""
        store = self.store
        message = await store.message(job.queue_id)
        lst = await store.get_list_by_id(job.list_id)
        if message is None or lst is None:  # deleted meanwhile: nothing to expand
            await settle_call(store, lambda: store.expand_batch(job.id, self.worker, job.cursor, job.cursor, [],
                                                                True, self.clock()), f"lists: end of {job.id}")
            return
        p = plan(message, lst, srs_key=self.srs_key, now=self.clock())
        cursor, made, started = job.cursor, job.copies, time.monotonic()
        # Pipelined: the next page is read and its copies made while the previous page's write commits; the
        # writes themselves follow one another (each starts from the cursor the previous one committed).
        writing: asyncio.Task | None = None
        members = await store.expansion_members(lst.id, cursor, self.batch_size)
        try:
            while not self._stopping:
                now = self.clock()
                items = (await asyncio.to_thread(self._copies, p, members, now) if len(members) >= _THREAD_AT
                         else self._copies(p, members, now))
                if writing is not None and not await self._written(writing, job, lst, cursor):
                    return
                after, cursor = cursor, (members[-1].address if members else cursor)
                done = len(members) < self.batch_size
                writing = asyncio.create_task(self._write(job, after, cursor, items, done, now, lst.address))
                made += len(items)
                if done:
                    if await self._written(writing, job, lst, cursor):
                        log.info("%s: expanded to list %s: %d copies in %.1fs", job.queue_id, lst.address, made,
                                 time.monotonic() - started)
                    return
                members = await store.expansion_members(lst.id, cursor, self.batch_size)
        finally:
            if writing is not None and not writing.done():
                writing.cancel()

    async def _write(self, job: ExpansionJob, after: str, cursor: str, items: CopyPage | list[spool.Enqueue],
                     done: bool, now: float, address: str) -> tuple[bool, int, str]:
        ok = await settle_call(self.store, lambda: self.store.expand_batch(job.id, self.worker, after, cursor, items,
                                                                           done, now),
                               f"lists: copies of {job.queue_id} to {address}")
        return ok, len(items), after

    async def _written(self, writing: asyncio.Task, job: ExpansionJob, lst: MailingList, cursor: str) -> bool:
        """The page's write ended: True if committed (the scheduler is woken); False if the claim was lost."""
        ok, n, after = await writing
        if not ok:
            log.warning("lists: %s to %s: the expansion is no longer held by %s at %r; left to its holder",
                        job.queue_id, lst.address, self.worker, after)
            return False
        self.copies += n
        if n:
            self.wake_scheduler()
        return True

    def _copies(self, p: CopyPlan, members: list[ListMember], now: float) -> CopyPage | list[spool.Enqueue]:
        """A page's copies, as rows ready to execute (``store.lists.CopyPage``: what ``member_copy`` makes, with
        no per-copy message object on the way)."""
        # the ids in order, so are the page's rows: each index on them is appended to, not split in its middle
        ids = sorted(spool.new_queue_ids(len(members)))
        url, address = self.unsubscribe_url, self.unsubscribe_address
        if p.rows is None or p.events is None:
            return [member_copy(p, m, url(p.list.id, m.address), now, address, qid) for m, qid in zip(members, ids)]
        page, accepted, h = p.rows.page(now), p.events.accepted, p.headers
        mid, from_, to = h.get("message-id", ""), h.get("from", ""), h.get("to", "")
        for m, qid, event_id in zip(members, ids, shape.new_event_ids(len(members))):
            body, subject = copy_content(p, m, url(p.list.id, m.address), address, qid)
            headers = {"message-id": mid, "from": from_, "to": to, "subject": subject}  # HeaderSummary.to_json()
            page.add(qid, m.address, subject, body, accepted(qid, now, m.address, headers, len(body), event_id))
        return page
