"""The outbound e2e harness: receiving MX servers, a loopback DNS zone, and mtad configured to use both.

Everything stays on 127.0.0.0/8:
- ``MxFarm`` runs aiosmtpd protocol instances in one background event loop. Every test MX listens on the
  farm's single port at its own loopback address (127.0.0.2, 127.0.0.3, ...), so one ``delivery.port``
  reaches them all; the DNS A records point each MX name at its address.
- ``loopback_dns`` is one ``DnsServer`` for the session; each test adds its own, uniquely named domains.
- ``outbound_mtad(...)`` starts an mtad whose resolver asks only that DNS server (``delivery.dns_nameservers``
  is always ``[127.0.0.1]``), whose delivery port is the farm's, and whose retry schedule and poll interval
  are short. At teardown the daemon must exit 0 with no traceback in its log.

An ``Mx`` records what a real server would see: connections (current, peak, total, also per group of
servers that form one provider), every DATA attempt, and every message it accepted, with the TLS state,
the AUTH login and the connection it came on. Its behaviour is set per test: replies to RCPT, planned
replies to DATA, a connection dropped after the final dot, a slow DATA reply, STARTTLS, AUTH, PIPELINING
(advertised unless ``pipelining`` is set False).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import itertools
import json
import smtplib
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from tests.e2e.helpers import queue_id, send, submission
from tests.support.daemon import API_KEY, Mtad, base_config
from tests.support.dns_server import DnsServer

SENDER = "postmaster@example.com"

# Short enough that the suite stays fast; the tests read the real gaps from the store.
RETRY_SCHEDULE = ["1s", "1s", "2s"]
POLL_INTERVAL = "200ms"

# Test shaping: KumoMTA-like defaults, short timeouts so that a broken test fails fast instead of hanging.
DEFAULT_SHAPING: dict[str, Any] = {
    "default": {"max_connections": 10, "max_message_rate": None, "max_deliveries_per_connection": 100,
                "connect_timeout": "5s", "command_timeout": "10s", "data_timeout": "10s"},
}


# --- receiving servers ---------------------------------------------------------------------------------------

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
    ``data_gate`` (a ``threading.Event``: DATA is answered once it is set; the message counts as accepted then).
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
        self._addresses = (f"127.0.0.{n}" for n in range(2, 255))
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


@pytest.fixture(scope="session")
def mx_farm() -> Iterator[MxFarm]:
    farm = MxFarm().start()
    yield farm
    farm.stop()


@pytest.fixture(scope="session")
def loopback_dns() -> Iterator[DnsServer]:
    with DnsServer(ttl=300) as server:
        yield server


@pytest.fixture(scope="session")
def sender_mailbox(loopback_dns: DnsServer, mx_farm: MxFarm) -> Mx:
    """example.com's MX, where DSNs to the sending user (postmaster@example.com) arrive."""
    return serve_domain(loopback_dns, mx_farm, "example.com")


def serve_domain(dns: DnsServer, farm: MxFarm, domain: str, mx_names: list[str] | None = None,
                 **mx_options: Any) -> Mx:
    """An accepting MX for ``domain``: DNS MX 10 -> ``mx.DOMAIN`` (or the given name) -> a fresh address."""
    name = (mx_names or [f"mx.{domain}"])[0]
    mx = farm.add(name, **mx_options)
    dns.add_mx(domain, [(10, name)])
    dns.add_a(name, mx.ip)
    return mx


# --- mtad -----------------------------------------------------------------------------------------------------

