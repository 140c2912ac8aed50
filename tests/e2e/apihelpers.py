"""What the HTTP API e2e tests share: a receiving MX (aiosmtpd on loopback), an HTTP receiver for route
POSTs, the config of a daemon that delivers through the loopback DNS fixture, and small HTTP helpers."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiosmtpd.controller import Controller

from mtad.mail import dkim
from tests.support.daemon import API_KEY, Mtad, free_port
from tests.support.dns_server import DnsServer



def basic_auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


AUTH = basic_auth("api", API_KEY)
MX_HOST = "mx.sink.test"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    content: bytes


class _Handler:
    def __init__(self, sink: "MxSink"):
        self.sink = sink

    async def handle_DATA(self, server, session, envelope) -> str:
        with self.sink.lock:
            self.sink.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: kept"


@dataclass
class MxSink:
    """An SMTP server on 127.0.0.1 that keeps every message it is given."""

    port: int = 0
    messages: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    controller: Controller | None = None

    def start(self) -> "MxSink":
        self.port = free_port()
        self.controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port, decode_data=False)
        self.controller.start()
        return self

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()

    def to(self, recipient: str) -> list[Received]:
        with self.lock:
            return [m for m in self.messages if recipient in m.recipients]

    async def wait_for(self, recipient: str, count: int = 1, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.to(recipient)
            if len(got) >= count:
                return got
            await asyncio.sleep(0.05)
        raise AssertionError(f"{recipient}: {len(self.to(recipient))} messages after {timeout}s, wanted {count}")


def delivering(dns: DnsServer, sink: MxSink, domains: list[str]) -> dict[str, Any]:
    """Top-level config keys for a daemon that delivers mail for ``domains`` to ``sink`` via ``dns``."""
    dns.add_a(MX_HOST, "127.0.0.1")
    for domain in domains:
        dns.add_mx(domain, [(10, MX_HOST)])
    return {"delivery": {"dns_nameservers": ["127.0.0.1"], "dns_port": dns.port, "dns_timeout": "1s",
                         "poll_interval": "0.1s", "port": sink.port, "retry": {"schedule": ["1s"]}},
            "routing": {"allowed_networks": ["127.0.0.0/8"], "retry_schedule": ["1s"], "timeout": "5s"}}


def dkim_domain(tmp: Path, domain: str, selector: str = "s1") -> tuple[dict[str, Any], dkim.DkimKey]:
    """A config-file sending domain signed with a fresh RSA key; the key to publish its record."""
    pem = dkim.generate_key("rsa", 1024)
    path = tmp / f"{domain}.pem"
    path.write_bytes(pem)
    return ({"dkim": [{"selector": selector, "key_file": str(path)}]}, dkim.load_key(domain, selector, pem))


async def api(daemon: Mtad, method: str, path: str, *, expect: int | None = 200, **kwargs: Any) -> tuple[int, Any]:
    """One request with the test key; the status and the decoded JSON body."""
    async with aiohttp.ClientSession(headers=kwargs.pop("auth", AUTH)) as session:
        async with session.request(method, daemon.api_url + path, **kwargs) as resp:
            body = await resp.json(content_type=None) if resp.content_type == "application/json" else await resp.read()
            if expect is not None:
                assert resp.status == expect, (resp.status, body)
            return resp.status, body


class PostReceiver:
    """An aiohttp server on loopback that keeps the form of every POST (route forwards, store notifications)."""

    def __init__(self) -> None:
        self.posts: list[dict[str, Any]] = []
        self.files: list[dict[str, bytes]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        form = await request.post()
        fields, files = {}, {}
        for name, value in form.items():
            if isinstance(value, web.FileField):
                files[name] = value.file.read()
            else:
                fields[name] = value
        fields["_path"] = request.path
        self.posts.append(fields)
        self.files.append(files)
        return web.json_response({"ok": True})

    async def start(self) -> "PostReceiver":
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.posts) >= count:
                return self.posts
            await asyncio.sleep(0.05)
        raise AssertionError(f"{len(self.posts)} POSTs after {timeout}s, wanted {count}")


def txt_lookup(records: dict[str, str]):
    """A dkimpy ``dnsfunc`` answering TXT records from ``records`` (name -> text), nothing else."""
    def lookup(name, timeout: float = 5) -> bytes | None:
        key = (name.decode() if isinstance(name, bytes) else name).rstrip(".").lower()
        value = records.get(key)
        return value.encode() if value is not None else None
    return lookup
