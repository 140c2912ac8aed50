"""Mailgun's campaigns API (seed 000) over real sockets: a running mtad, mail sent over the API and SMTP to a test MX
(``tests/support/sink.py``: ``bad*`` recipients bounce, ``soft*`` are deferred), everything read back over HTTP.

- CRUD on ``/v3/{domain}/campaigns`` and the seed's ``/v2`` paths, with the seed's curl requests: ids (made when
  absent, unique per domain, at most 64 ASCII characters), names, ``limit``/``skip``, renames, delete with all data;
- sends with ``o:campaign`` / ``X-Mailgun-Campaign-Id`` count as submitted, delivered, bounced and dropped, list
  their events, and are found by the events API's and the logs API's ``campaign`` filter; an unknown campaign is
  refused (API 400, SMTP 550 at the end of DATA) and nothing is queued;
- engagement as it happens: a tracked campaign message (``o:tracking``) to six recipients, each copy read from the
  sink as a mail program would; its pixel and links fetched with aiohttp (some twice, several User-Agents, from
  addresses a trusted proxy names in ``X-Forwarded-For``, placed by a GeoIP database the test writes), one-click
  unsubscribes POSTed to its List-Unsubscribe URL, and an ARF complaint sent to mtad's MX by a "feedback loop";
  then the counters, ``/stats`` (total and unique), ``/clicks``, ``/opens``, ``/unsubscribes``, ``/complaints``
  (every grouping the seed lists, several at once, filtered, paged, counted) and ``/events`` match what the test
  did, number for number;
- ``mtad campaigns list/show`` print the same counters, and never create a state folder.

One STAND-IN remains (``test_time_groupings_span_months_days_and_hours``, its docstring says why): events of chosen
times, recorded through the store's typed event method, for groups that differ by month, day and hour.

Runs on the store backend of ``MTAD_TEST_STORE`` (SQLite by default, ``postgresql`` too).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ipaddress
import json
import random
import smtplib
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from mtad.events import shape
from mtad.store.events import NewEvent
from tests.e2e.engagement_support import (CHROME, FBL, IPHONE, THUNDERBIRD, arf, fetch, mx_send, parts,
                                          tracked_urls, write_geoip)
from tests.e2e.events_support import events as all_events
from tests.e2e.events_support import running_world
from tests.support.api import api
from tests.support.daemon import API_KEY, PASSWORD
from tests.support.wait import wait_for

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "campaigns", configure) as w:
        yield w


async def create(world, campaign_id: str, name: str = "Newsletter", version: str = "v3") -> dict:
    return (await api(world, "POST", f"/{version}/{DOMAIN}/campaigns", data={"name": name, "id": campaign_id}))[
        "campaign"]


async def campaign(world, campaign_id: str) -> dict:
    return await api(world, "GET", f"/v3/{DOMAIN}/campaigns/{campaign_id}")


def curl(world, *args: str) -> tuple[int, object]:
    """The seed's curl command line against mtad: (HTTP status, JSON body)."""
    out = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "--user", f"api:{API_KEY}", *args],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    body, _, status = out.rpartition("\n")
    return int(status), json.loads(body)


def smtp_send(world, rcpts: list[str], campaign_ids: list[str]) -> tuple[int, str]:
    """An authenticated SMTP submission naming campaigns in headers: (final DATA reply code, text)."""
    head = f"From: <postmaster@{DOMAIN}>\r\nTo: {', '.join(rcpts)}\r\nSubject: campaign over SMTP\r\n"
    head += "".join(f"X-Mailgun-Campaign-Id: {c}\r\n" for c in campaign_ids)
    with smtplib.SMTP("127.0.0.1", world.mtad.submission, local_hostname="client.test", timeout=10) as s:
        s.starttls(context=world.certs.client_context())
        s.ehlo()
        s.login(f"postmaster@{DOMAIN}", PASSWORD)
        s.mail(f"postmaster@{DOMAIN}")
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data((head + "\r\nHello.\r\n").encode())
    return code, text.decode()


async def api_send(world, rcpts: list[str], campaign_ids: list[str], expect: int = 200) -> dict:
    data = [("from", f"Sender <postmaster@{DOMAIN}>"), ("subject", "campaign over the API"), ("text", "Hello.")]
    data += [("to", r) for r in rcpts] + [("o:campaign", c) for c in campaign_ids]
    return await api(world, "POST", f"/v3/{DOMAIN}/messages", data=data, expect=expect)


# --- CRUD ----------------------------------------------------------------------------------------------------------

