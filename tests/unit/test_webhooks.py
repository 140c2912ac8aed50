"""Webhook rows written with events, claiming with a per-URL cap, retry decisions, payload formats, retention."""

import hashlib
import hmac
import json

import pytest

from mtad.events import shape
from mtad.events import webhooks
from mtad.store import events
from mtad.config.schema import WebhookConfig, WebhooksConfig
from mtad.net.httpclient import HttpResult
from mtad.store import webhooks as hookstore
from mtad.store import work
from mtad.store.engine import connect
from mtad.store.migrations.sqlite import migrate

KEY = "key-signing"


@pytest.fixture
def conn(tmp_path):
    c = connect(tmp_path / "db.sqlite3")
    migrate(c, "test")
    events.invalidate_webhooks()
    yield c
    events.invalidate_webhooks()
    c.close()


def event(kind="delivered", **extra):
    e = shape.base_event(kind, timestamp=1000.0, recipient="Bob@dest.test", queue_id="Q1",
                          message=shape.message_part({"message-id": "m1@x", "from": "a@example.com", "to": "bob@dest.test",
                                                       "subject": "Hi"}, 10),
                          options={"tags": ["t1"], "variables": {"order": "42", "n": 1}},
                          envelope={"sender": "a@example.com", "targets": "bob@dest.test"}, flags={}, extra=extra)
    return e


def test_record_queues_one_post_per_url_of_the_matching_webhook(conn):
    cfg = WebhooksConfig(domains={"example.com": {
        "delivered": WebhookConfig(("http://h/a", "http://h/b")),
        "permanent_fail": WebhookConfig(("http://h/fail",), "legacy")}})
    woken, seen = [], []
    conn.bus = events.EventBus()  # what the store's writer connection carries
    conn.bus.on_webhook_work(lambda: woken.append(1))
    conn.bus.on_event(lambda domain, e: seen.append((domain, e["event"])))
    hookstore.sync_config(conn, cfg, 1.0)
    events.record(conn, "example.com", event("delivered"))
    events.record(conn, "example.com", event("failed", severity="temporary"))  # no temporary_fail webhook
    events.record(conn, "example.com", event("failed", severity="permanent", reason="bounce"))
    events.record(conn, "other.org", event("delivered"))
    conn.bus = None
    rows = conn.execute("SELECT domain, url, format, state FROM webhook_deliveries ORDER BY id").fetchall()
    assert rows == [("example.com", "http://h/a", "json", "queued"), ("example.com", "http://h/b", "json", "queued"),
                    ("example.com", "http://h/fail", "legacy", "queued")]
    assert len(woken) == 2
    assert seen == [("example.com", "delivered"), ("example.com", "failed"), ("example.com", "failed"),
                    ("other.org", "delivered")]
    # an API change is seen by the next event once the cache is invalidated
    hookstore.put_webhook(conn, "example.com", "temporary_fail", ["http://h/t"], "json", 2.0, create=True)
    events.record(conn, "example.com", event("failed", severity="temporary"))
    assert conn.execute("SELECT count(*) FROM webhook_deliveries WHERE url = 'http://h/t'").fetchone()[0] == 1


def test_config_webhooks_are_read_only_and_resynced(conn):
    cfg = WebhooksConfig(domains={"example.com": {"delivered": WebhookConfig(("http://h/a",))}})
    hookstore.sync_config(conn, cfg, 1.0)
    with pytest.raises(hookstore.WebhookError):
        hookstore.delete_webhook(conn, "example.com", "delivered")
    hookstore.put_webhook(conn, "example.com", "opened", ["http://h/o"], "json", 1.0, create=True)
    hookstore.sync_config(conn, WebhooksConfig(), 2.0)
    assert hookstore.list_webhooks(conn, "example.com") == {"opened": hookstore.Webhook("opened", ("http://h/o",),
                                                                                        "json", "api")}
    with pytest.raises(webhooks.WebhookError):
        webhooks.check_change("opened", ["http://a", "http://b", "http://c", "http://d"], "json")
    with pytest.raises(webhooks.WebhookError):
        webhooks.check_change("bounced", ["http://a"], "json")


def test_claim_caps_posts_per_url(conn):
    for i in range(10):
        events.add_webhook_work(conn, "example.com", f"slow{i}", [("http://slow/", "json")], 1.0 + i)
    for i in range(3):
        events.add_webhook_work(conn, "example.com", f"fast{i}", [("http://fast/", "json")], 100.0 + i)
    first = work.claim_webhook_work(conn, "w", 200.0, 50, {}, 4)
    assert [r.url for r in first].count("http://slow/") == 4
    assert [r.url for r in first].count("http://fast/") == 3
    # with the slow URL at its cap, the rest of its backlog is not even scanned
    again = work.claim_webhook_work(conn, "w", 200.0, 50, {"http://slow/": 4}, 4, scan=2)
    assert again == []


