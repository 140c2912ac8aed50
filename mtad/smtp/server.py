"""The SMTP protocol engine: mtad's command loop, commands and limits on aiosmtpd's STARTTLS.

``MtadSMTP`` builds on ``seam.AiosmtpdSeam``, the one class that knows aiosmtpd's internals (what is kept
from aiosmtpd — the STARTTLS plumbing — and what is replaced, and why, is listed there). This module
implements the command loop (limits, error budget, 451 instead of aiosmtpd's ``500 Error: (OSError) ...``
on internal errors), EHLO, MAIL/RCPT parsing, AUTH (checked off the event loop) and DATA (read in bulk,
see dataread), and uses no aiosmtpd internals itself. Policy — who may relay, what is stored — is
the ``policy`` object's job (ingress.py); this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import re
import ssl
import time
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from mtad.config.schema import LimitsConfig, ListenerConfig
from mtad.smtp.dataread import read_data
from mtad.smtp.seam import AiosmtpdSeam, Envelope as _AioEnvelope, Session as _AioSession, TLSSetupException
from mtad.base.inflight import ByteBudget

log = logging.getLogger("mtad.smtp")

_MAIL = re.compile(r"^FROM:\s*(<[^<>]*>|[^\s<>]+)\s*(.*)$", re.I | re.S)
_RCPT = re.compile(r"^TO:\s*(<[^<>]*>|[^\s<>]+)\s*(.*)$", re.I | re.S)
_LOCAL = re.compile(r"^[^\s\x00-\x1f\x7f<>()\[\]\\,;:@\"]+$|^\"(?:[^\"\\\r\n]|\\.)*\"$")
_DOMAIN = re.compile(r"^(?:[^\s\x00-\x20\x7f@.<>\[\]()\\,;:\"]+(?:\.[^\s\x00-\x20\x7f@.<>\[\]()\\,;:\"]+)*"
                     r"|\[[0-9A-Fa-f:.IPv]+\])$")
_NOT_IMPLEMENTED = frozenset({"HELP", "EXPN", "VRFY"})  # known verbs mtad does not offer: 502, not 500


class AddressError(ValueError):
    pass


class AuthRefused(Exception):
    """Raised by ``Policy.authenticate`` when AUTH is refused whatever the credentials; ``reply`` says why."""

    def __init__(self, reply: str):
        super().__init__(reply)
        self.reply = reply


def parse_path(path: str, *, utf8: bool) -> str:
    """The address inside an SMTP path (``<user@domain>`` or bare); '' for ``<>``. Raises AddressError."""
    addr = path[1:-1] if path.startswith("<") else path
    if ":" in addr and addr.startswith("@"):  # source route <@a,@b:user@c>: ignored (RFC 5321 C)
        addr = addr.split(":", 1)[1]
    if addr == "":
        return ""
    if len(addr) > 254:
        raise AddressError("address too long")
    if not utf8 and not addr.isascii():
        raise AddressError("non-ASCII address without SMTPUTF8")
    local, at, domain = addr.rpartition("@")
    if not at or not local or not domain or len(local) > 64:
        raise AddressError("expected local-part@domain")
    if not _LOCAL.match(local) or not _DOMAIN.match(domain):
        raise AddressError("invalid characters in address")
    return f"{local}@{domain.lower()}"


def parse_params(text: str) -> dict[str, str] | None:
    params: dict[str, str] = {}
    for item in text.split():
        key, _, value = item.partition("=")
        if not key.isascii() or not key.replace("-", "").isalnum():
            return None
        params[key.upper()] = value
    return params


@dataclass
class Transaction:
    """The MAIL..DATA state of one session (mutable protocol state; frozen into types.Envelope later)."""

    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    smtputf8: bool = False
    body_8bit: bool = False
    declared_size: int = 0


class SessionInfo(_AioSession):
    """aiosmtpd's Session plus mtad's per-session facts; replaced after STARTTLS (RFC 3207 4.2)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        super().__init__(loop)
        self.auth_user: str | None = None
        self.tls = False
        self.client_ip = ""
        self.listener: ListenerConfig | None = None