async def test_campaigns_are_created_listed_renamed_and_deleted_as_the_seed_shows(world):
    # The seed's create: curl ... /v2/samples.mailgun.org/campaigns -F name='Newsletter' -F id='my_campaign_id'
    status, made = curl(world, f"{world.api_url}/v2/{DOMAIN}/campaigns", "-F", "name=Newsletter",
                        "-F", "id=my_campaign_id")
    assert status == 200 and made["message"] == "Campaign created"
    assert {k: made["campaign"][k] for k in ("id", "name")} == {"id": "my_campaign_id", "name": "Newsletter"}
    assert made["campaign"]["created_at"].endswith(" GMT")
    auto = (await api(world, "POST", f"/v3/{DOMAIN}/campaigns", data={"name": "No id given"}))["campaign"]
    assert 1 <= len(auto["id"]) <= 64 and auto["id"].isascii()

    # The seed's list: curl -s --user api:KEY -G https://.../v2/samples.mailgun.org/campaigns (limit=2 in the rest)
    status, listed = curl(world, "-G", f"{world.api_url}/v2/{DOMAIN}/campaigns", "-d", "limit=2")
    assert status == 200 and listed["total_count"] >= 2
    item = next(i for i in listed["items"] if i["id"] == "my_campaign_id")
    assert set(item) == {"id", "name", "created_at", "delivered_count", "clicked_count", "opened_count",
                         "submitted_count", "unsubscribed_count", "bounced_count", "complained_count",
                         "dropped_count"}
    assert all(item[k] == 0 for k in item if k.endswith("_count"))
    total = listed["total_count"]
    skipped = await api(world, "GET", f"/v3/{DOMAIN}/campaigns", params={"skip": total - 1, "limit": 5})
    assert skipped["total_count"] == total and len(skipped["items"]) == 1

    # Ids are unique per domain, pure ASCII, at most 64 characters; names at most 64.
    for data, problem in (({"name": "Again", "id": "my_campaign_id"}, "already exists"),
                          ({"name": "x", "id": "a" * 65}, "id: 1 to 64"), ({"name": "x", "id": "café"}, "ASCII"),
                          ({"name": "x", "id": "a/b"}, "'/'"), ({"name": "n" * 65, "id": "long-name"}, "name"),
                          ({"id": "no-name"}, "name: missing")):
        refused = await api(world, "POST", f"/v3/{DOMAIN}/campaigns", data=data, expect=400)
        assert problem in refused["message"], (data, refused)
    assert (await create(world, "a" * 64, "n" * 64))["id"] == "a" * 64

    # PUT renames (name and/or id); the old id is gone; DELETE removes it with all its data.
    await create(world, "to-rename", "Before")
    renamed = await api(world, "PUT", f"/v3/{DOMAIN}/campaigns/to-rename", data={"name": "After", "id": "renamed"})
    assert renamed["message"] == "Campaign updated" and renamed["campaign"]["name"] == "After"
    assert (await campaign(world, "renamed"))["name"] == "After"
    await api(world, "GET", f"/v3/{DOMAIN}/campaigns/to-rename", expect=404)
    assert (await api(world, "PUT", f"/v2/{DOMAIN}/campaigns/renamed", data={"name": "v2 too"}))["campaign"][
        "name"] == "v2 too"
    assert "already exists" in (await api(world, "PUT", f"/v3/{DOMAIN}/campaigns/renamed",
                                          data={"id": "my_campaign_id"}, expect=400))["message"]
    await api(world, "PUT", f"/v3/{DOMAIN}/campaigns/renamed", data={}, expect=400)
    await api(world, "PUT", f"/v3/{DOMAIN}/campaigns/nope", data={"name": "x"}, expect=404)
    deleted = await api(world, "DELETE", f"/v3/{DOMAIN}/campaigns/renamed")
    assert deleted == {"message": "Campaign deleted", "id": "renamed"}
    await api(world, "DELETE", f"/v3/{DOMAIN}/campaigns/renamed", expect=404)
    await api(world, "GET", f"/v3/{DOMAIN}/campaigns/renamed/stats", expect=404)

    # Another domain's path, and no key at all.
    assert "Domain not found" in (await api(world, "GET", "/v3/unknown.test/campaigns", expect=404))["message"]
    await api(world, "GET", f"/v3/{DOMAIN}/campaigns", expect=401, auth={})


# --- sending -------------------------------------------------------------------------------------------------------

