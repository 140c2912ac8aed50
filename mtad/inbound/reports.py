"""Reports about sent mail arriving at the MX listener: late bounces (RFC 3464 DSNs) and complaints (ARF).

Where they come in: a return path mtad gave its outbound mail (``bounce+TOKEN@<sending domain>``,
``mail.returnpath``), an unsubscribe address (``unsubscribe+TOKEN@<sending domain>``, ``mail.unsubaddr``: the
``%unsubscribe_email%`` and ``List-Unsubscribe`` ``mailto:`` of a message) or an address of the config's
``feedback.addresses``. Ingress asks ``recipient`` at RCPT: ``report`` (take it; the domain need not be a
receiving domain), ``forged`` (a return path or unsubscribe address whose token does not verify: 550 5.1.1), or
None (ordinary mail). A transaction carries reports only, or no report at all.

A mail to an unsubscribe address (whatever it says: mail programs send an empty one, RFC 2369) unsubscribes the
recipient the token names from what its scope says: the sending domain (``d``) or the message's tags (``t``):
an ``unsubscribed`` event and the address on the domain's unsubscribes list; a mailing list (``l``): an
``unsubscribed`` event naming the list and the member set ``subscribed: false`` (``store.lists``), nothing on
the unsubscribes list (as the list's own unsubscribe link). The recipient and message come from the message's
``delivered`` event (as for reports).

What a report becomes (``plan``, committed by ingress with the report in one transaction,
``ReportStore.commit_report``): the report is matched to the ``delivered`` event of the message and recipient it
is about, first by the return path's token (from the envelope recipient, else from the original's
``Return-Path`` or ``X-Mtad-Sid`` header in the report), else by the original's Message-ID; the recipient by
the token's recipient tag, else by the addresses the report names (``Final-Recipient``/``Original-Recipient``,
``Original-Rcpt-To``, the original's To), else the message's only delivered recipient.

- A DSN's ``failed`` recipient: a ``failed`` event, severity ``permanent``, reason ``delayed-bounce``, with
  ``is-delayed-bounce`` (``events.shape.delayed_bounce``); a mailbox that does not exist (status 5.1.x, the rule
  of synchronous bounces, ``outbound.classify.is_mailbox_bounce``) goes on the domain's bounce list. A
  ``delayed`` recipient: a ``temporary`` ``failed`` event, nothing listed. ``delivered``/``relayed``/
  ``expanded`` ones: nothing.
- A feedback report (any type but ``not-spam``): a ``complained`` event and the recipient on the domain's
  complaints list.
- Every outcome is keyed ``(queue id, recipient, kind)`` (``store.reports.ReportOutcome``): a replayed DSN or
  feedback report, or a second mail to an unsubscribe address, is taken, kept and logged, and records nothing.
- Anything else is kept and logged without an event: not a report (an auto-reply to the return path), a
  malformed report (``mail.reports.ReportError``), a report about a message or recipient not found (never sent
  by mtad, or its events are past ``store.event_retention``), ambiguous (several recipients, none named).
  Reports are never refused for their content: the sender would only retry or bounce the bounce.

The report itself is stored as an inbound message of the matched domain (else of the address's domain), kept
``keep`` seconds (``routing.store_retention``) for inspection, never routed: no route POST, no forward.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Iterable, Literal, Protocol, Sequence

from mtad.base.types import Envelope, domain_of
from mtad.events import shape
from mtad.mail import reports as reports_mod
from mtad.mail import returnpath, unsubaddr
from mtad.store.events import NewEvent
from mtad.store.lists import MailingList
from mtad.store.reports import ListEntry, ReportOutcome, ReportStore, SentRecord
from mtad.store.suppressions import Suppression

log = logging.getLogger("mtad.reports")
Kind = Literal["report", "forged"]
PARSE_IN_THREAD = 256 * 1024  # larger reports are parsed off the event loop
SENT_WAIT = 5.0  # seconds an authentic return path's delivery is looked for before "not found" (_sent_by_token)


class ListLookup(Protocol):
    async def get_list_by_id(self, list_id: int) -> MailingList | None: ...


@dataclass(frozen=True)
class ReportPlan:
    """What committing one report writes: its outcomes (events and list entries, each once per message, recipient
    and kind), the domain it is stored under, and the outcome in words (logged)."""

    domain: str
    outcomes: tuple[ReportOutcome, ...] = ()
    outcome: str = ""

    @property
    def events(self) -> tuple[NewEvent, ...]:
        return tuple(e for o in self.outcomes for e in o.events)

    @property
    def entries(self) -> tuple[ListEntry, ...]:
        return tuple(e for o in self.outcomes for e in o.entries)


class Reports:
    """The report intake of ingress (see the module doc)."""

    def __init__(self, *, key: bytes, store: ReportStore, addresses: Iterable[str] = (), keep: float = 3 * 86400,
                 unsubscribe_key: bytes = b"", lists: ListLookup | None = None):
        self.key = key
        self.unsubscribe_key = unsubscribe_key  # ``mail.unsubaddr`` tokens (b"": unsubscribe addresses not taken)
        self.store = store
        self.lists = lists
        self.configure(addresses, keep)

    def configure(self, addresses: Iterable[str], keep: float) -> None:
        """The feedback addresses and how long reports are kept (at start and on reload)."""
        self.addresses = frozenset(a.lower() for a in addresses)
        self.keep = keep

    def recipient(self, address: str, sending_domain: bool) -> Kind | None:
        """``report``, ``forged`` or None for an RCPT address; ``sending_domain``: its domain is one of mtad's."""
        if sending_domain and returnpath.is_return_path(address):
            return "report" if returnpath.verify(self.key, address) is not None else "forged"
        if sending_domain and self.unsubscribe_key and unsubaddr.is_unsubscribe(address):
            return "report" if unsubaddr.verify(self.unsubscribe_key, address) is not None else "forged"
        if address.lower() in self.addresses:
            return "report"
        return None

    async def plan(self, envelope: Envelope, content: bytes, now: float) -> ReportPlan:
        """What the report ``content`` sent to ``envelope.recipients`` commits; never raises for its content."""
        fallback = domain_of(envelope.recipients[0]) if envelope.recipients else ""
        unsubscribes = [t for t in (unsubaddr.verify(self.unsubscribe_key, r) for r in envelope.recipients
                                    if self.unsubscribe_key) if t is not None]
        if unsubscribes:
            return await self._unsubscribes(unsubscribes, envelope, fallback, now)
        try:
            if len(content) > PARSE_IN_THREAD:
                report = await asyncio.to_thread(reports_mod.parse, content)
            else:
                report = reports_mod.parse(content)
        except reports_mod.ReportError as exc:
            return ReportPlan(fallback, outcome=f"malformed report, kept without an event: {exc}")
        if report is None:
            return ReportPlan(fallback, outcome="not a DSN or feedback report, kept without an event")
        if isinstance(report, reports_mod.FeedbackReport) and not report.is_complaint:
            return ReportPlan(fallback, outcome=f"feedback report of type {report.feedback_type}: not a complaint")
        token = self._token(envelope, report.original)
        if token is not None:
            sent, how = await self._sent_by_token(token), f"return path of {token.queue_id}"
        elif report.original.message_id:
            sent, how = await self.store.sent_by_message_id(report.original.message_id), "Message-ID"
        else:
            return ReportPlan(fallback, outcome="names no message of ours (no return path, X-Mtad-Sid or Message-ID)")
        if not sent:
            return ReportPlan(fallback, outcome=f"about a message not found ({how}): never delivered by mtad,"
                                                " or its events are past retention")
        if isinstance(report, reports_mod.DeliveryReport):
            return self._bounces(report, sent, token, now, how)
        return self._complaint(report, sent, token, now, how)

    async def _sent_by_token(self, token: returnpath.Token) -> Sequence[SentRecord]:
        """The deliveries a verified return path names. A report can arrive before the delivery it is about is
        committed (a receiver that bounces at once, after its 250, while mtad's outcome waits for its group
        commit): an authentic token whose delivery is not found yet is looked up again for ``SENT_WAIT``."""
        deadline = time.monotonic() + SENT_WAIT
        while not (sent := await self.store.sent_by_queue_id(token.queue_id)) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return sent

    def _token(self, envelope: Envelope, original: reports_mod.OriginalHeaders) -> returnpath.Token | None:
        for rcpt in envelope.recipients:
            token = returnpath.verify(self.key, rcpt)
            if token is not None:
                return token
        found = returnpath.verify(self.key, original.return_path) if original.return_path else None
        if found is None and original.get(returnpath.HEADER):
            found = returnpath.verify_token(self.key, original.get(returnpath.HEADER))
        return found

    def _match(self, sent: Sequence[SentRecord], token: returnpath.Token | None,
               *tiers: Iterable[str]) -> SentRecord | None:
        """The recipient a report is about: the token's, else the first of ``sent`` named by the first tier of
        addresses that names exactly one (the report's own fields before the original's To), else the only one."""
        if token is not None and token.recipient_tag:
            return next((r for r in sent if token.names(self.key, r.recipient)), None)
        for addresses in tiers:
            named = {a.lower() for a in addresses if a}
            found = [r for r in sent if r.recipient.lower() in named]
            if len(found) == 1:
                return found[0]
        return sent[0] if len(sent) == 1 else None

    def _bounces(self, report: reports_mod.DeliveryReport, sent: Sequence[SentRecord],
                 token: returnpath.Token | None, now: float, how: str) -> ReportPlan:
        chosen: dict[tuple[str, str], tuple[reports_mod.DsnRecipient, SentRecord]] = {}
        unmatched = []
        for block in report.recipients:
            if block.action not in ("failed", "delayed"):
                continue
            record = self._match(sent, token, (block.final_recipient,), (block.original_recipient,))
            if record is None:
                unmatched.append(block.final_recipient)
                continue
            key = (record.queue_id, record.recipient.lower())
            if key not in chosen or (block.permanent and not chosen[key][0].permanent):
                chosen[key] = (block, record)
        outcomes, words = [], []
        for block, record in chosen.values():
            message = block.diagnostic or f"{block.status} {block.action}"
            event = shape.delayed_bounce(record.event, now, permanent=block.permanent, code=block.code,
                                         enhanced=block.status, message=message, mx_host=block.remote_mta)
            listed = block.permanent and block.status.startswith("5.1.") and block.code >= 500
            entries = (ListEntry(record.domain, Suppression("bounces", record.recipient.lower(), now,
                                                            code=str(block.code), error=message[:500])),) if listed else ()
            outcomes.append(ReportOutcome((record.queue_id, record.recipient.lower(),
                                           "bounce" if block.permanent else "delay"),
                                          (NewEvent(record.domain, event),), entries))
            words.append(f"{'failed' if block.permanent else 'delayed'} {record.recipient} of {record.queue_id}"
                         f" ({block.status}{', bounce list' if listed else ''})")
        if unmatched:
            words.append(f"recipients not matched: {', '.join(unmatched[:5])}")
        domain = next(iter(chosen.values()))[1].domain if chosen else sent[0].domain
        return ReportPlan(domain, tuple(outcomes),
                          f"DSN matched by {how}: {'; '.join(words) or 'no failed or delayed recipient'}")

    def _complaint(self, report: reports_mod.FeedbackReport, sent: Sequence[SentRecord],
                   token: returnpath.Token | None, now: float, how: str) -> ReportPlan:
        record = self._match(sent, token, report.original_rcpt_to, report.original.to)
        if record is None:
            return ReportPlan(sent[0].domain, outcome=f"complaint about {sent[0].queue_id} ({how}): which of its"
                                                      f" {len(sent)} recipients is not said, kept without an event")
        event = shape.complained(record.event, now)
        entry = ListEntry(record.domain, Suppression("complaints", record.recipient.lower(), now))
        return ReportPlan(record.domain, (ReportOutcome((record.queue_id, record.recipient.lower(), "complaint"),
                                                        (NewEvent(record.domain, event),), (entry,)),),
                          f"complaint ({report.feedback_type}) by {record.recipient} about {record.queue_id},"
                          f" matched by {how}")

    async def _unsubscribes(self, tokens: Sequence[unsubaddr.Token], envelope: Envelope, fallback: str,
                            now: float) -> ReportPlan:
        """The outcomes of a mail to unsubscribe addresses (see the module doc)."""
        outcomes, words, domain = [], [], ""
        for token in tokens:
            sent = await self.store.sent_by_queue_id(token.queue_id)
            record = next((r for r in sent if token.names(self.unsubscribe_key, r.recipient)), None)
            if record is None:
                words.append(f"unsubscribe from {token.queue_id}: its recipient was never delivered to, or its"
                             " events are past retention")
                continue
            domain = domain or record.domain
            address = record.recipient.lower()
            key = (record.queue_id, address, "unsubscribe")
            extra = {"ip": envelope.client_ip, "method": "email",
                     "client-info": {"client-type": "email client", "user-agent": ""}}
            if token.scope == unsubaddr.LIST:
                lst = await self.lists.get_list_by_id(token.list_id) if self.lists is not None else None
                if lst is None:
                    words.append(f"unsubscribe of {record.recipient} from list #{token.list_id}: no such list")
                    continue
                event = shape.about_delivered("unsubscribed", record.event, now, {},
                                              {**extra, "mailing-list": {"address": lst.address,
                                                                         "list-id": lst.address}})
                outcomes.append(ReportOutcome(key, (NewEvent(record.domain, event),), member=(lst.id, address)))
                words.append(f"{record.recipient} unsubscribed from the list {lst.address}")
                continue
            tags = tuple(record.event.get("tags") or ()) if token.scope == unsubaddr.TAG else ()
            tags = tags or ("*",)
            event = shape.about_delivered("unsubscribed", record.event, now, {}, extra)
            entry = ListEntry(record.domain, Suppression("unsubscribes", address, now, tags=tags))
            outcomes.append(ReportOutcome(key, (NewEvent(record.domain, event),), (entry,)))
            words.append(f"{record.recipient} unsubscribed from {record.domain}"
                         f"{'' if tags == ('*',) else ' tags ' + ', '.join(tags)} ({record.queue_id})")
        return ReportPlan(domain or fallback, tuple(outcomes), "unsubscribe mail: " + "; ".join(words))
