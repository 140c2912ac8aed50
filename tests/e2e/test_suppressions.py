"""Suppression lists over the API with Mailgun's shapes (single add, JSON lists, CSV import, paging, delete
one and all; unsubscribes by tag; whitelists by address or domain) and their effect on the next send."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.events_support import World, running_world, events
from tests.support.api import api
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "suppressions") as w:
        yield w


async def all_pages(world: World, path: str, limit: int) -> tuple[list[dict], dict]:
    page = await api(world, "GET", path, params={"limit": str(limit)})
    items = []
    while page["items"]:
        assert len(page["items"]) <= limit
        items += page["items"]
        page = await api(world, "GET", page["paging"]["next"])
    return items, page


async def test_bounces_single_json_list_paging_and_delete(world):
    base = "/v3/lists.test/bounces"
    one = await api(world, "POST", base, data={"address": "Single@x.test", "code": "550", "error": "No such user"})
    assert one == {"message": "Address has been added to the bounces table", "address": "single@x.test"}
    batch = [{"address": f"user{i:04d}@x.test", "code": "551", "error": f"e{i}"} for i in range(1000)]
    added = await api(world, "POST", base, json=batch)
    assert added == {"message": "1000 addresses have been added to the bounces table"}
    too_many = await api(world, "POST", base, json=batch + [{"address": "more@x.test"}], expect=400)
    assert "1000" in too_many["message"]
    await api(world, "POST", base, json=[{"address": "not-an-address"}], expect=400)
    items, after_end = await all_pages(world, base, 300)
    assert len(items) == 1001 and [i["address"] for i in items] == sorted(i["address"] for i in items)
    # and back again
    back, page = [], await api(world, "GET", after_end["paging"]["previous"])
    while page["items"]:
        back = page["items"] + back
        page = await api(world, "GET", page["paging"]["previous"])
    assert back == items
    last = await api(world, "GET", after_end["paging"]["last"])
    assert last["items"] == items[-300:]
    got = await api(world, "GET", f"{base}/user0007@x.test")
    assert got["address"] == "user0007@x.test" and got["code"] == "551" and got["error"] == "e7"
    assert got["created_at"].endswith("UTC")
    assert (await api(world, "GET", f"{base}/nobody@x.test", expect=404))["message"]
    removed = await api(world, "DELETE", f"{base}/user0007@x.test")
    assert removed == {"message": "Bounced address has been removed", "address": "user0007@x.test"}
    await api(world, "DELETE", f"{base}/user0007@x.test", expect=404)
    assert (await api(world, "DELETE", base))["message"] == "Bounced addresses for this domain have been removed"
    assert (await api(world, "GET", base))["items"] == []


async def test_csv_import_into_each_list(world):
    files = {
        "bounces": "address,code,error,created_at\nb1@x.test,550,gone,\nb2@x.test,,,\"Mon, 01 Jan 2024 00:00:00 +0000\"\n",
        "unsubscribes": "address,tags\nu1@x.test,\nu2@x.test,\"a,b\"\n",
        "complaints": "address,created_at\nc1@x.test,1700000000\n",
        "whitelists": "address,domain,reason\nw1@x.test,,vip\n,trusted.test,partner\n",
    }
    for kind, text in files.items():
        form = aiohttp.FormData()
        form.add_field("file", text.encode(), filename=f"{kind}.csv", content_type="text/csv")
        assert (await api(world, "POST", f"/v3/csv.test/{kind}/import", data=form)) == \
            {"message": "file uploaded successfully"}
    bounces = (await api(world, "GET", "/v3/csv.test/bounces"))["items"]
    assert [(b["address"], b["code"]) for b in bounces] == [("b1@x.test", "550"), ("b2@x.test", "550")]
    assert bounces[1]["created_at"] == "Mon, 01 Jan 2024 00:00:00 UTC"
    unsubs = {u["address"]: u["tags"] for u in (await api(world, "GET", "/v3/csv.test/unsubscribes"))["items"]}
    assert unsubs == {"u1@x.test": ["*"], "u2@x.test": ["a", "b"]}
    complaints = (await api(world, "GET", "/v3/csv.test/complaints"))["items"]
    assert complaints == [{"address": "c1@x.test", "created_at": "Tue, 14 Nov 2023 22:13:20 UTC"}]
    whitelists = {w["value"]: (w["type"], w["reason"]) for w in (await api(world, "GET", "/v3/csv.test/whitelists"))["items"]}
    assert whitelists == {"w1@x.test": ("address", "vip"), "trusted.test": ("domain", "partner")}
    bad = aiohttp.FormData()
    bad.add_field("file", b"address\nnot-an-address\n", filename="x.csv")
    assert "line 2" in (await api(world, "POST", "/v3/csv.test/bounces/import", data=bad, expect=400))["message"]


async def test_unsubscribes_by_tag_complaints_and_whitelists(world):
    base = "/v3/tags.test/unsubscribes"
    await api(world, "POST", base, data={"address": "u@x.test", "tag": "promo"})
    await api(world, "POST", base, data={"address": "u@x.test", "tag": "news"})
    assert (await api(world, "GET", f"{base}/u@x.test"))["tags"] == ["promo", "news"]
    assert (await api(world, "DELETE", f"{base}/u@x.test", params={"tag": "promo"}))["message"] == \
        "Unsubscribe event has been removed"
    assert (await api(world, "GET", f"{base}/u@x.test"))["tags"] == ["news"]
    await api(world, "POST", base, json=[{"address": "all@x.test", "tags": ["*"]}, {"address": "u@x.test", "tags": ["*"]}])
    assert (await api(world, "GET", f"{base}/u@x.test"))["tags"] == ["*"]
    await api(world, "POST", "/v3/tags.test/complaints", data={"address": "c@x.test"})
    assert (await api(world, "GET", "/v3/tags.test/complaints/c@x.test"))["address"] == "c@x.test"
    assert (await api(world, "DELETE", "/v3/tags.test/complaints/c@x.test"))["message"] == "Spam complaint has been removed"
    by_domain = await api(world, "POST", "/v3/tags.test/whitelists", data={"domain": "partner.test", "reason": "ok"})
    assert by_domain == {"message": "Domain has been added to the whitelists table", "type": "domain",
                         "value": "partner.test"}
    by_address = await api(world, "POST", "/v3/tags.test/whitelists", data={"address": "boss@x.test"})
    assert by_address["type"] == "address"
    await api(world, "POST", "/v3/tags.test/whitelists", data={"address": "a@x.test", "domain": "x.test"}, expect=400)
    listed = (await api(world, "GET", "/v3/tags.test/whitelists"))["items"]
    assert {(w["value"], w["type"]) for w in listed} == {("partner.test", "domain"), ("boss@x.test", "address")}
    assert all("createdAt" in w and "reason" in w for w in listed)
    assert (await api(world, "DELETE", "/v3/tags.test/whitelists/partner.test"))["value"] == "partner.test"


async def outcome(world: World, rcpt: str, subject: str) -> dict:
    """The final event of the message with this (unique) subject to ``rcpt``."""
    async def final():
        got = await events(world, "example.com", recipient=rcpt, subject=f'"{subject}"', event="delivered OR failed")
        return got[-1] if got else None
    return await wait_for(final, 15, f"the outcome for {rcpt}")


async def test_suppressions_apply_to_the_very_next_send(world):
    base = "/v3/example.com"
    # a bounce entry suppresses, removing it lets the next message through
    await api(world, "POST", f"{base}/bounces", data={"address": "blocked@dest.test"})
    world.send(["blocked@dest.test"], "Suppressed")
    failed = await outcome(world, "blocked@dest.test", "Suppressed")
    assert (failed["event"], failed["severity"], failed["reason"]) == ("failed", "permanent", "suppress-bounce")
    assert failed["delivery-status"]["code"] == 605 and len(world.sink.to("blocked@dest.test")) == 0
    await api(world, "DELETE", f"{base}/bounces/blocked@dest.test")
    world.send(["blocked@dest.test"], "Let through")
    assert (await outcome(world, "blocked@dest.test", "Let through"))["event"] == "delivered"
    assert len(world.sink.to("blocked@dest.test")) == 1
    # an unsubscribe from one tag blocks that tag only; a complaint blocks everything
    await api(world, "POST", f"{base}/unsubscribes", data={"address": "reader@dest.test", "tag": "promo"})
    await api(world, "POST", f"{base}/complaints", data={"address": "angry@dest.test"})
    world.send(["reader@dest.test", "angry@dest.test"], "Promo", tags=("promo",))
    assert (await outcome(world, "reader@dest.test", "Promo"))["reason"] == "suppress-unsubscribe"
    assert (await outcome(world, "angry@dest.test", "Promo"))["reason"] == "suppress-complaint"
    world.send(["reader@dest.test"], "Newsletter", tags=("news",))
    assert (await outcome(world, "reader@dest.test", "Newsletter"))["event"] == "delivered"
    # a real hard bounce puts the address on the bounce list, unless it is allowlisted
    await api(world, "POST", f"{base}/whitelists", data={"address": "bad-white@dest.test"})
    world.send(["bad-auto@dest.test", "bad-white@dest.test"], "Hard bounces")
    assert (await outcome(world, "bad-auto@dest.test", "Hard bounces"))["reason"] == "bounce"
    assert (await outcome(world, "bad-white@dest.test", "Hard bounces"))["reason"] == "bounce"
    auto = await api(world, "GET", f"{base}/bounces/bad-auto@dest.test")
    assert auto["code"] == "550" and "User unknown" in auto["error"]
    await api(world, "GET", f"{base}/bounces/bad-white@dest.test", expect=404)
    # the allowlist (here a whole domain) also overrides an existing entry
    await api(world, "POST", f"{base}/bounces", data={"address": "vip@yahoo.test"})
    await api(world, "POST", f"{base}/whitelists", data={"domain": "yahoo.test"})
    world.send(["vip@yahoo.test"], "Allowlisted")
    assert (await outcome(world, "vip@yahoo.test", "Allowlisted"))["event"] == "delivered"