async def test_sends_count_for_their_campaign_and_an_unknown_campaign_is_refused(world):
    await create(world, "spring", "Spring sale")
    await create(world, "other", "Another campaign")
    queued = await api_send(world, ["ann@dest.test", "bad-bob@dest.test"], ["spring"])
    assert queued["message"] == "Queued. Thank you."
    code, _ = smtp_send(world, ["cid@dest.test", "soft-dan@dest.test"], ["spring", "other"])
    assert code == 250
    await api_send(world, ["eve@dest.test"], [])  # not in the campaign

    # ann and cid delivered, bad-bob bounced (550 at RCPT), soft-dan deferred (not final: counted nowhere yet).
    async def counted():
        c = await campaign(world, "spring")
        return c if (c["delivered_count"], c["bounced_count"]) == (2, 1) else None
    spring = await wait_for(counted, what="spring's deliveries")
    assert (spring["submitted_count"], spring["dropped_count"]) == (4, 0)
    other = await campaign(world, "other")
    assert (other["submitted_count"], other["delivered_count"]) == (2, 1)

    # bad-bob is now on the bounce list: a second send to him is dropped.
    await api_send(world, ["bad-bob@dest.test"], ["spring"])
    async def dropped():
        return (await campaign(world, "spring"))["dropped_count"] == 1
    await wait_for(dropped, what="the drop counted")

    # The campaign's events: the seed's curl ...campaigns/my_campaign_id/events?limit=2, and filters.
    status, two = curl(world, "-G", f"{world.api_url}/v2/{DOMAIN}/campaigns/spring/events", "-d", "limit=2")
    assert status == 200 and len(two) == 2
    assert set(two[0]) >= {"domain", "tags", "timestamp", "recipient", "event", "user_vars"}
    every = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/spring/events")
    assert sorted((e["event"], e["recipient"]) for e in every) == [
        ("bounced", "bad-bob@dest.test"), ("delivered", "ann@dest.test"), ("delivered", "cid@dest.test"),
        ("dropped", "bad-bob@dest.test")]
    assert all(e["domain"] == "dest.test" and e["timestamp"].endswith("GMT") for e in every)
    bounced = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/spring/events",
                        params=[("event", "bounced"), ("event", "dropped"), ("recipient", "bad-bob@dest.test")])
    assert [e["event"] for e in bounced] == ["dropped", "bounced"]  # newest first
    assert await api(world, "GET", f"/v3/{DOMAIN}/campaigns/spring/events", params={"count": "yes"}) == {"count": 4}
    [one] = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/spring/events", params={"limit": 1, "page": 4})
    assert one == every[3]
    stats = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/spring/stats")
    assert stats["total"] == {"complained": 0, "delivered": 2, "clicked": 0, "opened": 0, "dropped": 1,
                              "bounced": 1, "sent": 3, "unsubscribed": 0}

    # The events API and the logs API filter by campaign (every event of the campaign's messages).
    found = await api(world, "GET", f"/v3/{DOMAIN}/events", params={"campaign": "spring", "event": "accepted"})
    assert sorted(e["recipient"] for e in found["items"]) == ["ann@dest.test", "bad-bob@dest.test",
                                                                "bad-bob@dest.test", "cid@dest.test",
                                                                "soft-dan@dest.test"]
    assert all({"id": "spring"} in e["campaigns"] for e in found["items"])
    logs = await api(world, "POST", "/v1/analytics/logs", json={
        "events": ["delivered"], "filter": {"AND": [{"attribute": "campaign", "comparator": "=",
                                                     "values": [{"label": "other", "value": "other"}]}]}})
    assert [i["recipient"] for i in logs["items"]] == ["cid@dest.test"]

    # An unknown campaign: 400 over the API, 550 at the end of DATA over SMTP; nothing queued, nothing counted.
    refused = await api_send(world, ["fay@dest.test"], ["spring", "no-such-campaign"], expect=400)
    assert refused["message"].startswith("Campaign 'no-such-campaign' does not exist for domain example.com")
    code, text = smtp_send(world, ["gus@dest.test"], ["no-such-campaign"])
    assert (code, text.split()[0]) == (550, "5.7.1") and "no-such-campaign" in text
    await asyncio.sleep(0.5)
    assert (await campaign(world, "spring"))["submitted_count"] == 5
    for rcpt in ("fay@dest.test", "gus@dest.test"):
        assert not [e for e in (await api(world, "GET", f"/v3/{DOMAIN}/events",
                                          params={"recipient": rcpt}))["items"] if e["event"] != "rejected"]


# --- reports from real engagement: tracking URLs fetched over HTTP, an ARF complaint over SMTP -------------------

HTML = ('<html><body><p>Spring is here: <a href="https://shop.test/a">shoes</a>, '
        '<a href="https://shop.test/b?x=1&amp;y=2">hats</a>, <a href="https://docs.test/guide">the guide</a>.</p>'
        '<p><a href="%unsubscribe_url%">unsubscribe</a></p></body></html>')
LINKS = ["https://shop.test/a", "https://shop.test/b?x=1&y=2", "https://docs.test/guide"]
RECIPIENTS = ["kim@dest.test", "lou@dest.test", "mia@yahoo.test", "ned@yahoo.test", "ola@dest.test",
              "pia@yahoo.test"]
# Where each reader fetches from: the address a trusted proxy (127.0.0.0/8 here) names in X-Forwarded-For, or
# None for a direct fetch (the peer 127.0.0.1 itself). GEO is the GeoIP database the test writes.
GEO = {"127.0.0.0/8": ("US", "TX", "San Antonio"), "198.51.100.0/24": ("US", "IL", "Chicago"),
       "198.18.0.0/15": ("US", "CA", "San Francisco"), "203.0.113.0/24": ("RU", "MOW", "Moscow"),
       "192.0.2.0/24": ("FR", "IDF", "Paris")}
CHICAGO, CHICAGO2, SF, MOSCOW, PARIS, NOWHERE = ("198.51.100.7", "198.51.100.99", "198.18.4.2", "203.0.113.5",
                                                 "192.0.2.44", "100.64.1.1")
UNKNOWN = ("Unknown", "Unknown", "Unknown")


def place(client: str | None) -> tuple[str, str, str]:
    found = [p for net, p in GEO.items() if ipaddress.ip_address(client or "127.0.0.1") in ipaddress.ip_network(net)]
    return found[0] if found else UNKNOWN


