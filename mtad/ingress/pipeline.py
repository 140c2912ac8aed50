"""Ingress policy: who may relay, what is accepted, and the commit that earns a 250.

The protocol engine (smtpserver) asks this module at AUTH, MAIL, RCPT and end of DATA. Rules:
- AUTH failures are limited across connections per client address and per login (authguard);
- submission listeners require AUTH before MAIL; an authenticated user may use only its domains;
- the MX listener takes unauthenticated mail only for receiving domains (else 554 5.7.1 relay access
  denied) and, for a receiving domain, only recipients a route would handle (550 5.1.1);
- authenticated mail is outbound: ``X-Mailgun-*`` options are parsed and stripped;
- reports about sent mail (late DSNs to a return path, ARF to a feedback address; ``inbound.reports``) are taken
  by the MX listener whatever the domain, in transactions of their own (452 4.5.3 for a recipient of the other
  kind), a forged return path is refused (550 5.1.1); a report is committed with the events and list entries it
  gives rise to, in one transaction, and never routed;
- an authenticated message naming a stored template
  (``X-Mailgun-Template-Name``, ``-Version``, ``-Variables``) has its body replaced by the rendered template, as
  Mailgun does, or is refused (550 5.6.0 naming it) when the template does not exist or does not render;
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
from typing import Callable, Iterable, Iterator, Protocol

from mtad.mail import attachments as attachments_mod
from mtad.mail import compose as compose_mod
from mtad.events import shape
from mtad.mail import headers
from mtad.mail import options as options_mod
from mtad.mail import unsubaddr
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
from mtad.inbound.verdicts.check import Verifier
from mtad.ingress.lists import ListDirectory
from mtad.ingress import templates as templates_mod
from mtad.smtp.server import AuthRefused, SessionInfo, Transaction
from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions, domain_of
from mtad.inbound.reports import ReportPlan

log = logging.getLogger("mtad.ingress")
_TEMPLATE_HEADERS = {"x-mailgun-template-name", "x-mailgun-template-version", "x-mailgun-template-variables"}


class InboundRouter(Protocol):
    """What ingress needs from the router (routes issue): RCPT-time decision and forward rows."""

    def would_handle(self, recipient: str) -> bool: ...
    def forwards_for(self, recipient: str, fields: list[headers.HeaderField], sender: str) -> list[spool.ForwardRow]: ...


class ReportIntake(Protocol):
    """What ingress needs from the report intake (``inbound.reports.Reports``)."""

    keep: float

    def recipient(self, address: str, sending_domain: bool) -> str | None: ...
    async def plan(self, envelope: Envelope, content: bytes, now: float) -> ReportPlan: ...


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
    expand: tuple[str, ...] | None = None  # list addresses an MX post may reach (None: every list of an
    # authenticated sender's recipients; ingress.lists)


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
                 router: InboundRouter | None = None, clock: Callable[[], float] = time.time,
                 lists: ListDirectory | None = None,
                 reports: ReportIntake | None = None):
        self.hostname = hostname
        self.limits = limits
        self.directory = directory
        self.store = store
        self.router: InboundRouter = router or AcceptAll()
        self.lists = lists if lists is not None else ListDirectory(store)  # mailing lists (their addresses)
        self.reports = reports  # late DSNs and feedback reports (None: none taken)
        self.clock = clock
        self.verified = VerifiedCache()
        self.inflight = ByteBudget(int(limits.max_inflight_bytes))
        self.auth_guard = AuthGuard(limits)
        self.counters = Counters()
        self.on_commit: Callable[[], None] = lambda: None  # wakes the scheduler
        self.spam_filter: SpamFilter | None = None  # spam filtering of MX mail (issue 15 item 3), set by app.py
        self.verifier: Verifier | None = None  # inbound authentication verdicts (issue 15), set by app.py

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

    def _report_kind(self, address: str) -> str | None:
        """``report``, ``forged`` or None (``ReportIntake.recipient``); None without a report intake."""
        if self.reports is None:
            return None
        return self.reports.recipient(address, domain_of(address) in self.directory.sending_domains)

    def check_rcpt(self, session: SessionInfo, tx: Transaction, recipient: str) -> str | None:
        if session.auth_user is None and self.reports is not None:
            kind = self._report_kind(recipient)
            if kind == "forged":
                what = "unsubscribe address" if unsubaddr.is_unsubscribe(recipient) else "return path"
                return f"550 5.1.1 <{recipient}>: Recipient address rejected: invalid {what}"
            if tx.recipients and (kind == "report") != (self._report_kind(tx.recipients[0]) == "report"):
                return "452 4.5.3 Too many recipients: reports are taken in a transaction of their own"
            if kind == "report":
                return None
        domain = recipient.rpartition("@")[2]
        if self.directory.receives(domain):
            if self.router.would_handle(recipient):
                return None
            lst = self.lists.get(recipient)
            if lst is not None:  # who may post is decided at DATA (a members list asks the store)
                if session.auth_user is not None or lst.access_level != "readonly":
                    return None
                return f"550 5.7.1 <{recipient}>: only authenticated senders may post to this list"
            return f"550 5.1.1 <{recipient}>: Recipient address rejected: no route for this address"
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
        expand: tuple[str, ...] | None = None
        if not outbound and self.lists.by_address:
            expand, refusal = await self._list_posts(tx)
            if refusal:
                log.info("refused from %s: %s", session.client_ip, refusal)
                return await self._refuse(session, tx, refusal)
        if outbound:
            mailgun = [f for f in fields if f.name.lower().startswith("x-mailgun-")]
            named = {f.name.lower(): headers.decode(f.value) for f in mailgun if f.name.lower() in _TEMPLATE_HEADERS}
            try:
                opts = options_mod.from_headers((f.name, headers.decode(f.value)) for f in mailgun
                                                if f.name.lower() not in _TEMPLATE_HEADERS)
            except OptionError as exc:
                return await self._refuse(session, tx, f"550 5.7.1 Invalid {exc.option} header: {exc.problem}",
                                          fields)
            content = headers.remove(content, mailgun)
            if opts.unknown:
                log.info("removed unknown headers %s", ", ".join(n for n, _ in opts.unknown))
            if named:
                try:
                    content = await self._templated(session, tx, content, named, opts)
                    fields, _ = headers.parse_block(content, limits.max_header_count, int(limits.max_header_size))
                except compose_mod.ComposeError as exc:
                    return await self._refuse(session, tx, f"550 5.6.0 Message refused: {exc}", fields)
                except headers.HeaderError as exc:
                    return await self._refuse(session, tx, f"552 5.3.4 Message refused: {exc}", fields)
                limit = int(limits.max_message_size)
                if len(content) > limit:
                    return await self._refuse(session, tx, "552 5.3.4 Message refused: with its template the"
                                              f" message is over the size limit of {limit}", fields)
        verdicts = None
        if not outbound and self.verifier is not None:  # issue 15: inbound SPF/DKIM/DMARC/ARC (inbound.verdicts)
            checked = await self.verifier.check(content, fields, client_ip=session.client_ip,
                                                helo=session.host_name or "", sender=tx.sender or "",
                                                domains=[r.rpartition("@")[2] for r in tx.recipients])
            if checked.reply is not None:
                return await self._refuse(session, tx, checked.reply)
            if checked.fields is not None:  # the verdicts' lines added: the fields as the verifier moved them
                fields = checked.fields
            elif checked.content is not content:  # the verdicts changed the header block: its fields' spans moved
                # mtad's own lines (Authentication-Results, X-Mailgun-* verdicts: a handful) are not the sender's:
                # they never count against the sender's header limits
                fields, _ = headers.parse_block(checked.content, limits.max_header_count + 64, len(checked.content))
            content, verdicts = checked.content, checked.verdicts
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
                            transport="smtp", listener=session.listener.name if session.listener else "",
                            verdicts=verdicts)
        if not outbound and tx.recipients and self._report_kind(tx.recipients[0]) == "report":
            return (await self._commit_report(envelope, content, summary, queue_id, now)).reply
        result = await self.commit(envelope, content, fields, summary, opts, queue_id, now, held=True, expand=expand)
        if isinstance(result, NotCommitted) and result.code >= 500:  # refused for good (an unknown campaign)
            return await self._refuse(session, tx, result.reply, fields)
        return result.reply

    async def _list_posts(self, tx: Transaction) -> tuple[tuple[str, ...], str | None]:
        """The lists an MX post reaches (by ``access_level``), or the refusal when one it may not reach has no
        route either."""
        allowed: list[str] = []
        for rcpt in tx.recipients:
            lst = self.lists.get(rcpt)
            if lst is None:
                continue
            if await self.lists.may_post(lst, tx.sender or ""):
                allowed.append(rcpt)
            elif not self.router.would_handle(rcpt):
                return (), f"550 5.7.1 <{rcpt}>: sender <{tx.sender or ''}> may not post to this list"
        return tuple(allowed), None

    async def _commit_report(self, envelope: Envelope, content: bytes, summary: HeaderSummary, queue_id: str,
                             now: float) -> CommitResult:
        """Commit a report (its bytes held by the SMTP session) with what it gives rise to (``inbound.reports``)."""
        assert self.reports is not None
        try:
            plan = await self.reports.plan(envelope, content, now)
            msg = NewMessage(envelope=envelope, body=content, direction="inbound", domain=plan.domain, headers=summary)
            await self.store.commit_report(spool.Enqueue(queue_id, msg, (), (), ()), (), now + self.reports.keep, now,
                                           plan.outcomes)
        except StoreError as exc:
            self.counters.store_failures += 1
            log.error("%s: report not stored: %s", queue_id, exc)
            return NO_STORE if isinstance(exc, StoreUnavailable) else NO_STORAGE
        self.counters.accepted += 1
        log.info("%s: accepted report from=<%s> to=<%s> size=%d client=%s: %s", queue_id, envelope.sender,
                 ",".join(envelope.recipients[:3]), len(content), envelope.client_ip, plan.outcome)
        return Committed((queue_id,))

    async def _templated(self, session: SessionInfo, tx: Transaction, content: bytes, named: dict[str, str],
                         opts: SendOptions) -> bytes:
        """An authenticated message naming a stored template (``X-Mailgun-Template-Name``, ``-Version``,
        ``-Variables``): its body replaced by the rendered template, as Mailgun does (``compose.template_message``);
        ``ComposeError`` naming the template when it does not exist or does not render."""
        name = named.get("x-mailgun-template-name", "").strip().lower()
        if not name:
            raise compose_mod.ComposeError("X-Mailgun-Template-Name", "is missing or empty beside "
                                           + ", ".join(sorted(named)))
        envelope = Envelope(sender=tx.sender or "", recipients=tuple(tx.recipients), auth_user=session.auth_user)
        stored = await templates_mod.stored_template(self.store, self._sending_domain(envelope), name,
                                                     named.get("x-mailgun-template-version", "").strip() or None,
                                                     "X-Mailgun-Template-Name")
        variables = compose_mod.template_variables(None, opts.variables.items(),
                                                   named.get("x-mailgun-template-variables"))
        return await asyncio.to_thread(compose_mod.template_message, content, stored, variables,
                                       html_to_text=templates_mod.html_to_text)

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
                     domain: str | None = None, held: bool = False,
                     expand: tuple[str, ...] | None = None) -> CommitResult:
        """Store the message and its work rows durably; what was done (``.reply``: the SMTP reply to give).

        ``domain`` names the sending domain when the caller knows it (the HTTP API's ``/v3/{domain}``);
        otherwise it comes from the envelope sender and the authenticated user. ``held``: the caller
        has already reserved the content's bytes in ``inflight`` (SMTP DATA).
        """
        return await self.commit_many([Submission(envelope, content, fields, summary, opts, queue_id, domain,
                                                  expand)], now, held=held)

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
            refused = await self._unknown_campaigns([msg for _, (msg, *_) in planned])
            if refused is not None:
                return refused
            await self.store.enqueue([spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now), tuple(forwards),
                                                    tuple(deliver_to), lists)
                                      for queue_id, (msg, forwards, deliver_to, lists) in planned], now)
        except StoreError as exc:
            self.counters.store_failures += 1
            log.error("%s: not stored: %s", ",".join(q for q, _ in planned), exc)
            return NO_STORE if isinstance(exc, StoreUnavailable) else NO_STORAGE
        self.counters.accepted += len(items)
        if any(forwards or deliver_to or lists for _, (_, forwards, deliver_to, lists) in planned):
            self.on_commit()  # wake the scheduler and forwarders only when there is work for them
        for queue_id, (msg, _, _, _) in planned:
            envelope = msg.envelope
            log.info("%s: accepted from=<%s> nrcpt=%d size=%d client=%s auth=%s tls=%s direction=%s%s",
                     queue_id, envelope.sender, len(envelope.recipients), len(msg.body), envelope.client_ip,
                     envelope.auth_user or "-", "yes" if envelope.tls else "no", msg.direction,
                     "" if envelope.transport == "smtp" else f" transport={envelope.transport}")
        return Committed(tuple(item.queue_id for item in items))

    async def commit_stream(self, make: "Callable[[], Iterable[Submission]]", now: float, reserve: int
                            ) -> CommitResult:
        """Commit the messages ``make()`` yields in one transaction, all or none, each planned and written as it
        comes (an API batch: its copies are never all in memory at once; ``store.enqueue_stream``). ``make`` may be
        called more than once (the store runs a transaction again after some failures). ``reserve``: the bytes
        held in ``inflight`` meanwhile (what is in memory at once: a copy and its commit copies; 452 if no room).
        An exception the iteration raises (a copy that cannot be built) propagates, nothing committed."""
        first = next(iter(make()), None)  # every copy of a batch names the same campaigns
        if first is not None:
            refused = await self._unknown_campaigns([self._plan(first)[0]])
            if refused is not None:
                return refused
        with self.inflight.hold() as hold:
            if not (hold.take(reserve) and hold.take_for_commit(reserve)):
                log.warning("API send refused: messages in flight hold more than max_inflight_bytes (%d)",
                            self.inflight.limit)
                return NO_ROOM

            seen: list[Envelope] = []

            def items() -> Iterator[spool.Enqueue]:
                for item in make():
                    seen[:] = [item.envelope]
                    msg, forwards, deliver_to, lists = self._plan(item)
                    yield spool.Enqueue(item.queue_id, msg, shape.accepted(msg, item.queue_id, now),
                                        tuple(forwards), tuple(deliver_to), lists)
            try:
                written = await self.store.enqueue_stream(items, now)
            except StoreError as exc:
                self.counters.store_failures += 1
                log.error("batch not stored: %s", exc)
                return NO_STORE if isinstance(exc, StoreUnavailable) else NO_STORAGE
        self.counters.accepted += len(written)
        if any(w.has_work for w in written):
            self.on_commit()
        env = seen[0] if seen else Envelope("", ())
        for w in written:
            log.info("%s: accepted from=<%s> nrcpt=%d size=%d client=%s auth=%s tls=%s direction=outbound"
                     " transport=%s%s", w.queue_id, env.sender, w.recipients, w.size, env.client_ip,
                     env.auth_user or "-", "yes" if env.tls else "no", env.transport,
                     f" batch={len(written)}" if len(written) > 1 else "")
        return Committed(tuple(w.queue_id for w in written))

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

    def _plan(self, item: "Submission") -> tuple[NewMessage, list[spool.ForwardRow], list[str], tuple[int, ...]]:
        """The message to store, its route forwards, the recipients the outbound stage delivers and the mailing
        lists it is expanded to (an authenticated sender's: every list among its recipients; an MX post's: those
        ``item.expand`` names)."""
        envelope = item.envelope
        outbound = envelope.auth_user is not None or envelope.transport == "http"
        inbound_rcpts = [r for r in envelope.recipients if self.directory.receives(r.rpartition("@")[2])]
        forwards = [row for r in inbound_rcpts for row in self.router.forwards_for(r, item.fields, envelope.sender)]
        lists = [lst for r in (envelope.recipients if outbound else item.expand or ())
                 if (lst := self.lists.get(r)) is not None] if self.lists.by_address else []
        not_delivered = set(inbound_rcpts) | {lst.address for lst in lists}
        deliver_to = [r for r in envelope.recipients if r not in not_delivered and r.lower() not in not_delivered]
        if outbound:
            domain = item.domain or self._sending_domain(envelope)
        else:
            domain = inbound_rcpts[0].rpartition("@")[2] if inbound_rcpts else ""
        msg = NewMessage(envelope=envelope, body=item.content, direction="outbound" if outbound else "inbound",
                         domain=domain, headers=item.summary, options=item.opts,
                         attachments=tuple(attachments_mod.listing(item.content)))
        return msg, forwards, deliver_to, tuple(lst.id for lst in lists)

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
