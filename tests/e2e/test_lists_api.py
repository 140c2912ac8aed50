"""The mailing lists API (issue 14): through Mailgun's official Python SDK unmodified, and over raw HTTP
(validation errors in Mailgun's shape, the seed's /v2 paths, paging, members.json and CSV uploads, keys limited
to domains)."""

from __future__ import annotations

import json

import aiohttp
import pytest

import mailgun.client as mailgun_client  # Mailgun's SDK, from the [test] extra
from mtad.api import hash_key
from tests.support.api import api, basic_auth
from tests.support.daemon import API_KEY

LIMITED_KEY = "key-limited-0123456789abcdef012345"


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    d = daemon_factory()
    return d


@pytest.fixture(scope="module")
def limited(daemon_factory):
    """A daemon with a second key limited to other.org."""
    return daemon_factory(api={"address": "127.0.0.1:0", "keys": [
        {"key_hash": hash_key(API_KEY)}, {"key_hash": hash_key(LIMITED_KEY), "domains": ["other.org"]}]})


def test_the_sdk_manages_lists_and_members(daemon):
    with mailgun_client.Client(auth=("api", API_KEY), api_url=daemon.api_url) as client:
        made = client.lists.create(data={"address": "sdk-dev@example.com", "description": "Mailgun developers list",
                                         "access_level": "members", "reply_preference": "sender"})
        assert made.status_code == 200, made.text
        assert made.json()["message"] == "Mailing list has been created"
        lst = made.json()["list"]
        assert lst["address"] == "sdk-dev@example.com" and lst["access_level"] == "members"
        assert lst["members_count"] == 0 and lst["reply_preference"] == "sender" and lst["created_at"].endswith("GMT")

        added = client.lists_members.create(domain="example.com", address="sdk-dev@example.com", data={
            "subscribed": True, "address": "Bob Bar <bob@example.net>", "vars": '{"age": 26}'})
        assert added.status_code == 200, added.text
        assert added.json()["member"] == {"address": "bob@example.net", "name": "Bob Bar", "vars": {"age": 26},
                                          "subscribed": True}
        dup = client.lists_members.create(domain="example.com", address="sdk-dev@example.com",
                                          data={"address": "bob@example.net"})
        assert dup.status_code == 400 and "already exists" in dup.json()["message"]
        bulk = client.lists_members.create(domain="example.com", address="sdk-dev@example.com", multiple=True, data={
            "upsert": True, "members": '[{"address": "Alice <alice@example.net>", "vars": {"age": 26}},'
                                       '{"name": "Bob1", "address": "bob@example.net", "vars": {"age": 34}}]'})
        assert bulk.status_code == 200, bulk.text
        assert bulk.json()["list"]["members_count"] == 2

        got = client.lists_members.get(domain="example.com", address="sdk-dev@example.com",
                                       member_address="bob@example.net")
        assert got.json()["member"] == {"address": "bob@example.net", "name": "Bob1", "vars": {"age": 34},
                                        "subscribed": True}
        put = client.lists_members.put(domain="example.com", address="sdk-dev@example.com",
                                       member_address="bob@example.net", data={"subscribed": "no", "name": "Bob B"})
        assert put.status_code == 200 and put.json()["member"]["subscribed"] is False
        listed = client.lists_members.get(domain="example.com", address="sdk-dev@example.com")
        assert listed.json()["total_count"] == 2
        pages = client.lists_members_pages.get(domain="example.com", address="sdk-dev@example.com",
                                               filters={"subscribed": "yes"})
        assert [m["address"] for m in pages.json()["items"]] == ["alice@example.net"]
        assert set(pages.json()["paging"]) == {"first", "last", "next", "previous"}

        lists = client.lists_pages.get(domain="example.com")
        assert "sdk-dev@example.com" in [i["address"] for i in lists.json()["items"]]
        one = client.lists.get(domain="example.com", address="sdk-dev@example.com")
        assert one.json()["list"]["members_count"] == 2
        renamed = client.lists.put(domain="example.com", address="sdk-dev@example.com",
                                   data={"description": "renamed", "address": "sdk-devs@example.com"})
        assert renamed.status_code == 200 and renamed.json()["list"]["address"] == "sdk-devs@example.com"
        removed = client.lists_members.delete(domain="example.com", address="sdk-devs@example.com",
                                              member_address="alice@example.net")
        assert removed.json() == {"member": {"address": "alice@example.net"},
                                  "message": "Mailing list member has been deleted"}
        deleted = client.lists.delete(domain="example.com", address="sdk-devs@example.com")
        assert deleted.json() == {"message": "Mailing list has been deleted", "address": "sdk-devs@example.com"}
        assert client.lists.get(domain="example.com", address="sdk-devs@example.com").status_code == 404


async def test_raw_http_validation_errors_are_400_in_mailguns_shape(daemon):
    for data, field in [({}, "address"), ({"address": "not an address"}, "address"),
                        ({"address": "x@nowhere.test"}, "address"),
                        ({"address": "v@example.com", "access_level": "admins"}, "access_level"),
                        ({"address": "v@example.com", "reply_preference": "all"}, "reply_preference")]:
        body = await api(daemon, "POST", "/v3/lists", data=data, expect=400)
        assert set(body) == {"message"} and field in body["message"], (data, body)
    await api(daemon, "POST", "/v3/lists", data={"address": "v@example.com"})
    body = await api(daemon, "POST", "/v3/lists", data={"address": "V@example.com"}, expect=400)
    assert "already exists" in body["message"]
    for data, field in [({"address": "m@x.test", "vars": "[1]"}, "vars"), ({"address": "m@x.test", "vars": "{"}, "vars"),
                        ({"address": "m@x.test", "subscribed": "maybe"}, "subscribed"), ({}, "address")]:
        body = await api(daemon, "POST", "/v3/lists/v@example.com/members", data=data, expect=400)
        assert field in body["message"], body
    for members in ("not json", '{"a": 1}', json.dumps(["ok@x.test"] * 1001), '[{"name": "no address"}]'):
        body = await api(daemon, "POST", "/v3/lists/v@example.com/members.json", data={"members": members},
                         expect=400)
        assert "members" in body["message"] or "address" in body["message"], body
    assert (await api(daemon, "GET", "/v3/lists/none@example.com", expect=404))["message"]
    assert (await api(daemon, "GET", "/v3/lists/v@example.com/members/none@x.test", expect=404))["message"]
    await api(daemon, "GET", "/v3/lists/pages", params={"limit": "0"}, expect=400)
    await api(daemon, "GET", "/v3/lists/v@example.com/members/pages", params={"page": "sideways"}, expect=400)
    await api(daemon, "GET", "/v3/lists", auth={}, expect=401)