# (kind, recipient, link index, User-Agent, client address): what the readers do, in order. Some twice, some from
# two places, pia clicks without opening, lou and ola unsubscribe (lou's one-click POST is sent twice).
PLAN = [("opened", "kim@dest.test", None, CHROME, CHICAGO), ("opened", "kim@dest.test", None, IPHONE, CHICAGO2),
        ("opened", "lou@dest.test", None, THUNDERBIRD, MOSCOW), ("opened", "mia@yahoo.test", None, IPHONE, PARIS),
        ("opened", "mia@yahoo.test", None, IPHONE, PARIS), ("opened", "mia@yahoo.test", None, CHROME, SF),
        ("opened", "ned@yahoo.test", None, CHROME, None), ("opened", "ola@dest.test", None, THUNDERBIRD, NOWHERE),
        ("clicked", "kim@dest.test", 0, CHROME, CHICAGO), ("clicked", "kim@dest.test", 0, CHROME, CHICAGO),
        ("clicked", "kim@dest.test", 1, IPHONE, CHICAGO2), ("clicked", "lou@dest.test", 0, THUNDERBIRD, MOSCOW),
        ("clicked", "mia@yahoo.test", 2, IPHONE, PARIS), ("clicked", "mia@yahoo.test", 2, IPHONE, SF),
        ("clicked", "ned@yahoo.test", 1, CHROME, None), ("clicked", "pia@yahoo.test", 0, CHROME, SF),
        ("unsubscribed", "lou@dest.test", None, CHROME, MOSCOW), ("unsubscribed", "ola@dest.test", None, IPHONE, None),
        ("unsubscribed", "lou@dest.test", None, CHROME, MOSCOW)]  # a replayed POST: no second event
COMPLAINER = "mia@yahoo.test"


def configure(cfg: dict, world) -> None:
    tmp = Path(cfg["state_dir"]).parent
    cfg["tracking"] = {"geoip_database": str(write_geoip(tmp / "geo.mmdb", GEO)), "scanner_window": "0s",
                       "trusted_proxies": ["127.0.0.0/8"]}
    cfg["feedback"] = {"addresses": [FBL]}


def planned() -> list[dict]:
    """The events the plan and the complaint must produce, as the reports see them (deliveries too, for /stats
    grouped by domain), without times: the first unsubscribe of each recipient only."""
    out = [{"event": "delivered", "recipient": r} for r in RECIPIENTS]
    unsubscribed = set()
    for kind, rcpt, link, _, client in PLAN:
        if kind == "unsubscribed":
            if rcpt in unsubscribed:
                continue
            unsubscribed.add(rcpt)
        country, region, city = place(client)
        out.append({"event": kind, "recipient": rcpt, "url": LINKS[link] if link is not None else None,
                    "geolocation": {"country": country, "region": region, "city": city}})
    return out + [{"event": "complained", "recipient": COMPLAINER}]


def gmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


TIMES = ("month", "day", "hour", "minute", "daily_hour")


def key(event: dict, group: str):
    """What an event is grouped by, computed from the event itself (independently of mtad's SQL)."""
    if group in TIMES:
        at = datetime.fromtimestamp(event["timestamp"], timezone.utc)
        return {"month": gmt(at.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()),
                "day": gmt(at.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()),
                "hour": gmt(at.replace(minute=0, second=0, microsecond=0).timestamp()),
                "minute": gmt(at.replace(second=0, microsecond=0).timestamp()), "daily_hour": at.hour}[group]
    geo = event.get("geolocation") or {}
    return {"link": event.get("url"), "recipient": event["recipient"], "domain": event["recipient"].split("@")[1],
            "country": geo.get("country", "Unknown"), "region": geo.get("region", "Unknown"),
            "city": geo.get("city", "Unknown")}[group]


def expected(events: list[dict], kind: str, groupby: tuple[str, ...], uniques: tuple[str, ...],
             **where: str) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e["event"] == kind and all(key(e, f).lower() == v.lower() for f, v in where.items()):
            groups[tuple(key(e, g) for g in groupby)].append(e)
    items = []
    for values, members in groups.items():
        item = dict(zip(groupby, values))
        item["total"] = len(members)
        if uniques:
            item["unique"] = {u: len({key(e, u) for e in members}) for u in uniques}
        items.append(item)
    return items


def ordered(items: list[dict]) -> list[list[str]]:
    """By total, most first; ties in any order (compared as sets within each total)."""
    by_total: dict[int, list] = defaultdict(list)
    for item in items:
        by_total[item["total"]].append(json.dumps(item, sort_keys=True))
    return [sorted(by_total[t]) for t in sorted(by_total, reverse=True)]


REPORTS = {"clicks": ("clicked", ("link", "recipient", "domain", "country", "region", "city", "month", "day", "hour",
                                  "minute", "daily_hour")),
           "opens": ("opened", ("recipient", "domain", "country", "region", "city", "month", "day", "hour", "minute",
                                "daily_hour")),
           "unsubscribes": ("unsubscribed", ("domain", "country", "region", "city", "month", "day", "hour", "minute",
                                             "daily_hour")),
           "complaints": ("complained", ("recipient", "domain", "month", "day", "hour", "minute", "daily_hour"))}


def uniques_of(report: str, groupby: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d for d in (("link", "recipient") if report == "clicks" else ("recipient",)) if d not in groupby)


async def report(world, campaign_id: str, name: str, params) -> list | dict:
    return await api(world, "GET", f"/v3/{DOMAIN}/campaigns/{campaign_id}/{name}", params=params)


async def copies(world, rcpts: list[str]) -> dict[str, bytes]:
    return {r: (await world.sink.wait_for(r))[-1].data for r in rcpts}


