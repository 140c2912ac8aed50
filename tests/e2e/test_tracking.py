"""Engagement tracking end to end (issue 13: tracking host, clicks, opens, unsubscribes and what follows them).

One running arrangement (``events_support.World``): mtad signing example.com and other.org with DKIM, a sink MX
for dest.test, the test receiver for webhooks, a GeoIP database the test writes (127.0.0.1 is "US/TX/San
Antonio"). Mail goes in through the API and through SMTP submission with each tracking option; what the sink got
is read as a mail program would (links, pixel, footer, List-Unsubscribe), checked with dkimpy, and the tracking
URLs are fetched with aiohttp and real browsers' User-Agent strings. Then the events API, the logs API, the stats
aggregates, the unsubscribe list and the webhooks show what happened.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
from pathlib import Path

import dkim as dkimpy
import pytest

from mtad.base.keys import derive
from mtad.mail import dkim
from mtad.mail.tracktoken import OPEN, Sealer, Token
from tests.e2e.apihelpers import txt_lookup
from tests.e2e.engagement_support import CHROME, IPHONE, THUNDERBIRD, fetch, parts, tracked_urls, write_geoip
from tests.e2e.events_support import SIGNING_KEY, World, events, running_world, seed_verify
from tests.support.api import api
from tests.support.daemon import PASSWORD
from tests.support.wait import wait_for

HTML = ('<html><body><p>Hello <a href="https://shop.example/sale?a=1&amp;b=2">sale</a>, '
        "<a href='javascript:alert(1)'>js</a> <a href=\"data:text/html,x\">data</a> "
        '<a href="mailto:help@example.com">mail</a> <a href="#top">top</a> '
        '<a data-no-track href="https://kept.example/">kept</a></p></body></html>')
TEXT = "Hello, see https://shop.example/sale?a=1&b=2 and https://docs.example/guide."


KEYS: dict[str, dkim.DkimKey] = {}


def configure(cfg: dict, world: World) -> None:
    tmp = Path(cfg["state_dir"]).parent
    for domain in ("example.com", "other.org"):
        pem = dkim.generate_key("rsa", 1024)
        (tmp / f"{domain}.pem").write_bytes(pem)
        cfg["sending_domains"][domain]["dkim"] = [{"selector": "s1", "key_file": str(tmp / f"{domain}.pem")}]
        KEYS[domain] = dkim.load_key(domain, "s1", pem)
    cfg["tracking"] = {"geoip_database": str(write_geoip(tmp / "geo.mmdb")), "scanner_window": "0s"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "tracking", configure) as w:
        yield w


def verifies(data: bytes) -> bool:
    return dkimpy.verify(data, dnsfunc=txt_lookup(dict(dkim.dns_record(k) for k in KEYS.values())))


async def send_api(world: World, rcpt: str, domain: str = "example.com", **options: str) -> str:
    body = await api(world, "POST", f"/v3/{domain}/messages", data={
        "from": f"News <news@{domain}>", "to": rcpt, "subject": "Tracked", "html": HTML, "text": TEXT,
        "o:tag": "spring", "v:customer": "c-42", **options})
    return body["id"].strip("<>")


def send_smtp(world: World, rcpts: list[str], headers: str = "", *, sender: str = "postmaster@example.com",
              login: str = "postmaster@example.com", body: bytes | None = None) -> str:
    """An authenticated submission of a multipart message (or of ``body``, header fields and body after From, To
    and Subject); returns the queue id."""
    if body is None:
        body = (f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b0undary\r\n{headers}"
                f"\r\n--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{TEXT}\r\n"
                f"--b0undary\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{HTML}\r\n--b0undary--\r\n"
                ).encode()
    data = f"From: Sender <{sender}>\r\nTo: {', '.join(rcpts)}\r\nSubject: Tracked\r\n".encode() + body
    with smtplib.SMTP("127.0.0.1", world.mtad.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=world.certs.client_context())
        s.ehlo()
        s.login(login, PASSWORD)
        s.mail(sender)
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(data)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


async def engagement(world: World, domain: str, kind: str, recipient: str, count: int = 1) -> list[dict]:
    return await wait_for(lambda: _found(world, domain, kind, recipient, count), what=f"{count} {kind} of {recipient}")


async def _found(world: World, domain: str, kind: str, recipient: str, count: int) -> list[dict] | None:
    found = await events(world, domain, event=kind, recipient=recipient)
    return found if len(found) >= count else None


# --- clicks and opens ------------------------------------------------------------------------------------------

async def test_api_message_with_tracking_has_rewritten_links_and_pixel_and_still_verifies(world):
    rcpt = "clicker@dest.test"
    await send_api(world, rcpt, **{"o:tracking": "yes"})
    got = (await world.sink.wait_for(rcpt))[0]
    assert verifies(got.data)
    # a copy of its own still has the message's return path, and the token a complaint is matched by, signed
    assert got.mail_from.startswith("bounce+") and b"\r\nX-Mtad-Sid: " in got.data.split(b"\r\n\r\n")[0]
    text = parts(got.data)
    html = text["html"]
    clicks = tracked_urls(world, html, "c")
    assert len(clicks) == 1, html  # the one http(s) link; the others are left exactly as they were
    for kept in ("href='javascript:alert(1)'", 'href="data:text/html,x"', 'href="mailto:help@example.com"',
                 'href="#top"', '<a data-no-track href="https://kept.example/">'):
        assert kept in html
    assert "shop.example" not in html
    opens = tracked_urls(world, html, "o")
    assert len(opens) == 1 and html.index(opens[0]) < html.index("</body>")
    text_clicks = tracked_urls(world, text["plain"], "c")
    assert len(text_clicks) == 2 and text_clicks[0] == clicks[0]  # the same link, the same token
    assert "List-Unsubscribe" not in got.data.decode()  # unsubscribe tracking is off for example.com

    status, headers, _ = await fetch(clicks[0])
    assert status == 302 and headers["Location"] == "https://shop.example/sale?a=1&b=2"
    status, headers, _ = await fetch(text_clicks[1])
    assert status == 302 and headers["Location"] == "https://docs.example/guide"
    status, headers, body = await fetch(opens[0], IPHONE)
    assert status == 200 and headers["Content-Type"] == "image/gif" and body.startswith(b"GIF89a")
    assert "no-store" in headers["Cache-Control"]

    clicked = await engagement(world, "example.com", "clicked", rcpt, 2)
    first = next(e for e in clicked if e["url"] == "https://shop.example/sale?a=1&b=2")
    assert first["client-info"] == {"client-type": "browser", "client-os": "Windows", "device-type": "desktop",
                                    "client-name": "Chrome", "user-agent": CHROME, "bot": ""}
    assert first["geolocation"] == {"country": "US", "region": "TX", "city": "San Antonio"}
    assert first["ip"] == "127.0.0.1" and first["tags"] == ["spring"]
    assert first["user-variables"] == {"customer": "c-42"}
    assert first["message"]["headers"]["subject"] == "Tracked"
    assert sorted(e["flags"]["is-unique"] for e in clicked) == [False, True]  # unique per message and recipient
    (opened,) = await engagement(world, "example.com", "opened", rcpt)
    assert opened["client-info"]["device-type"] == "mobile" and opened["client-info"]["client-os"] == "iOS"
    assert opened["client-info"]["client-type"] == "mobile browser" and opened["flags"]["is-unique"] is True


async def test_forged_altered_and_misused_tokens_are_refused_without_an_event(world):
    rcpt = "forger@dest.test"
    await send_api(world, rcpt, **{"o:tracking": "yes"})
    html = parts((await world.sink.wait_for(rcpt))[0].data)["html"]
    click, pixel = tracked_urls(world, html, "c")[0], tracked_urls(world, html, "o")[0]
    token = click.rsplit("/", 1)[1]
    altered = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    for url in (f"{world.api_url}/c/{altered}", f"{world.api_url}/c/{token[:-3]}", f"{world.api_url}/c/x",
                f"{world.api_url}/c/{'A' * 120}", f"{world.api_url}/o/{token}",  # a click token is no pixel
                f"{world.api_url}/c/{pixel.rsplit('/', 1)[1]}", f"{world.api_url}/u/{token}"):
        status, headers, body = await fetch(url)
        assert status == 404 and "Location" not in headers, (url, status)
        assert b"Traceback" not in body
    # a genuine token (sealed with the daemon's key) of a message mtad never tracked: expired, not a crash
    sealer = Sealer(derive(SIGNING_KEY, "tracking"))
    status, _, body = await fetch(f"{world.api_url}/o/{sealer.seal(Token(OPEN, '00000000000DEADBEEF', rcpt))}")
    assert status == 410 and b"expired" in body
    await asyncio.sleep(0.5)
    assert await events(world, "example.com", event="clicked", recipient=rcpt) == []
    assert await events(world, "example.com", event="opened", recipient=rcpt) == []
    # the link scanners' HEAD redirects without recording
    status, headers, _ = await fetch(click, method="HEAD")
    assert status == 302 and headers["Location"].startswith("https://shop.example/")
    # a genuine click last: clicks are written in the order they are answered, so once its event is stored,
    # anything the requests above had recorded would be stored too
    assert (await fetch(click))[0] == 302
    for _ in range(100):
        if clicked := await events(world, "example.com", event="clicked", recipient=rcpt):
            break
        await asyncio.sleep(0.05)
    assert len(clicked) == 1 and clicked[0]["flags"]["is-unique"] is True
    assert await events(world, "example.com", event="opened", recipient=rcpt) == []


async def test_smtp_htmlonly_and_no_and_the_untracked_path(world):
    rcpts = ["html1@dest.test", "html2@dest.test"]
    send_smtp(world, rcpts, "X-Mailgun-Track-Clicks: htmlonly\r\nX-Mailgun-Track-Opens: no\r\n")
    for rcpt in rcpts:
        got = (await world.sink.wait_for(rcpt))[0]
        assert got.rcpt_tos == [rcpt]  # one transaction per recipient: each copy is that recipient's
        assert verifies(got.data)
        text = parts(got.data)
        assert len(tracked_urls(world, text["html"], "c")) == 1 and tracked_urls(world, text["html"], "o") == []
        assert "https://shop.example/sale?a=1&b=2" in text["plain"] and "/c/" not in text["plain"]
    # the two copies carry different tokens
    tokens = {tracked_urls(world, parts(world.sink.to(r)[0].data)["html"], "c")[0] for r in rcpts}
    assert len(tokens) == 2

    untracked = ["plain1@dest.test", "plain2@dest.test"]
    send_smtp(world, untracked, "X-Mailgun-Track: no\r\n")
    got = await world.sink.wait_for(untracked[0])
    assert sorted(got[0].rcpt_tos) == untracked  # untracked mail keeps one transaction per domain
    assert "/c/" not in got[0].data.decode() and verifies(got[0].data)


async def test_domain_defaults_footer_list_unsubscribe_and_one_click_unsubscribe(world):
    put = await api(world, "PUT", "/v3/domains/other.org/tracking/unsubscribe",
                    data={"active": "yes", "html_footer": '<p><a href="%unsubscribe_url%">Leave</a></p>',
                          "text_footer": "Leave: %unsubscribe_url%"})
    assert put["message"] == "Domain tracking settings have been updated" and put["unsubscribe"]["active"] is True
    await api(world, "PUT", "/v3/domains/other.org/tracking/click", data={"active": "yes"})
    await api(world, "PUT", "/v3/domains/other.org/tracking/open", data={"active": "yes"})
    got = await api(world, "GET", "/v3/domains/other.org/tracking")
    assert got["tracking"]["click"] == {"active": True} and got["tracking"]["open"] == {"active": True}
    assert got["tracking"]["unsubscribe"]["text_footer"] == "Leave: %unsubscribe_url%"
    await api(world, "GET", "/v3/domains/nowhere.test/tracking", expect=404)
    await api(world, "PUT", "/v3/domains/other.org/tracking/click", data={"active": "maybe"}, expect=400)

    hook = world.receiver.url("unsub-hook")
    await api(world, "POST", "/v3/domains/other.org/webhooks", data={"id": "unsubscribed", "url": hook})
    rcpt = "leaver@dest.test"
    send_smtp(world, [rcpt], sender="app@other.org", login="app@other.org")
    got = (await world.sink.wait_for(rcpt))[0]
    assert verifies(got.data)
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    unsub, mailto = str(msg["List-Unsubscribe"]).split(", ")  # RFC 2369: the URL and the unsubscribe address
    assert re.fullmatch(re.escape(world.api_url) + r"/u/[A-Za-z0-9_-]+", unsub.strip("<>"))
    assert re.fullmatch(r"<mailto:unsubscribe\+[a-z0-9.]+-[a-z2-7]{10}@other\.org>", mailto)
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    signed = re.search(rb"h=([^;]+);", got.data.replace(b"\r\n\t", b"").replace(b"\r\n ", b"")).group(1).lower()
    assert b"list-unsubscribe" in signed and b"list-unsubscribe-post" in signed
    text = parts(got.data)
    assert f'<a href="{unsub.strip("<>")}">Leave</a>' in text["html"]  # the footer, its variable filled
    assert text["plain"].rstrip().endswith(f"Leave: {unsub.strip('<>')}")
    assert len(tracked_urls(world, text["html"], "c")) == 1  # the footer's unsubscribe link is not a click redirect

    status, _, page = await fetch(unsub.strip("<>"))
    assert status == 200 and b"leaver@dest.test" in page and b"<form method=\"post\"" in page
    status, _, _ = await fetch(unsub.strip("<>"), method="POST", data={"List-Unsubscribe": "One-Click"})
    assert status == 200
    listed = await api(world, "GET", f"/v3/other.org/unsubscribes/{rcpt}")
    assert listed["address"] == rcpt and listed["tags"] == ["*"]
    (event,) = await engagement(world, "other.org", "unsubscribed", rcpt)
    assert event["geolocation"]["country"] == "US"
    post = (await wait_for(lambda: world.receiver.to("unsub-hook"), what="the unsubscribed webhook"))[0]
    sig = post.json()["signature"]
    assert seed_verify(SIGNING_KEY, sig["token"], sig["timestamp"], sig["signature"])
    assert post.json()["event-data"]["event"] == "unsubscribed"
    # a replayed one-click POST: the same answer, no second event
    status, _, _ = await fetch(unsub.strip("<>"), method="POST", data={"List-Unsubscribe": "One-Click"})
    assert status == 200
    await asyncio.sleep(0.3)
    assert len(await events(world, "other.org", event="unsubscribed", recipient=rcpt)) == 1
    # the next message to that address is suppressed
    send_smtp(world, [rcpt], sender="app@other.org", login="app@other.org")
    failed = await wait_for(lambda: _found(world, "other.org", "failed", rcpt, 1), what="the suppressed failure")
    assert failed[0]["reason"] == "suppress-unsubscribe"
    assert len(world.sink.to(rcpt)) == 1


async def test_unsubscribe_page_button_and_tag_unsubscribe(world):
    rcpt = "tagged@dest.test"
    html = '<html><body><a href="%tag_unsubscribe_url%">no more spring</a></body></html>'
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": rcpt, "subject": "Tag", "html": html, "o:tag": "spring"})
    got = (await world.sink.wait_for(rcpt))[0]
    assert verifies(got.data)
    link = re.search(re.escape(world.api_url) + r"/u/[A-Za-z0-9_-]+", parts(got.data)["html"]).group(0)
    assert "List-Unsubscribe" in got.data.decode()  # the message has an unsubscribe link: RFC 8058 headers too
    status, _, page = await fetch(link)
    assert status == 200 and b"tagged spring" in page
    status, _, _ = await fetch(link, method="POST", data={"nothing": "here"})
    assert status == 400
    status, _, page = await fetch(link, method="POST", data={"confirm": "yes"})
    assert status == 200 and b"no more" in page
    listed = await api(world, "GET", f"/v3/example.com/unsubscribes/{rcpt}")
    assert listed["tags"] == ["spring"]


async def test_stats_aggregates_logs_and_webhooks_light_up(world):
    await api(world, "POST", "/v3/domains/example.com/webhooks", data={"id": "opened", "url": world.receiver.url("opened-json")})
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data={"id": "clicked", "url": world.receiver.url("clicked-legacy")})
    await api(world, "PUT", "/v3/domains/example.com/webhooks/clicked",
              data={"url": world.receiver.url("clicked-legacy"), "format": "legacy"})
    rcpt = "reader@dest.test"
    await send_api(world, rcpt, **{"o:tracking": "yes"})
    html = parts((await world.sink.wait_for(rcpt))[0].data)["html"]
    pixel, click = tracked_urls(world, html, "o")[0], tracked_urls(world, html, "c")[0]
    for agent in (THUNDERBIRD, IPHONE, CHROME):
        assert (await fetch(pixel, agent))[0] == 200
    assert (await fetch(click, IPHONE))[0] == 302
    await engagement(world, "example.com", "opened", rcpt, 3)

    opened_hook = (await wait_for(lambda: world.receiver.to("opened-json"), what="opened webhook"))[0].json()
    assert seed_verify(SIGNING_KEY, **{k: opened_hook["signature"][k] for k in ("token", "timestamp", "signature")})
    assert opened_hook["event-data"]["event"] == "opened"
    legacy = (await wait_for(lambda: world.receiver.to("clicked-legacy"), what="clicked webhook"))[0]
    assert legacy.get("event") == "clicked" and legacy.get("url").startswith("https://shop.example/")
    assert legacy.get("device-type") == "mobile" and legacy.get("country") == "US"
    assert seed_verify(SIGNING_KEY, legacy.get("token"), legacy.get("timestamp"), legacy.get("signature"))

    devices = (await api(world, "GET", "/v3/example.com/aggregates/devices"))["devices"]
    assert devices["mobile"]["opened"] >= 1 and devices["mobile"]["clicked"] >= 1 and devices["desktop"]["opened"] >= 1
    countries = (await api(world, "GET", "/v3/example.com/aggregates/countries"))["countries"]
    assert countries["US"]["opened"] >= 3 and countries["US"]["unique_opened"] >= 1
    total = await api(world, "GET", "/v3/example.com/stats/total", params=[("event", "opened"), ("event", "clicked")])
    opened_total = sum(s["opened"]["total"] for s in total["stats"])
    opened_unique = sum(s["opened"]["unique"] for s in total["stats"])
    assert opened_total >= 3 and 1 <= opened_unique < opened_total

    body = {"events": ["unique_opened"], "filter": {"AND": [{"attribute": "recipient", "comparator": "=",
                                                             "values": [{"value": rcpt}]}]}}
    logs = await api(world, "POST", "/v1/analytics/logs", json=body)
    assert len(logs["items"]) == 1 and logs["items"][0]["event"] == "opened"
    body["events"] = ["opened"]
    assert len((await api(world, "POST", "/v1/analytics/logs", json=body))["items"]) == 3


async def test_machine_fetches_are_flagged(world):
    rcpt = "apple@dest.test"
    await send_api(world, rcpt, **{"o:tracking-opens": "yes"})
    pixel = tracked_urls(world, parts((await world.sink.wait_for(rcpt))[0].data)["html"], "o")[0]
    assert (await fetch(pixel, "Mozilla/5.0"))[0] == 200  # Apple Mail Privacy Protection's proxy
    assert (await fetch(pixel, "Mozilla/5.0 (compatible; Barracuda Sentinel)"))[0] == 200
    found = await engagement(world, "example.com", "opened", rcpt, 2)
    assert sorted(e["client-info"]["bot"] for e in found) == ["apple", "scanner"]
    assert all(e["flags"]["is-machine"] for e in found)


async def test_machine_opens_and_clicks_count_in_totals_never_as_unique(world):
    # Apple Mail Privacy Protection fetches the pixel first (bare "Mozilla/5.0"), a link scanner clicks, then the
    # person opens twice and clicks: every fetch is an event, the unique open and click are the person's
    rcpt, tag = "mpp-reader@dest.test", "mpp-stats"
    await send_api(world, rcpt, **{"o:tracking": "yes", "o:tag": tag})
    html = parts((await world.sink.wait_for(rcpt))[0].data)["html"]
    pixel, click = tracked_urls(world, html, "o")[0], tracked_urls(world, html, "c")[0]
    assert (await fetch(pixel, "Mozilla/5.0"))[0] == 200
    assert (await fetch(click, "Mozilla/5.0 (compatible; Barracuda Sentinel)"))[0] == 302
    await engagement(world, "example.com", "clicked", rcpt, 1)  # the machines' events are written first
    assert (await fetch(pixel, THUNDERBIRD))[0] == 200
    assert (await fetch(pixel, THUNDERBIRD))[0] == 200
    assert (await fetch(click, CHROME))[0] == 302
    opened = await engagement(world, "example.com", "opened", rcpt, 3)
    clicked = await engagement(world, "example.com", "clicked", rcpt, 2)
    assert sorted((e["client-info"]["bot"], e["flags"]["is-machine"], e["flags"]["is-unique"]) for e in opened) == [
        ("", False, False), ("", False, True), ("apple", True, False)]
    assert sorted((e["client-info"]["bot"], e["flags"]["is-machine"], e["flags"]["is-unique"]) for e in clicked) == [
        ("", False, True), ("scanner", True, False)]
    machines = await events(world, "example.com", recipient=rcpt, severity="machine")
    assert sorted(e["client-info"]["bot"] for e in machines) == ["apple", "scanner"]

    stats = await api(world, "GET", f"/v3/example.com/tags/{tag}/stats",
                      params=[("event", "opened"), ("event", "clicked")])
    assert sum(s["opened"]["total"] for s in stats["stats"]) == 3
    assert sum(s["opened"]["unique"] for s in stats["stats"]) == 1
    assert sum(s["clicked"]["total"] for s in stats["stats"]) == 2
    assert sum(s["clicked"]["unique"] for s in stats["stats"]) == 1
    body = {"events": ["unique_opened"], "filter": {"AND": [{"attribute": "recipient", "comparator": "=",
                                                             "values": [{"value": rcpt}]}]}}
    logs = await api(world, "POST", "/v1/analytics/logs", json=body)
    assert [(e["event"], e["client-info"]["bot"]) for e in logs["items"]] == [("opened", "")]


# --- bad input -------------------------------------------------------------------------------------------------

async def test_hostile_html_many_links_and_non_utf8_parts(world):
    many = "".join(f'<a href="https://many.example/{i}">{i}</a>\n' for i in range(5000))
    broken = '<html><body><a href="https://broken.example/x" <b><a href=>x</a><a href="https://ok.example/">' \
             '<!-- <a href="https://comment.example/"> --> <script>"<a href=\'https://script.example/\'>"</script>'
    rcpt_many, rcpt_broken = "many@dest.test", "broken@dest.test"
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": rcpt_many, "subject": "Many", "html": many, "o:tracking": "yes"})
    await api(world, "POST", "/v3/example.com/messages", data={
        "from": "news@example.com", "to": rcpt_broken, "subject": "Broken", "html": broken, "o:tracking": "yes"})
    got = (await world.sink.wait_for(rcpt_many, timeout=30))[0]
    assert verifies(got.data)
    links = tracked_urls(world, parts(got.data)["html"], "c")
    assert len(links) == 5000 and len(set(links)) == 5000
    status, headers, _ = await fetch(links[4321])
    assert status == 302 and headers["Location"] == "https://many.example/4321"
    got = (await world.sink.wait_for(rcpt_broken))[0]
    html = parts(got.data)["html"]
    assert "https://ok.example/" not in html and "comment.example" in html and "script.example" in html
    assert verifies(got.data)

    # ISO-8859-1 text, a part whose bytes are not valid in its charset, base64 HTML: each kept readable
    rcpt = "latin@dest.test"
    body = ("MIME-Version: 1.0\r\nX-Mailgun-Track: yes\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
            "--zz\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "Caf\xe9 https://latin.example/menu\r\n"
            "--zz\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "bad \xff\xfe https://bad.example/\r\n"
            "--zz\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            "PGEgaHJlZj0iaHR0cHM6Ly9iNjQuZXhhbXBsZS8iPmI2NDwvYT4=\r\n--zz--\r\n").encode("latin-1")
    send_smtp(world, [rcpt], body=body)
    got = (await world.sink.wait_for(rcpt))[0]
    msg = email.message_from_bytes(got.data, policy=email.policy.default)
    latin, bad, b64 = [p for p in msg.walk() if p.get_content_maintype() == "text"]
    assert latin.get_content_charset() == "iso-8859-1" and latin.get_content().startswith("Café ")
    assert "/c/" in latin.get_content() and "latin.example" not in latin.get_content()
    assert b"bad \xff\xfe https://bad.example/" in got.data  # unreadable in its charset: left as it was
    assert b64["Content-Transfer-Encoding"] == "base64" and "/c/" in b64.get_content()
    assert verifies(got.data)


# --- a tracking listener of its own, a domain's own tracking host ---------------------------------------------

async def test_tracking_on_its_own_listener_and_a_domains_tracking_cname(tmp_path_factory, certs, daemons_store):
    from tests.support.daemon import free_port
    port = free_port()

    def own_listener(cfg: dict, world: World) -> None:
        configure(cfg, world)
        cfg["tracking"].update({"listen": f"127.0.0.1:{port}", "base_url": f"http://127.0.0.1:{port}/",
                                "defaults": {"open": True, "click": "htmlonly"}})
    with running_world(tmp_path_factory, certs, "tracking-listener", own_listener) as w:
        rcpt = "own@dest.test"
        await send_api(w, rcpt)  # no option: the configured defaults track opens and HTML clicks
        text = parts((await w.sink.wait_for(rcpt))[0].data)
        base = f"http://127.0.0.1:{port}"
        pixel = re.search(re.escape(base) + r"/o/[A-Za-z0-9_-]+", text["html"]).group(0)
        click = re.search(re.escape(base) + r"/c/[A-Za-z0-9_-]+", text["html"]).group(0)
        assert "/c/" not in text["plain"]
        assert (await fetch(pixel))[0] == 200
        status, headers, _ = await fetch(click)
        assert status == 302 and headers["Location"] == "https://shop.example/sale?a=1&b=2"
        # the API listener does not serve them then
        assert (await fetch(w.api_url + "/o/" + pixel.rsplit("/", 1)[1]))[0] == 404
        await engagement(w, "example.com", "opened", rcpt)

        changed = await api(w, "PUT", "/v3/domains/example.com/tracking", data={"base_url": "https://email.example.com"})
        assert changed["tracking"]["base_url"] == "https://email.example.com"
        await api(w, "PUT", "/v3/domains/example.com/tracking", data={"base_url": "javascript:x"}, expect=400)
        records = (await api(w, "GET", "/v3/domains/example.com"))["sending_dns_records"]
        cname = [r for r in records if r["record_type"] == "CNAME"]
        assert cname == [{"record_type": "CNAME", "name": "email.example.com", "value": "127.0.0.1",
                          "valid": "invalid", "cached": []}]
        rcpt = "cname@dest.test"
        await send_api(w, rcpt)
        html = parts((await w.sink.wait_for(rcpt))[0].data)["html"]
        assert re.search(r"https://email\.example\.com/o/[A-Za-z0-9_-]+", html)
