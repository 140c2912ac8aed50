"""A lean HTTP/1.1 POST client for the common case of route forwards: plain http to an IP address.

``FastPoster.post(host, port, target, host_header, body, headers, timeout)`` sends one POST with
``Content-Length`` on a kept-alive connection (a pool of idle connections per address) and returns
``(status, first 2,000 bytes of the response body)``. Responses are parsed by ``httptools`` (llhttp,
Node.js's parser): sized, chunked, close-delimited, interim 1xx skipped. It costs a fraction of
aiohttp's per-request work; the caller (``httpclient``) checks the address against the SSRF guard first
and uses aiohttp for everything else (https, host names, credentials in the URL).

Kept by measurement (bench/README.md, "Library seams"): against a separate aiohttp receiver with 1-100 KB
forms, 2.1-2.6x less client CPU per POST than aiohttp (bench/forward_client_bench.py), and 24% less of
mtad's CPU per forwarded message end to end (bench/inbound_bench.py with and without ``--no-fasthttp``).

A request on a reused idle connection that the server had already closed (the keep-alive race every
HTTP client meets) is sent again once on a new connection, when not one byte of response came back.
Raises ``OSError`` subclasses and ``TimeoutError`` like a socket would; ``BadResponse`` for a reply
that is not HTTP.
"""

from __future__ import annotations

import asyncio
import time

import httptools

IDLE_SECONDS = 15.0  # an idle connection older than this is not reused (aiohttp's keep-alive default)
MAX_IDLE = 64  # idle connections kept per address
MAX_READ = 1_000_000  # a response body over this is not read to its end: the connection is closed instead
KEEP_BODY = 2000  # bytes of the response body returned to the caller (for the event and the log)


class BadResponse(OSError):
    pass


class ConnectFailed(OSError):
    """The connection could not be made (refused, unreachable)."""


class _StaleConnection(ConnectionResetError):
    """A reused connection closed before any byte of the response: safe to send again."""


class _Conn(asyncio.Protocol):
    """One connection; ``request()`` writes a request and waits for its whole response."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._parser = httptools.HttpResponseParser(self)
        self._done: asyncio.Future | None = None
        self._status = 0
        self._body = bytearray()
        self._body_seen = 0
        self._got_bytes = False
        self._complete = False

    # --- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._got_bytes = True
        if self._done is None or self._done.done():
            self.closed = True  # bytes nobody asked for: the connection is out of step
            self.transport.close()
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"not a valid HTTP response: {exc}"))

    def eof_received(self):
        self._closed_by_peer()
        return False

    def connection_lost(self, exc) -> None:
        self._closed_by_peer()

    # --- httptools callbacks ---------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._body.clear()
        self._body_seen = 0

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self._body_seen += len(body)
        if len(self._body) < KEEP_BODY:
            self._body += body[:KEEP_BODY - len(self._body)]
        if self._body_seen > MAX_READ:  # the status is what counts: stop reading, drop the connection
            self._finish(keep=False)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200:  # interim (100 Continue): the real response follows
            return
        self._finish(keep=self._parser.should_keep_alive())

    # --- internals -------------------------------------------------------------------------------
    def _finish(self, *, keep: bool) -> None:
        if self._done is not None and not self._done.done():
            self._complete = True
            self._done.set_result((self._status, bytes(self._body), keep))

    def _fail(self, exc: BaseException) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_exception(exc)
        self.close()

    def _closed_by_peer(self) -> None:
        self.closed = True
        if self._done is None or self._done.done():
            return
        if self._status >= 200 and self._got_bytes:  # a body delimited by the end of the connection
            self._finish(keep=False)
        elif self.reused and not self._got_bytes:
            self._done.set_exception(_StaleConnection("kept-alive connection closed by the server"))
        else:
            self._done.set_exception(ConnectionResetError("server closed the connection before the response"))

    @property
    def usable(self) -> bool:
        return (not self.closed and self.transport is not None and not self.transport.is_closing()
                and time.monotonic() - self.idle_since < IDLE_SECONDS)

    async def request(self, data: bytes) -> tuple[int, bytes, bool]:
        self._done = asyncio.get_running_loop().create_future()
        self._status, self._got_bytes, self._complete = 0, False, False
        self.transport.write(data)
        return await self._done

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastPoster:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Conn]] = {}

    async def _connect(self, host: str, port: int, *, reuse: bool) -> _Conn:
        idle = self._idle.get((host, port))
        while reuse and idle:
            conn = idle.pop()
            if conn.usable:
                conn.reused = True
                return conn
            conn.close()
        try:
            _, conn = await asyncio.get_running_loop().create_connection(_Conn, host, port)
        except OSError as exc:
            raise ConnectFailed(f"Cannot connect to host {host}:{port} ssl:default [{exc.strerror or exc}]") from exc
        return conn

    def _release(self, host: str, port: int, conn: _Conn) -> None:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= MAX_IDLE:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def post(self, host: str, port: int, target: str, host_header: str, body: bytes,
                   headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {target} HTTP/1.1\r\nHost: {host_header}\r\n{head}"
                   f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        async with asyncio.timeout(timeout):
            try:
                return await self._exchange(host, port, request, reuse=True)
            except _StaleConnection:
                return await self._exchange(host, port, request, reuse=False)

    async def _exchange(self, host: str, port: int, request: bytes, *, reuse: bool) -> tuple[int, bytes]:
        conn = await self._connect(host, port, reuse=reuse)
        try:
            status, body, keep = await conn.request(request)
        except BaseException:
            conn.close()
            raise
        if keep and not conn.closed:
            self._release(host, port, conn)
        else:
            conn.close()
        return status, body

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
