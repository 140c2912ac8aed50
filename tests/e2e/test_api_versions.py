"""The API versions Mailgun's clients call, over raw HTTP: the seed manual's ``/v2`` curl paths (messages,
messages.mime, routes) and its legacy ``GET /v2/{domain}/log`` and ``GET /v2/{domain}/stats`` read back from
real mail; ``/v4/domains`` (mailgun.js 14) and the v4 webhooks (one URL, several event types); the DELETE of
all credentials and the tag aggregates mailgun.js calls."""

from __future__ import annotations

import email.utils
import time
from datetime import datetime, timezone

import aiohttp
import pytest

from tests.e2e.events_support import World, events, running_world
from tests.support.api import api
from tests.support.wait import wait_for

DOMAIN = "example.com"


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "versions") as w:
        yield w


async def settled(world: World, subject: str, kinds: set[str]) -> list[dict]:
    async def check():
        got = [e for e in await events(world, DOMAIN, ascending="yes") if e["message"]["headers"]["subject"] == subject]
        return got if kinds <= {e["event"] for e in got} else None
    return await wait_for(check, what=f"{kinds} of {subject!r}")


async def test_seed_v2_curl_paths_send_mail_and_manage_routes(world):
    # curl -s --user api:KEY https://api.mailgun.net/v2/samples.mailgun.org/messages -F from=... -F o:tag=...
    sent = await api(world, "POST", f"/v2/{DOMAIN}/messages", data={
        "from": "Lovely Me <postmaster@example.com>", "to": "ok-v2@dest.test", "subject": "Hello v2",
        "text": "Testing some Mailgun awesomness!", "o:tag": "newsletters"})
    assert sent["message"] == "Queued. Thank you." and sent["id"].startswith("<")
    form = aiohttp.FormData()
    form.add_field("to", "ok-v2mime@dest.test")
    form.add_field("message", b"From: postmaster@example.com\r\nTo: ok-v2mime@dest.test\r\nSubject: Hello v2 mime\r\n"
                              b"\r\nRaw MIME through /v2.\r\n", filename="message.mime", content_type="message/rfc822")
    assert (await api(world, "POST", f"/v2/{DOMAIN}/messages.mime", data=form))["message"] == "Queued. Thank you."
    await wait_for(lambda: len(world.sink.to("ok-v2@dest.test")) and len(world.sink.to("ok-v2mime@dest.test")),
                   what="both /v2 sends delivered")

    created = await api(world, "POST", "/v2/routes", data=[
        ("priority", "1"), ("description", "Sample route"), ("expression", 'match_recipient(".*@samples.test")'),
        ("action", 'forward("http://127.0.0.1:9/messages/")'), ("action", "stop()")])
    assert created["message"] == "Route has been created"
    route_id = created["route"]["id"]
    assert (await api(world, "GET", f"/v2/routes/{route_id}"))["route"]["description"] == "Sample route"
    listing = await api(world, "GET", "/v2/routes", params={"skip": "0", "limit": "100"})
    assert route_id in [r["id"] for r in listing["items"]]
    assert (await api(world, "PUT", f"/v2/routes/{route_id}", data={"description": "renamed"}))["description"] == \
        "renamed"
    await api(world, "DELETE", f"/v2/routes/{route_id}")
    assert (await api(world, "GET", f"/v2/routes/{route_id}", expect=404))["message"] == "Route not found"


