"""Events of real mail (sends, deliveries, hard and soft bounces, routed inbound mail) read back through
``GET /v3/{domain}/events`` and ``POST /v1/analytics/logs``: Mailgun's shape, every filter, boolean
expressions, paging both ways, and paging links that keep working while new events arrive.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.e2e.events_support import World, events
from tests.support.api import api
from tests.support.wait import wait_for
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    w = World(tmp_path_factory.mktemp("events"), certs)
    problems: list[str] = []
    try:
        w.started = time.time() - 1
        w.send(["ok1@dest.test", "ok2@yahoo.test"], "Alpha report", tags=("news",), variables={"order": "1"})
        w.send(["bad1@dest.test"], "Bravo", tags=("alerts",))
        w.send(["soft1@dest.test"], "Charlie")
        w.send(["ok3@dest.test"], "Other domain", sender="app@other.org", login="app@other.org")
        w.receive("someone@inbound.test", "Inbound delta")
        yield w
    finally:
        problems = w.close()
    assert not problems, "\n".join(problems)


async def settled(world: World) -> dict[str, list[dict]]:
    """Waits until all the module's mail has its final events; returns them per domain."""
    async def check():
        got = {d: await events(world, d, ascending="yes") for d in ("example.com", "other.org", "inbound.test")}
        ex = [e["event"] for e in got["example.com"]]
        if ex.count("accepted") == 4 and ex.count("delivered") == 2 and ex.count("failed") == 2 \
                and len(got["other.org"]) >= 2 and len(got["inbound.test"]) == 2:
            return got
        return None
    return await wait_for(check, 20, "the events of the module's mail")


async def test_events_of_real_mail_have_mailguns_shape(world):
    got = await settled(world)
    ex = got["example.com"]
    delivered = next(e for e in ex if e["event"] == "delivered" and e["recipient"] == "ok1@dest.test")
    assert isinstance(delivered["timestamp"], float) and delivered["timestamp"] >= world.started
    assert delivered["log-level"] == "info" and delivered["recipient-domain"] == "dest.test"
    headers = delivered["message"]["headers"]
    assert headers["subject"] == "Alpha report" and "postmaster@example.com" in headers["from"]
    assert headers["message-id"] and "<" not in headers["message-id"] and delivered["message"]["size"] > 0
    assert delivered["tags"] == ["news"] and delivered["user-variables"] == {"order": "1"}
    assert delivered["envelope"]["sender"] == "postmaster@example.com"
    assert delivered["envelope"]["targets"] == "ok1@dest.test" and delivered["envelope"]["transport"] == "smtp"
    assert "sending-ip" in delivered["envelope"]
    assert delivered["flags"]["is-authenticated"] is True and delivered["flags"]["is-routed"] is False
    assert delivered["flags"]["is-test-mode"] is False and delivered["flags"]["is-delayed-bounce"] is False
    status = delivered["delivery-status"]
    assert status["code"] == 250 and status["attempt-no"] == 1 and status["mx-host"] == "mx.sink.test"
    assert {"enhanced-code", "message", "description", "tls", "certificate-verified", "session-seconds"} <= set(status)
    bounce = next(e for e in ex if e["event"] == "failed" and e["severity"] == "permanent")
    assert (bounce["recipient"], bounce["reason"], bounce["log-level"]) == ("bad1@dest.test", "bounce", "error")
    assert bounce["delivery-status"]["code"] == 550 and bounce["delivery-status"]["enhanced-code"] == "5.1.1"
    soft = next(e for e in ex if e["event"] == "failed" and e["severity"] == "temporary")
    assert (soft["recipient"], soft["log-level"]) == ("soft1@dest.test", "warn")
    assert soft["delivery-status"]["code"] == 451 and soft["delivery-status"]["retry-seconds"] > 0
    accepted = [e for e in ex if e["event"] == "accepted"]
    assert all(e["flags"]["is-authenticated"] and e["method"] == "smtp" for e in accepted)
    assert len({e["id"] for e in ex}) == len(ex)  # ids are unique
    # routed inbound mail: accepted on the receiving domain, then delivered to the route's URL
    inbound = {e["event"]: e for e in got["inbound.test"]}
    assert inbound["accepted"]["flags"]["is-authenticated"] is False
    assert inbound["delivered"]["flags"]["is-routed"] is True
    assert inbound["delivered"]["envelope"]["transport"] == "http"
    assert inbound["delivered"]["recipient"] == "someone@inbound.test"
    assert len(world.receiver.to("route")) == 1


@pytest.mark.parametrize("params, expected", [
    ({"event": "failed"}, 2),
    ({"event": "failed OR delivered"}, 4),
    ({"event": "NOT accepted"}, 4),
    ({"event": "NOT (accepted OR delivered)"}, 2),
    ({"recipient": "OK1@dest.test"}, 2),
    ({"recipient": "ok1@dest.test OR bad1@dest.test"}, 4),
    ({"recipient": "NOT ok1@dest.test", "event": "accepted"}, 3),
    ({"from": "postmaster@example.com"}, 8),
    ({"subject": "alpha"}, 4),
    ({"subject": '"Alpha report"'}, 4),
    ({"tags": "news"}, 4),
    ({"tags": "news OR alerts"}, 6),
    ({"tags": "NOT news", "event": "accepted"}, 2),
    ({"severity": "temporary"}, 1),
    ({"severity": "permanent"}, 1),
    ({"event": "failed", "severity": "NOT temporary"}, 1),
])
async def test_filters_and_boolean_expressions(world, params, expected):
    await settled(world)
    got = await events(world, "example.com", **params)
    assert len(got) == expected, [(e["event"], e["recipient"]) for e in got]


