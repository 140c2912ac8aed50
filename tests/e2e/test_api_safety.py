"""The API's safety rails, over a real HTTPS listener: TLS when configured, request body limit (413), failed
authentication rate-limited per client (429), keys limited to domains (403), malformed requests answered
400 with a JSON message and never a stack trace."""

from __future__ import annotations

import ssl

import aiohttp
import pytest

from mtad.api import hash_key
from tests.e2e.apihelpers import basic_auth
from tests.support.daemon import API_KEY

LIMITED_KEY = "key-limited-to-example-com-000000"


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory(api={"address": "127.0.0.1:0", "tls": True, "max_body_size": "200KB",
                               "max_auth_failures": 3,
                               "keys": [{"key_hash": hash_key(API_KEY)},
                                        {"key_hash": hash_key(LIMITED_KEY), "domains": ["example.com"]}]})


async def request(daemon, certs, method, path, *, key=API_KEY, **kwargs):
    url = f"https://127.0.0.1:{daemon.api_port}{path}"
    connector = aiohttp.TCPConnector(ssl=certs.client_context())
    async with aiohttp.ClientSession(connector=connector, headers=basic_auth("api", key)) as session:
        async with session.request(method, url, **kwargs) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body


async def test_https_listener_serves_the_api_with_the_configured_certificate(daemon, certs):
    status, body = await request(daemon, certs, "POST", "/v3/example.com/messages", data={
        "from": "postmaster@example.com", "to": "someone@dest.test", "subject": "tls", "text": "over https"})
    assert status == 200 and body["message"] == "Queued. Thank you."
    async with aiohttp.ClientSession() as session:  # plain HTTP to the TLS port gets no API answer
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{daemon.api_port}/v3/domains", headers=basic_auth("api", API_KEY)):
                pass
    with pytest.raises(aiohttp.ClientConnectorCertificateError):  # and the certificate is checked by clients
        async with aiohttp.ClientSession() as session:
            await session.get(f"https://127.0.0.1:{daemon.api_port}/healthz", ssl=ssl.create_default_context())


async def test_bodies_over_the_limit_get_413(daemon, certs):
    form = aiohttp.FormData()
    form.add_field("from", "postmaster@example.com")
    form.add_field("to", "someone@dest.test")
    form.add_field("attachment", b"x" * 300_000, filename="big.bin")
    status, body = await request(daemon, certs, "POST", "/v3/example.com/messages", data=form)
    assert status == 413 and isinstance(body["message"], str)


async def test_keys_limited_to_domains(daemon, certs):
    status, _ = await request(daemon, certs, "POST", "/v3/example.com/messages", key=LIMITED_KEY, data={
        "from": "postmaster@example.com", "to": "someone@dest.test", "text": "allowed"})
    assert status == 200
    status, body = await request(daemon, certs, "POST", "/v3/other.org/messages", key=LIMITED_KEY, data={
        "from": "app@other.org", "to": "someone@dest.test", "text": "not allowed"})
    assert status == 403 and "other.org" in body["message"]
    status, body = await request(daemon, certs, "GET", "/v3/domains", key=LIMITED_KEY)
    assert [d["name"] for d in body["items"]] == ["example.com"]
    status, _ = await request(daemon, certs, "POST", "/v3/domains", key=LIMITED_KEY, data={"name": "new.test"})
    assert status == 403


@pytest.mark.parametrize("headers, data", [
    ({"Content-Type": "multipart/form-data"}, b"--x\r\nbroken"),  # no boundary
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\nContent-Disposition: form-data\r\n\r\nno name"),
    ({"Content-Type": "application/json"}, b'{"from": "a@example.com"}'),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"from=%ZZ&to=%&&=="),
])
async def test_malformed_requests_get_a_json_4xx_never_a_traceback(daemon, certs, headers, data):
    status, body = await request(daemon, certs, "POST", "/v3/example.com/messages", headers=headers, data=data)
    assert 400 <= status < 500 and isinstance(body["message"], str), (status, body)
    assert "Traceback" not in body["message"]


async def test_failed_authentication_is_rate_limited_per_client(daemon, certs):
    for _ in range(3):
        status, body = await request(daemon, certs, "GET", "/v3/domains", key="wrong-key")
        assert status == 401 and body == {"message": "Forbidden"}
    status, body = await request(daemon, certs, "GET", "/v3/domains")  # even the right key, for a while
    assert status == 429 and "try again later" in body["message"]