async def test_legacy_log_pages_the_domains_events(world):
    world.send(["ok-log@dest.test", "bad-log@dest.test"], "Log me")
    got = await settled(world, "Log me", {"accepted", "delivered", "failed"})
    message_id = got[0]["message"]["headers"]["message-id"]
    every = await events(world, DOMAIN)  # newest first, as the log
    log = await api(world, "GET", f"/v2/{DOMAIN}/log", params={"limit": "300"})
    assert log["total_count"] == len(every) and len(log["items"]) == len(every)
    assert set(log["items"][0]) == {"hap", "created_at", "message", "type", "message_id"}
    mine = [i for i in log["items"] if i["message_id"] == message_id]
    assert sorted(i["hap"] for i in mine) == ["accepted", "accepted", "bounced", "delivered"]
    delivered = next(i for i in mine if i["hap"] == "delivered")
    assert delivered["message"] == "Delivered: Sender <postmaster@example.com> \u2192 ok-log@dest.test 'Log me'"
    assert delivered["type"] == "info"
    bounced = next(i for i in mine if i["hap"] == "bounced")
    assert bounced["type"] == "error" and bounced["message"].startswith(
        "Bounced: Sender <postmaster@example.com> \u2192 bad-log@dest.test 'Log me' Server response: 550")
    stamp = email.utils.parsedate_to_datetime(delivered["created_at"])
    assert delivered["created_at"].endswith(" GMT") and abs(stamp.timestamp() - time.time()) < 60
    # skip/limit: "fetch a single 51st log message skipping the first 50", here the 2nd after the 1st
    second = await api(world, "GET", f"/v2/{DOMAIN}/log", params={"skip": "1", "limit": "1"})
    assert second["total_count"] == len(every) and second["items"] == log["items"][1:2]
    beyond = await api(world, "GET", f"/v2/{DOMAIN}/log", params={"skip": str(len(every) + 5)})
    assert beyond == {"total_count": len(every), "items": []}
    for bad in ({"limit": "0"}, {"limit": "301"}, {"skip": "-1"}, {"skip": "x"}):
        assert "message" in await api(world, "GET", f"/v2/{DOMAIN}/log", params=bad, expect=400)


async def test_legacy_stats_count_the_days_events_by_tag(world):
    world.send(["ok-st1@dest.test", "ok-st2@dest.test"], "Stats me", tags=("september_digest",))
    world.send(["bad-st@dest.test"], "Stats me too", tags=("digests",))
    await settled(world, "Stats me", {"delivered"})
    await settled(world, "Stats me too", {"failed"})
    counts = {e: 0 for e in ("sent", "delivered", "bounced")}
    for e in await events(world, DOMAIN):  # what the counters must say, from the events themselves
        if e["event"] == "accepted" and e["flags"]["is-authenticated"]:
            counts["sent"] += 1
        elif e["event"] == "delivered":
            counts["delivered"] += 1
        elif e["event"] == "failed" and e["severity"] == "permanent" and e["reason"] == "bounce":
            counts["bounced"] += 1
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    got = await api(world, "GET", f"/v2/{DOMAIN}/stats",
                    params=[("event", "sent"), ("event", "delivered"), ("event", "bounced"), ("start-date", today)])
    assert got["total_count"] == 3
    by_event = {i["event"]: i for i in got["items"]}
    assert {e: by_event[e]["total_count"] for e in counts} == counts
    assert by_event["sent"]["tags"]["september_digest"] == 2 and by_event["sent"]["tags"]["digests"] == 1
    assert by_event["delivered"]["tags"]["september_digest"] == 2 and "digests" not in by_event["delivered"]["tags"]
    assert by_event["bounced"]["tags"] == {"digests": 1}
    sent = by_event["sent"]
    assert set(sent) == {"total_count", "created_at", "tags", "id", "event"}
    assert sent["created_at"] == datetime.now(timezone.utc).strftime("%a, %d %b %Y 00:00:00 GMT")
    paged = await api(world, "GET", f"/v2/{DOMAIN}/stats",
                      params=[("event", "sent"), ("event", "delivered"), ("event", "bounced"), ("skip", "1"),
                              ("limit", "1")])
    assert paged["total_count"] == 3 and paged["items"] == got["items"][1:2]
    tomorrow = await api(world, "GET", f"/v2/{DOMAIN}/stats",
                         params={"event": "sent", "start-date": time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400))})
    assert tomorrow == {"total_count": 0, "items": []}
    for bad in ({"event": "bogus"}, {"start-date": "yesterday"}, {"limit": "0"}):
        assert "message" in await api(world, "GET", f"/v2/{DOMAIN}/stats", params=bad, expect=400)