async def test_message_id_and_time_range_filters(world):
    ex = (await settled(world))["example.com"]
    alpha = next(e for e in ex if e["message"]["headers"]["subject"] == "Alpha report")
    mid = alpha["message"]["headers"]["message-id"]
    assert len(await events(world, "example.com", **{"message-id": f"<{mid}>"})) == 4
    first, last = ex[0]["timestamp"], ex[-1]["timestamp"]
    window = await events(world, "example.com", begin=str(first), end=str(last))
    assert [e["id"] for e in window] == [e["id"] for e in ex]  # begin < end: ascending
    backwards = await events(world, "example.com", begin=str(last), end=str(first))
    assert [e["id"] for e in backwards] == [e["id"] for e in reversed(ex)]
    rfc = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(last + 3600))
    assert await events(world, "example.com", begin=rfc, ascending="yes") == []


async def test_paging_both_ways(world):
    ex = (await settled(world))["example.com"]
    for ascending in ("yes", "no"):
        expected = [e["id"] for e in (ex if ascending == "yes" else reversed(ex))]
        page = await api(world, "GET", "/v3/example.com/events", params={"limit": "3", "ascending": ascending})
        pages = []
        while page["items"]:
            assert len(page["items"]) <= 3
            pages.append([e["id"] for e in page["items"]])
            page = await api(world, "GET", page["paging"]["next"])
        assert [i for p in pages for i in p] == expected
        # now walk back with previous from the empty page after the end
        back = []
        page = await api(world, "GET", page["paging"]["previous"])
        while page["items"]:
            back = [e["id"] for e in page["items"]] + back
            page = await api(world, "GET", page["paging"]["previous"])
        assert back == expected
        last = await api(world, "GET", page["paging"]["last"])
        assert [e["id"] for e in last["items"]] == expected[-3:]
        first = await api(world, "GET", last["paging"]["first"])
        assert [e["id"] for e in first["items"]] == expected[:3]


async def test_paging_links_keep_working_while_new_events_arrive(world):
    await settled(world)
    page = await api(world, "GET", "/v3/other.org/events", params={"limit": "1", "begin": str(world.started)})
    seen = [e["id"] for e in page["items"]]
    assert len(seen) == 1
    world.send(["ok4@dest.test"], "Later", sender="app@other.org", login="app@other.org")
    deadline = time.monotonic() + 15
    link = page["paging"]["next"]
    while len(seen) < 4 and time.monotonic() < deadline:  # 2 old + accepted and delivered of the new mail
        page = await api(world, "GET", link)
        seen += [e["id"] for e in page["items"]]
        link = page["paging"]["next"]
        if not page["items"]:
            await asyncio.sleep(0.2)
    assert len(seen) == 4 and len(set(seen)) == 4
    everything = await events(world, "other.org", ascending="yes")
    assert [e["id"] for e in everything] == seen


async def test_analytics_logs_query(world):
    ex = (await settled(world))["example.com"]
    body = {"start": time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(world.started - 60)),
            "events": ["failed"], "include_totals": True,
            "filter": {"AND": [{"attribute": "domain", "comparator": "=",
                                "values": [{"label": "example.com", "value": "example.com"}]}]},
            "pagination": {"sort": "timestamp:asc", "limit": 1}}
    first = await api(world, "POST", "/v1/analytics/logs", json=body)
    assert first["pagination"]["total"] == 2 and len(first["items"]) == 1
    assert first["items"][0]["domain"] == {"name": "example.com"} and first["items"][0]["@timestamp"].endswith("Z")
    second = await api(world, "POST", "/v1/analytics/logs",
                       json={**body, "pagination": {**body["pagination"], "token": first["pagination"]["next"]}})
    assert len(second["items"]) == 1 and second["items"][0]["id"] != first["items"][0]["id"]
    ids = {first["items"][0]["id"], second["items"][0]["id"]}
    assert ids == {e["id"] for e in ex if e["event"] == "failed"}
    back = await api(world, "POST", "/v1/analytics/logs",
                     json={**body, "pagination": {**body["pagination"], "token": second["pagination"]["previous"]}})
    assert back["items"][0]["id"] == first["items"][0]["id"]
    # every domain, newest first; attribute comparators
    everything = await api(world, "POST", "/v1/analytics/logs", json={"start": body["start"], "include_totals": True,
                                                                    "pagination": {"limit": 1000}})
    assert everything["pagination"]["total"] >= 12
    stamps = [i["timestamp"] for i in everything["items"]]
    assert stamps == sorted(stamps, reverse=True)
    not_news = await api(world, "POST", "/v1/analytics/logs", json={
        "start": body["start"], "metric_events": ["delivered_smtp"],
        "filter": {"AND": [{"attribute": "tags", "comparator": "!=", "values": [{"value": "news"}]},
                           {"attribute": "domain", "comparator": "=", "values": [{"value": "example.com"}]}]}})
    assert not_news["items"] == []  # both example.com deliveries were tagged news
    routed = await api(world, "POST", "/v1/analytics/logs", json={
        "start": body["start"], "metric_events": ["delivered_http", "accepted_incoming"]})
    assert sorted(i["event"] for i in routed["items"]) == ["accepted", "delivered"]
    assert {i["domain"]["name"] for i in routed["items"]} == {"inbound.test"}


@pytest.mark.parametrize("params", [{"limit": "301"}, {"event": "failed OR"}, {"begin": "yesterday"},
                                    {"begin": "1", "end": "2", "ascending": "no"}])
async def test_bad_queries_are_refused_with_a_message(world, params):
    data = await api(world, "GET", "/v3/example.com/events", params=params, expect=400)
    assert data["message"]
    assert (await api(world, "GET", "/v3/example.com/events/garbage!", expect=400))["message"]
    assert (await api(world, "POST", "/v1/analytics/logs", json={"pagination": {"limit": 5000}}, expect=400))["message"]
