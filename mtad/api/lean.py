"""A lean HTTP/1.1 path in front of aiohttp for the tracking endpoints' hot requests (opens and clicks).

A click is a request of a few hundred bytes answered by a fixed 302: aiohttp's per-request machinery (request
and response objects, header multidicts, the handler task's bookkeeping) costs more CPU than everything mtad
does for the click itself, and at thousands of clicks a second one core's queueing is what the readers wait
for. A listener whose application names a ``LeanHandler`` (``api.server.LEAN``: the tracking endpoints) gets a
``LeanProtocol`` per connection instead of aiohttp's:

- a request is taken on the lean path only when its whole head has arrived (at most ``MAX_HEAD`` bytes), its
  request line is ``GET`` or ``HEAD`` of ``/c/`` or ``/o/``, llhttp (``httptools``, already mtad's HTTP response
  parser) parses it cleanly, and it has no body, no ``Expect`` and no ``Upgrade``; the handler then answers
  with the response (its head without ``Date`` and ``Connection``, which are added here, and its body) or
  ``None``;
- anything else (another path or method, a parse error, a body, a head too long, and every ``None``: a bad or
  expired token, whose error pages are the application's) **hands the connection over** to aiohttp: its own
  protocol takes the transport and gets the bytes of that request and everything after it, so the request is
  answered exactly as without this module, and the rest of the connection is aiohttp's. A handler answers
  ``None`` only before it changed anything (nothing recorded), so the application may answer the same request.

Requests on one connection are answered in order, one at a time (pipelined ones wait in the buffer); reading
stops while more than ``MAX_BUFFER`` bytes wait, and answering stops while the transport's write buffer is full.
A connection is closed after ``KEEPALIVE_TIMEOUT`` seconds without a byte (aiohttp's default for its own),
after an answer the client asked to close (``Connection: close``, HTTP/1.0 without keep-alive), and when the
listener stops (``LeanConnections.close``).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable, Union

import httptools
from multidict import CIMultiDict

from mtad.mail.compose import http_date

MAX_HEAD = 8190  # bytes of a request head taken on the lean path (aiohttp's own line limit)
MAX_BUFFER = 65536  # bytes read ahead of the answers before reading pauses
KEEPALIVE_TIMEOUT = 75.0  # seconds a connection may stay silent (aiohttp's keepalive_timeout default)
_LEAN_STARTS = (b"GET /c/", b"GET /o/", b"HEAD /c/", b"HEAD /o/")
_REFUSED = (b"content-length", b"transfer-encoding", b"expect", b"upgrade")

LeanAnswer = Union[tuple[bytes, bytes], None]
# (method, path, headers, peer address) -> (the response's status line and header lines, with Content-Length,
# without Date and Connection (added here) and without the blank line; its body), or None: the application answers
LeanHandler = Callable[[str, str, CIMultiDict, str], Union[LeanAnswer, Awaitable[LeanAnswer]]]


class _Head:
    """llhttp's callbacks for one request head."""

    __slots__ = ("parser", "url", "headers", "refused", "keep_alive", "version", "method")

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.refused = False
        self.keep_alive, self.version, self.method = False, "", b""

    def on_headers_complete(self) -> None:  # llhttp forgets them once the message is complete
        self.keep_alive = self.parser.should_keep_alive()
        self.version, self.method = self.parser.get_http_version(), self.parser.get_method()

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in _REFUSED:
            self.refused = True
        self.headers.append((name.decode("latin-1"), value.decode("utf-8", "surrogateescape")))


class LeanConnections:
    """The lean connections of one listener, closed when it stops."""

    def __init__(self) -> None:
        self.open: set[LeanProtocol] = set()

    async def close(self, timeout: float) -> None:
        """Close every lean connection: idle ones now, busy ones once their answer is written (``timeout``)."""
        busy = [c.task for c in self.open if c.task is not None]
        for conn in list(self.open):
            if conn.task is None:
                conn.close()
        if busy:
            await asyncio.wait(busy, timeout=timeout)
        for conn in list(self.open):
            conn.close()


