"""The SSRF policy applied when a route or webhook is made: numeric host spellings, localhost, allowed networks."""

import ipaddress

import pytest

from mtad.api import printable
from mtad.net.httpclient import ip_literal, url_refusal


@pytest.mark.parametrize("host, address", [("2130706434", "127.0.0.2"), ("127.2", "127.0.0.2"),
                                           ("0x7f.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"),
                                           ("169.254.169.254.", "169.254.169.254"), ("[::1]", "::1"),
                                           ("0", "0.0.0.0"), ("example.com", None), ("cafe", None)])
def test_hosts_are_read_as_the_system_resolver_reads_numbers(host, address):
    assert ip_literal(host) == (ipaddress.ip_address(address) if address else None)


@pytest.mark.parametrize("url", ["http://2130706434/", "http://127.2/", "http://169.254.169.254./latest",
                                 "https://[::1]:8443/", "http://LOCALHOST./", "http://a.localhost/", "http://10.0.0.1/"])
def test_internal_addresses_are_refused_unless_allowed(url):
    assert "not allowed" in url_refusal(url, ())
    if "169.254" not in url and "::1" not in url:
        assert url_refusal(url, ("127.0.0.0/8", "10.0.0.0/8")) is None


@pytest.mark.parametrize("url", ["http://example.com/hook", "https://93.184.216.34/", "http://10.example/"])
def test_public_addresses_and_names_are_made(url):
    assert url_refusal(url, ()) is None


def test_log_text_escapes_line_breaks_and_controls():
    assert printable("/v3/x\nFORGED 2024 ERROR y\r\x1b") == "/v3/x\\nFORGED 2024 ERROR y\\r\\x1b"
    assert printable("a" * 500, 10) == "a" * 10 + "..."
    assert printable("/v3/ünïcode") == "/v3/ünïcode"


@pytest.mark.parametrize("fast_post", [True, False])
async def test_both_post_paths_give_the_same_answer(fast_post, aiohttp_receiver):
    """fasthttp (plain http to an IP literal) and aiohttp (fast_post=False, as bench/forward_client_bench.py
    compares them) send the same request and read the same answer."""
    from mtad.net.httpclient import HttpClient
    client = HttpClient(("127.0.0.0/8",), 5.0, fast_post=fast_post)
    try:
        result = await client.post(f"{aiohttp_receiver}/in?x=1", data=b"a=b", headers={"Content-Type": "text/plain"})
        assert bool(client._fast._idle) == fast_post  # the fast path keeps its connection alive; aiohttp its own
    finally:
        await client.close()
    assert (result.status, result.error, result.body) == (201, "", "got 3 bytes of text/plain at /in?x=1")


@pytest.fixture
async def aiohttp_receiver():
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(status=201, text=f"got {len(body)} bytes of {request.content_type} at {request.path_qs}")

    app = web.Application()
    app.router.add_post("/in", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()