class Policy(Protocol):
    """What the protocol engine asks the ingress policy. Each returns None to accept or a reply.

    ``inflight`` bounds the message bytes all sessions hold: DATA reserves its bytes there as they arrive
    and releases them once ``accept`` has answered (or the session ended).
    """

    inflight: ByteBudget

    async def authenticate(self, session: SessionInfo, login: str, password: str) -> str | None: ...  # AuthRefused
    def check_mail(self, session: SessionInfo, sender: str) -> str | None: ...
    def check_rcpt(self, session: SessionInfo, tx: Transaction, recipient: str) -> str | None: ...
    async def accept(self, session: SessionInfo, tx: Transaction, content: bytes) -> str: ...


class Sessions:
    """Every open session, for connection limits and graceful shutdown."""

    def __init__(self) -> None:
        self.active: set["MtadSMTP"] = set()
        self.per_ip: dict[str, int] = {}
        self.closing = False
        self.total_connections = 0

    def add(self, s: "MtadSMTP") -> None:
        self.active.add(s)
        self.per_ip[s.client_ip] = self.per_ip.get(s.client_ip, 0) + 1
        self.total_connections += 1

    def remove(self, s: "MtadSMTP") -> None:
        if s in self.active:
            self.active.discard(s)
            n = self.per_ip.get(s.client_ip, 1) - 1
            if n <= 0:
                self.per_ip.pop(s.client_ip, None)
            else:
                self.per_ip[s.client_ip] = n

    async def shutdown(self, grace: float, linger: float = 1.0) -> None:
        """Answer idle sessions 421 now; let sessions in DATA finish (up to ``grace`` seconds).

        Sessions already told 421 get ``linger`` seconds to close, then are dropped: a TLS close waits
        for the peer's close_notify, and a client that never reads must not hold up the stop.
        """
        self.closing = True
        for s in list(self.active):
            s.shutdown()
        now = time.monotonic()
        deadline, linger_until = now + grace, now + linger
        while self.active and time.monotonic() < deadline:
            if time.monotonic() > linger_until and not any(s.in_data for s in self.active):
                break
            await asyncio.sleep(0.05)
        for s in list(self.active):
            s.abort()