async def act(world, urls: dict[str, dict[str, list[str]]], kind: str, rcpt: str, link: int | None, agent: str,
              client: str | None) -> None:
    headers = {"X-Forwarded-For": client} if client else {}
    if kind == "opened":
        status, _, body = await fetch(urls[rcpt]["o"][0], agent, headers=headers)
        assert status == 200 and body.startswith(b"GIF89a")
    elif kind == "clicked":
        status, got, _ = await fetch(urls[rcpt]["c"][link], agent, headers=headers)
        assert status == 302 and got["Location"] == LINKS[link]
    else:  # RFC 8058 one-click, as a mail program sends it to the List-Unsubscribe URL
        status, _, _ = await fetch(urls[rcpt]["u"][0], agent, "POST", headers=headers,
                                   data={"List-Unsubscribe": "One-Click"})
        assert status == 200


async def test_opens_clicks_unsubscribes_and_a_complaint_count_number_for_number(world):
    await create(world, "newsletter", "Newsletter")
    await api(world, "POST", f"/v3/{DOMAIN}/messages", data=[
        ("from", f"News <news@{DOMAIN}>"), ("subject", "Spring"), ("html", HTML), ("o:campaign", "newsletter"),
        ("o:tracking", "yes"), ("o:tag", "weekly"), ("v:n", "1"), *[("to", r) for r in RECIPIENTS]])
    # the same message without the campaign: kim's click on it counts for nothing here
    await api(world, "POST", f"/v3/{DOMAIN}/messages", data={
        "from": f"News <news@{DOMAIN}>", "to": "kim@dest.test", "subject": "Not a campaign", "html": HTML,
        "o:tracking": "yes"})
    await wait_for(lambda: len(world.sink.to("kim@dest.test")) == 2, what="kim's two copies")

    # Each copy, read as a mail program would: its own pixel, click links (in the HTML's order) and unsubscribe URL.
    urls: dict[str, dict[str, list[str]]] = {}
    for rcpt, data in (await copies(world, RECIPIENTS)).items():
        if rcpt == "kim@dest.test":
            data = next(c.data for c in world.sink.to(rcpt) if b"Subject: Spring" in c.data)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        html = parts(data)["html"]
        unsub = str(msg["List-Unsubscribe"]).split(", ")[0].strip("<>")
        urls[rcpt] = {"o": tracked_urls(world, html, "o"), "c": tracked_urls(world, html, "c"), "u": [unsub]}
        assert len(urls[rcpt]["o"]) == 1 and len(urls[rcpt]["c"]) == 3, html
        assert tracked_urls(world, html, "u") == [unsub] and msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    other = next(c.data for c in world.sink.to("kim@dest.test") if b"Not a campaign" in c.data)
    assert (await fetch(tracked_urls(world, parts(other)["html"], "c")[0]))[0] == 302

    started = time.time()
    for step in PLAN:
        await act(world, urls, *step)
    # mia marks it as spam: her provider's feedback loop sends an ARF report to mtad's MX
    report_body = arf(world.sink.to(COMPLAINER)[-1].data, rcpt_to=COMPLAINER)
    for _ in range(2):  # the loop sends it again: still one complaint (the report is committed before the 250)
        code, text = mx_send(world, "fbl@isp.test", [FBL], report_body)
        assert code == 250, text
    events = planned()
    counts = Counter(e["event"] for e in events)

    async def complained():  # opens and clicks are committed just after their answers
        found = await campaign(world, "newsletter")
        return found if found["complained_count"] == 1 and found["delivered_count"] == len(RECIPIENTS) and (
            found["opened_count"], found["clicked_count"]) == (counts["opened"], counts["clicked"]) else None
    listed = await wait_for(complained, what="the complaint, the deliveries, opens and clicks counted")
    finished = time.time()
    assert {k: v for k, v in listed.items() if k.endswith("_count")} == {
        "submitted_count": 6, "delivered_count": 6, "opened_count": 8, "clicked_count": 8, "unsubscribed_count": 2,
        "complained_count": 1, "bounced_count": 0, "dropped_count": 0}
    assert (counts["opened"], counts["clicked"], counts["unsubscribed"]) == (8, 8, 2)

    stats = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/newsletter/stats")
    assert stats == {"total": {"complained": 1, "delivered": 6, "clicked": 8, "opened": 8, "dropped": 0, "bounced": 0,
                               "sent": 6, "unsubscribed": 2},
                     "unique": {"clicked": {"link": 3, "recipient": 5}, "opened": {"recipient": 5}}}

    # Every report, by every grouping the seed lists (time groups: the minutes the test ran in), two at once too.
    def when(group: str) -> set:
        return {key({"timestamp": t}, group) for t in (*range(int(started), int(finished) + 1, 30), finished)}
    for name, (kind, groupings) in REPORTS.items():
        for groupby in [(g,) for g in groupings] + [groupings[:2]]:
            answer = await report(world, "newsletter", name, [("groupby", g) for g in groupby])
            count = await report(world, "newsletter", name, [("groupby", ",".join(groupby)), ("count", "true")])
            assert [a["total"] for a in answer] == sorted((a["total"] for a in answer), reverse=True)
            if groupby[0] in TIMES:
                assert sum(a["total"] for a in answer) == counts[kind], (name, groupby)
                assert {a[groupby[0]] for a in answer} <= when(groupby[0]), (name, groupby, answer)
                assert count == {"count": len(answer)}
                continue
            want = expected(events, kind, groupby, uniques_of(name, groupby))
            assert ordered(answer) == ordered(want), (name, groupby, answer)
            assert count == {"count": len(want)}, (name, groupby)
    clicks = await report(world, "newsletter", "clicks", {"groupby": "link"})
    assert sorted((c["link"], c["total"], c["unique"]["recipient"]) for c in clicks) == [
        ("https://docs.test/guide", 2, 1), ("https://shop.test/a", 4, 3), ("https://shop.test/b?x=1&y=2", 2, 2)]
    by_country = await report(world, "newsletter", "opens", {"groupby": "country"})
    assert ordered(by_country) == ordered([{"country": "US", "total": 4, "unique": {"recipient": 3}},
                                           {"country": "RU", "total": 1, "unique": {"recipient": 1}},
                                           {"country": "FR", "total": 2, "unique": {"recipient": 1}},
                                           {"country": "Unknown", "total": 1, "unique": {"recipient": 1}}])

    # The seed's advanced examples: opens in Chicago by recipient, the top countries, clicks by link and recipient,
    # the two recipients who clicked most (curl -d "groupby=recipient&limit=2"), a country and region filter, pages.
    chicago = await report(world, "newsletter", "opens", {"groupby": "recipient", "city": "Chicago"})
    assert chicago == [{"recipient": "kim@dest.test", "total": 2}]
    top = await report(world, "newsletter", "opens", {"groupby": "country", "limit": 2})
    assert [(c["country"], c["total"]) for c in top] == [("US", 4), ("FR", 2)]
    spy = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/newsletter/clicks?groupby=link&groupby=recipient")
    assert ordered(spy) == ordered(expected(events, "clicked", ("link", "recipient"), ()))
    status, two = curl(world, "-G", "-d", "groupby=recipient&limit=2",
                       f"{world.api_url}/v2/{DOMAIN}/campaigns/newsletter/clicks")
    assert status == 200 and two == [{"recipient": "kim@dest.test", "total": 3, "unique": {"link": 2}},
                                     {"recipient": "mia@yahoo.test", "total": 2, "unique": {"link": 1}}]
    illinois = await report(world, "newsletter", "clicks", {"groupby": "link", "country": "us", "region": "IL"})
    assert ordered(illinois) == ordered([{"link": LINKS[0], "total": 2, "unique": {"recipient": 1}},
                                         {"link": LINKS[1], "total": 1, "unique": {"recipient": 1}}])
    page1, page2 = [await report(world, "newsletter", "clicks", {"groupby": "link,recipient", "limit": 2, "page": p})
                    for p in (1, 2)]
    whole = await report(world, "newsletter", "clicks", {"groupby": "link,recipient"})
    assert page1 + page2 == whole[:4] and len(whole) == 6

    # Stats grouped by domain, city and region (deliveries and the complaint have no place: Unknown).
    for groupby in ("domain", "city", "region", "daily_hour"):
        grouped = await report(world, "newsletter", "stats", {"groupby": groupby})
        assert [g[groupby] for g in grouped] == sorted(g[groupby] for g in grouped)
        if groupby == "daily_hour":
            assert {g[groupby] for g in grouped} <= when(groupby)
            assert sum(g["total"]["opened"] for g in grouped) == 8
            continue
        assert len(grouped) == len({key(e, groupby) for e in events})
        for g in grouped:
            members = [e for e in events if key(e, groupby) == g[groupby]]
            assert g["total"] == {k: sum(1 for e in members if e["event"] == k) for k in
                                  ("unsubscribed", "opened", "delivered", "clicked", "bounced", "complained")}
            assert g["unique"] == {
                "clicked": {"link": len({e["url"] for e in members if e["event"] == "clicked"}),
                            "recipient": len({e["recipient"] for e in members if e["event"] == "clicked"})},
                "opened": {"recipient": len({e["recipient"] for e in members if e["event"] == "opened"})}}

    # The campaign's events: filters chained, by place, counted, newest first, with what each event showed.
    kim = await report(world, "newsletter", "events", [("event", "clicked"), ("event", "opened"),
                                                        ("recipient", "kim@dest.test")])
    assert sorted((e["event"], e.get("url"), e["city"]) for e in kim) == [
        ("clicked", LINKS[0], "Chicago"), ("clicked", LINKS[0], "Chicago"), ("clicked", LINKS[1], "Chicago"),
        ("opened", None, "Chicago"), ("opened", None, "Chicago")]
    assert all(e["tags"] == ["weekly"] and e["user_vars"] == {"n": "1"} and e["domain"] == "dest.test" for e in kim)
    stamps = [datetime.strptime(e["timestamp"], "%a, %d %b %Y %H:%M:%S GMT") for e in kim]
    assert stamps == sorted(stamps, reverse=True)
    moscow = await report(world, "newsletter", "events", {"country": "RU", "region": "MOW", "count": "1"})
    assert moscow == {"count": 3}  # lou's open, click and unsubscribe
    gone = await report(world, "newsletter", "events", {"event": "unsubscribed"})
    assert sorted((e["recipient"], e["country"]) for e in gone) == [("lou@dest.test", "RU"), ("ola@dest.test", "US")]
    [spam] = await report(world, "newsletter", "events", {"event": "complained"})
    assert spam["recipient"] == COMPLAINER and "country" not in spam
    assert await report(world, "newsletter", "events", {"count": "yes"}) == {"count": len(events)}

    # The events API: every tracked event carries the campaign, the first of each (message, recipient) is unique,
    # the address is the one the proxy named, the client the User-Agent's.
    opened = await all_events(world, DOMAIN, campaign="newsletter", event="opened")
    assert all(e["campaigns"] == [{"id": "newsletter"}] for e in opened)
    assert sorted((e["recipient"], e["ip"], e["client-info"]["user-agent"]) for e in opened) == sorted(
        (r, c or "127.0.0.1", a) for k, r, _, a, c in PLAN if k == "opened")
    assert sum(e["flags"]["is-unique"] for e in opened) == 5
    clicked = await all_events(world, DOMAIN, campaign="newsletter", event="clicked")
    assert len(clicked) == 8 and sum(e["flags"]["is-unique"] for e in clicked) == 5
    assert len(await all_events(world, DOMAIN, campaign="newsletter", event="complained")) == 1
    assert (await api(world, "GET", f"/v3/{DOMAIN}/complaints/{COMPLAINER}"))["address"] == COMPLAINER
    for kinds, n in ((["opened"], 8), (["unique_opened"], 5), (["clicked"], 8), (["unique_clicked"], 5),
                     (["unsubscribed", "complained"], 3)):
        logs = await api(world, "POST", "/v1/analytics/logs", json={
            "events": kinds, "filter": {"AND": [{"attribute": "campaign", "comparator": "=",
                                                 "values": [{"label": "newsletter", "value": "newsletter"}]}]}})
        assert len(logs["items"]) == n, (kinds, logs["items"])

    # Bad parameters: 400 in the JSON error shape.
    for name, params in (("clicks", {"groupby": "planet"}), ("unsubscribes", {"groupby": "recipient"}),
                         ("complaints", {"groupby": "link"}), ("clicks", {"limit": "101"}),
                         ("opens", {"page": "0"}), ("events", {"event": "exploded"}),
                         ("stats", {"groupby": "link"}), ("events", {"count": "perhaps"})):
        refused = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/newsletter/{name}", params=params, expect=400)
        assert set(refused) == {"message"}, refused


