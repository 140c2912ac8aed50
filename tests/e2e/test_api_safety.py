"""The API's safety rails, over a real HTTPS listener: TLS when configured, request body limit (413), failed
authentication rate-limited per client (429), keys limited to domains (403), malformed requests answered
400 with a JSON message and never a stack trace."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time

import aiohttp
import pytest

from mtad.api import hash_key
from tests.support.api import basic_auth
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


# --- hostile input (issue 10, items 4-6): every answer a JSON 4xx, never a 500, the log one line per refusal ---

NESTED = 1900


async def raw_exchange(daemon, certs, data: bytes) -> tuple[int, dict, bytes]:
    """Send ``data`` as is over TLS; (status, headers, body) of the answer (the connection is closed after)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.api_port, ssl=certs.client_context(),
                                                   server_hostname="localhost")
    writer.write(data)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 15)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def new_log(daemon, before: int) -> str:
    return daemon.log()[before:]


@pytest.mark.parametrize("method, path, kwargs", [
    ("POST", "/v3/routes", {"data": {"expression": 'match_recipient("' + "(" * NESTED + "a" + ")" * NESTED + '")',
                                     "action": "stop()"}}),
    ("POST", "/v3/example.com/bounces", {"data": ("[" * 20_000 + "]" * 20_000).encode(),
                                         "headers": {"Content-Type": "application/json"}}),
    ("POST", "/v3/example.com/bounces", {"data": ('[{"address": "a@b.test", "code": ' + "[" * 50 + "]" * 50 + "}]")
                                         .encode(), "headers": {"Content-Type": "application/json"}}),
    ("POST", "/v1/analytics/logs", {"data": ('{"filter": ' + "[" * 20_000 + "]" * 20_000 + "}").encode(),
                                    "headers": {"Content-Type": "application/json"}}),
    ("GET", "/v3/example.com/events", {"params": {"event": "(" * 1000 + "failed" + ")" * 1000}}),
    ("GET", "/v3/example.com/events", {"params": {"event": "NOT " * 1200 + "failed"}}),
    ("GET", "/v3/example.com/events/" + base64.urlsafe_b64encode(b"[" * 2500 + b"]" * 2500).decode(), {}),
])
async def test_deeply_nested_input_is_refused_with_400(daemon, certs, method, path, kwargs):
    before = len(daemon.log())
    status, body = await request(daemon, certs, method, path, **kwargs)
    assert status == 400 and isinstance(body["message"], str), (status, body)
    assert "nested" in body["message"] or "page token" in body["message"], body
    assert "Traceback" not in new_log(daemon, before)


@pytest.mark.parametrize("raw", [b'{"a": [1e999, 1e999], "s": "after"}', b'[1, 2]', b'"x"',
                                 b'{"a": null, "q": {"filters": {}, "limit": 1e999, "ascending": true}}',
                                 b'{"a": null, "q": {"filters": [], "limit": 1, "ascending": true}}',
                                 b'{"a": null, "q": {"filters": {"event": "(" }, "limit": 1, "ascending": true}}'])
async def test_hand_edited_page_tokens_get_400(daemon, certs, raw):
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    status, body = await request(daemon, certs, "GET", f"/v3/example.com/events/{token}")
    assert status == 400 and isinstance(body["message"], str), (status, body)


