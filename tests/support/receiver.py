"""The suite's one HTTP application on loopback: it keeps every POST mtad makes (route forwards, store notifications,
webhooks) exactly as it arrived, and answers as the test scripts it.

``Receiver()`` runs aiohttp in its own thread and event loop on an ephemeral port of 127.0.0.1; ``url(path)`` is
where to send. Each POST becomes a ``Post``: path as sent (percent-encoding kept), query, headers, the form fields
in posting order (multipart/form-data, strictly UTF-8, or urlencoded; names may repeat), file parts, and for a
body that is not multipart its raw bytes (``json()`` decodes it).

How it answers a path: ``modes[path]`` (path without its leading slash) if set, else the path's first segment if
it names a mode, else ``ok`` (200). Modes: ``fail`` (500), ``refuse`` (406), ``fail-once`` (500 the first time
the path is posted, then 200), ``held`` (200 once ``gate`` is set; the POST is recorded at once), ``hang`` (no
answer until the receiver stops; recorded with status None). ``multipart_only=True`` answers 415 to a body that
is not multipart/form-data (Mailgun's route POSTs always are), recorded with no fields.

``stop()`` closes the port (connections are refused) but keeps what was received; ``start()`` reopens the same
port; ``close()`` ends the thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator
from urllib.parse import parse_qs, parse_qsl, urlsplit

import pytest
from aiohttp import web

from tests.support.daemon import free_port
from tests.support.wait import wait_for

MODES = {"ok": 200, "fail": 500, "refuse": 406, "fail-once": 500, "held": 200, "hang": None}


@dataclass(frozen=True)
class Upload:
    filename: str
    content_type: str
    data: bytes


@dataclass
class Post:
    """One POST as the application saw it."""

    path: str  # as sent, percent-encoding kept, with its leading slash
    query: dict[str, list[str]]
    headers: dict[str, str]
    fields: list[tuple[str, str]]
    files: dict[str, Upload]
    body: bytes  # the raw body, unless it was multipart (then its parts are in fields and files)
    status: int | None  # None: left hanging
    at: float

    def get(self, name: str) -> str:
        values = self.all(name)
        assert len(values) == 1, f"field {name!r}: {len(values)} values in {[n for n, _ in self.fields]}"
        return values[0]

    def all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def names(self) -> list[str]:
        return [n for n, _ in self.fields]

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """See the module doc."""

    def __init__(self, *, multipart_only: bool = False) -> None:
        self.port = free_port()
        self.multipart_only = multipart_only
        self.posts: list[Post] = []
        self.modes: dict[str, str] = {}
        self.lock = threading.Lock()
        self.gate = threading.Event()  # answers to ``held`` POSTs wait for it
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="receiver", daemon=True)
        self._thread.start()
        self._runner: web.AppRunner | None = None
        self._stopping = False

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    async def _handle(self, request: web.Request) -> web.Response:
        fields: list[tuple[str, str]] = []
        files: dict[str, Upload] = {}
        body = b""
        multipart = request.content_type == "multipart/form-data"
        if multipart:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = bytes(await part.read())
                if part.filename is not None:
                    files[part.name] = Upload(part.filename, part.headers.get("Content-Type", ""), data)
                else:
                    fields.append((part.name, data.decode("utf-8")))  # strict: every field must be UTF-8
        else:
            body = await request.read()
            if request.content_type == "application/x-www-form-urlencoded":
                fields = parse_qsl(body.decode(), keep_blank_values=True)
        path = request.raw_path.split("?", 1)[0]
        first = path.lstrip("/").split("/", 1)[0]
        with self.lock:
            mode = self.modes.get(path.lstrip("/")) or (first if first in MODES else "ok")
            status = MODES[mode]
            if mode == "fail-once":
                status = 500 if not any(p.path == path for p in self.posts) else 200
            if self.multipart_only and not multipart:
                status = 415  # recorded with no fields: the test fails on what is missing
            self.posts.append(Post(path, parse_qs(urlsplit(request.raw_path).query), dict(request.headers), fields,
                                   files, body, status, time.time()))
        while mode == "held" and not self.gate.is_set() or mode == "hang" and not self._stopping:
            await asyncio.sleep(0.02)
        return web.Response(status=status or 200, text="ok" if status in (200, None) else "not now")

    def start(self) -> "Receiver":
        async def start() -> web.AppRunner:
            app = web.Application(client_max_size=50_000_000)
            app.router.add_post("/{tail:.*}", self._handle)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
            return runner
        self._stopping = False
        self._runner = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        """Close the port (connections are refused) but keep what was received; ``start`` reopens it."""
        self._stopping = True
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
            self._runner = None

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    # --- views (any thread) -----------------------------------------------------------------------------------
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

    async def wait(self, count: int = 1, timeout: float = 10.0) -> list[Post]:
        """Every POST so far, once there are ``count``."""
        return await wait_for(lambda: len(self.posts) >= count and list(self.posts), timeout, f"{count} POST(s)")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A fresh receiver for one test."""
    r = Receiver().start()
    yield r
    r.close()
