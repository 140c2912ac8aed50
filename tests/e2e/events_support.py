"""What the events / webhooks / suppressions / stats / metrics e2e tests share.

``World`` is one running arrangement, all on 127.0.0.1: a loopback DNS zone (MX of ``dest.test`` and
``yahoo.test`` -> an aiosmtpd sink), the sink itself (``bad*`` recipients get 550 5.1.1, ``soft*`` get
451 4.2.1, the rest 250), an aiohttp receiver for route forwards and webhooks (per-path behaviour:
``ok``, ``fail-once``, ``fail``, ``refuse`` = 406, ``hang``), and mtad started from a config file whose
resolver asks only that DNS server. Tests send real mail with smtplib and read back through the HTTP
API with aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import base64
import hashlib
import hmac
import json
import smtplib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web
from aiosmtpd.controller import Controller

from tests.support.daemon import API_KEY, PASSWORD, Mtad, base_config, free_port
from tests.support.dns_server import DnsServer

SIGNING_KEY = "key-webhook-signing-0123456789"
AUTH = {"Authorization": "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()}


def seed_verify(api_key: str, token: str, timestamp: str, signature: str) -> bool:
    """The seed manual's verify(), with the str -> bytes that Python 3's hmac needs."""
    return signature == hmac.new(key=api_key.encode(), msg='{}{}'.format(timestamp, token).encode(),
                                 digestmod=hashlib.sha256).hexdigest()


# --- the receiving MX ------------------------------------------------------------------------------------------

class _SinkHandler:
    def __init__(self, sink: "Sink"):
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("bad"):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        if local.startswith("soft"):
            return "451 4.2.1 Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        with self.sink.lock:
            for rcpt in envelope.rcpt_tos:
                self.sink.received.append((rcpt.lower(), envelope.content))
        return "250 2.0.0 Ok: kept"


@dataclass
class Sink:
    port: int = 0
    received: list[tuple[str, bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    def start(self) -> "Sink":
        self.port = free_port()
        self.controller = Controller(_SinkHandler(self), hostname="127.0.0.1", port=self.port, decode_data=False)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller:
            self.controller.stop()

    def got(self, rcpt: str) -> int:
        with self.lock:
            return sum(1 for r, _ in self.received if r == rcpt.lower())


# --- the HTTP receiver (route forwards and webhooks) ------------------------------------------------------------

@dataclass
class Hit:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None  # None: the request was left hanging
    at: float

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode(), keep_blank_values=True)


class Receiver:
    """aiohttp on 127.0.0.1 in its own thread. ``modes[path]`` says how to answer (default ``ok``)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.hits: list[Hit] = []
        self.modes: dict[str, str] = {}
        self.lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._release = None  # asyncio.Event set at stop: hanging requests end
        self._thread = threading.Thread(target=self._run, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        path = request.path.lstrip("/")
        mode = self.modes.get(path, "ok")
        with self.lock:
            earlier = sum(1 for h in self.hits if h.path == path)
        status = {"ok": 200, "fail": 500, "refuse": 406}.get(mode, 200)
        if mode == "fail-once":
            status = 500 if earlier == 0 else 200
        hit = Hit(path, dict(request.headers), body, None if mode == "hang" else status, time.time())
        with self.lock:
            self.hits.append(hit)
        if mode == "hang":
            await self._release.wait()
            return web.Response(status=200)
        return web.Response(status=status, text="ok" if status == 200 else "no")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._release = asyncio.Event()
        app = web.Application(client_max_size=50_000_000)
        app.router.add_route("POST", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        self._loop.run_until_complete(runner.setup())
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", self.port).start())
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> "Receiver":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._release.set)
        fut = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
        try:
            fut.result(5)
        except Exception:  # noqa: BLE001 - teardown only
            pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def on(self, path: str) -> list[Hit]:
        with self.lock:
            return [h for h in self.hits if h.path == path.lstrip("/")]


# --- the whole arrangement ------------------------------------------------------------------------------------

class World:
    def __init__(self, tmp: Path, certs: Any, tweak: Callable[[dict, "World"], None] | None = None):
        self.certs = certs
        self.dns = DnsServer(ttl=300).start()
        for domain in ("dest.test", "yahoo.test"):
            self.dns.add_mx(domain, [(10, "mx.sink.test")])
        self.dns.add_a("mx.sink.test", "127.0.0.1")
        self.sink = Sink().start()
        self.receiver = Receiver().start()
        cfg = base_config(tmp, certs)
        cfg["delivery"].update({"port": self.sink.port, "dns_port": self.dns.port, "dsn": False,
                                "retry": {"schedule": ["1h"]}, "poll_interval": "100ms",
                                "shaping_file": str(self._shaping(tmp))})
        cfg["signing_key"] = SIGNING_KEY
        cfg["routing"] = {"allowed_networks": ["127.0.0.0/8"], "retry_schedule": ["1s"],
                          "routes": [{"expression": 'match_recipient(".*@inbound.test")',
                                      "actions": [f'forward("{self.receiver.url("route")}")'], "priority": 1}]}
        cfg["webhooks"] = {"retry_schedule": ["1s", "1s"], "timeout": "2s", "max_per_url": 2}
        cfg["log"] = {"level": "info"}
        if tweak:
            tweak(cfg, self)
        self.mtad = Mtad(tmp, cfg)
        try:
            self.mtad.start()
        except BaseException:
            self.close()
            raise
        self.api = self.mtad.api_url

    @staticmethod
    def _shaping(tmp: Path) -> Path:
        path = tmp / "shaping.yaml"
        path.write_text("default:\n  max_connections: 10\n  connect_timeout: 5s\n  command_timeout: 10s\n"
                        "  data_timeout: 10s\nproviders:\n  yahoo:\n    match_domain_suffix: [yahoo.test]\n")
        return path

    def close(self) -> list[str]:
        problems = []
        code = self.mtad.stop()
        if code != 0:
            problems.append(f"mtad exited with {code}")
        if "Traceback" in self.mtad.log():
            problems.append("traceback in the daemon log:\n" + self.mtad.log()[-4000:])
        self.receiver.stop()
        self.sink.stop()
        self.dns.stop()
        return problems

    # --- sending ----------------------------------------------------------------------------------------------
    def send(self, rcpts: list[str], subject: str = "Hello", *, sender: str = "postmaster@example.com",
             login: str = "postmaster@example.com", tags: tuple[str, ...] = (), variables: dict | None = None,
             extra: str = "") -> str:
        """An authenticated submission (outbound); returns the queue id."""
        head = f"From: Sender <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: {subject}\r\n"
        for tag in tags:
            head += f"X-Mailgun-Tag: {tag}\r\n"
        if variables:
            head += f"X-Mailgun-Variables: {json.dumps(variables)}\r\n"
        body = (head + extra + "\r\nHello from the events tests.\r\n").encode()
        with smtplib.SMTP("127.0.0.1", self.mtad.submission, local_hostname="client.test", timeout=10) as s:
            s.starttls(context=self.certs.client_context())
            s.ehlo()
            s.login(login, PASSWORD)
            s.mail(sender)
            for r in rcpts:
                code, text = s.rcpt(r)
                assert code == 250, (r, code, text)
            code, text = s.data(body)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]

    def receive(self, rcpt: str, subject: str = "Inbound") -> str:
        """Unauthenticated mail to a receiving domain on the MX listener (inbound, routed)."""
        body = f"From: Outside <someone@outside.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n\r\nHi.\r\n".encode()
        with smtplib.SMTP("127.0.0.1", self.mtad.mx, local_hostname="outside.test", timeout=10) as s:
            s.ehlo()
            s.mail("someone@outside.test")
            code, text = s.rcpt(rcpt)
            assert code == 250, text
            code, text = s.data(body)
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[-1]


# --- HTTP helpers ---------------------------------------------------------------------------------------------

async def api(world: World, method: str, path: str, *, expect: int | None = 200, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession(headers=AUTH) as session:
        url = path if path.startswith("http") else world.api + path
        async with session.request(method, url, **kwargs) as resp:
            data = await resp.json(content_type=None)
            if expect is not None:
                assert resp.status == expect, (method, path, resp.status, data)
            return data


async def events(world: World, domain: str, **params: Any) -> list[dict]:
    """Every event of one query, following ``next`` links."""
    items: list[dict] = []
    page = await api(world, "GET", f"/v3/{domain}/events", params=params)
    while page["items"]:
        items += page["items"]
        page = await api(world, "GET", page["paging"]["next"])
    return items


async def wait_for(check: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@contextlib.contextmanager
def running_world(tmp_path_factory, certs, name: str, *configure):
    """A World for one test module; fails the module if the daemon exited badly or logged a traceback."""
    w = World(tmp_path_factory.mktemp(name), certs, *configure)
    problems: list[str] = []
    try:
        yield w
    finally:
        problems = w.close()
    assert not problems, "\n".join(problems)
