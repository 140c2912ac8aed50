"""What the inbound routing e2e tests (tests/e2e/test_routes_*.py) share, all on 127.0.0.1.

- ``App``: the application a route forwards to: aiohttp in its own thread and event loop, on an
  ephemeral port, keeping every POST with its multipart form exactly as it arrived (field order,
  repeated names, file names, part content types, bytes). How it answers depends on the path's
  first segment: ``fail-once`` (500 the first time a path is posted, then 200), ``fail`` (500),
  ``refuse`` (406), ``held`` (200 once ``App.gate`` is set; the POST is recorded at once), anything else
  200; a body that is not multipart/form-data gets 415. It can be stopped and started again on the same port.
- ``routing_config``: a test config (see tests/support/daemon.py) with routes, the signing key,
  a short route retry schedule and loopback allowed for forward URLs.
- ``inbound``: one message to mtad's MX listener with smtplib, like a remote MTA.
- ``seed_verify``: the seed manual's ``verify()``, copied, with Python 3's str -> bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import smtplib
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest
from urllib.parse import parse_qs, urlsplit

from aiohttp import web

from tests.support.daemon import Mtad, free_port

SIGNING_KEY = "key-routes-e2e-3f9c2a7b5d1e"
RETRY_SCHEDULE = ["1s", "1s"]


def verify(api_key, token, timestamp, signature):
    """The seed manual's Python sample ("Securing Webhooks"); only the two .encode() calls are added."""
    return signature == hmac.new(
        key=api_key.encode(),
        msg='{}{}'.format(timestamp, token).encode(),
        digestmod=hashlib.sha256).hexdigest()


# --- the application ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Post:
    """One POST as the application saw it; ``fields`` in posting order, names may repeat."""

    path: str  # as sent, percent-encoding kept
    query: dict[str, list[str]]
    headers: dict[str, str]
    fields: list[tuple[str, str]]
    files: dict[str, Upload]
    status: int
    at: float

    def get(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"field {name!r}: {len(values)} values in {[n for n, _ in self.fields]}"
        return values[0]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def names(self) -> list[str]:
        return [n for n, _ in self.fields]


class App:
    """aiohttp on 127.0.0.1:``port`` in a background thread; see the module doc for its behaviour."""

    def __init__(self) -> None:
        self.port = free_port()
        self.posts: list[Post] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="route-app", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self.gate = threading.Event()  # answers to ``held/...`` POSTs wait for it

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    async def _handle(self, request: web.Request) -> web.Response:
        fields: list[tuple[str, str]] = []
        files: dict[str, Upload] = {}
        multipart = request.content_type == "multipart/form-data"  # Mailgun's POSTs always are
        if multipart:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = bytes(await part.read())
                if part.filename is not None:
                    files[part.name] = Upload(part.filename, part.headers.get("Content-Type", ""), data)
                else:
                    fields.append((part.name, data.decode("utf-8")))  # strict: every field must be UTF-8
        path = request.raw_path.split("?", 1)[0]
        first = path.lstrip("/").split("/", 1)[0]
        with self.lock:
            earlier = sum(1 for p in self.posts if p.path == path)
            status = {"fail": 500, "refuse": 406}.get(first, 200)
            if first == "fail-once":
                status = 500 if earlier == 0 else 200
            if not multipart:
                status = 415  # recorded with no fields: the test fails on what is missing
            self.posts.append(Post(path, parse_qs(urlsplit(request.raw_path).query), dict(request.headers), fields,
                                   files, status, time.time()))
        while first == "held" and not self.gate.is_set():
            await asyncio.sleep(0.02)
        return web.Response(status=status, text="ok" if status == 200 else "not now")

    def start(self) -> "App":
        async def start() -> web.AppRunner:
            app = web.Application(client_max_size=50_000_000)
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
            return runner
        self._runner = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        """Close the port (connections are refused) but keep what was received; ``start`` reopens it."""
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def to(self, path: str) -> list[Post]:
        """POSTs to ``path`` (leading slash optional; percent-encoding as sent), oldest first."""
        path = "/" + path.lstrip("/")
        with self.lock:
            return [p for p in self.posts if p.path == path]

    def under(self, prefix: str) -> list[Post]:
        prefix = "/" + prefix.lstrip("/")
        with self.lock:
            return [p for p in self.posts if p.path.startswith(prefix)]

    def for_recipient(self, recipient: str) -> list[Post]:
        with self.lock:
            return [p for p in self.posts if ("recipient", recipient) in p.fields]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


# --- mtad -----------------------------------------------------------------------------------------------------

def route(expression: str, *actions: str, priority: int = 0, id: str = "") -> dict[str, Any]:
    r: dict[str, Any] = {"expression": expression, "actions": list(actions), "priority": priority,
                         "description": f"e2e: {expression}"[:200]}
    if id:
        r["id"] = id
    return r


def routing_config(cfg: dict[str, Any], routes: list[dict[str, Any]], **routing: Any) -> dict[str, Any]:
    """``cfg`` (base_config) with these routes, the suite's signing key, a short retry schedule and
    127.0.0.0/8 allowed for forward URLs (override any ``routing`` key by keyword)."""
    cfg["signing_key"] = SIGNING_KEY
    cfg["routing"] = {"routes": routes, "retry_schedule": RETRY_SCHEDULE, "timeout": "5s",
                      "allowed_networks": ["127.0.0.0/8"], **routing}
    return cfg


def inbound(daemon: Mtad, recipients: list[str], message: bytes, sender: str = "alice@sender.test"
            ) -> tuple[int, str]:
    """One message on the MX listener, as a remote MTA sends it; (code, text) of the first refused RCPT,
    else of DATA."""
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="mta.sender.test", timeout=15) as s:
        s.ehlo()
        code, text = s.mail(sender)
        assert code == 250, (code, text)
        for rcpt in recipients:
            code, text = s.rcpt(rcpt)
            if code != 250:
                return code, text.decode()
        code, text = s.data(message)
        return code, text.decode()


