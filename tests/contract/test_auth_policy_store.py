"""The authentication policies of API domains (``store.authpolicy``), on both backends: set, replaced, read back
by a store opened again (what a restart or another node finds), and gone with their domain."""

from __future__ import annotations

import time

from mtad.config.schema import AuthPolicyConfig
from mtad.mail import dkim
from mtad.store import accounts
from tests.support.stores import backend_store  # noqa: F401 (fixture)

PEM = dkim.generate_key("ed25519").decode()


async def test_a_policy_is_kept_replaced_and_deleted_with_its_domain(backend_store):
    store = backend_store()
    assert await store.load_auth_policies() == {}
    await store.add_domain(accounts.DomainRecord("a.test", time.time(), True, "disabled", False, "k1", PEM))
    strict = AuthPolicyConfig(dmarc_reject="reject", dmarc_quarantine="reject", spf_fail="quarantine",
                              no_auth="quarantine")
    await store.set_auth_policy("a.test", strict, time.time())
    await store.set_auth_policy("b.test", AuthPolicyConfig(), time.time())
    assert await store.load_auth_policies() == {"a.test": strict, "b.test": AuthPolicyConfig()}
    lenient = AuthPolicyConfig(dmarc_reject="ignore", dmarc_quarantine="ignore", spf_fail="ignore", no_auth="ignore")
    await store.set_auth_policy("a.test", lenient, time.time())  # replaced, not added
    assert (await backend_store().load_auth_policies())["a.test"] == lenient  # committed: another store sees it
    assert await store.delete_domain("a.test")
    assert await store.load_auth_policies() == {"b.test": AuthPolicyConfig()}
