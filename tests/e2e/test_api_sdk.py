"""Mailgun's official Python SDK (PyPI ``mailgun``, in the ``test`` extra), pointed at mtad by its base URL
only: it sends a message (with an attachment), lists events, and manages routes and domains unmodified."""

from __future__ import annotations

import time

import pytest

from tests.support.daemon import API_KEY

import mailgun.client as mailgun_client  # Mailgun's SDK, from the [test] extra

DEST = "sdk.test"



@pytest.fixture
def client(delivering_env):
    daemon, _ = delivering_env
    with mailgun_client.Client(auth=("api", API_KEY), api_url=daemon.api_url) as c:
        yield c


def test_sdk_sends_a_message_and_lists_its_events(delivering_env, client):
    _, sink = delivering_env
    resp = client.messages.create(domain="example.com", data={
        "from": "Excited User <postmaster@example.com>", "to": [f"sdk-user@{DEST}"], "subject": "Hello from the SDK",
        "text": "Testing some Mailgun awesomeness!", "o:tag": ["sdk", "python"], "v:order": "42"},
        files=[("attachment", ("hello.txt", b"attached by the SDK\n"))])
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["message"] == "Queued. Thank you." and body["id"].startswith("<")
    message_id = body["id"].strip("<>")

    deadline = time.monotonic() + 10
    kinds: set[str] = set()
    while time.monotonic() < deadline and not {"accepted", "delivered"} <= kinds:
        events = client.events.get(domain="example.com", filters={"message-id": message_id, "limit": 50})
        assert events.status_code == 200, events.text
        items = events.json()["items"]
        kinds = {e["event"] for e in items}
        time.sleep(0.2)
    assert {"accepted", "delivered"} <= kinds, kinds
    accepted = next(e for e in items if e["event"] == "accepted")
    assert accepted["recipient"] == f"sdk-user@{DEST}"
    assert sorted(accepted["tags"]) == ["python", "sdk"] and accepted["user-variables"] == {"order": "42"}
    assert b"attached by the SDK" in sink.to(f"sdk-user@{DEST}")[0].data or \
        b"YXR0YWNoZWQgYnkgdGhlIFNESwo=" in sink.to(f"sdk-user@{DEST}")[0].data


def test_sdk_manages_routes(client):
    created = client.routes.create(data={"priority": 0, "description": "sdk route",
                                         "expression": "match_recipient('sdk@inbound.test')",
                                         "action": ["forward('http://127.0.0.1:9/x')", "stop()"]})
    assert created.status_code == 200, created.text
    route_id = created.json()["route"]["id"]
    got = client.routes.get(route_id=route_id)
    assert got.status_code == 200 and got.json()["route"]["description"] == "sdk route"
    listing = client.routes.get(filters={"skip": 0, "limit": 10})
    assert route_id in [r["id"] for r in listing.json()["items"]]
    updated = client.routes.put(route_id=route_id, data={"description": "renamed"})
    assert updated.status_code == 200 and updated.json()["description"] == "renamed"
    assert client.routes.delete(route_id=route_id).status_code == 200
    assert client.routes.get(route_id=route_id).status_code == 404


def test_sdk_manages_domains_and_credentials(client):
    created = client.domains.create(data={"name": "sdk-domain.test", "dkim_key_size": 1024})
    assert created.status_code == 200, created.text
    assert created.json()["domain"]["name"] == "sdk-domain.test"
    got = client.domains.get(domain_name="sdk-domain.test")
    assert got.status_code == 200 and got.json()["domain"]["name"] == "sdk-domain.test"
    assert any(r["name"] == "k1._domainkey.sdk-domain.test" for r in got.json()["sending_dns_records"])
    cred = client.domains_credentials.create(domain="sdk-domain.test",
                                             data={"login": "alice", "password": "alice-pass"})
    assert cred.status_code == 200, cred.text
    creds = client.domains_credentials.get(domain="sdk-domain.test")
    assert [c["login"] for c in creds.json()["items"]] == ["alice@sdk-domain.test"]
    deleted = client.domains.delete(domain="sdk-domain.test")
    assert deleted.status_code == 200 and deleted.json() == {"message": "Domain has been deleted"}
    assert client.domains.get(domain_name="sdk-domain.test").status_code == 404


def test_sdk_calls_of_other_api_versions(client):
    """What the SDK routes to v4 (domainlist, webhooks with event_types) or to paths mtad lacked before."""
    listed = client.domainlist.get(filters={"limit": 10})  # GET /v4/domains
    assert listed.status_code == 200, listed.text
    assert "example.com" in [d["name"] for d in listed.json()["items"]]
    assert client.ping() is True

    hook = "http://127.0.0.1:9/sdk-hook"
    created = client.domains_webhooks.create(domain="example.com",  # POST /v4/domains/{d}/webhooks
                                             data={"url": hook, "event_types": ["delivered", "permanent_fail"]})
    assert created.status_code == 200, created.text
    assert {h for h, e in created.json()["webhooks"].items() if hook in e["urls"]} == {"delivered", "permanent_fail"}
    updated = client.domains_webhooks.put(domain="example.com", data={"url": hook, "event_types": ["opened"]})
    assert updated.status_code == 200, updated.text
    assert {h for h, e in updated.json()["webhooks"].items() if hook in e["urls"]} == {"opened"}
    deleted = client.domains_webhooks.delete(domain="example.com", filters={"url": hook})
    assert deleted.status_code == 200, deleted.text
    assert not any(hook in e["urls"] for e in deleted.json()["webhooks"].values())

    assert client.domains.create(data={"name": "sdk-creds.test", "dkim_key_size": 1024}).status_code == 200
    for login in ("one", "two"):
        assert client.domains_credentials.create(domain="sdk-creds.test",
                                                 data={"login": login, "password": "pass-word"}).status_code == 200
    wiped = client.domains_credentials.delete(domain="sdk-creds.test")  # DELETE /v3/domains/{d}/credentials
    assert wiped.status_code == 200 and wiped.json()["count"] == 2, wiped.text
    assert client.domains.delete(domain="sdk-creds.test").status_code == 200


def test_sdk_tag_aggregates(delivering_env, client):
    resp = client.messages.create(domain="example.com", data={
        "from": "postmaster@example.com", "to": [f"sdk-agg@{DEST}"], "subject": "aggregates", "text": "x",
        "o:tag": "sdk-agg"})
    assert resp.status_code == 200, resp.text
    deadline = time.monotonic() + 10
    while client.tags.get(domain="example.com", tag_name="sdk-agg").status_code != 200:
        assert time.monotonic() < deadline, "the tag was never counted"
        time.sleep(0.2)
    devices = client.tags_stats_aggregates_devices.get(domain="example.com", tag_name="sdk-agg")
    assert devices.status_code == 200 and devices.json() == {"tag": "sdk-agg", "devices": {}}, devices.text
    countries = client.tags_stats_aggregates_countries.get(domain="example.com", tag_name="sdk-agg")
    assert countries.status_code == 200 and countries.json() == {"tag": "sdk-agg", "countries": {}}, countries.text