def accepted(daemon: Mtad, recipients: list[str], message: bytes, sender: str = "alice@sender.test") -> str:
    """``inbound`` that must be accepted; the queue id."""
    code, text = inbound(daemon, recipients, message, sender)
    assert code == 250, (code, text)
    return text.rsplit(" ", 1)[-1]


def simple(subject: str = "routed", to: str = "someone@inbound.test", extra: str = "", body: str = "Hi.\r\n") -> bytes:
    return (f"From: Alice <alice@sender.test>\r\nTo: {to}\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@sender.test>\r\n{extra}\r\n{body}").encode()


def forward_events(daemon: Mtad, queue_id: str) -> list[dict[str, Any]]:
    """The ``delivered``/``failed`` events of the message's forwards, oldest first."""
    rows = daemon.query("SELECT data FROM events WHERE queue_id = ? AND event IN ('delivered', 'failed')"
                        " ORDER BY seq", (queue_id,))
    return [json.loads(r[0]) for r in rows]


def forward_rows(daemon: Mtad, queue_id: str) -> list[tuple]:
    """(destination, state, attempts, last_status) of the message's forwards rows."""
    return daemon.query("SELECT destination, state, attempts, last_status FROM forwards WHERE message = ?"
                        " ORDER BY id", (queue_id,))


def assert_clean_exit(daemon: Mtad) -> list[str]:
    """Stop the daemon; the problems (non-zero exit, traceback in the log)."""
    problems = []
    code = daemon.stop()
    if code not in (0, None):
        problems.append(f"mtad exited with {code}")
    if "Traceback" in daemon.log():
        problems.append(f"traceback in the daemon log:\n{daemon.log()[-6000:]}")
    return problems


@pytest.fixture(scope="module")
def app():
    """The loopback application receiving route POSTs, for one test module."""
    a = App().start()
    yield a
    a.close()
