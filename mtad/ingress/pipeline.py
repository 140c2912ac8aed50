"""Ingress policy: who may relay, what is accepted, and the commit that earns a 250.

The protocol engine (smtpserver) asks this module at AUTH, MAIL, RCPT and end of DATA. Rules:
- AUTH failures are limited across connections per client address and per login (authguard);
- submission listeners require AUTH before MAIL; an authenticated user may use only its domains;
- the MX listener takes unauthenticated mail only for receiving domains (else 554 5.7.1 relay access
  denied) and, for a receiving domain, only recipients a route would handle (550 5.1.1);
- authenticated mail is outbound: ``X-Mailgun-*`` options are parsed and stripped;
- a message naming a campaign its sending domain does not have is refused: 550 5.7.1 (the API's 400);
- 250 is replied only after the store's durable commit; a failed commit answers 452 4.3.1 (451 4.3.0 when the
  store's database cannot be reached);
- the message bytes all sessions and API sends hold are bounded by ``limits.max_inflight_bytes``
  (``inflight``; SMTP DATA reserves as bytes arrive, API sends at commit): past it, 452 4.3.1.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

from mtad.mail import attachments as attachments_mod
from mtad.events import shape
from mtad.mail import headers
from mtad.mail import options as options_mod
from mtad.store import queue as spool
from mtad.store.events import NewEvent
from mtad.store.protocol import StoreProtocol
from mtad.config.schema import LimitsConfig
from mtad.smtp.dataread import DataRefused, clean
from mtad.ingress.directory import Directory
from mtad.base.errors import OptionError, StoreError, StoreUnavailable
from mtad.base.inflight import ByteBudget
from mtad.base.passwords import VerifiedCache, verify_password
from mtad.ingress.authguard import AuthGuard
from mtad.inbound.spam import SpamFilter
from mtad.smtp.server import AuthRefused, SessionInfo, Transaction
from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions

log = logging.getLogger("mtad.ingress")


class InboundRouter(Protocol):
    """What ingress needs from the router (routes issue): RCPT-time decision and forward rows."""

    def would_handle(self, recipient: str) -> bool: ...
    def forwards_for(self, recipient: str, fields: list[headers.HeaderField], sender: str) -> list[spool.ForwardRow]: ...


class AcceptAll:
    """Router stand-in when no routes are configured: every recipient of a receiving domain is kept."""

    def would_handle(self, recipient: str) -> bool:
        return True

    def forwards_for(self, recipient: str, fields: list[headers.HeaderField], sender: str) -> list[spool.ForwardRow]:
        return []


@dataclass(frozen=True)
class Submission:
    """One message for ``Ingress.commit_many``: what ``commit`` takes, as a record."""

    envelope: Envelope
    content: bytes
    fields: list[headers.HeaderField]
    summary: HeaderSummary
    opts: SendOptions
    queue_id: str
    domain: str | None = None


@dataclass(frozen=True)
class Committed:
    """Messages durably committed (``Ingress.commit_many``): their queue ids, in the order given."""

    queue_ids: tuple[str, ...]

    @property
    def queue_id(self) -> str:
        return self.queue_ids[0]

    @property
    def reply(self) -> str:
        """The SMTP reply that accepts them."""
        return f"250 2.0.0 Ok: queued as {self.queue_ids[0]}"


@dataclass(frozen=True)
class NotCommitted:
    """Nothing was committed; ``reason`` says why, for the client (SMTP reply text, API error)."""

    code: int
    enhanced: str
    reason: str

    @property
    def reply(self) -> str:
        return f"{self.code} {self.enhanced} {self.reason}"


NO_ROOM = NotCommitted(452, "4.3.1", "Insufficient system resources, try again later")
NO_STORAGE = NotCommitted(452, "4.3.1", "Insufficient system storage, try again later")
NO_STORE = NotCommitted(451, "4.3.0", "Mail system temporarily unavailable, try again later")  # database down
CommitResult = Committed | NotCommitted


@dataclass
class Counters:
    accepted: int = 0
    refused: int = 0
    store_failures: int = 0


class Ingress:
    """The ``Policy`` of smtpserver.MtadSMTP, and the one path from bytes to a committed message."""

    def __init__(self, *, hostname: str, limits: LimitsConfig, directory: Directory, store: StoreProtocol,
                 router: InboundRouter | None = None, clock: Callable[[], float] = time.time):
        self.hostname = hostname
        self.limits = limits
        self.directory = directory
        self.store = store
        self.router: InboundRouter = router or AcceptAll()
        self.clock = clock
        self.verified = VerifiedCache()
        self.inflight = ByteBudget(int(limits.max_inflight_bytes))
        self.auth_guard = AuthGuard(limits)
        self.counters = Counters()
        self.on_commit: Callable[[], None] = lambda: None  # wakes the scheduler
        self.spam_filter: SpamFilter | None = None  # spam filtering of MX mail (issue 15 item 3), set by app.py

    def reload(self, *, limits: LimitsConfig, directory: Directory) -> None:
        self.limits = limits
        self.directory = directory
        self.inflight.limit = int(limits.max_inflight_bytes)
        self.auth_guard.configure(limits)

    # --- AUTH / MAIL / RCPT ----------------------------------------------------------------------
    async def authenticate(self, session: SessionInfo, login: str, password: str) -> str | None:
        """The user's login, or None for wrong credentials; raises AuthRefused while AUTH is locked out
        for the client's address or the login (``auth_guard``), without checking the password."""
        locked = self.auth_guard.admit(session.client_ip, login, time.monotonic())
        if locked is not None:
            log.info("auth refused: %s locked out (login %r from %s)", locked, login[:100], session.client_ip)
            raise AuthRefused("454 4.7.0 Too many failed authentications, try again later")
        user = None
        try:
            user = await self._check_credentials(session, login, password)
        finally:  # a session gone mid-check must not leave its attempt pending
            self.auth_guard.done(session.client_ip, login, user is not None, time.monotonic())
        return user

    async def _check_credentials(self, session: SessionInfo, login: str, password: str) -> str | None:
        user = self.directory.user(login)
        if user is None:
            log.info("auth failed: unknown user %r from %s", login[:100], session.client_ip)
            return None
        if not self.verified.known(user.login, password, user.password_hash):
            ok = await asyncio.to_thread(verify_password, password, user.password_hash)
            if not ok:
                log.info("auth failed: bad password for %s from %s", user.login, session.client_ip)
                return None
            self.verified.remember(user.login, password, user.password_hash)
        return user.login

    def check_mail(self, session: SessionInfo, sender: str) -> str | None:
        if session.auth_user is None:
            if session.listener is not None and session.listener.role == "submission":
                return "530 5.7.0 Authentication required"
            return None
        if not self.directory.may_send_as(session.auth_user, sender):
            return f"550 5.7.1 Sender address <{sender}> is not allowed for user {session.auth_user}"
        return None

    def check_rcpt(self, session: SessionInfo, tx: Transaction, recipient: str) -> str | None:
        domain = recipient.rpartition("@")[2]
        if self.directory.receives(domain):
            if not self.router.would_handle(recipient):
                return f"550 5.1.1 <{recipient}>: Recipient address rejected: no route for this address"
            return None
        if session.auth_user is None:
            return f"554 5.7.1 <{recipient}>: Relay access denied"
        return None

    # --- DATA ------------------------------------------------------------------------------------
    async def accept(self, session: SessionInfo, tx: Transaction, content: bytes) -> str:
        limits = self.limits
        try:
            if len(content) > 1_000_000:
                content = await asyncio.to_thread(clean, content, bare_newline=limits.bare_newline,
                                                  max_line_length=limits.max_line_length)
            else:
                content = clean(content, bare_newline=limits.bare_newline, max_line_length=limits.max_line_length)
            fields, _ = headers.parse_block(content, limits.max_header_count, int(limits.max_header_size))
            if headers.mime_depth_exceeds(content, limits.max_mime_depth):
                raise DataRefused(f"554 5.6.0 Message refused: MIME nesting deeper than {limits.max_mime_depth}")
        except DataRefused as exc:
            log.info("refused from %s: %s", session.client_ip, exc.reply)
            return await self._refuse(session, tx, exc.reply)
        except headers.HeaderError as exc:
            return await self._refuse(session, tx, f"552 5.3.4 Message refused: {exc}")
        outbound = session.auth_user is not None
        opts = SendOptions()
        if outbound:
            mailgun = [f for f in fields if f.name.lower().startswith("x-mailgun-")]
            try:
                opts = options_mod.from_headers((f.name, headers.decode(f.value)) for f in mailgun)
            except OptionError as exc:
                return await self._refuse(session, tx, f"550 5.7.1 Invalid {exc.option} header: {exc.problem}",
                                          fields)
            content = headers.remove(content, mailgun)
            if opts.unknown:
                log.info("removed unknown headers %s", ", ".join(n for n, _ in opts.unknown))
        # --- spam filtering (issue 15 item 3; mtad.inbound.spam): MX mail only, before the commit ---------------
        if not outbound and self.spam_filter is not None:
            spam = await self.spam_filter.check(tx.recipients, content, session.client_ip)
            if spam.refuse:
                return await self._refuse(session, tx, spam.refuse)
            content, fields = spam.apply(content, fields)
        # --- end of spam filtering -----------------------------------------------------------------------------
        queue_id = spool.new_queue_id()
        now = self.clock()
        summary = headers.summary(fields)
        content = self._add_trace(session, tx, content, fields, queue_id, now, outbound)
        if not summary.message_id and outbound:
            summary = HeaderSummary(headers.make_message_id(self.hostname, queue_id).strip("<>"),
                                    summary.from_, summary.to, summary.subject)
        envelope = Envelope(sender=tx.sender or "", recipients=tuple(tx.recipients), client_ip=session.client_ip,
                            client_helo=session.host_name or "", auth_user=session.auth_user, tls=session.tls,
                            transport="smtp", listener=session.listener.name if session.listener else "")
        result = await self.commit(envelope, content, fields, summary, opts, queue_id, now, held=True)
        if isinstance(result, NotCommitted) and result.code >= 500:  # refused for good (an unknown campaign)
            return await self._refuse(session, tx, result.reply, fields)
        return result.reply

    async def _refuse(self, session: SessionInfo, tx: Transaction, reply: str,
                      fields: list[headers.HeaderField] | None = None) -> str:
        """Count a refused message and, for an authenticated sender, record Mailgun's ``rejected`` event."""
        self.counters.refused += 1
        if session.auth_user is None:
            return reply  # unauthenticated refusals are the sender's business, not a domain's log
        envelope = Envelope(sender=tx.sender or "", recipients=tuple(tx.recipients), client_ip=session.client_ip,
                            auth_user=session.auth_user, tls=session.tls)
        summary = headers.summary(fields) if fields else HeaderSummary()
        domain = self._sending_domain(envelope)
        code, _, text = reply.partition(" ")
        rejected = [NewEvent(domain, shape.base_event(
            "rejected", timestamp=self.clock(), recipient=rcpt, queue_id="",
            message=shape.message_part(summary.to_json(), 0), options={},
            envelope={"sender": envelope.sender, "targets": rcpt, "transport": "smtp", "sending-ip": session.client_ip},
            flags={"is-authenticated": True, "is-test-mode": False},
            extra={"reject": {"reason": text, "description": reply}, "method": "smtp"})) for rcpt in tx.recipients]
        try:
            await self.store.record_events(rejected)
        except Exception:  # noqa: BLE001 - the refusal stands; the event is best effort
            log.exception("could not record rejected events")
        return reply

    async def commit(self, envelope: Envelope, content: bytes, fields: list[headers.HeaderField],
                     summary: HeaderSummary, opts: SendOptions, queue_id: str, now: float,
                     domain: str | None = None, held: bool = False) -> CommitResult:
        """Store the message and its work rows durably; what was done (``.reply``: the SMTP reply to give).

        ``domain`` names the sending domain when the caller knows it (the HTTP API's ``/v3/{domain}``);
        otherwise it comes from the envelope sender and the authenticated user. ``held``: the caller
        has already reserved the content's bytes in ``inflight`` (SMTP DATA).
        """
        return await self.commit_many([Submission(envelope, content, fields, summary, opts, queue_id, domain)], now,
                                      held=held)

    async def commit_many(self, items: "list[Submission]", now: float, held: bool = False) -> CommitResult:
        """Commit several messages in one transaction, all or none (an API batch send): ``Committed`` with their
        queue ids, or ``NotCommitted`` with the reason.

        Unless ``held``, the contents' bytes are reserved in ``inflight`` for the commit (452 if no room).
        """
        with self.inflight.hold() as hold:
            size = sum(len(item.content) for item in items)
            if not held and not (hold.take(size) and hold.take_for_commit(size)):
                log.warning("API send refused: messages in flight hold more than max_inflight_bytes (%d)",
                            self.inflight.limit)
                return NO_ROOM
            return await self._commit_many(items, now)

    async def _commit_many(self, items: "list[Submission]", now: float) -> CommitResult:
        planned = [(item.queue_id, self._plan(item)) for item in items]
        try:
            refused = await self._unknown_campaigns([msg for _, (msg, _, _) in planned])
            if refused is not None:
                return refused
            await self.store.enqueue([spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now), tuple(forwards),
                                                    tuple(deliver_to))
                                      for queue_id, (msg, forwards, deliver_to) in planned], now)
        except StoreError as exc:
            self.counters.store_failures += 1
            log.error("%s: not stored: %s", ",".join(q for q, _ in planned), exc)
            return NO_STORE if isinstance(exc, StoreUnavailable) else NO_STORAGE
        self.counters.accepted += len(items)
        if any(forwards or deliver_to for _, (_, forwards, deliver_to) in planned):
            self.on_commit()  # wake the scheduler and forwarders only when there is work for them
        for queue_id, (msg, _, _) in planned:
            envelope = msg.envelope
            log.info("%s: accepted from=<%s> nrcpt=%d size=%d client=%s auth=%s tls=%s direction=%s%s",
                     queue_id, envelope.sender, len(envelope.recipients), len(msg.body), envelope.client_ip,
                     envelope.auth_user or "-", "yes" if envelope.tls else "no", msg.direction,
                     "" if envelope.transport == "smtp" else f" transport={envelope.transport}")
        return Committed(tuple(item.queue_id for item in items))

    async def _unknown_campaigns(self, messages: list[NewMessage]) -> NotCommitted | None:
        """Refuse (550 5.7.1; the API's 400) a message naming a campaign (``o:campaign``,
        ``X-Mailgun-Campaign-Id``) that its sending domain does not have: its events would count nowhere
        (``store.campaigns``). One store read per sending domain, only for messages that name campaigns."""
        asked: dict[str, list[str]] = {}
        for msg in messages:
            if msg.direction == "outbound" and msg.options.campaigns:
                asked.setdefault(msg.domain, []).extend(msg.options.campaigns)
        for domain, ids in asked.items():
            missing = await self.store.missing_campaigns(domain, tuple(dict.fromkeys(ids)))
            if missing:
                shown = "".join(c if c.isprintable() else "?" for c in missing[0][:64])
                return NotCommitted(550, "5.7.1", f"Campaign '{shown}' does not exist for domain {domain}:"
                                                  f" create it first (POST /v3/{domain}/campaigns)")
        return None

    def _plan(self, item: "Submission") -> tuple[NewMessage, list[spool.ForwardRow], list[str]]:
        """The message to store, its route forwards and the recipients the outbound stage delivers."""
        envelope = item.envelope
        outbound = envelope.auth_user is not None or envelope.transport == "http"
        inbound_rcpts = [r for r in envelope.recipients if self.directory.receives(r.rpartition("@")[2])]
        forwards = [row for r in inbound_rcpts for row in self.router.forwards_for(r, item.fields, envelope.sender)]
        deliver_to = [r for r in envelope.recipients if r not in inbound_rcpts]
        if outbound:
            domain = item.domain or self._sending_domain(envelope)
        else:
            domain = inbound_rcpts[0].rpartition("@")[2] if inbound_rcpts else ""
        msg = NewMessage(envelope=envelope, body=item.content, direction="outbound" if outbound else "inbound",
                         domain=domain, headers=item.summary, options=item.opts,
                         attachments=tuple(attachments_mod.listing(item.content)))
        return msg, forwards, deliver_to

    def _sending_domain(self, envelope: Envelope) -> str:
        sender_domain = envelope.sender.rpartition("@")[2].lower()
        user = self.directory.user(envelope.auth_user) if envelope.auth_user else None
        if user is None or sender_domain in user.send_as:
            return sender_domain
        return user.domain

    def _add_trace(self, session: SessionInfo, tx: Transaction, content: bytes,
                   fields: list[headers.HeaderField], queue_id: str, now: float, outbound: bool) -> bytes:
        protocol = headers.smtp_protocol(session.extended_smtp, session.tls, bool(session.auth_user))
        added = headers.received(self.hostname, session.host_name or "", session.client_ip, protocol,
                                 queue_id, tx.recipients, now)
        if outbound:
            import email.utils
            if headers.first(fields, "Message-ID") is None:
                added += f"Message-ID: {headers.make_message_id(self.hostname, queue_id)}\r\n".encode()
            if headers.first(fields, "Date") is None:
                added += f"Date: {email.utils.formatdate(now)}\r\n".encode()
        return added + content
