"""The tracking endpoints' lean HTTP path (``mtad.api.lean``) as raw HTTP clients see it, on a real daemon.

Opens and clicks are answered without aiohttp's request machinery; everything else on the same connection is
handed over to aiohttp and answered exactly as before. What a client must see either way: the right answer to
every request, in order, on keep-alive and pipelined connections (HTTP/1.1 and ab's HTTP/1.0 keep-alive), a
connection closed when the client asks, a body or a bad token answered by the application (its pages), a head
split over several packets, and every click and open recorded once. aiohttp names itself in a ``Server`` header,
the lean path does not: that is how the tests see which one answered.
"""

from __future__ import annotations

import asyncio
import re
from urllib.parse import urlsplit

import pytest

from tests.e2e.engagement_support import CHROME, parts, tracked_urls
from tests.e2e.events_support import World, events, running_world
from tests.support.api import api
from tests.support.wait import wait_for

HTML = '<html><body><p>Hello <a href="https://shop.example/sale?a=1&amp;b=2">sale</a></p></body></html>'


def configure(cfg: dict, world: World) -> None:
    cfg["tracking"] = {"scanner_window": "0s"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "tracking-lean", configure) as w:
        yield w


async def tracked(world: World, rcpt: str) -> tuple[str, str]:
    """(click path, open path) of a tracked message sent to ``rcpt``."""
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "News <news@example.com>", "to": rcpt, "subject": "Lean", "html": HTML, "o:tracking": "yes"})
    html = parts((await world.sink.wait_for(rcpt))[0].data)["html"]
    click, pixel = tracked_urls(world, html, "c")[0], tracked_urls(world, html, "o")[0]
    return urlsplit(click).path, urlsplit(pixel).path


