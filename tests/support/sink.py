"""The suite's one receiving MX: aiosmtpd servers on loopback that keep and script what mtad delivers.

- ``MxFarm`` runs aiosmtpd protocol instances in one background event loop. Every ``Mx`` listens on the farm's
  single port at its own loopback address (127.0.0.2, 127.0.0.3, ...), so one ``delivery.port`` reaches them
  all; DNS A records (``point``) send each MX name to its address. ``mx_farm`` is the session's farm.
- An ``Mx`` records what a real server would see: connections (current, peak, total, also per group of servers
  that form one provider), every DATA attempt, and every message it accepted (``Received``), with the TLS
  state, the AUTH login and the connection it came on. Its behaviour is set per test: replies to RCPT
  (``reject``, ``rcpt_reply``; ``by_local_part`` answers ``bad*`` 550 and ``soft*`` 451), planned replies to
  DATA, a connection dropped after the final dot, a slow DATA reply, STARTTLS (``server_tls``), AUTH
  (``Authenticator``), PIPELINING (advertised unless ``pipelining`` is set False).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
import socket
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.support.dns_server import DnsServer
from tests.support.wait import wait_for


@dataclass
class Gauge:
    """Concurrent connections of one server or of a group of servers (a provider)."""

    current: int = 0
    peak: int = 0
    total: int = 0

    def opened(self) -> None:
        self.current += 1
        self.total += 1
        self.peak = max(self.peak, self.current)

    def closed(self) -> None:
        self.current -= 1


@dataclass
class Received:
    """One message the MX accepted (250 to DATA), as it arrived."""

    mx: str
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    auth_user: str | None
    connection: int
    at: float  # time.time() when the final dot was received

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)  # type: ignore[return-value]

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"] or "").strip()


@dataclass
class DataAttempt:
    connection: int
    rcpt_tos: list[str]
    at: float
    reply: str = ""


class _MxProtocol(SMTP):
    """aiosmtpd's protocol, counting connections (a STARTTLS upgrade is not a new connection)."""

    _ids = itertools.count(1)

    def __init__(self, mx: "Mx", *args: Any, **kwargs: Any):
        self.mx = mx
        self.connection_no = next(self._ids)
        super().__init__(*args, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None
        super().connection_made(transport)
        if first:
            self.mx.opened(self.connection_no)

    def connection_lost(self, error: Exception | None) -> None:
        self.mx.closed()
        super().connection_lost(error)


class Mx:
    """One receiving MX at ``ip:port``: an aiosmtpd handler with scriptable replies and a record of it all.

    Attributes a test may set at any time (they are read on the farm's loop, per command):
    ``reject`` (recipients answered 550 5.1.1), ``rcpt_reply`` (address -> reply or None),
    ``data_replies`` (replies for the next DATA commands, then ``data_reply``, else 250), ``drop_after_dot`` (how
    many of the next transactions lose the connection after the final dot), ``data_delay`` (seconds before
    answering DATA; a client that disconnects meanwhile gets nothing and the message is not accepted),
    ``data_gate`` (a ``threading.Event``: DATA is answered once it is set; the message counts as accepted then),
    ``data_gate_pass`` (how many of the next DATA the gate lets through before it holds the others).
    """

    def __init__(self, name: str, ip: str, port: int, groups: tuple[Gauge, ...] = ()):
        self.name = name
        self.ip = ip
        self.port = port
        self.reject: set[str] = set()
        self.rcpt_reply: Callable[[str], str | None] | None = None
        self.data_replies: deque[str] = deque()
        self.data_reply: str | None = None  # the reply to DATA once data_replies is empty (None: accept)
        self.drop_after_dot = 0
        self.data_delay = 0.0
        self.data_gate: threading.Event | None = None
        self.data_gate_pass = 0
        self.pipelining = True  # advertise PIPELINING (mtad then pipelines MAIL, RCPT and DATA)
        self.gauge = Gauge()
        self.groups = groups
        self.messages: list[Received] = []
        self.data_attempts: list[DataAttempt] = []
        self.rcpt_attempts: list[str] = []
        self.connections: list[tuple[int, float]] = []  # (connection number, opened at)
        self.server: asyncio.base_events.Server | None = None

    # connection accounting (farm loop)
    def opened(self, connection_no: int) -> None:
        self.connections.append((connection_no, time.time()))
        for gauge in (self.gauge, *self.groups):
            gauge.opened()

    def closed(self) -> None:
        for gauge in (self.gauge, *self.groups):
            gauge.closed()

    # aiosmtpd hooks (farm loop)
    async def handle_EHLO(self, server: SMTP, session: Any, envelope: Any, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname
        if self.pipelining:  # aiosmtpd reads commands one by one from its stream: pipelined input just works
            responses.insert(len(responses) - 1, "250-PIPELINING")
        return responses

    async def handle_RCPT(self, server: SMTP, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.rcpt_attempts.append(address)
        reply = self.rcpt_reply(address) if self.rcpt_reply else None
        if reply is None and address.lower() in self.reject:
            reply = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: _MxProtocol, session: Any, envelope: Any) -> str:
        attempt = DataAttempt(server.connection_no, list(envelope.rcpt_tos), time.time())
        self.data_attempts.append(attempt)
        if self.data_delay:
            await asyncio.sleep(self.data_delay)  # cancelled by aiosmtpd if the client goes away meanwhile
        if self.data_gate is not None and self.data_gate_pass > 0:
            self.data_gate_pass -= 1
        else:
            while self.data_gate is not None and not self.data_gate.is_set():
                await asyncio.sleep(0.02)
        if self.data_replies or self.data_reply:
            attempt.reply = self.data_replies.popleft() if self.data_replies else str(self.data_reply)
            if not attempt.reply.startswith("2"):
                return attempt.reply
        received = Received(self.name, envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                            session.ssl is not None, _login(session), server.connection_no, attempt.at)
        self.messages.append(received)
        if self.drop_after_dot > 0:
            self.drop_after_dot -= 1
            attempt.reply = "(connection dropped)"
            assert server.transport is not None
            server.transport.abort()  # the message arrived; the client never learns it
            await asyncio.sleep(3600)  # cancelled by connection_lost
        attempt.reply = attempt.reply or "250 2.0.0 OK"
        return attempt.reply

    # views for the tests (any thread)
    def to(self, recipient: str) -> list[Received]:
        """The accepted messages with ``recipient`` among their RCPTs (case-insensitive), oldest first."""
        recipient = recipient.lower()
        return [m for m in list(self.messages) if recipient in (r.lower() for r in m.rcpt_tos)]

    async def wait_for(self, recipient: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        """``to(recipient)`` once it holds ``count`` messages."""
        return await wait_for(lambda: len(self.to(recipient)) >= count and self.to(recipient), timeout,
                              f"{count} message(s) to {recipient} at {self.name}")

    def message_ids(self) -> list[str]:
        return [m.message_id for m in self.messages]

    def by_message_id(self, message_id: str) -> list[Received]:
        return [m for m in list(self.messages) if m.message_id == message_id]

    def per_connection(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for m in self.messages:
            counts[m.connection] = counts.get(m.connection, 0) + 1
        return counts


def _login(session: Any) -> str | None:
    data = session.auth_data
    if isinstance(data, LoginPassword):
        return data.login.decode()
    return None


class Authenticator:
    """AUTH PLAIN/LOGIN against one login and password."""

    def __init__(self, login: str, password: str):
        self.login, self.password = login.encode(), password.encode()

    def __call__(self, server: SMTP, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (self.login,
                                                                                                  self.password)
        return AuthResult(success=ok, auth_data=auth_data if ok else None)


class MxFarm:
    """Receiving servers on 127.0.0.N:``port``, all served by one background event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mx-farm", daemon=True)
        self._addresses = (f"127.0.{a}.{b}" for a in range(0, 255) for b in range(2, 255))
        self.servers: list[Mx] = []
        self.port = self._free_port()

    @staticmethod
    def _free_port() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.2", 0))
            return s.getsockname()[1]

    def start(self) -> "MxFarm":
        self._thread.start()
        return self

    def stop(self) -> None:
        async def close() -> None:
            for mx in self.servers:
                if mx.server is not None:
                    mx.server.close()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def address(self) -> str:
        """A fresh loopback address nobody listens on (a host that is down, until ``add`` uses one)."""
        return next(self._addresses)

    def add(self, name: str, *, tls: ssl.SSLContext | None = None, auth: Authenticator | None = None,
            groups: tuple[Gauge, ...] = (), ip: str | None = None) -> Mx:
        """Start an MX called ``name`` (the greeting's host name) on a fresh loopback address."""
        mx = Mx(name, ip or self.address(), self.port, groups)

        def factory() -> _MxProtocol:
            return _MxProtocol(mx, mx, hostname=name, tls_context=tls, require_starttls=False,
                               authenticator=auth, auth_require_tls=tls is not None, enable_SMTPUTF8=True,
                               loop=self.loop)

        async def listen() -> asyncio.base_events.Server:
            return await self.loop.create_server(factory, host=mx.ip, port=self.port, reuse_address=True)

        mx.server = asyncio.run_coroutine_threadsafe(listen(), self.loop).result(5)
        self.servers.append(mx)
        return mx


def by_local_part(address: str) -> str | None:
    """An ``Mx.rcpt_reply``: ``bad*`` recipients get 550 5.1.1, ``soft*`` 451 4.2.1, the others are accepted."""
    local = address.split("@")[0].lower()
    if local.startswith("bad"):
        return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
    if local.startswith("soft"):
        return "451 4.2.1 Mailbox busy, try again later"
    return None


def point(dns: DnsServer, mx: Mx, *domains: str) -> Mx:
    """DNS for ``domains``: MX 10 -> ``mx.name`` -> A ``mx.ip``, replacing what they had (a module that runs on
    both store backends serves its domains again, from new servers)."""
    dns.set_records(mx.name, "AAAA" if ":" in mx.ip else "A", [mx.ip])
    for domain in domains:
        dns.set_records(domain, "MX", [(10, mx.name)])
    return mx


def server_tls(certs: Any, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` from the suite's trustme CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert(*names).configure_cert(ctx)
    return ctx



@pytest.fixture(scope="session")
def mx_farm() -> Iterator[MxFarm]:
    farm = MxFarm().start()
    yield farm
    farm.stop()
