"""Stored messages: a route created by API with ``store(notify=URL)`` keeps an inbound SMTP message, POSTs a
signed notification with ``message-url``, and the message is fetched back in both formats, resent to an
MX on loopback, and deleted."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import smtplib
import time

import pytest

from tests.e2e.apihelpers import delivering
from tests.support.dns_server import DnsServer
from tests.support.api import api

SIGNING_KEY = "key-stored-test-0123456789"
DEST = "resend.test"
ATTACHMENT = bytes(range(256)) * 8
MESSAGE = (
    "From: Alice <alice@sender.test>\r\nTo: box@inbound.test\r\nSubject: keep me\r\nMessage-ID: <keep-1@sender.test>\r\n"
    "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
    "--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nPlease keep this.\r\n"
    "--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=data.bin\r\n"
    "Content-Transfer-Encoding: base64\r\n\r\n"
    + base64.encodebytes(ATTACHMENT).decode().replace("\n", "\r\n")
    + "--b1--\r\n").encode()


def verify(signing_key: str, token: str, timestamp: str, signature: str) -> bool:
    """The seed manual's verify()."""
    hmac_digest = hmac.new(key=signing_key.encode(), msg=f"{timestamp}{token}".encode(),
                           digestmod=hashlib.sha256).hexdigest()
    return hmac.compare_digest(str(signature), str(hmac_digest))


@pytest.fixture(scope="module")
def env(daemon_factory, mx_farm):
    dns = DnsServer(ttl=300).start()
    sink = mx_farm.add("mx.sink.test")
    top = delivering(dns, sink, [DEST])
    daemon = daemon_factory(signing_key=SIGNING_KEY, **top)
    yield daemon, sink
    dns.stop()



def deliver_inbound(daemon, rcpt: str, content: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", daemon.mx, local_hostname="client.test", timeout=10) as s:
        s.sendmail("alice@sender.test", [rcpt], content)


async def test_store_notify_then_fetch_both_formats_resend_and_delete(env, receiver):
    daemon, sink = env
    created = await api(daemon, "POST", "/v3/routes", data=[
        ("expression", "match_recipient('box@inbound.test')"), ("action", f'store(notify="{receiver.url("notify")}")')])
    deliver_inbound(daemon, "box@inbound.test", MESSAGE)
    note = (await receiver.wait(1))[0]
    assert verify(SIGNING_KEY, note.get("token"), note.get("timestamp"), note.get("signature"))
    url = note.get("message-url")
    key = url.rsplit("/", 1)[1]
    assert url == f"{daemon.api_url}/v3/domains/inbound.test/messages/{key}"
    assert note.get("subject") == "keep me" and note.get("recipient") == "box@inbound.test" and note.path == "/notify"
    assert note.files == {}  # attachment bodies are fetched later, not posted

    path = url[len(daemon.api_url):]
    parsed = await api(daemon, "GET", path)
    assert parsed["subject"] == "keep me" and parsed["sender"] == "alice@sender.test"
    assert parsed["recipients"] == "box@inbound.test"
    assert parsed["body-plain"].strip() == "Please keep this."
    assert parsed["message-url"] == url
    [att] = parsed["attachments"]
    assert att["name"] == "data.bin" and att["size"] == len(ATTACHMENT) and att["url"] == f"{url}/attachments/1"
    data = await api(daemon, "GET", att["url"][len(daemon.api_url):])
    assert data == ATTACHMENT

    raw = await api(daemon, "GET", path, headers={"Accept": "message/rfc2822"})
    stored = bytes(daemon.query("SELECT body FROM messages WHERE id = ?", (key,))[0][0])
    assert raw["body-mime"].encode() == stored and stored.endswith(MESSAGE)
    assert raw["subject"] == "keep me" and raw["recipients"] == "box@inbound.test"

    events = [json.loads(r[0]) for r in daemon.query("SELECT data FROM events WHERE event = 'stored' AND queue_id = ?",
                                                     (key,))]
    assert len(events) == 1 and events[0]["storage"] == {"key": key, "url": url}
    assert events[0]["recipient"] == "box@inbound.test"

    resent = await api(daemon, "POST", path, data={"to": f"again@{DEST}"})
    assert resent == {"id": "<keep-1@sender.test>", "message": "Queued. Thank you."}
    got = (await sink.wait_for(f"again@{DEST}"))[0]
    assert got.data.endswith(MESSAGE) and got.mail_from == "postmaster@inbound.test"

    err = await api(daemon, "GET", f"/v3/domains/other.test/messages/{key}", expect=404)
    assert err == {"message": "Message not found"}
    deleted = await api(daemon, "DELETE", path)
    assert deleted == {"message": "Message has been deleted"}
    await api(daemon, "GET", path, expect=404)
    await api(daemon, "POST", path, data={"to": f"again@{DEST}"}, expect=404)
    await api(daemon, "DELETE", f"/v3/routes/{created['route']['id']}")


async def test_store_without_notify_keeps_the_message(env):
    daemon, _ = env
    created = await api(daemon, "POST", "/v3/routes", data=[
        ("expression", "match_recipient('quiet@inbound.test')"), ("action", "store()")])
    deliver_inbound(daemon, "quiet@inbound.test", MESSAGE.replace(b"keep-1@", b"keep-2@"))
    for _ in range(100):
        rows = daemon.query("SELECT queue_id, data FROM events WHERE event = 'stored' AND recipient = 'quiet@inbound.test'")
        if rows:
            break
        time.sleep(0.05)
    key = rows[0][0]
    url = json.loads(rows[0][1])["storage"]["url"]
    parsed = await api(daemon, "GET", url[len(daemon.api_url):])
    assert parsed["subject"] == "keep me"
    err = await api(daemon, "POST", url[len(daemon.api_url):], data={}, expect=400)
    assert "'to'" in err["message"]
    assert key
    await api(daemon, "DELETE", f"/v3/routes/{created['route']['id']}")
