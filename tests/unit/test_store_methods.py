"""The store's typed methods for suppressions, accounts, routes, pauses, webhook configuration and HTTP work
(on every backend: ``tests.support.stores``), and the one retry rule of HTTP work (net.retry)."""

from __future__ import annotations

import time

import pytest

from mtad.base.types import Envelope, HeaderSummary, NewMessage
from mtad.config.schema import WebhookConfig, WebhooksConfig
from mtad.net import retry
from mtad.store import queue as spool
from mtad.store.accounts import Credential, DomainRecord
from mtad.store.events import NewEvent
from mtad.store.protocol import StoreProtocol
from mtad.store.routes import RouteRecord
from mtad.store.postgres.store import PostgresStore
from mtad.store.sqlite import SqliteStore
from mtad.store.suppressions import Suppression
from mtad.store.webhooks import Webhook, WebhookError
from mtad.store.work import WorkItem, WorkOutcome
from tests.support.stores import backend_store  # noqa: F401 (fixture)


@pytest.fixture
async def store(backend_store):
    return backend_store()


@pytest.mark.parametrize("backend", [SqliteStore, PostgresStore])
def test_every_backend_has_every_method_of_the_protocol(backend):
    names = {n for n in dir(StoreProtocol) if not n.startswith("_")} - {"is_open", "lease"}
    missing = [n for n in sorted(names) if not callable(getattr(backend, n, None))]
    assert missing == []


async def test_suppressions_round_trip_as_records(store):
    entries = [Suppression("bounces", "b@x.test", 1.0, code="550", error="no such user"),
               Suppression("unsubscribes", "u@x.test", 2.0, tags=("news",)),
               Suppression("whitelists", "x.test", 3.0, type="domain", reason="partner")]
    assert await store.add_suppressions("example.com", entries) == 3
    # an unsubscribe's tags accumulate
    await store.add_suppressions("example.com", [Suppression("unsubscribes", "u@x.test", 4.0, tags=("promo",))])
    got = await store.get_suppression("example.com", "unsubscribes", "u@x.test")
    assert got == Suppression("unsubscribes", "u@x.test", 4.0, tags=("news", "promo"))
    assert await store.get_suppression("example.com", "bounces", "b@x.test") == entries[0]
    assert await store.get_suppression("other.org", "bounces", "b@x.test") is None
    # allowlisted by domain: nothing suppressed
    assert await store.suppressed("example.com", ["B@x.test", "u@x.test"], ["news"]) == {}
    assert await store.delete_suppression("example.com", "whitelists", "x.test") is True
    assert await store.suppressed("example.com", ["B@x.test", "u@x.test"], ["news"]) == {
        "B@x.test": "suppress-bounce", "u@x.test": "suppress-unsubscribe"}
    # removing one tag keeps the entry with the other
    assert await store.delete_suppression("example.com", "unsubscribes", "u@x.test", "news") is True
    assert (await store.get_suppression("example.com", "unsubscribes", "u@x.test")).tags == ("promo",)
    assert await store.suppressed("example.com", ["u@x.test"], ["news"]) == {}


async def test_suppression_pages_in_address_order(store):
    await store.add_suppressions("example.com", [Suppression("complaints", f"a{i}@x.test", float(i))
                                                 for i in range(5)])
    first = await store.suppression_page("example.com", "complaints", 2, "first")
    assert [s.address for s in first] == ["a0@x.test", "a1@x.test"]
    nxt = await store.suppression_page("example.com", "complaints", 2, "next", first[-1].address)
    assert [s.address for s in nxt] == ["a2@x.test", "a3@x.test"]
    prev = await store.suppression_page("example.com", "complaints", 2, "previous", nxt[0].address)
    assert prev == first
    assert [s.address for s in await store.suppression_page("example.com", "complaints", 2, "last")] == [
        "a3@x.test", "a4@x.test"]
    assert await store.clear_suppressions("example.com", "complaints") == 5


async def test_accounts_commit_a_domain_with_its_first_credential(store):
    domain = DomainRecord("new.test", 1.0, True, "disabled", False, "mx", "PEM")
    cred = Credential("postmaster@new.test", "new.test", "hash", 1.0)
    assert await store.add_domain(domain, cred) is True
    assert await store.add_domain(domain) is False
    assert await store.add_credential(Credential("u@new.test", "new.test", "h2", 2.0)) is True
    assert await store.set_password("u@new.test", "h3") is True
    accounts = await store.load_accounts()
    assert accounts.domains == {"new.test": domain}
    assert accounts.credentials["u@new.test"].password_hash == "h3"
    assert await store.delete_credentials(["u@new.test", "nobody@new.test"]) == 1
    assert await store.delete_domain("new.test") is True  # with its credentials
    accounts = await store.load_accounts()
    assert accounts.domains == {} and accounts.credentials == {}


async def test_a_domains_spam_policy_is_kept_and_updated(store):
    domain = DomainRecord("spam.test", 1.0, True, "tag", False, "mx", "PEM", 6.5, "tempfail")
    assert await store.add_domain(domain) is True
    assert (await store.load_accounts()).domains["spam.test"] == domain
    changed = DomainRecord("spam.test", 99.0, False, "block", True, "other", "OTHER", None, None)
    assert await store.update_domain(changed) is True
    # only the settings PUT changes are written: name, creation time, receiving and the DKIM key stay
    assert (await store.load_accounts()).domains["spam.test"] == DomainRecord(
        "spam.test", 1.0, True, "block", True, "mx", "PEM", None, None)
    assert await store.update_domain(DomainRecord("none.test", 1.0, True, "tag", False, "mx", "PEM")) is False