async def test_a_url_or_header_over_8kb_gets_a_json_answer_and_one_log_line(daemon, certs):
    before = len(daemon.log())
    target = "/v3/domains?pad=" + "A" * 9000
    status, headers, body = await raw_exchange(daemon, certs, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert status == 414 and headers["Content-Type"].startswith("application/json"), (status, headers)
    assert json.loads(body)["message"].startswith("Request-URI Too Long") and b"AAAA" not in body
    status, headers, body = await raw_exchange(
        daemon, certs, b"GET /v3/domains HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"B" * 9000 + b"\r\n\r\n")
    assert status == 431 and json.loads(body)["message"].startswith("Request Header Fields Too Large"), status
    status, headers, body = await raw_exchange(daemon, certs, b"GET /a\x01\rFORGED HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and "could not be parsed" in json.loads(body)["message"], (status, body)
    logged = new_log(daemon, before)
    assert "Traceback" not in logged and "ERROR" not in logged, logged
    refusals = [line for line in logged.splitlines() if "unparsable HTTP request" in line]
    assert len(refusals) == 3 and all(line.count("A") < 200 for line in refusals), logged
    assert not any(line.startswith("FORGED") for line in logged.splitlines())


@pytest.mark.parametrize("url", ["http://2130706434/", "http://127.2/", "http://169.254.169.254./",
                                 "http://0x7f.1:8080/x", "http://0177.0.0.1/", "http://[::1]/", "http://localhost/",
                                 "http://10.1.2.3/", "http://0/"])
async def test_route_and_webhook_urls_naming_internal_addresses_are_refused_when_made(daemon, certs, url):
    status, body = await request(daemon, certs, "POST", "/v3/routes", data={
        "expression": "match_recipient('ssrf@example.com')", "action": f"forward('{url}')"})
    assert status == 400 and "not allowed (see routing.allowed_networks)" in body["message"], (status, body)
    status, body = await request(daemon, certs, "POST", "/v3/routes", data={
        "expression": "match_recipient('ssrf@example.com')", "action": f"store(notify='{url}')"})
    assert status == 400 and "not allowed" in body["message"], (status, body)
    status, body = await request(daemon, certs, "POST", "/v3/domains/example.com/webhooks",
                                 data={"id": "clicked", "url": url})
    assert status == 400 and "not allowed" in body["message"], (status, body)
    status, routes = await request(daemon, certs, "GET", "/v3/routes")
    assert not [r for r in routes["items"] if url.rstrip("/") in " ".join(r["actions"])]


async def test_a_route_to_a_public_address_or_a_name_is_still_made(daemon, certs):
    for url in ("http://192.0.2.1.nip.test/hook", "https://93.184.216.34/hook"):
        status, body = await request(daemon, certs, "POST", "/v3/routes", data={
            "expression": "match_recipient('fine@example.com')", "action": f"forward('{url}')"})
        assert status == 200, body
        await request(daemon, certs, "DELETE", f"/v3/routes/{body['route']['id']}")


FORM_ENDPOINTS = [("POST", "/v3/example.com/bounces"), ("POST", "/v3/example.com/unsubscribes"),
                  ("POST", "/v3/example.com/whitelists"), ("POST", "/v3/example.com/complaints/import"),
                  ("POST", "/v3/domains/example.com/webhooks"), ("PUT", "/v3/domains/example.com/webhooks/opened"),
                  ("PUT", "/v3/example.com/tags/news")]
BAD_FORMS = [
    ({"Content-Type": "multipart/form-data"}, b'--x\r\nContent-Disposition: form-data; name="address"\r\n\r\na@b.c'
                                              b"\r\n--x--\r\n"),  # no boundary parameter
    ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x\r\n\r\nno headers\r\n--x--\r\n"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"address=\xff\xfe@b.test&url=\xff"),
    ({"Content-Type": "application/x-www-form-urlencoded"}, b"address=%FF%FE@b.test&url=http://x/%FF"),
]


@pytest.mark.parametrize("method, path", FORM_ENDPOINTS)
@pytest.mark.parametrize("headers, data", BAD_FORMS)
async def test_malformed_form_bodies_on_every_form_endpoint_get_400(daemon, certs, method, path, headers, data):
    status, body = await request(daemon, certs, method, path, headers=headers, data=data)
    assert status == 400 and "form body" in body["message"], (status, body)


async def test_an_invalid_utf8_bounce_address_is_refused_not_stored_mangled(daemon, certs):
    status, body = await request(daemon, certs, "POST", "/v3/example.com/bounces", data=b"address=bad%FF@x.test",
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400, body
    _, page = await request(daemon, certs, "GET", "/v3/example.com/bounces")
    assert not [i for i in page["items"] if i["address"].startswith("bad")]


@pytest.mark.parametrize("body", [{"pagination": "x"}, {"metric_events": [[]]}, {"events": [{}]}, {"end": "NaN"},
                                  {"start": "inf"}, {"end": 1e300}, {"filter": {"AND": 5}},
                                  {"filter": {"AND": [{"attribute": "recipient", "values": "abc"}]}},
                                  {"pagination": {"limit": True}}, {"pagination": {"token": 5}},
                                  {"include_totals": "yes"}, {"duration": "9" * 5000 + "d"}, [1, 2]])
async def test_analytics_log_bodies_of_the_wrong_types_get_400(daemon, certs, body):
    status, answer = await request(daemon, certs, "POST", "/v1/analytics/logs", json=body)
    assert status == 400 and isinstance(answer["message"], str), (status, answer)


@pytest.mark.parametrize("path, params", [
    ("/v3/example.com/events", {"begin": "NaN"}),
    ("/v3/example.com/events", {"end": "inf"}),
    ("/v3/example.com/events", {"begin": "253402300800"}),
    ("/v3/example.com/events", {"begin": "Fri, 01 Jan 10000 00:00:00 +0000"}),
    ("/v3/stats/total", {"event": "accepted", "start": "-inf"}),
    ("/v3/stats/total", {"event": "accepted", "end": "NaN"}),
    ("/v3/stats/total", {"event": "accepted", "duration": "9" * 5000 + "d"}),
    ("/v3/stats/total/domains", {"event": "accepted", "timestamp": "1e20"}),
    ("/v3/example.com/stats/total", {"event": "accepted", "start": "Sat, 01 Jan 1000 00:00:00 +0000"}),
])
async def test_dates_that_cannot_be_written_get_400(daemon, certs, path, params):
    status, body = await request(daemon, certs, "GET", path, params=params)
    assert status == 400 and "expected" in body["message"], (status, body)


async def test_a_stats_range_is_bounded_in_buckets(daemon, certs):
    started = time.monotonic()
    for resolution, start in (("day", "0"), ("hour", "0"), ("month", "0")):
        status, body = await request(daemon, certs, "GET", "/v3/stats/total", params={
            "event": "accepted", "start": start, "end": "253402300799", "resolution": resolution})
        assert status == 400 and "buckets" in body["message"], (status, body)
    status, body = await request(daemon, certs, "GET", "/v3/stats/filter", params={
        "event": "accepted", "start": "0", "end": "2000000000", "resolution": "month", "group": "day"})
    assert status == 400 and "buckets" in body["message"], (status, body)
    assert time.monotonic() - started < 5
    status, body = await request(daemon, certs, "GET", "/v3/stats/total", params={  # 9,999 days: still answered
        "event": "accepted", "end": "1700000000", "duration": "9999d"})
    assert status == 200 and len(body["stats"]) == 10_000, (status, len(body.get("stats", [])))
    status, body = await request(daemon, certs, "GET", "/v3/stats/total", params={  # the last bucket of 9999
        "event": "accepted", "start": "253402214400", "end": "253402300799", "resolution": "month"})
    assert status == 200 and [s["time"] for s in body["stats"]] == ["Wed, 01 Dec 9999 00:00:00 UTC"], body


@pytest.mark.parametrize("params", [{"limit": "-1"}, {"limit": "0"}, {"skip": "-1"}, {"limit": "100000"}])
async def test_stats_domains_paging_out_of_range_gets_400(daemon, certs, params):
    status, body = await request(daemon, certs, "GET", "/v3/stats/total/domains",
                                 params={"event": "accepted", "timestamp": "1700000000", **params})
    assert status == 400 and ("limit" in body["message"] or "skip" in body["message"]), (status, body)


async def test_405_answers_name_the_allowed_methods(daemon, certs):
    url = f"https://127.0.0.1:{daemon.api_port}/v3/routes"
    connector = aiohttp.TCPConnector(ssl=certs.client_context())
    async with aiohttp.ClientSession(connector=connector, headers=basic_auth("api", API_KEY)) as session:
        async with session.patch(url) as resp:
            assert resp.status == 405 and (await resp.json())["message"]
            assert set(resp.headers["Allow"].split(",")) >= {"GET", "POST"}, resp.headers


async def test_a_mime_message_without_from_is_refused(daemon, certs):
    for mime in (b"To: x@dest.test\r\nSubject: no from\r\n\r\nbody\r\n",
                 b"From: a@example.com\r\nFrom: b@example.com\r\nTo: x@dest.test\r\n\r\nbody\r\n"):
        form = aiohttp.FormData()
        form.add_field("to", "x@dest.test")
        form.add_field("message", mime, filename="m.eml", content_type="message/rfc822")
        status, body = await request(daemon, certs, "POST", "/v3/example.com/messages.mime", data=form)
        assert status == 400 and "From" in body["message"], (status, body)


async def test_resend_over_https_says_so_in_its_trace(daemon, certs):
    """(Before the rate-limit test below: that one locks this client out.) A stored message resent through the HTTPS API gets a Received line ``with HTTPS``, as a send does."""
    import smtplib
    status, created = await request(daemon, certs, "POST", "/v3/routes", data={
        "priority": "0", "expression": "match_recipient('keep-tls@inbound.test')", "action": "store()"})
    assert status == 200
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        s.sendmail("alice@sender.test", ["keep-tls@inbound.test"],
                   b"From: alice@sender.test\r\nTo: keep-tls@inbound.test\r\nSubject: tls resend\r\n\r\nhi\r\n")
    deadline = time.time() + 10
    while True:
        rows = daemon.query("SELECT data FROM events WHERE event = 'stored' AND recipient = 'keep-tls@inbound.test'")
        if rows or time.time() > deadline:
            break
        await asyncio.sleep(0.1)
    key = json.loads(rows[0][0])["storage"]["key"]
    status, body = await request(daemon, certs, "POST", f"/v3/domains/inbound.test/messages/{key}",
                                 data={"to": "someone@dest.test"})
    assert status == 200, body
    heads = [bytes(body).split(b"\r\n\r\n")[0] for (body,) in daemon.query("SELECT body FROM messages")]
    resent = [head for head in heads if b"tls resend" in head and b"api" in head]
    assert resent and b"with HTTPS" in resent[0], resent


async def test_failed_authentication_is_rate_limited_per_client(daemon, certs):
    for _ in range(3):
        status, body = await request(daemon, certs, "GET", "/v3/domains", key="wrong-key")
        assert status == 401 and body == {"message": "Forbidden"}
    status, body = await request(daemon, certs, "GET", "/v3/domains")  # even the right key, for a while
    assert status == 429 and "try again later" in body["message"]