def test_retry_decisions():
    schedule = (600.0, 600.0)
    ok, bad, refused, timeout = HttpResult(204), HttpResult(500), HttpResult(406), HttpResult(None, "timed out")
    assert webhooks.decide("opened", ok, 1, schedule, 0) == ("done", None)
    assert webhooks.decide("opened", bad, 1, schedule, 0) == ("deferred", 600.0)
    assert webhooks.decide("opened", timeout, 2, schedule, 0) == ("deferred", 600.0)
    assert webhooks.decide("opened", bad, 3, schedule, 0) == ("failed", None)
    assert webhooks.decide("opened", refused, 1, schedule, 0) == ("failed", None)
    assert webhooks.decide("delivered", bad, 1, schedule, 0) == ("failed", None)  # delivered: POSTed once
    assert [d.seconds for d in WebhooksConfig().retry_schedule] == [600] * 3 + [1800] * 4  # the seed's schedule


def seed_verify(api_key, token, timestamp, signature):
    """The seed manual's verify(), with the str -> bytes Python 3 needs."""
    return signature == hmac.new(key=api_key.encode(), msg='{}{}'.format(timestamp, token).encode(),
                                 digestmod=hashlib.sha256).hexdigest()


def test_json_body_is_signed_and_carries_the_stored_event():
    e = event()
    body = json.loads(webhooks.json_body(json.dumps(e), KEY))
    assert body["event-data"] == e
    sig = body["signature"]
    assert len(sig["token"]) == 50 and seed_verify(KEY, sig["token"], sig["timestamp"], sig["signature"])


def test_legacy_form_fields():
    bounce = event("failed", severity="permanent", reason="bounce",
                   **{"delivery-status": {"code": 550, "enhanced-code": "5.1.1", "message": "No such user",
                                          "description": "mailbox unknown"}})
    form = webhooks.legacy_fields(bounce, "example.com", KEY, [["Subject", "Hi"], ["From", "a@example.com"]])
    d = dict(form)
    assert (d["event"], d["recipient"], d["domain"], d["code"], d["error"]) == (
        "bounced", "Bob@dest.test", "example.com", "5.1.1", "No such user")
    assert json.loads(d["message-headers"]) == [["Subject", "Hi"], ["From", "a@example.com"],
                                                ["X-Mailgun-Variables", json.dumps({"order": "42", "n": 1})]]
    assert d["Message-Id"] == "<m1@x>" and d["tag"] == "t1" and d["order"] == "42" and d["n"] == "1"
    assert seed_verify(KEY, d["token"], d["timestamp"], d["signature"])
    dropped = dict(webhooks.legacy_fields(event("failed", severity="permanent", reason="suppress-bounce"), "e", KEY))
    assert (dropped["event"], dropped["reason"]) == ("dropped", "hardfail")
    maxfails = dict(webhooks.legacy_fields(event("failed", severity="permanent", reason="old"), "e", KEY))
    assert (maxfails["event"], maxfails["reason"]) == ("dropped", "maxfails")
    assert dict(webhooks.legacy_fields(event("delivered"), "e", KEY))["event"] == "delivered"


def test_redeliver_queues_stored_events_again(conn):
    hookstore.sync_config(conn, WebhooksConfig(domains={"example.com": {
        "delivered": WebhookConfig(("http://h/d",)), "accepted": WebhookConfig(("http://h/a",))}}), 1.0)
    for kind in ("accepted", "delivered", "delivered"):
        events.record(conn, "example.com", event(kind))
    conn.execute("UPDATE webhook_deliveries SET state = 'failed'")
    assert hookstore.redeliver(conn, since=999, kinds=["delivered"]) == 2
    assert hookstore.redeliver(conn, since=1001) == 0
    assert hookstore.redeliver(conn, since=0, url="http://h/a") == 1
    assert conn.execute("SELECT count(*) FROM webhook_deliveries WHERE state = 'queued'").fetchone()[0] == 3


def test_retention_prunes_in_batches(conn):
    for i in range(25):
        e = event()
        e["timestamp"] = float(i)
        events.record(conn, "example.com", e)
    assert events.prune_batch(conn, 20.0, 8) == 8
    assert events.prune_batch(conn, 20.0, 8) == 8
    assert events.prune_batch(conn, 20.0, 8) == 4
    assert conn.execute("SELECT min(timestamp), count(*) FROM events").fetchone() == (20.0, 5)
    # counters stay: stats over old periods still answer
    assert conn.execute("SELECT sum(count) FROM stats WHERE event = 'delivered:smtp' AND tag = ''").fetchone()[0] == 25