async def test_routes_are_records_in_order_of_creation(store):
    a = RouteRecord("a" * 24, 1, "first", 'match_recipient(".*")', ('forward("http://h/a")',), 10.0)
    b = RouteRecord("b" * 24, 0, "second", "catch_all()", ("stop()",), 20.0)
    await store.add_route(b)
    await store.add_route(a)
    assert await store.load_routes() == (a, b)
    changed = RouteRecord(a.id, 5, "changed", a.expression, ("stop()",), 99.0)
    assert await store.update_route(changed) is True
    assert (await store.load_routes())[0] == RouteRecord(a.id, 5, "changed", a.expression, ("stop()",), 10.0)
    assert await store.delete_route(a.id) is True and await store.delete_route(a.id) is False


async def test_pauses(store):
    await store.pause("domain", "Example.COM", 1.0)
    await store.pause("tag", "news", 1.0)
    assert await store.pauses() == spool.Pauses(domain=frozenset({"example.com"}), tag=frozenset({"news"}))
    await store.resume("domain", "example.com", 2.0)
    assert (await store.pauses()).domain == frozenset()


async def test_webhook_config_is_typed_and_config_rows_are_read_only(store):
    cfg = WebhooksConfig(domains={"example.com": {"delivered": WebhookConfig(("http://h/d",))}})
    assert await store.sync_webhooks(cfg, 1.0) == 1
    with pytest.raises(WebhookError) as refused:
        await store.delete_webhook("example.com", "delivered")
    assert refused.value.status == 400
    await store.put_webhook("example.com", "opened", ["http://h/o", "http://h/o"], "legacy", 2.0, create=True)
    hooks = await store.put_webhook_urls("example.com", ["http://h/v4"], add=["opened", "clicked"], now=3.0)
    assert hooks == {"delivered": Webhook("delivered", ("http://h/d",), "json", "config"),
                     "opened": Webhook("opened", ("http://h/o", "http://h/v4"), "legacy", "api"),
                     "clicked": Webhook("clicked", ("http://h/v4",), "json", "api")}
    hooks = await store.put_webhook_urls("example.com", ["http://h/v4"], remove=["opened", "clicked"], now=4.0)
    assert set(hooks) == {"delivered", "opened"}
    assert await store.delete_webhook("example.com", "opened") == Webhook("opened", ("http://h/o",), "legacy", "api")
    with pytest.raises(WebhookError) as missing:
        await store.put_webhook("example.com", "opened", ["http://h/o"], "json", 5.0, create=False)
    assert missing.value.status == 404


async def test_work_is_claimed_as_items_and_finished_with_its_events(store):
    now = time.time()
    msg = NewMessage(Envelope("a@sender.test", ("box@in.test",)), b"Subject: s\r\n\r\nbody\r\n", "inbound", "in.test",
                     HeaderSummary("m@x", "a@sender.test", "box@in.test", "s"))
    qid = spool.new_queue_id()
    forwards = (spool.ForwardRow("box@in.test", "r1", "http", "http://app.test/in"),
                spool.ForwardRow("box@in.test", "r1", "store", ""))
    await store.enqueue([spool.Enqueue(qid, msg, forwards=forwards)], now)
    [item] = await store.claim_work("forwards", "w1", now, 10, ("http",), lease_until=now + 60)
    assert item == WorkItem("forwards", item.id, 0, "http://app.test/in", message=qid, recipient="box@in.test",
                            route_id="r1", action="http")
    assert await store.claim_work("forwards", "w2", now, 10, ("http",), lease_until=now + 60) == []
    message = (await store.work_messages([qid, "gone"]))[qid]
    assert (message.sender, message.recipients, message.body) == ("a@sender.test", ("box@in.test",), msg.body)
    event = {"id": "ev1", "event": "delivered", "timestamp": now, "recipient": "box@in.test"}
    await store.finish_work("forwards", [WorkOutcome(item.id, "done", 1, None, 200, "", now)],
                            [NewEvent("in.test", event)])
    assert await store.release_claim("forwards", item.id, "w1", now) is False  # no longer held
    assert (await store.webhook_event("ev1")).data.startswith("{")
    # the store() row: kept with its stored event, and done, together
    [kept] = await store.claim_work("forwards", "w1", now, 10, ("store",), lease_until=now + 60)
    await store.keep_message(qid, now + 100, NewEvent("in.test", {"id": "ev2", "event": "stored", "timestamp": now}),
                             WorkOutcome(kept.id, "done", 1, None, None, "", now))
    assert (await store.stored_message(qid, "IN.test", now)).id == qid
    assert await store.expire_stored(now + 200) == 1
    assert await store.stored_message(qid, "in.test", now) is None


@pytest.mark.parametrize("status, attempt, expected", [
    (200, 1, ("done", None)), (204, 9, ("done", None)),
    (406, 1, ("failed", None)),  # the application refuses it: never retried
    (500, 1, ("deferred", 1010.0)), (None, 2, ("deferred", 1020.0)),  # no answer: retried on the schedule
    (500, 3, ("failed", None)),  # the schedule is used up
])
def test_one_retry_rule_for_all_http_work(status, attempt, expected):
    assert retry.decide(status, attempt, (10.0, 20.0), 1000.0) == expected


def test_work_posted_once_is_not_retried():
    assert retry.decide(500, 1, (10.0,), 0.0, retry=False) == ("failed", None)
    assert retry.decide(200, 1, (10.0,), 0.0, retry=False) == ("done", None)