async def test_engagement_after_a_rename_or_a_delete_counts_for_what_the_campaigns_are_now(world):
    """Opens and clicks come days after the send: a message naming two campaigns counts for both, for a renamed one
    under its new id, and for a deleted one nowhere (its links still work)."""
    await create(world, "alpha", "Alpha")
    await create(world, "beta", "Beta")
    rcpt = "quinn@dest.test"
    await api(world, "POST", f"/v3/{DOMAIN}/messages", data=[
        ("from", f"News <news@{DOMAIN}>"), ("to", rcpt), ("subject", "Two campaigns"), ("html", HTML),
        ("o:campaign", "alpha"), ("o:campaign", "beta"), ("o:tracking", "yes")])
    html = parts((await world.sink.wait_for(rcpt))[0].data)["html"]
    pixel, click = tracked_urls(world, html, "o")[0], tracked_urls(world, html, "c")[1]

    async def figures(campaign_id: str) -> tuple[int, int, int]:
        c = await campaign(world, campaign_id)
        return c["delivered_count"], c["opened_count"], c["clicked_count"]

    async def counted(expect: dict[str, tuple[int, int, int]]) -> bool:  # opens and clicks commit just after the answer
        return all([await figures(c) == want for c, want in expect.items()])
    await wait_for(lambda: _delivered(world, "alpha"), what="the delivery counted")
    assert (await fetch(pixel, IPHONE, headers={"X-Forwarded-For": PARIS}))[0] == 200
    assert (await fetch(click, CHROME, headers={"X-Forwarded-For": PARIS}))[0] == 302
    await wait_for(lambda: counted({"alpha": (1, 1, 1), "beta": (1, 1, 1)}), what="the open and click counted")

    await api(world, "PUT", f"/v3/{DOMAIN}/campaigns/alpha", data={"id": "alpha-2"})
    assert (await fetch(click, CHROME))[0] == 302
    await wait_for(lambda: counted({"alpha-2": (1, 1, 2), "beta": (1, 1, 2)}), what="the click counted")
    [by_link] = await report(world, "alpha-2", "clicks", {"groupby": "link"})
    assert by_link == {"link": LINKS[1], "total": 2, "unique": {"recipient": 1}}

    await api(world, "DELETE", f"/v3/{DOMAIN}/campaigns/beta")
    assert (await fetch(click, CHROME))[0] == 302 and (await fetch(pixel, CHROME))[0] == 200
    await wait_for(lambda: counted({"alpha-2": (1, 2, 3)}), what="the open and click counted")
    await api(world, "GET", f"/v3/{DOMAIN}/campaigns/beta", expect=404)
    stats = await report(world, "alpha-2", "stats", {})
    assert stats["total"]["clicked"] == 3 and stats["unique"] == {"clicked": {"link": 1, "recipient": 1},
                                                                    "opened": {"recipient": 1}}


