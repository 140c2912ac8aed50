"""The store methods the web panel added (issue 17), on every backend (SQLite and PostgreSQL): panel users
(``store.panelusers``), a DKIM key rotation (``AccountStore.set_dkim_key``) and a domain's recent webhook POSTs
(``WebhookConfigStore.recent_webhook_posts``)."""

from __future__ import annotations

import time

from mtad.base.passwords import hash_password, verify_password
from mtad.store.accounts import DomainRecord
from mtad.store.panelusers import PanelUser
from tests.support.stores import backend_store  # noqa: F401 (fixture)


async def test_panel_users_are_added_once_changed_and_removed(backend_store):
    store = backend_store()
    hashed = hash_password("first password", n=2**10)
    assert await store.add_panel_user(PanelUser("ops", hashed, 1000.0))
    assert not await store.add_panel_user(PanelUser("ops", "$scrypt$other", 2000.0))  # the login exists
    assert await store.panel_user("ops") == PanelUser("ops", hashed, 1000.0)
    assert await store.set_panel_password("ops", hash_password("second", n=2**10))
    assert verify_password("second", (await store.panel_user("ops")).password_hash)
    assert not await store.set_panel_password("nobody", hashed)
    await store.add_panel_user(PanelUser("alice", hashed, 3000.0))
    assert [u.login for u in await store.panel_users()] == ["alice", "ops"]
    store.close()
    store = backend_store()  # what a restart finds
    assert await store.delete_panel_user("ops")
    assert not await store.delete_panel_user("ops")
    assert await store.panel_user("ops") is None
    assert [u.login for u in await store.panel_users()] == ["alice"]


async def test_a_dkim_rotation_replaces_the_selector_and_key_of_an_api_domain(backend_store):
    store = backend_store()
    record = DomainRecord("rot.test", time.time(), True, "disabled", False, "k1", "PEM-1")
    assert await store.add_domain(record)
    assert await store.set_dkim_key("rot.test", "k2", "PEM-2")
    found = (await store.load_accounts()).domains["rot.test"]
    assert (found.dkim_selector, found.dkim_key, found.created_at) == ("k2", "PEM-2", record.created_at)
    assert not await store.set_dkim_key("none.test", "k2", "PEM-2")


async def test_recent_webhook_posts_are_a_domains_newest_first(backend_store):
    store = backend_store()
    conn = backend_store.direct()
    now = time.time()
    for n, (domain, state, status) in enumerate([("a.test", "done", 200), ("b.test", "deferred", 503),
                                                 ("a.test", "failed", 406), ("a.test", "queued", None)]):
        conn.execute("INSERT INTO webhook_deliveries (event_id, domain, url, format, state, attempts,"
                     " next_attempt_at, last_status, last_error, created_at, updated_at) VALUES"
                     " (?, ?, ?, 'json', ?, ?, ?, ?, ?, ?, ?)",
                     (f"ev{n}", domain, f"https://hooks.test/{n}", state, int(status is not None), now, status,
                      "" if status in (200, None) else f"HTTP {status}", now + n, now + n))
    posts = await store.recent_webhook_posts("a.test", 2)
    assert [(p.event_id, p.state, p.last_status) for p in posts] == [("ev3", "queued", None), ("ev2", "failed", 406)]
    assert posts[1].last_error == "HTTP 406" and posts[1].url == "https://hooks.test/2"
    assert await store.recent_webhook_posts("c.test") == ()