class MtadSMTP(AiosmtpdSeam):
    """One SMTP connection: mtad's command loop and commands on aiosmtpd's STARTTLS (see seam.py)."""

    _COMMANDS: dict[str, Any] = {}
    ident = "ESMTP mtad"

    def __init__(self, policy: Policy, listener: ListenerConfig, limits: LimitsConfig, hostname: str,
                 tls_context: ssl.SSLContext | None, sessions: Sessions, loop: asyncio.AbstractEventLoop):
        self._init_aiosmtpd_state(loop, line_limit=limits.max_command_length + 2,
                                  timeout=limits.command_timeout.seconds,
                                  tls_context=tls_context if listener.tls == "starttls" else None)
        self.policy = policy
        self.listener = listener
        self.limits = limits
        self.hostname = hostname
        self.implicit_tls = listener.tls == "implicit"
        self.data_size_limit = int(limits.max_message_size)
        self.sessions = sessions
        self.client_ip = ""
        self.tx = Transaction()
        self.in_data = False
        self.closing = False
        self.auth_failures = 0
        self.errors = 0
        self._lifetime_handle: asyncio.TimerHandle | None = None

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        cls._COMMANDS = {}

    @classmethod
    def commands(cls) -> dict[str, Any]:
        """The ``smtp_*`` methods mtad defines, by verb; aiosmtpd's own (HELP, VRFY, EXPN) are not in it."""
        if not cls._COMMANDS:
            cls._COMMANDS = {n[5:]: getattr(cls, n) for n in dir(cls)
                             if n.startswith("smtp_") and getattr(cls, n) is not getattr(AiosmtpdSeam, n, None)}
        return cls._COMMANDS

    # --- aiosmtpd hooks (seam.py) ----------------------------------------------------------------
    def _create_session(self) -> SessionInfo:
        s = SessionInfo(self.loop)
        s.tls = self.tls_active
        s.client_ip = self.client_ip
        s.listener = self.listener
        return s

    def _create_envelope(self) -> _AioEnvelope:
        self.tx = Transaction()
        return _AioEnvelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            peer = transport.get_extra_info("peername")
            self.client_ip = peer[0] if peer else ""
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.remove(self)
        if self._lifetime_handle:
            self._lifetime_handle.cancel()
        super().connection_lost(error)

    def _timeout_cb(self) -> None:
        log.info("%s timeout", self.client_ip)
        self._say_goodbye("421 4.4.2 Timeout exceeded, closing connection")

    @property
    def tls_active(self) -> bool:
        return self.implicit_tls or self._tls_protocol is not None

    # --- shutdown --------------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Graceful stop: idle sessions get 421 at once; a session in DATA finishes its message."""
        self.closing = True
        if not self.in_data:
            self._say_goodbye("421 4.3.2 Service shutting down, try again later")

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # close() on TLS would wait for the peer's close_notify

    def _say_goodbye(self, reply: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            try:
                self._writer.write(reply.encode() + b"\r\n")
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass
            self.transport.close()

    def _lifetime_expired(self) -> None:
        log.info("%s session lifetime exceeded", self.client_ip)
        if self.in_data:
            self.closing = True
        else:
            self._say_goodbye("421 4.4.2 Session time limit exceeded, closing connection")

    # --- command loop ----------------------------------------------------------------------------
    async def _handle_client(self) -> None:
        limits = self.limits
        if self.sessions.closing:
            await self.push("421 4.3.2 Service shutting down, try again later")
            self.transport.close()
            return
        if len(self.sessions.active) >= limits.max_connections:
            await self.push("421 4.7.0 Too many connections, try again later")
            self.transport.close()
            return
        if self.sessions.per_ip.get(self.client_ip, 0) >= limits.max_connections_per_ip:
            await self.push("421 4.7.0 Too many connections from your address, try again later")
            self.transport.close()
            return
        self.sessions.add(self)
        self._lifetime_handle = self.loop.call_later(limits.session_lifetime.seconds, self._lifetime_expired)
        await self.push(f"220 {self.hostname} {self.ident}")
        commands = self.commands()
        reader = self._reader
        while self.transport is not None and not self.transport.is_closing():
            try:
                try:
                    line = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    await self._discard_long_line(exc.consumed)
                    await self._error("500 5.5.2 Line too long")
                    continue
                except asyncio.IncompleteReadError:  # the client closed its side
                    self.transport.close()
                    return
                line = line.rstrip(b"\r\n")
                verb, _, rest = line.partition(b" ")
                try:
                    command = verb.upper().decode("ascii")
                    arg = rest.strip().decode("utf-8", "strict") or None
                except UnicodeDecodeError:
                    await self._error("500 5.5.2 Syntax error: command is not valid UTF-8")
                    continue
                method = commands.get(command)
                if method is None:
                    if command in _NOT_IMPLEMENTED:
                        await self.push("502 5.5.1 Command not implemented")
                        continue
                    await self._error("500 5.5.2 Syntax error: command not recognised")
                    continue
                self._reset_timeout()
                await method(self, arg)
                if self.closing and not self.in_data:
                    self._say_goodbye("421 4.3.2 Service shutting down, try again later")
                    return
            except asyncio.CancelledError:
                if self.transport is not None:  # else the session keeps its connection slot
                    self.transport.close()
                raise
            except (ConnectionError, TLSSetupException, asyncio.IncompleteReadError) as exc:
                log.info("%s connection ended: %s", self.client_ip, exc.__class__.__name__)
                if self.transport is not None:
                    self.transport.close()
                return
            except Exception:  # noqa: BLE001 - no input may kill the daemon or leak internals
                log.exception("%s internal error in SMTP session", self.client_ip)
                try:
                    await self.push("451 4.3.0 Internal error, try again later")
                except Exception:  # noqa: BLE001
                    return

    async def _discard_long_line(self, consumed: int) -> None:
        reader = self._reader
        await reader.readexactly(consumed)
        while True:
            try:
                await reader.readuntil(b"\n")
                return
            except asyncio.LimitOverrunError as exc:
                await reader.readexactly(exc.consumed)

    async def _error(self, reply: str) -> None:
        """A client error counts against the session's budget (Postfix smtpd_hard_error_limit)."""
        self.errors += 1
        if self.errors >= self.limits.max_errors:
            await self.push("421 4.7.0 Too many errors, closing connection")
            self.transport.close()
            return
        await self.push(reply)

    # --- commands --------------------------------------------------------------------------------
    async def smtp_HELO(self, arg: str | None) -> None:
        if not arg:
            await self._error("501 5.5.4 Syntax: HELO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = False
        self.session.host_name = arg
        await self.push(f"250 {self.hostname}")

    async def smtp_EHLO(self, arg: str | None) -> None:
        if not arg:
            await self._error("501 5.5.4 Syntax: EHLO hostname")
            return
        self._set_rset_state()
        self.session.extended_smtp = True
        self.session.host_name = arg
        lines = [self.hostname, "PIPELINING", f"SIZE {self.data_size_limit}", "8BITMIME", "SMTPUTF8",
                 "ENHANCEDSTATUSCODES"]
        if self.tls_context is not None and not self.tls_active:
            lines.append("STARTTLS")
        if self.tls_active:
            lines.append("AUTH PLAIN LOGIN")
        reply = "\r\n".join(f"250-{x}" for x in lines[:-1]) + f"\r\n250 {lines[-1]}"
        await self.push(reply)

    async def smtp_NOOP(self, arg: str | None) -> None:
        await self.push("250 2.0.0 OK")

    async def smtp_RSET(self, arg: str | None) -> None:
        self._set_rset_state()
        await self.push("250 2.0.0 OK")

    async def smtp_QUIT(self, arg: str | None) -> None:
        await self.push(f"221 2.0.0 {self.hostname} closing connection")
        self.transport.close()

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if arg:
            await self._error("501 5.5.4 Syntax: STARTTLS")
        elif self.tls_active:
            await self._error("503 5.5.1 TLS already active")
        elif self.tls_context is None:
            await self._error("454 4.7.0 TLS not available")
        else:
            await super().smtp_STARTTLS(arg)  # aiosmtpd's handshake (seam.py)

    async def smtp_AUTH(self, arg: str | None) -> None:
        if not self.session.host_name or not self.session.extended_smtp:
            await self._error("503 5.5.1 Send EHLO first")
            return
        if not self.tls_active:
            await self._error("538 5.7.11 Encryption required for requested authentication mechanism")
            return
        if self.session.auth_user:
            await self._error("503 5.5.1 Already authenticated")
            return
        if self.tx.sender is not None:
            await self._error("503 5.5.1 AUTH not allowed during a mail transaction")
            return
        args = (arg or "").split()
        if not args or len(args) > 2:
            await self._error("501 5.5.4 Syntax: AUTH mechanism [initial-response]")
            return
        mechanism = args[0].upper()
        if mechanism == "PLAIN":
            credentials = await self._auth_plain(args)
        elif mechanism == "LOGIN":
            credentials = await self._auth_login(args)
        else:
            await self._error("504 5.5.4 Unrecognized authentication type")
            return
        if credentials is None:
            return
        login, password = credentials
        try:
            user = await self.policy.authenticate(self.session, login, password)
            failure = "535 5.7.8 Authentication credentials invalid"
        except AuthRefused as exc:  # locked out across connections: counts against this one's brake too
            user, failure = None, exc.reply
        if user is None:
            self.auth_failures += 1
            await asyncio.sleep(self.limits.auth_failure_delay.seconds)
            if self.auth_failures >= self.limits.max_auth_failures:
                await self.push("421 4.7.0 Too many failed authentications, closing connection")
                self.transport.close()
                return
            await self.push(failure)
            return
        self.session.auth_user = user
        self.session.authenticated = True
        await self.push("235 2.7.0 Authentication successful")

    async def _decode_b64(self, text: str | bytes) -> bytes | None:
        if text in ("*", b"*"):
            await self.push("501 5.7.0 Authentication aborted")
            return None
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            await self._error("501 5.5.2 Cannot decode base64")
            return None

    async def _read_auth_line(self, challenge: bytes) -> bytes | None:
        await self.push(b"334 " + base64.b64encode(challenge))
        try:
            line = await self._reader.readuntil(b"\n")
        except asyncio.LimitOverrunError as exc:
            await self._discard_long_line(exc.consumed)
            await self._error("500 5.5.2 Line too long")
            return None
        return await self._decode_b64(line.strip())

    async def _auth_plain(self, args: list[str]) -> tuple[str, str] | None:
        blob = await self._decode_b64(args[1]) if len(args) == 2 else await self._read_auth_line(b"")
        if blob is None:
            return None
        parts = blob.split(b"\0")
        if len(parts) != 3:
            await self._error("501 5.5.2 Cannot split authentication data")
            return None
        try:
            return parts[1].decode(), parts[2].decode()
        except UnicodeDecodeError:
            await self._error("501 5.5.2 Credentials must be UTF-8")
            return None

    async def _auth_login(self, args: list[str]) -> tuple[str, str] | None:
        login = await self._decode_b64(args[1]) if len(args) == 2 else await self._read_auth_line(b"Username:")
        if login is None:
            return None
        password = await self._read_auth_line(b"Password:")
        if password is None:
            return None
        try:
            return login.decode(), password.decode()
        except UnicodeDecodeError:
            await self._error("501 5.5.2 Credentials must be UTF-8")
            return None

    async def smtp_MAIL(self, arg: str | None) -> None:
        if not self.session.host_name:
            await self._error("503 5.5.1 Send HELO or EHLO first")
            return
        if self.tx.sender is not None:
            await self._error("503 5.5.1 Nested MAIL command")
            return
        m = _MAIL.match(arg or "")
        params = parse_params(m.group(2)) if m else None
        if m is None or params is None:
            await self._error("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        if params and not self.session.extended_smtp:
            await self._error("555 5.5.4 MAIL parameters need EHLO")
            return
        body = params.pop("BODY", "7BIT").upper()
        smtputf8 = "SMTPUTF8" in params and params.pop("SMTPUTF8") == ""
        size = params.pop("SIZE", "0")
        params.pop("AUTH", None)  # RFC 4954 5: accepted, ignored
        if params or body not in ("7BIT", "8BITMIME") or not size.isdigit():
            await self._error("555 5.5.4 Unsupported MAIL parameter")
            return
        if int(size) > self.data_size_limit:
            await self.push(f"552 5.3.4 Message size exceeds fixed limit of {self.data_size_limit} bytes")
            return
        try:
            sender = parse_path(m.group(1), utf8=smtputf8)
        except AddressError as exc:
            await self._error(f"501 5.1.7 Bad sender address syntax: {exc}")
            return
        refusal = self.policy.check_mail(self.session, sender)
        if refusal:
            await self.push(refusal)
            return
        self.tx = Transaction(sender=sender, smtputf8=smtputf8, body_8bit=body == "8BITMIME",
                              declared_size=int(size))
        await self.push("250 2.1.0 OK")

    async def smtp_RCPT(self, arg: str | None) -> None:
        if self.tx.sender is None:
            await self._error("503 5.5.1 Need MAIL before RCPT")
            return
        m = _RCPT.match(arg or "")
        params = parse_params(m.group(2)) if m else None
        if m is None or params is None:
            await self._error("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        if params:
            await self._error("555 5.5.4 Unsupported RCPT parameter")
            return
        if len(self.tx.recipients) >= self.limits.max_recipients:
            await self.push("452 4.5.3 Too many recipients")
            return
        try:
            rcpt = parse_path(m.group(1), utf8=self.tx.smtputf8)
        except AddressError as exc:
            await self._error(f"501 5.1.3 Bad recipient address syntax: {exc}")
            return
        if not rcpt:
            await self._error("501 5.1.3 Bad recipient address syntax: empty")
            return
        refusal = self.policy.check_rcpt(self.session, self.tx, rcpt)
        if refusal:
            await self.push(refusal)
            return
        if rcpt not in self.tx.recipients:
            self.tx.recipients.append(rcpt)
        await self.push("250 2.1.5 OK")

    async def smtp_DATA(self, arg: str | None) -> None:
        if arg:
            await self._error("501 5.5.4 Syntax: DATA")
            return
        if self.tx.sender is None:
            await self._error("503 5.5.1 Need MAIL command")
            return
        if not self.tx.recipients:
            await self._error("554 5.5.1 No valid recipients")
            return
        self.in_data = True
        try:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            self._reset_timeout(self.limits.data_timeout.seconds)
            reader = self._reader
            saved_limit = reader._limit  # type: ignore[attr-defined]
            reader._limit = 1 << 20  # type: ignore[attr-defined]  # no flow-control churn while reading
            with self.policy.inflight.hold() as hold:  # released on every path, a lost connection too
                try:
                    result = await read_data(reader, self.data_size_limit, hold)
                finally:
                    reader._limit = saved_limit  # type: ignore[attr-defined]
                self._reset_timeout()
                if result.content and not result.over_budget and not hold.take_for_commit(len(result.content)):
                    result = replace(result, content=None, over_budget=True)  # no room for the commit's copies
                if result.over_budget:
                    log.warning("%s: message refused: messages in flight hold more than max_inflight_bytes (%d)",
                                self.client_ip, self.policy.inflight.limit)
                    reply = "452 4.3.1 Insufficient system resources, try again later"
                elif result.content is None:
                    reply = f"552 5.3.4 Message size exceeds fixed limit of {self.data_size_limit} bytes"
                else:
                    reply = await self.policy.accept(self.session, self.tx, result.content)
                del result
            self._set_rset_state()
            await self.push(reply)
        finally:
            self.in_data = False
