"""Mailgun's campaigns API (seed 000) over real sockets: a running mtad, mail sent over the API and SMTP to a test MX
(``tests/support/sink.py``: ``bad*`` recipients bounce, ``soft*`` are deferred), everything read back over HTTP.

- CRUD on ``/v3/{domain}/campaigns`` and the seed's ``/v2`` paths, with the seed's curl requests: ids (made when
  absent, unique per domain, at most 64 ASCII characters), names, ``limit``/``skip``, renames, delete with all data;
- sends with ``o:campaign`` / ``X-Mailgun-Campaign-Id`` count as submitted, delivered, bounced and dropped, list
  their events, and are found by the events API's and the logs API's ``campaign`` filter; an unknown campaign is
  refused (API 400, SMTP 550 at the end of DATA) and nothing is queued;
- the reports (``/events``, ``/stats``, ``/clicks``, ``/opens``, ``/unsubscribes``, ``/complaints``) match the
  events number for number, for every grouping the seed lists, several at once, filtered and paged;
- ``mtad campaigns list/show`` print the same counters, and never create a state folder.

STAND-IN, to be replaced after the tracking and late-bounce branches merge: opens, clicks, unsubscribes and
complaints are recorded here through the store's typed event method (``record_events``, the method those branches'
code ends in), shaped as their events are (``url``, ``geolocation``, ``client-info``, ``campaigns``); with them
merged, generate them through the tracking endpoints and an ARF report instead.
"""

from __future__ import annotations

import asyncio
import json
import random
import smtplib
import subprocess
import sys
from collections import Counter, defaultdict
from datetime import datetime, timezone

import pytest

from mtad.events import shape
from mtad.store.events import NewEvent
from tests.e2e.events_support import running_world
from tests.support.api import api
from tests.support.daemon import API_KEY, PASSWORD
from tests.support.wait import wait_for

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "campaigns") as w:
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


# --- reports ----------------------------------------------------------------------------------------------------

PLACES = [("US", "IL", "Chicago"), ("US", "CA", "San Francisco"), ("RU", "MOW", "Moscow"), ("FR", "IDF", "Paris")]
LINKS = ["https://shop.test/a", "https://shop.test/b", "https://shop.test/c"]


def engagement(kind: str, recipient: str, at: float, place: tuple[str, str, str], url: str | None = None) -> dict:
    """STAND-IN (see the module doc): an event shaped as the tracking and late-bounce branches record them."""
    extra = {"geolocation": dict(zip(("country", "region", "city"), place)),
             "client-info": {"client-type": "browser", "device-type": "desktop"}, "ip": "192.0.2.1"}
    if url:
        extra["url"] = url
    if kind == "complained":
        extra = {}
    return shape.base_event(kind, timestamp=at, recipient=recipient, queue_id="Q-REPORTS",
                            message=shape.message_part({"message-id": "reports@example.com"}, 100),
                            options={"campaigns": ["reports"], "tags": ["weekly"], "variables": {"n": 1}},
                            envelope={}, flags={"is-unique": False}, extra=extra)


def generated() -> list[dict]:
    """Opens, clicks, unsubscribes and complaints spread over recipients, places, links, months, days and hours."""
    rnd = random.Random(16)
    base = datetime(2024, 1, 30, 20, 0, tzinfo=timezone.utc).timestamp()
    recipients = [f"user{i}@{d}" for i, d in zip(range(12), ["dest.test", "yahoo.test", "mail.test"] * 4)]
    out = []
    for _ in range(150):
        rcpt, place = rnd.choice(recipients), rnd.choice(PLACES)
        at = base + rnd.choice([0, 1800, 3600 * 5, 86400 * 2 + 61]) + rnd.randrange(0, 120)
        kind = rnd.choices(["opened", "clicked", "unsubscribed", "complained"], [5, 4, 1, 1])[0]
        out.append(engagement(kind, rcpt, at, place, rnd.choice(LINKS) if kind == "clicked" else None))
    return out