def server_tls(certs: Any, *names: str) -> ssl.SSLContext:
    """A server context with a certificate for ``names`` from the suite's trustme CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certs.ca.issue_cert(*names).configure_cert(ctx)
    return ctx


def write_ca(certs: Any, folder: Path) -> Path:
    path = folder / "ca.pem"
    if not path.exists():
        certs.ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="module")
def outbound_mtad(tmp_path_factory: pytest.TempPathFactory, certs: Any, loopback_dns: DnsServer,
                  mx_farm: MxFarm, sender_mailbox: Mx):
    """``make(delivery={...}, shaping={...}, dkim=[...], start=True)`` -> an mtad delivering on loopback only.

    example.com (the sender's domain) has an MX from the start, so DSNs always have somewhere to go.
    ``delivery`` keys override the test defaults (loopback DNS, the farm's port, short retry schedule);
    ``shaping`` replaces the test shaping file; ``dkim`` is example.com's key list. At teardown every daemon
    must exit 0 and leave no traceback in its log.
    """
    started: list[Mtad] = []

    def make(*, delivery: dict | None = None, shaping: dict | None = None, dkim: list | None = None,
             start: bool = True) -> Mtad:
        tmp = tmp_path_factory.mktemp("mtad-out")
        shaping_file = tmp / "shaping.yaml"
        shaping_file.write_text(yaml.safe_dump(shaping or DEFAULT_SHAPING))
        cfg = base_config(tmp, certs)
        cfg["delivery"] = {
            "dns_nameservers": ["127.0.0.1"], "dns_port": loopback_dns.port, "dns_timeout": "2s",
            "port": mx_farm.port, "tls_ca_file": str(write_ca(certs, tmp)),
            "retry": {"schedule": RETRY_SCHEDULE}, "poll_interval": POLL_INTERVAL,
            "shaping_file": str(shaping_file), **(delivery or {}),
        }
        # Never let a test config reach a real resolver, whatever it overrides.
        assert cfg["delivery"]["dns_nameservers"] == ["127.0.0.1"]
        if dkim:
            cfg["sending_domains"]["example.com"]["dkim"] = dkim
        daemon = Mtad(tmp, cfg)
        started.append(daemon)
        return daemon.start() if start else daemon

    yield make
    problems = []
    for daemon in started:
        code = daemon.stop()
        if code not in (0, None):
            problems.append(f"mtad exited with {code}")
        if "Traceback" in daemon.log():
            problems.append(f"traceback in the daemon log:\n{daemon.log()[-6000:]}")
    assert not problems, "\n".join(problems)


def mtad_cli(daemon: Mtad, *args: str) -> str:
    """Run ``mtad ARGS --config <the daemon's config>`` as an operator would; its standard output."""
    result = subprocess.run([sys.executable, "-m", "mtad", *args, "--config", str(daemon.config_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


# --- submitting and reading the store -------------------------------------------------------------------------

def make_message(recipients: list[str], headers: str = "", subject: str = "outbound test",
                 body: str = "Hello from mtad.\r\n") -> tuple[str, bytes]:
    """A message from example.com with a unique Message-ID: ``(message_id, bytes)``."""
    message_id = f"<{uuid.uuid4().hex}@example.com>"
    text = (f"From: Postmaster <{SENDER}>\r\nTo: {', '.join(recipients)}\r\nSubject: {subject}\r\n"
            f"Date: {email.utils.formatdate()}\r\nMessage-ID: {message_id}\r\n{headers}\r\n{body}")
    return message_id, text.encode()


@dataclass
class Sent:
    queue_id: str
    message_id: str
    recipients: list[str] = field(default_factory=list)


class Submitter:
    """One authenticated submission session (STARTTLS, AUTH) to mtad, for several messages."""

    def __init__(self, daemon: Mtad, certs: Any):
        self.daemon = daemon
        self.certs = certs
        self.session: smtplib.SMTP | None = None

    def send(self, recipients: list[str], headers: str = "", body: str = "Hello from mtad.\r\n",
             sender: str = SENDER) -> Sent:
        if self.session is None:
            self.session = submission(self.daemon, self.certs.client_context())
        message_id, data = make_message(recipients, headers, body=body)
        code, text = send(self.session, sender, recipients, data)
        assert code == 250, text
        return Sent(queue_id(text), message_id, list(recipients))

    def close(self) -> None:
        if self.session is not None:
            try:
                self.session.quit()
            except smtplib.SMTPException:
                pass
            self.session = None


def submit(daemon: Mtad, certs: Any, recipients: list[str], headers: str = "",
           body: str = "Hello from mtad.\r\n") -> Sent:
    s = Submitter(daemon, certs)
    try:
        return s.send(recipients, headers, body)
    finally:
        s.close()


def events(daemon: Mtad, queue_id: str | None = None, recipient: str | None = None,
           kind: str | None = None) -> list[dict[str, Any]]:
    """Stored events (decoded JSON), oldest first, filtered by queue id, recipient and event name."""
    sql, args = "SELECT data FROM events WHERE 1=1", []
    for column, value in (("queue_id", queue_id), ("recipient", recipient), ("event", kind)):
        if value is not None:
            sql += f" AND {column} = ?"
            args.append(value)
    return [json.loads(r[0]) for r in daemon.query(sql + " ORDER BY seq", tuple(args))]


def outcomes(daemon: Mtad, queue_id: str, recipient: str | None = None) -> list[dict[str, Any]]:
    """The delivery attempts' events (``delivered`` / ``failed``), oldest first."""
    return [e for e in events(daemon, queue_id, recipient) if e["event"] in ("delivered", "failed")]


def is_final(event: dict[str, Any]) -> bool:
    return event["event"] == "delivered" or event.get("severity") == "permanent"


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def wait_final(daemon: Mtad, sent: Sent, timeout: float = 10.0) -> dict[str, dict[str, Any]]:
    """Wait until every recipient of ``sent`` has a final event; recipient -> that event."""
    def finals() -> dict[str, dict[str, Any]] | None:
        found = {e["recipient"]: e for e in outcomes(daemon, sent.queue_id) if is_final(e)}
        return found if len(found) == len(sent.recipients) else None
    return wait_until(finals, timeout, f"final events for {sent.queue_id} {sent.recipients}")


def deliveries(daemon: Mtad, queue_id: str) -> list[dict[str, Any]]:
    rows = daemon.query("SELECT domain, recipients, state, attempts, next_attempt_at, locked_by, last_reply"
                        " FROM deliveries WHERE message = ? ORDER BY id", (queue_id,))
    keys = ("domain", "recipients", "state", "attempts", "next_attempt_at", "locked_by", "last_reply")
    return [dict(zip(keys, r)) | {"recipients": json.loads(r[1])} for r in rows]


def api(daemon: Mtad, method: str, path: str, form: dict[str, str] | None = None) -> tuple[int, Any]:
    """One call to mtad's HTTP API (basic auth ``api:KEY``, form-encoded body): (status, decoded JSON)."""
    import base64
    import urllib.error
    import urllib.parse
    import urllib.request
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(daemon.api_url + path, data=data, method=method, headers={
        "Authorization": "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")