async def _delivered(world, campaign_id: str) -> bool:
    return (await campaign(world, campaign_id))["delivered_count"] == 1


# --- time groupings over months, days and hours: the one STAND-IN left -------------------------------------------

def stand_in(kind: str, recipient: str, at: float, url: str | None = None) -> dict:
    """STAND-IN (see the module doc): an engagement event of a time the test chooses, shaped as the tracking
    endpoints and the ARF path shape theirs (``engagement_event``, ``shape.complained``)."""
    extra = {} if kind == "complained" else {"geolocation": {"country": "US", "region": "IL", "city": "Chicago"},
                                             "client-info": {"client-type": "browser"}, "ip": "192.0.2.1"}
    if url:
        extra["url"] = url
    return shape.base_event(kind, timestamp=at, recipient=recipient, queue_id="Q-TIMES",
                            message=shape.message_part({"message-id": "times@example.com"}, 100),
                            options={"campaigns": ["times"], "tags": ["weekly"], "variables": {"n": 1}},
                            envelope={}, flags={"is-unique": False}, extra=extra)


def spread() -> list[dict]:
    """Opens, clicks, unsubscribes and complaints over two months, several days and hours (Jan 30 to Feb 1)."""
    rnd = random.Random(16)
    base = datetime(2024, 1, 30, 20, 0, tzinfo=timezone.utc).timestamp()
    out = []
    for i in range(60):
        at = base + rnd.choice([0, 1800, 3600 * 5, 86400 * 2 + 61]) + rnd.randrange(0, 120)
        kind = ("opened", "clicked", "unsubscribed", "complained")[i % 4]
        out.append(stand_in(kind, f"user{i % 7}@dest.test", at, LINKS[i % 3] if kind == "clicked" else None))
    return out