class LeanProtocol(asyncio.Protocol):
    """One connection (module doc); ``fallback()`` makes aiohttp's protocol to hand it over to."""

    def __init__(self, handler: LeanHandler, fallback: Callable[[], asyncio.Protocol],
                 connections: LeanConnections) -> None:
        self._handler, self._fallback, self._connections = handler, fallback, connections
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._remote = ""
        self._paused_reading = self._paused_writing = False
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None

    # --- asyncio.Protocol -----------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, (tuple, list)) and peer else ""
        self._connections.open.add(self)
        self._last = self._loop.time()
        self._timer = self._loop.call_later(KEEPALIVE_TIMEOUT, self._check_idle)

    def data_received(self, data: bytes) -> None:
        self._last = self._loop.time()
        self._buffer += data
        if self.task is None and not self._paused_writing:
            self._serve()
        if len(self._buffer) > MAX_BUFFER and not self._paused_reading and self._transport is not None:
            self._paused_reading = True
            self._transport.pause_reading()

    def eof_received(self) -> bool:
        return False  # the transport closes (an answer being made is dropped with the connection)

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        if self.task is not None:
            self.task.cancel()
        self._transport = None

    def pause_writing(self) -> None:
        self._paused_writing = True

    def resume_writing(self) -> None:
        self._paused_writing = False
        if self.task is None and self._transport is not None:
            self._serve()

    # --- requests -------------------------------------------------------------------------------------------
    def _serve(self) -> None:
        """Answer the buffered requests in order while they are lean and answered at once."""
        while self._transport is not None and not self._paused_writing:
            buffer = self._buffer
            if not buffer:
                break
            end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
            if end < 0:
                if len(buffer) > MAX_HEAD or not _may_be_lean(buffer):
                    self._hand_over()
                break
            request = self._parse(bytes(buffer[:end + 4]))
            if request is None:
                self._hand_over()
                break
            method, path, headers, keep_alive, http10 = request
            try:
                answer = self._handler(method, path, headers, self._remote)
            except Exception:  # noqa: BLE001 - the application answers it (its error page, never a traceback)
                answer = None
            if inspect.isawaitable(answer):
                self.task = self._loop.create_task(self._answer_later(answer, end + 4, keep_alive, http10))
                break
            if not self._answer(answer, end + 4, keep_alive, http10):
                break
        if self._paused_reading and len(self._buffer) <= MAX_BUFFER and self._transport is not None:
            self._paused_reading = False
            self._transport.resume_reading()

    async def _answer_later(self, answer: Awaitable[LeanAnswer], size: int, keep_alive: bool, http10: bool) -> None:
        try:
            done = await answer
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the application answers it (its error page, never a traceback)
            done = None
        self.task = None
        if self._transport is not None and self._answer(done, size, keep_alive, http10):
            self._serve()

    def _answer(self, answer: LeanAnswer, size: int, keep_alive: bool, http10: bool) -> bool:
        """Write ``answer`` to the request of the buffer's first ``size`` bytes (or hand the connection over
        with that request when None); whether the next request may be served."""
        transport = self._transport
        assert transport is not None
        if answer is None:
            self._hand_over()
            return False
        del self._buffer[:size]
        head, body = answer
        date = f"Date: {http_date(time.time())}\r\n".encode()
        if keep_alive:
            transport.write(b"".join((head, date, b"Connection: keep-alive\r\n\r\n" if http10 else b"\r\n", body)))
            return True
        transport.write(b"".join((head, date, b"Connection: close\r\n\r\n", body)))
        self.close()
        return False

    @staticmethod
    def _parse(head: bytes) -> tuple[str, str, CIMultiDict, bool, bool] | None:
        """(method, path, headers, keep-alive, HTTP/1.0) of a lean request head; None for any other."""
        if not head.startswith(_LEAN_STARTS):
            return None
        found = _Head()
        try:
            found.parser.feed_data(head)
        except httptools.HttpParserError:
            return None
        finally:
            found.parser = None  # no reference cycle left for the GC
        if found.refused or b"?" in found.url or b"#" in found.url or found.version not in ("1.1", "1.0"):
            return None
        return (found.method.decode("ascii"), found.url.decode("ascii", "replace"), CIMultiDict(found.headers),
                found.keep_alive, found.version == "1.0")

    # --- the connection's end ---------------------------------------------------------------------------------
    def _hand_over(self) -> None:
        """aiohttp's protocol takes the transport and the buffered bytes (module doc)."""
        transport = self._transport
        if transport is None:
            return
        self._forget()
        protocol = self._fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self._paused_reading:
            self._paused_reading = False
            transport.resume_reading()
        data, self._buffer = bytes(self._buffer), bytearray()
        self._transport = None
        if data:
            protocol.data_received(data)

    def _check_idle(self) -> None:
        if self._transport is None:
            return
        idle = self._loop.time() - self._last
        if idle >= KEEPALIVE_TIMEOUT and self.task is None:
            self.close()
        else:
            self._timer = self._loop.call_later(max(KEEPALIVE_TIMEOUT - idle, 1.0), self._check_idle)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        self._forget()

    def _forget(self) -> None:
        self._connections.open.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _may_be_lean(partial: bytearray) -> bool:
    """Whether the start of a request head may still turn out lean (else it is handed over at once)."""
    start = bytes(partial[:8])
    return any(lean.startswith(start) or start.startswith(lean) for lean in _LEAN_STARTS)