async def test_bulk_json_upsert_csv_upload_and_paging_by_address(daemon):
    await api(daemon, "POST", "/v3/lists", data={"address": "bulk@example.com"})
    members = [f"m{i:02d}@x.test" for i in range(30)] + [{"address": "Z <z@x.test>", "subscribed": False,
                                                          "vars": {"k": 1}}]
    body = await api(daemon, "POST", "/v3/lists/bulk@example.com/members.json",
                     data={"members": json.dumps(members)})
    assert body["list"]["members_count"] == 31 and body["message"] == "Mailing list has been updated"
    # without upsert a duplicate is left as it was; with upsert it is replaced
    await api(daemon, "POST", "/v3/lists/bulk@example.com/members.json",
              data={"members": json.dumps([{"address": "z@x.test", "name": "New"}])})
    assert (await api(daemon, "GET", "/v3/lists/bulk@example.com/members/z@x.test"))["member"]["name"] == "Z"
    await api(daemon, "POST", "/v3/lists/bulk@example.com/members.json",
              data={"members": json.dumps([{"address": "z@x.test", "name": "New", "subscribed": False}]),
                    "upsert": "yes"})
    assert (await api(daemon, "GET", "/v3/lists/bulk@example.com/members/z@x.test"))["member"]["name"] == "New"

    form = aiohttp.FormData()
    form.add_field("members", b"address,name,city\r\ncsv1@x.test,Ann Lee,Paris\r\ncsv2@x.test,,Rome\r\n",
                   filename="members.csv", content_type="text/csv")
    form.add_field("subscribed", "no")
    body = await api(daemon, "POST", "/v3/lists/bulk@example.com/members.csv", data=form)
    assert body["list"]["members_count"] == 33
    assert (await api(daemon, "GET", "/v3/lists/bulk@example.com/members/csv1@x.test"))["member"] == {
        "address": "csv1@x.test", "name": "Ann Lee", "vars": {"city": "Paris"}, "subscribed": False}
    bad = aiohttp.FormData()
    bad.add_field("members", b"address\r\nnot-an-address\r\n", filename="m.csv", content_type="text/csv")
    assert "line 2" in (await api(daemon, "POST", "/v3/lists/bulk@example.com/members.csv", data=bad,
                                  expect=400))["message"]

    seen, page = [], await api(daemon, "GET", "/v3/lists/bulk@example.com/members/pages",
                               params={"limit": "7", "subscribed": "yes"})
    while page["items"]:
        seen += [m["address"] for m in page["items"]]
        page = await api(daemon, "GET", page["paging"]["next"])
    assert seen == [f"m{i:02d}@x.test" for i in range(30)]
    last = await api(daemon, "GET", "/v3/lists/bulk@example.com/members/pages", params={"page": "last", "limit": "2"})
    assert [m["address"] for m in last["items"]] == ["m29@x.test", "z@x.test"]
    skipped = await api(daemon, "GET", "/v3/lists/bulk@example.com/members",
                        params={"subscribed": "no", "limit": "10"})
    assert skipped["total_count"] == 3 and {m["address"] for m in skipped["items"]} == {"csv1@x.test", "csv2@x.test",
                                                                                        "z@x.test"}


async def test_the_seed_v2_paths_are_aliases(daemon):
    body = await api(daemon, "POST", "/v2/lists", data={"address": "dev@example.com",
                                                        "description": "Mailgun developers list"})
    assert body["list"]["access_level"] == "readonly"
    await api(daemon, "POST", "/v2/lists/dev@example.com/members", data={
        "subscribed": "True", "address": "bob@gmail.test", "name": "Bob Bar", "description": "Developer",
        "vars": '{"age": 26}'})
    got = await api(daemon, "GET", "/v3/lists/dev@example.com/members/bob@gmail.test")
    assert got["member"]["vars"] == {"age": 26}
    listed = await api(daemon, "GET", "/v2/lists")
    assert "dev@example.com" in [i["address"] for i in listed["items"]]


async def test_a_key_limited_to_domains_manages_only_their_lists(limited):
    other = basic_auth("api", LIMITED_KEY)
    await api(limited, "POST", "/v3/lists", data={"address": "mine@other.org"}, auth=other)
    await api(limited, "POST", "/v3/lists", data={"address": "theirs@example.com"}, auth=other, expect=403)
    await api(limited, "POST", "/v3/lists", data={"address": "theirs@example.com"})
    await api(limited, "GET", "/v3/lists/theirs@example.com", auth=other, expect=403)
    await api(limited, "POST", "/v3/lists/theirs@example.com/members", data={"address": "a@x.test"}, auth=other,
              expect=403)
    listed = await api(limited, "GET", "/v3/lists/pages", auth=other)
    assert [i["address"] for i in listed["items"]] == ["mine@other.org"]
