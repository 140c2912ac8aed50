"""Event webhooks end to end: CRUD over the API, config-file webhooks, signed JSON verified with the seed
manual's code, retries (500 then 200: delivered once), 406 and ``delivered`` not retried, the legacy form
format, a hanging receiver that delays neither mail nor other receivers, and ``mtad webhooks redeliver``.

Runs on both store backends (``store_backend``: SQLite and PostgreSQL).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from tests.e2e.events_support import SIGNING_KEY, World, running_world, events, seed_verify
from tests.support.api import api
from tests.support.wait import wait_for
from tests.support.stores import both_backends as store_backend  # noqa: F401,E402 (fixture: on both backends)


HANG_TIMEOUT = 5.0


def with_config_webhooks(cfg: dict, world: World) -> None:
    cfg["webhooks"]["domains"] = {"example.com": {"delivered": {"urls": [world.receiver.url("cfg-delivered")]}}}
    cfg["webhooks"]["timeout"] = f"{HANG_TIMEOUT:g}s"


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs, daemons_store):
    with running_world(tmp_path_factory, certs, "webhooks", with_config_webhooks) as w:
        yield w


def rows(world: World, url_path: str) -> list[tuple]:
    return world.mtad.query("SELECT state, attempts, last_status FROM webhook_deliveries WHERE url = ? ORDER BY id",
                            (world.receiver.url(url_path),))


async def test_webhooks_crud_over_the_api(world):
    base = "/v3/domains/crud.test/webhooks"
    urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    created = await api(world, "POST", base, data=[("id", "opened"), ("url", urls[0]), ("url", urls[1])])
    assert created == {"message": "Webhook has been created", "webhook": {"urls": urls, "format": "json"}}
    listed = await api(world, "GET", base)
    assert listed["webhooks"]["opened"]["urls"] == urls
    assert (await api(world, "GET", f"{base}/opened"))["webhook"]["urls"] == urls
    updated = await api(world, "PUT", f"{base}/opened", data=[("url", "http://127.0.0.1:9/c"), ("format", "legacy")])
    assert updated["message"] == "Webhook has been updated"
    assert (await api(world, "GET", f"{base}/opened"))["webhook"] == {"urls": ["http://127.0.0.1:9/c"],
                                                                      "format": "legacy", "source": "api"}
    await api(world, "POST", base, data=[("id", "opened"), ("url", urls[0])], expect=400)  # exists
    await api(world, "POST", base, data=[("id", "bounced"), ("url", urls[0])], expect=400)  # unknown id
    await api(world, "POST", base, data=[("id", "clicked")] + [("url", f"http://127.0.0.1:9/{i}") for i in range(4)],
              expect=400)  # at most 3 URLs
    await api(world, "POST", base, data=[("id", "clicked"), ("url", "ftp://x/y")], expect=400)
    deleted = await api(world, "DELETE", f"{base}/opened")
    assert deleted == {"message": "Webhook has been deleted", "webhook": {"urls": ["http://127.0.0.1:9/c"]}}
    assert (await api(world, "GET", f"{base}/opened", expect=404))["message"] == "Webhook not found"
    # the config file's webhook is listed, and read-only here
    cfg_hook = (await api(world, "GET", "/v3/domains/example.com/webhooks"))["webhooks"]["delivered"]
    assert cfg_hook["source"] == "config" and cfg_hook["urls"] == [world.receiver.url("cfg-delivered")]
    await api(world, "PUT", "/v3/domains/example.com/webhooks/delivered", data=[("url", urls[0])], expect=400)
    await api(world, "DELETE", "/v3/domains/example.com/webhooks/delivered", expect=400)


async def test_config_webhook_posts_signed_json_with_the_event_id(world):
    world.send(["signed@dest.test"], "Signed")
    hits = await wait_for(lambda: [h for h in world.receiver.to("cfg-delivered")
                                   if h.json()["event-data"]["recipient"] == "signed@dest.test"], what="the webhook")
    assert len(hits) == 1
    hit = hits[0]
    body = hit.json()
    sig = body["signature"]
    assert seed_verify(SIGNING_KEY, sig["token"], sig["timestamp"], sig["signature"])
    assert not seed_verify("key-some-other-key", sig["token"], sig["timestamp"], sig["signature"])
    assert abs(int(sig["timestamp"]) - time.time()) < 60 and len(sig["token"]) == 50
    data = body["event-data"]
    assert data["event"] == "delivered" and hit.headers["X-Mtad-Event-Id"] == data["id"]
    assert hit.headers["Content-Type"].startswith("application/json")
    stored = await events(world, "example.com", recipient="signed@dest.test", event="delivered")
    assert stored == [data]  # the webhook carries the event exactly as the events API shows it


async def test_a_failed_post_is_retried_and_then_delivered_once(world):
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data=[("id", "permanent_fail"), ("url", world.receiver.url("fail-once"))])
    world.receiver.modes["fail-once"] = "fail-once"
    world.send(["bad-retry@dest.test"], "Will bounce")
    hits = await wait_for(lambda: len(world.receiver.to("fail-once")) >= 2 and world.receiver.to("fail-once"),
                          what="the retry")
    assert [h.status for h in hits] == [500, 200]
    assert hits[0].json()["event-data"]["id"] == hits[1].json()["event-data"]["id"]
    assert [h.headers["X-Mtad-Webhook-Attempt"] for h in hits] == ["1", "2"]
    assert hits[1].at - hits[0].at >= 0.9  # the (test) schedule: 1 s
    await wait_for(lambda: rows(world, "fail-once") == [("done", 2, 200)], what="the row to be done")
    await asyncio.sleep(1.5)
    assert len(world.receiver.to("fail-once")) == 2  # delivered once, never again


async def test_406_stops_retries_and_delivered_webhooks_are_not_retried(world):
    base = "/v3/domains/other.org/webhooks"
    await api(world, "POST", base, data=[("id", "accepted"), ("url", world.receiver.url("refuse"))])
    await api(world, "POST", base, data=[("id", "delivered"), ("url", world.receiver.url("fail"))])
    world.receiver.modes.update({"refuse": "refuse", "fail": "fail"})
    world.send(["ok@dest.test"], "Refused hooks", sender="app@other.org", login="app@other.org")
    await wait_for(lambda: world.receiver.to("refuse") and world.receiver.to("fail"), what="both webhooks")
    await wait_for(lambda: rows(world, "refuse") == [("failed", 1, 406)] and rows(world, "fail") == [("failed", 1, 500)],
                   what="both rows to fail")
    await asyncio.sleep(2.5)  # longer than the whole retry schedule
    assert len(world.receiver.to("refuse")) == 1 and len(world.receiver.to("fail")) == 1


async def test_legacy_form_format_for_older_applications(world):
    await api(world, "POST", "/v3/domains/other.org/webhooks",
              data=[("id", "permanent_fail"), ("url", world.receiver.url("legacy")), ("format", "legacy")])
    world.send(["bad-legacy@dest.test"], "Legacy bounce", sender="app@other.org", login="app@other.org",
               tags=("digest",), variables={"user-id": "7"})
    hit = (await wait_for(lambda: world.receiver.to("legacy"), what="the legacy webhook"))[0]
    assert hit.headers["Content-Type"].startswith("application/x-www-form-urlencoded")
    form = dict(hit.fields)
    assert form["event"] == "bounced" and form["recipient"] == "bad-legacy@dest.test" and form["domain"] == "other.org"
    assert form["code"] == "5.1.1" and "User unknown" in form["error"]
    assert form["tag"] == "digest" and form["user-id"] == "7" and form["Message-Id"].startswith("<")
    headers = json.loads(form["message-headers"])
    assert ["Subject", "Legacy bounce"] in headers and any(name == "Received" for name, _ in headers)
    # django-anymail takes a legacy event's metadata from X-Mailgun-Variables in message-headers (only)
    variables = [json.loads(value) for name, value in headers if name == "X-Mailgun-Variables"]
    assert variables == [{"user-id": "7"}]
    assert seed_verify(SIGNING_KEY, form["token"], form["timestamp"], form["signature"])
    assert hit.headers["X-Mtad-Event-Id"]


async def test_a_hanging_receiver_delays_neither_mail_nor_other_receivers(world):
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data=[("id", "accepted"), ("url", world.receiver.url("hang")), ("url", world.receiver.url("accepted-ok"))])
    world.receiver.modes["hang"] = "hang"
    rcpts = [f"flow{i}@dest.test" for i in range(6)]
    for rcpt in rcpts:
        world.send([rcpt], "Keeps flowing")
    # mail is delivered and the healthy receivers get every event while the hanging one holds its slots
    await wait_for(lambda: all(len(world.sink.to(r)) for r in rcpts), 10, "the mail to be delivered")
    await wait_for(lambda: len(world.receiver.to("accepted-ok")) >= 6, 10, "the healthy receiver")
    await wait_for(lambda: {h.json()["event-data"]["recipient"] for h in world.receiver.to("cfg-delivered")} >= set(rcpts),
                   10, "the delivered webhooks")
    # all of that happened while the first hanging POSTs still held their slots (before their timeout)
    first_hang = min(h.at for h in world.receiver.to("hang"))
    healthy = world.receiver.to("accepted-ok") + world.receiver.to("cfg-delivered")
    assert max(h.at for h in healthy) < first_hang + HANG_TIMEOUT
    in_flight = [h for h in world.receiver.to("hang") if h.at < first_hang + HANG_TIMEOUT - 0.5]
    assert 1 <= len(in_flight) <= 2  # webhooks.max_per_url: the dead receiver holds two slots at most
    events_api = await events(world, "example.com", event="delivered", ascending="yes")
    assert {e["recipient"] for e in events_api} >= set(rcpts)
    await api(world, "DELETE", "/v3/domains/example.com/webhooks/accepted")


async def test_redeliver_replays_events_to_the_current_webhooks(world):
    since = time.time() - 0.5
    world.send(["replay1@dest.test", "replay2@dest.test"], "Replayed")

    def posted() -> set[str]:
        return {h.json()["event-data"]["id"] for h in world.receiver.to("cfg-delivered")
                if h.json()["event-data"]["recipient"].startswith("replay")}
    first = await wait_for(lambda: len(posted()) == 2 and posted(), 10, "the first POSTs")
    until = time.time() + 0.5
    out = subprocess.run([sys.executable, "-m", "mtad", "webhooks", "redeliver", "--config", str(world.mtad.config_path),
                          "--since", str(since), "--until", str(until), "--event", "delivered", "--domain", "example.com"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    window = {e["id"] for e in await events(world, "example.com", event="delivered", begin=str(since), end=str(until))}
    assert first <= window and int(out.stdout.split()[0]) == len(window)

    def replayed():
        seen = [h.json()["event-data"]["id"] for h in world.receiver.to("cfg-delivered")]
        return all(seen.count(i) == 2 for i in window)
    await wait_for(replayed, 10, "the replayed events")