def gmt(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def key(event: dict, group: str):
    """What an event is grouped by, computed from the event itself (independently of mtad's SQL)."""
    at = datetime.fromtimestamp(event["timestamp"], timezone.utc)
    geo = event.get("geolocation") or {}
    return {"link": event.get("url"), "recipient": event["recipient"], "domain": event["recipient"].split("@")[1],
            "country": geo.get("country", "Unknown"), "region": geo.get("region", "Unknown"),
            "city": geo.get("city", "Unknown"),
            "month": gmt(at.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()),
            "day": gmt(at.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()),
            "hour": gmt(at.replace(minute=0, second=0, microsecond=0).timestamp()),
            "minute": gmt(at.replace(second=0, microsecond=0).timestamp()), "daily_hour": at.hour}[group]


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


def ordered(items: list[dict], groupby: tuple[str, ...]) -> list[dict]:
    """By total, most first; ties in any order (compared as sets within each total)."""
    by_total: dict[int, list] = defaultdict(list)
    for item in items:
        by_total[item["total"]].append(json.dumps(item, sort_keys=True))
    return [sorted(by_total[t]) for t in sorted(by_total, reverse=True)]


async def test_reports_match_the_events_number_for_number(world):
    await create(world, "reports", "Reports")
    events = generated()
    # STAND-IN (module doc): the engagement events recorded through the store's typed method, into the daemon's
    # store (SQLite, shared safely with the running daemon: one writer at a time).
    from mtad.store.sqlite import SqliteStore
    store = SqliteStore(world.mtad.db_path)
    store.open()
    try:
        await store.record_events([NewEvent(DOMAIN, e) for e in events])
    finally:
        store.close()
    counts = Counter(e["event"] for e in events)
    listed = await campaign(world, "reports")
    assert (listed["opened_count"], listed["clicked_count"], listed["unsubscribed_count"],
            listed["complained_count"]) == (counts["opened"], counts["clicked"], counts["unsubscribed"],
                                            counts["complained"])
    stats = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/stats")
    assert stats["total"]["clicked"] == counts["clicked"] and stats["total"]["opened"] == counts["opened"]
    assert stats["unique"] == {
        "clicked": {"link": len({e["url"] for e in events if e["event"] == "clicked"}),
                    "recipient": len({e["recipient"] for e in events if e["event"] == "clicked"})},
        "opened": {"recipient": len({e["recipient"] for e in events if e["event"] == "opened"})}}

    reports = {"clicks": ("clicked", ("link", "recipient", "domain", "country", "region", "city", "month", "day",
                                      "hour", "minute", "daily_hour")),
               "opens": ("opened", ("recipient", "domain", "country", "region", "city", "month", "day", "hour",
                                    "minute", "daily_hour")),
               "unsubscribes": ("unsubscribed", ("domain", "country", "region", "city", "month", "day", "hour",
                                                 "minute", "daily_hour")),
               "complaints": ("complained", ("recipient", "domain", "month", "day", "hour", "minute", "daily_hour"))}
    for report, (kind, groupings) in reports.items():
        dims = ("link", "recipient") if report == "clicks" else ("recipient",)
        for groupby in [(g,) for g in groupings] + [groupings[:2], ("day", "daily_hour")]:
            uniques = tuple(d for d in dims if d not in groupby)
            answer = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/{report}",
                               params=[("groupby", g) for g in groupby])
            want = expected(events, kind, groupby, uniques)
            assert ordered(answer, groupby) == ordered(want, groupby), (report, groupby)
            assert [a["total"] for a in answer] == sorted((a["total"] for a in answer), reverse=True)
            count = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/{report}",
                              params=[("groupby", ",".join(groupby)), ("count", "true")])
            assert count == {"count": len(want)}, (report, groupby)

    # The seed's advanced examples.
    chicago = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/opens",
                        params={"groupby": "recipient", "city": "Chicago"})
    assert ordered(chicago, ("recipient",)) == ordered(expected(events, "opened", ("recipient",), (),
                                                                city="Chicago"), ("recipient",))
    top = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/opens", params={"groupby": "country", "limit": 10})
    assert [c["total"] for c in top] == sorted((c["total"] for c in expected(events, "opened", ("country",),
                                                                              ("recipient",))), reverse=True)
    spy = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/clicks?groupby=link&groupby=recipient")
    assert ordered(spy, ()) == ordered(expected(events, "clicked", ("link", "recipient"), ()), ())
    # the seed's curl -d "groupby=recipient&limit=2" .../clicks: the two who clicked most, with their links
    status, two = curl(world, "-G", "-d", "groupby=recipient&limit=2",
                       f"{world.api_url}/v2/{DOMAIN}/campaigns/reports/clicks")
    best = sorted(expected(events, "clicked", ("recipient",), ("link",)), key=lambda i: -i["total"])
    assert status == 200 and [t["total"] for t in two] == [b["total"] for b in best[:2]]
    assert set(two[0]) == {"total", "unique", "recipient"} and set(two[0]["unique"]) == {"link"}
    filtered = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/clicks",
                         params={"groupby": "link", "country": "us", "region": "CA"})
    assert ordered(filtered, ()) == ordered(expected(events, "clicked", ("link",), ("recipient",), country="US",
                                                     region="CA"), ())
    page1, page2 = [await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/clicks",
                              params={"groupby": "link,recipient", "limit": 5, "page": p}) for p in (1, 2)]
    whole = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/clicks", params={"groupby": "link,recipient"})
    assert page1 + page2 == whole[:10]

    # Stats grouped: daily_hour (the seed's limit=2 example too), domain, city, region.
    for groupby in ("daily_hour", "domain", "city", "region"):
        grouped = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/stats", params={"groupby": groupby})
        assert [g[groupby] for g in grouped] == sorted(g[groupby] for g in grouped)
        for g in grouped:
            members = [e for e in events if key(e, groupby) == g[groupby]]
            assert g["total"] == {k: sum(1 for e in members if e["event"] == k) for k in
                                  ("unsubscribed", "opened", "delivered", "clicked", "bounced", "complained")}
            assert g["unique"]["clicked"]["link"] == len({e["url"] for e in members if e["event"] == "clicked"})
            assert g["unique"]["opened"]["recipient"] == len({e["recipient"] for e in members
                                                              if e["event"] == "opened"})
    assert len(await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/stats",
                         params={"groupby": "daily_hour", "limit": 2})) == 2

    # Campaign events: chained filters, place filters, count.
    mine = [e for e in events if e["event"] in ("clicked", "opened") and e["recipient"] == "user0@dest.test"]
    listed = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/events",
                       params=[("event", "clicked"), ("event", "opened"), ("recipient", "user0@dest.test")])
    assert sorted(e["id"] for e in listed) == sorted(e["id"] for e in mine)
    assert [e["timestamp"] for e in listed] == [gmt(e["timestamp"]) for e in
                                                sorted(mine, key=lambda e: -e["timestamp"])]
    assert all(e["tags"] == ["weekly"] and e["user_vars"] == {"n": 1} for e in listed)
    assert all(e["url"] in LINKS for e in listed if e["event"] == "clicked")
    russia = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/events",
                       params={"country": "RU", "region": "MOW", "count": "1"})
    assert russia == {"count": sum(1 for e in events if e.get("geolocation", {}).get("country") == "RU")}

    # Bad parameters: 400 in the JSON error shape.
    for report, params in (("clicks", {"groupby": "planet"}), ("unsubscribes", {"groupby": "recipient"}),
                           ("complaints", {"groupby": "link"}), ("clicks", {"limit": "101"}),
                           ("opens", {"page": "0"}), ("events", {"event": "exploded"}),
                           ("stats", {"groupby": "link"}), ("events", {"count": "perhaps"})):
        refused = await api(world, "GET", f"/v3/{DOMAIN}/campaigns/reports/{report}", params=params, expect=400)
        assert set(refused) == {"message"}, refused


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