def daemons_own_store(world):
    """The running daemon's store, opened by the test (SQLite: one writer at a time, shared safely; PostgreSQL:
    a connection of its own)."""
    config = world.mtad.cfg.get("store") or {}
    if config.get("backend") == "postgresql":
        import psycopg
        from mtad.store.postgres.store import PostgresStore
        return PostgresStore(lambda: psycopg.connect(config["dsn"], autocommit=True, connect_timeout=10),
                             "the daemon's database", pool_size=2)
    from mtad.store.sqlite import SqliteStore
    return SqliteStore(world.mtad.db_path)


async def test_time_groupings_span_months_days_and_hours(world):
    """STAND-IN: the tracking endpoints and the ARF path stamp an event with the time it happens, so the real path
    (the test above) puts every event in the minutes the test runs; groups that differ by month, day and hour, and
    their order, need events of chosen times: recorded through the store's typed event method (``record_events``,
    where the tracking and report paths end too), into the running daemon's store."""
    await create(world, "times", "Times")
    events = spread()
    store = daemons_own_store(world)
    store.open()
    try:
        await store.record_events([NewEvent(DOMAIN, e) for e in events])
    finally:
        store.close()
    for name, (kind, groupings) in REPORTS.items():
        for groupby in [(g,) for g in TIMES] + [("day", "daily_hour"), ("month", "hour")]:
            answer = await report(world, "times", name, [("groupby", g) for g in groupby])
            want = expected(events, kind, groupby, uniques_of(name, groupby))
            assert len(want) > 1 and ordered(answer) == ordered(want), (name, groupby)
    grouped = await report(world, "times", "stats", {"groupby": "daily_hour"})
    assert [g["daily_hour"] for g in grouped] == sorted({key(e, "daily_hour") for e in events})
    for g in grouped:
        members = [e for e in events if key(e, "daily_hour") == g["daily_hour"]]
        assert g["total"]["opened"] == sum(1 for e in members if e["event"] == "opened")
        assert g["unique"]["clicked"]["link"] == len({e["url"] for e in members if e["event"] == "clicked"})
    assert len(await report(world, "times", "stats", {"groupby": "daily_hour", "limit": 2})) == 2
    listed = await report(world, "times", "events", [("event", "clicked"), ("event", "opened")])
    mine = sorted((e for e in events if e["event"] in ("clicked", "opened")), key=lambda e: -e["timestamp"])
    assert [e["timestamp"] for e in listed] == [gmt(e["timestamp"]) for e in mine]


# --- delete with all data, and the command line -------------------------------------------------------------

async def test_a_deleted_campaign_takes_its_data_with_it_and_the_cli_reads_without_writing(world, tmp_path):
    await create(world, "short-lived", "Short")
    await api_send(world, ["hal@dest.test"], ["short-lived"])

    async def delivered():
        return (await campaign(world, "short-lived"))["delivered_count"] == 1
    await wait_for(delivered, what="the delivery counted")

    cli = [sys.executable, "-m", "mtad", "campaigns"]
    config = ["--config", str(world.mtad.config_path)]
    out = subprocess.run([*cli, "list", "--domain", DOMAIN, *config], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if " short-lived " in line)
    assert row.split()[2:4] == ["1", "1"]  # submitted, delivered
    shown = subprocess.run([*cli, "show", DOMAIN, "short-lived", *config], capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert (data["submitted_count"], data["delivered_count"], data["stats"]["total"]["sent"]) == (1, 1, 1)
    missing = subprocess.run([*cli, "show", DOMAIN, "nope", *config], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1 and "no campaign nope" in missing.stderr
    nowhere = tmp_path / "no-state"
    empty = subprocess.run([*cli, "list", "--state-dir", str(nowhere)], capture_output=True, text=True, timeout=30)
    assert empty.returncode == 1 and not nowhere.exists()  # a read-only command creates nothing

    await api(world, "DELETE", f"/v3/{DOMAIN}/campaigns/short-lived")
    await api_send(world, ["ida@dest.test"], ["short-lived"], expect=400)  # gone for sending too
    await create(world, "short-lived", "Again")
    again = await campaign(world, "short-lived")
    assert all(again[k] == 0 for k in again if k.endswith("_count"))
    assert await api(world, "GET", f"/v3/{DOMAIN}/campaigns/short-lived/events") == []