async def test_v4_domains_as_mailgun_js_calls_them(world):
    listed = await api(world, "GET", "/v4/domains")
    mine = next(d for d in listed["items"] if d["name"] == DOMAIN)
    for key in ("id", "is_disabled", "web_prefix", "web_scheme", "use_automatic_sender_security", "state",
                "created_at", "smtp_login", "spam_action", "wildcard", "require_tls", "skip_verification", "type"):
        assert key in mine, key
    created = await api(world, "POST", "/v4/domains", data={"name": "v4.test", "dkim_key_size": "1024",
                                                            "wildcard": "true"})
    assert created["domain"]["name"] == "v4.test" and created["domain"]["wildcard"] is True
    got = await api(world, "GET", "/v4/domains/v4.test", params={"h:extended": "false", "h:with_dns": "true"})
    assert got["domain"]["name"] == "v4.test"
    assert any(r["name"] == "k1._domainkey.v4.test" for r in got["sending_dns_records"])
    assert (await api(world, "PUT", "/v4/domains/v4.test/verify"))["domain"]["name"] == "v4.test"
    for login in ("alice", "bob"):
        await api(world, "POST", "/v3/domains/v4.test/credentials", data={"login": login, "password": "s3cret-pw"})
    gone = await api(world, "DELETE", "/v3/domains/v4.test/credentials")
    assert gone == {"message": "All domain credentials have been deleted", "count": 2}
    assert (await api(world, "GET", "/v3/domains/v4.test/credentials"))["items"] == []
    await api(world, "DELETE", "/v4/domains/v4.test")
    await api(world, "GET", "/v4/domains/v4.test", expect=404)


async def test_v4_webhooks_one_url_for_several_events(world):
    base, v4 = "/v3/domains/hooks4.test/webhooks", "/v4/domains/hooks4.test/webhooks"
    a, b = "http://127.0.0.1:9/a", "http://127.0.0.1:9/b"
    created = await api(world, "POST", v4, data=[("url", a), ("event_types", "delivered"), ("event_types", "opened")])
    assert {h: e["urls"] for h, e in created["webhooks"].items()} == {"delivered": [a], "opened": [a]}
    await api(world, "POST", v4, data=[("url", b), ("event_types", "delivered,clicked")])
    hooks = (await api(world, "GET", base))["webhooks"]
    assert {h: e["urls"] for h, e in hooks.items()} == {"delivered": [a, b], "opened": [a], "clicked": [b]}
    # PUT: the URL serves exactly these types now
    updated = await api(world, "PUT", v4, data=[("url", a), ("event_types", "clicked")])
    assert {h: sorted(e["urls"]) for h, e in updated["webhooks"].items()} == {"delivered": [b], "clicked": [a, b]}
    deleted = await api(world, "DELETE", v4, params=[("url", b)])
    assert {h: e["urls"] for h, e in deleted["webhooks"].items()} == {"clicked": [a]}
    for bad in ([("url", a)], [("event_types", "delivered")], [("url", a), ("event_types", "bogus")],
                [("url", "ftp://x/y"), ("event_types", "delivered")]):
        assert "message" in await api(world, "POST", v4, data=bad, expect=400)
    await api(world, "DELETE", v4, expect=400)  # no url


async def test_tag_aggregates_as_mailgun_js_calls_them(world):
    world.send(["ok-agg@dest.test"], "Aggregate me", tags=("agg",))
    await settled(world, "Aggregate me", {"delivered"})
    base = f"/v3/{DOMAIN}/tags/agg/stats/aggregates"
    assert await api(world, "GET", f"{base}/countries") == {"tag": "agg", "countries": {}}
    assert await api(world, "GET", f"{base}/devices") == {"tag": "agg", "devices": {}}
    assert "without tags" in (await api(world, "GET", f"{base}/providers", expect=400))["message"]
    await api(world, "GET", f"/v3/{DOMAIN}/tags/never-seen/stats/aggregates/devices", expect=404)