def request(method: str, path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "Host: 127.0.0.1", f"User-Agent: {CHROME}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Conn:
    """One raw HTTP connection to mtad's API listener."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, world: World) -> "Conn":
        url = urlsplit(world.api_url)
        return cls(*await asyncio.open_connection(url.hostname, url.port))

    async def send(self, *chunks: bytes, pause: float = 0.0) -> None:
        for chunk in chunks:
            self.writer.write(chunk)
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def response(self, head_request: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
        length = 0 if head_request else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 10) if length else b""
        return status, headers, body

    async def closed(self) -> bool:
        return await asyncio.wait_for(self.reader.read(1), 10) == b""

    def close(self) -> None:
        self.writer.close()


async def recorded(world: World, kind: str, rcpt: str, count: int) -> list[dict]:
    async def found():
        got = await events(world, "example.com", event=kind, recipient=rcpt)
        return got if len(got) >= count else None
    got = await wait_for(found, what=f"{count} {kind} of {rcpt}")
    await asyncio.sleep(0.2)  # and no more than that
    return await events(world, "example.com", event=kind, recipient=rcpt)


async def test_pipelined_keep_alive_clicks_and_opens_are_answered_in_order_and_recorded_once(world):
    rcpt = "pipelined@dest.test"
    click, pixel = await tracked(world, rcpt)
    conn = await Conn.open(world)
    try:
        # three requests in one packet, then a HEAD (link checkers: redirected, not recorded)
        await conn.send(request("GET", click) + request("GET", pixel) + request("GET", click))
        for expected in (302, 200, 302):
            status, headers, body = await conn.response()
            assert status == expected and "server" not in headers, headers  # the lean path answered
            assert "date" in headers
            if status == 302:
                assert headers["location"] == "https://shop.example/sale?a=1&b=2" and body == b""
                assert headers["cache-control"].startswith("no-store")
            else:
                assert headers["content-type"] == "image/gif" and body.startswith(b"GIF89a") and len(body) == 42
        await conn.send(request("HEAD", pixel), request("HEAD", click))
        status, headers, body = await conn.response(head_request=True)
        assert status == 200 and headers["content-length"] == "42"
        status, headers, _ = await conn.response(head_request=True)
        assert status == 302 and headers["location"].startswith("https://shop.example/")
    finally:
        conn.close()
    assert len(await recorded(world, "clicked", rcpt, 2)) == 2
    opened = await recorded(world, "opened", rcpt, 1)
    assert len(opened) == 1 and opened[0]["client-info"]["client-name"] == "Chrome"


async def test_a_connection_moves_to_the_application_for_anything_else_and_keeps_working(world):
    rcpt = "handover@dest.test"
    click, pixel = await tracked(world, rcpt)
    forged = click[:-2] + ("AA" if not click.endswith("AA") else "BB")
    conn = await Conn.open(world)
    try:
        await conn.send(request("GET", click))
        status, headers, _ = await conn.response()
        assert status == 302 and "server" not in headers
        # a forged token: the application's 404 page, on the same connection, nothing recorded
        await conn.send(request("GET", forged))
        status, headers, body = await conn.response()
        assert status == 404 and "server" in headers and b"not a link mtad made" in body
        # the connection is the application's now: a click is still answered (by it), and the API too
        await conn.send(request("GET", click), request("GET", "/v3/domains"))
        status, headers, _ = await conn.response()
        assert status == 302 and headers["location"] == "https://shop.example/sale?a=1&b=2" and "server" in headers
        status, _, body = await conn.response()
        assert status == 401  # no API key: the API's own answer
    finally:
        conn.close()
    assert len(await recorded(world, "clicked", rcpt, 2)) == 2

    # a request with a body, and an unsubscribe page: the application's, as before
    conn = await Conn.open(world)
    try:
        await conn.send(request("GET", click, "Content-Length: 5") + b"hello")
        status, headers, _ = await conn.response()
        assert status == 302 and "server" in headers
    finally:
        conn.close()


async def test_split_heads_http10_keep_alive_close_and_limits(world):
    rcpt = "split@dest.test"
    click, pixel = await tracked(world, rcpt)
    raw = request("GET", click)
    conn = await Conn.open(world)
    try:  # a head in three packets: answered once it is whole
        await conn.send(raw[:5], raw[5:40], raw[40:], pause=0.05)
        status, headers, _ = await conn.response()
        assert status == 302 and "server" not in headers
        # ab's keep-alive: HTTP/1.0 with Connection: Keep-Alive gets it back, then one without is closed
        await conn.send(request("GET", pixel, "Connection: Keep-Alive", version="1.0"))
        status, headers, body = await conn.response()
        assert status == 200 and headers["connection"].lower() == "keep-alive" and len(body) == 42
        await conn.send(request("GET", pixel, version="1.0"))
        status, headers, _ = await conn.response()
        assert status == 200 and headers["connection"].lower() == "close"
        assert await conn.closed()
    finally:
        conn.close()

    conn = await Conn.open(world)
    try:  # HTTP/1.1 Connection: close
        await conn.send(request("GET", click, "Connection: close"))
        status, headers, _ = await conn.response()
        assert status == 302 and headers["connection"] == "close"
        assert await conn.closed()
    finally:
        conn.close()

    conn = await Conn.open(world)
    try:  # a head over the limit: the application's 431, never a hang
        await conn.send(request("GET", click, "X-Big: " + "a" * 9000))
        status, _, _ = await conn.response()
        assert status in (400, 431)
    finally:
        conn.close()

    conn = await Conn.open(world)
    try:  # garbage after a good click: answered by the application (400), the click before it recorded
        await conn.send(request("GET", click) + b"GET /c/\x00\x01 HTTP/1.1\r\n\r\n")
        status, headers, _ = await conn.response()
        assert status == 302 and "server" not in headers
        status, _, _ = await conn.response()
        assert status in (400, 404)
    finally:
        conn.close()
    clicks = await recorded(world, "clicked", rcpt, 3)
    assert len(clicks) == 3  # the split head, the Connection: close one and the one before the garbage
    opens = await recorded(world, "opened", rcpt, 2)
    assert len(opens) == 2 and all(re.match(r"\d+\.\d+\.\d+\.\d+", e["ip"]) for e in opens)


def test_a_stop_closes_idle_and_half_sent_lean_connections_at_once(mtad_factory):
    """SIGTERM with keep-alive connections still open (one silent, one half-way through a head): the daemon
    stops within seconds, closing them, as aiohttp closes its own."""
    import socket
    import time
    daemon = mtad_factory().start()
    url = urlsplit(daemon.api_url)
    silent = socket.create_connection((url.hostname, url.port), timeout=10)
    half = socket.create_connection((url.hostname, url.port), timeout=10)
    half.sendall(b"GET /c/abc HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.3)
    started = time.monotonic()
    assert daemon.stop(timeout=15) == 0
    assert time.monotonic() - started < 10
    for conn in (silent, half):
        assert conn.recv(1) == b""  # closed by the daemon
        conn.close()
