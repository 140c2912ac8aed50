"""The stored templates API (issue 14, item 4), through Mailgun's official Python SDK and through raw HTTP:
templates and their versions created, read (with the active version's content), listed in pages, updated,
copied and deleted, one version active at a time, and refusals in the API's error shape."""

from __future__ import annotations

import json

import aiohttp
import pytest

import mailgun.client as mailgun_client  # Mailgun's SDK, from the [test] extra
from tests.support.api import api
from tests.support.daemon import API_KEY


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory()


@pytest.fixture
def client(daemon):
    with mailgun_client.Client(auth=("api", API_KEY), api_url=daemon.api_url) as c:
        yield c


def form(**fields) -> aiohttp.FormData:
    data = aiohttp.FormData()
    for name, value in fields.items():
        data.add_field(name, value)
    return data


def test_sdk_manages_templates_and_versions(client):
    domain = "example.com"
    created = client.templates.create(domain=domain, data={
        "name": "SDK.Welcome", "description": "template description", "template": "{{fname}} {{lname}}",
        "engine": "handlebars", "comment": "version comment", "tag": "v0"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["message"] == "template has been stored"
    assert body["template"]["name"] == "sdk.welcome"  # down-cased, as Mailgun does
    assert body["template"]["version"]["tag"] == "v0" and body["template"]["version"]["active"] is True

    got = client.templates.get(domain=domain, template_name="sdk.welcome", filters={"active": "yes"})
    assert got.status_code == 200, got.text
    version = got.json()["template"]["version"]
    assert version["template"] == "{{fname}} {{lname}}" and version["engine"] == "handlebars"

    new = client.templates.create(domain=domain, template_name="sdk.welcome", versions=True, data={
        "tag": "v1", "template": "<h1>{{fname}}</h1>", "engine": "handlebars", "active": "yes"})
    assert new.status_code == 200, new.text
    assert new.json()["message"] == "new version of the template has been stored"
    listed = client.templates.get(domain=domain, template_name="sdk.welcome", versions=True)
    assert listed.status_code == 200, listed.text
    assert [(v["tag"], v["active"]) for v in listed.json()["template"]["versions"]] == [("v0", False), ("v1", True)]

    one = client.templates.get(domain=domain, template_name="sdk.welcome", versions=True, tag="v0")
    assert one.json()["template"]["version"]["template"] == "{{fname}} {{lname}}"
    put = client.templates.put(domain=domain, template_name="sdk.welcome", versions=True, tag="v0",
                               data={"template": "<p>Hello {{fname}}</p>", "comment": "Updated", "active": "yes"})
    assert put.status_code == 200 and put.json()["template"]["version"]["tag"] == "v0", put.text
    active = client.templates.get(domain=domain, template_name="sdk.welcome", filters={"active": "yes"})
    assert active.json()["template"]["version"]["template"] == "<p>Hello {{fname}}</p>"

    copied = client.templates.put(domain=domain, template_name="sdk.welcome", versions=True, tag="v0", copy=True,
                                  new_tag="v2", filters={"comment": "copied"})
    assert copied.status_code == 200, copied.text
    assert copied.json()["version"]["tag"] == "v2" and copied.json()["version"]["comment"] == "copied"
    v2 = client.templates.get(domain=domain, template_name="sdk.welcome", versions=True, tag="v2").json()
    assert v2["template"]["version"]["template"] == "<p>Hello {{fname}}</p>" and not v2["template"]["version"]["active"]

    described = client.templates.put(domain=domain, template_name="sdk.welcome",
                                     data={"description": "new template description"})
    assert described.status_code == 200 and described.json()["template"]["description"] == "new template description"
    page = client.templates.get(domain=domain, filters={"limit": 10})
    assert page.status_code == 200 and "sdk.welcome" in [t["name"] for t in page.json()["items"]]

    assert client.templates.delete(domain=domain, template_name="sdk.welcome", versions=True,
                                   tag="v2").status_code == 200
    assert client.templates.get(domain=domain, template_name="sdk.welcome", versions=True,
                                tag="v2").status_code == 404
    assert client.templates.delete(domain=domain, template_name="sdk.welcome").status_code == 200
    assert client.templates.get(domain=domain, template_name="sdk.welcome").status_code == 404


async def test_raw_http_paging_and_delete_all(daemon):
    for i in range(5):
        await api(daemon, "POST", "/v3/other.org/templates", data=form(name=f"page-{i}", description=f"d{i}"))
    first = await api(daemon, "GET", "/v3/other.org/templates?limit=2")
    assert [t["name"] for t in first["items"]] == ["page-0", "page-1"]
    assert "version" not in first["items"][0]  # metadata only
    nxt = await api(daemon, "GET", first["paging"]["next"].split(daemon.api_url, 1)[1])
    assert [t["name"] for t in nxt["items"]] == ["page-2", "page-3"]
    last = await api(daemon, "GET", "/v3/other.org/templates?page=last&limit=2")
    assert [t["name"] for t in last["items"]] == ["page-3", "page-4"]
    prev = await api(daemon, "GET", nxt["paging"]["previous"].split(daemon.api_url, 1)[1])
    assert [t["name"] for t in prev["items"]] == ["page-0", "page-1"]
    gone = await api(daemon, "DELETE", "/v3/other.org/templates")
    assert gone == {"message": "templates have been deleted"}
    assert (await api(daemon, "GET", "/v3/other.org/templates"))["items"] == []


async def test_one_version_is_active_and_the_first_one_is_it(daemon):
    await api(daemon, "POST", "/v3/example.com/templates", data=form(name="act", description="d"))
    got = await api(daemon, "GET", "/v3/example.com/templates/act?active=yes")
    assert "version" not in got["template"]  # no version yet
    await api(daemon, "POST", "/v3/example.com/templates/act/versions", data=form(tag="a", template="A"))
    await api(daemon, "POST", "/v3/example.com/templates/act/versions", data=form(tag="b", template="B"))
    assert (await api(daemon, "GET", "/v3/example.com/templates/act?active=yes"))["template"]["version"]["tag"] == "a"
    await api(daemon, "PUT", "/v3/example.com/templates/act/versions/b", data=form(active="yes"))
    versions = (await api(daemon, "GET", "/v3/example.com/templates/act/versions"))["template"]["versions"]
    assert [(v["tag"], v["active"]) for v in versions] == [("a", False), ("b", True)]
    headers = json.dumps({"Subject": "Hi {{name}}", "From": "News <postmaster@example.com>"})
    await api(daemon, "PUT", "/v3/example.com/templates/act/versions/a", data=form(headers=headers))
    a = (await api(daemon, "GET", "/v3/example.com/templates/act/versions/a"))["template"]["version"]
    assert a["headers"] == {"Subject": "Hi {{name}}", "From": "News <postmaster@example.com>"} and not a["active"]


@pytest.mark.parametrize("path, fields, status, words", [
    ("/v3/example.com/templates", {"description": "no name"}, 400, ["'name'", "missing"]),
    ("/v3/example.com/templates", {"name": "bad/name"}, 400, ["'name'"]),
    ("/v3/example.com/templates", {"name": "bad name"}, 400, ["'name'"]),
    ("/v3/example.com/templates", {"name": "syntax", "template": "{{#each items}}x"}, 400,
     ["'template'", "not a valid Handlebars"]),
    ("/v3/example.com/templates", {"name": "partial", "template": "{{> header}}"}, 400, ["'template'", "partial"]),
    ("/v3/example.com/templates", {"name": "deep", "template": "{{#if a}}" * 50 + "{{/if}}" * 50}, 400,
     ["'template'", "deeper"]),
    ("/v3/example.com/templates", {"name": "big", "template": "x" * 100_001}, 400, ["'template'", "100000"]),
    ("/v3/example.com/templates", {"name": "eng", "template": "x", "engine": "go"}, 400, ["'engine'"]),
    ("/v3/example.com/templates", {"name": "hdr", "template": "x", "headers": '{"X-Other": "1"}'}, 400,
     ["'headers'", "X-Other"]),
    ("/v3/example.com/templates", {"name": "hdr2", "template": "x", "headers": '{"Subject": "a\\r\\nBcc: x@y"}'},
     400, ["'headers'", "line break"]),
    ("/v3/nowhere.test/templates", {"name": "x"}, 404, ["Domain not found"]),
    ("/v3/example.com/templates/missing/versions", {"tag": "v1", "template": "x"}, 404, ["not found"]),
])
async def test_refusals_in_the_error_shape(daemon, path, fields, status, words):
    body = await api(daemon, "POST", path, data=form(**fields), expect=status)
    assert set(body) == {"message"}, body
    assert all(w in body["message"] for w in words), body


async def test_duplicates_are_refused(daemon):
    await api(daemon, "POST", "/v3/example.com/templates", data=form(name="dup", template="x", tag="v1"))
    body = await api(daemon, "POST", "/v3/example.com/templates", data=form(name="DUP"), expect=400)
    assert "already exists" in body["message"]
    body = await api(daemon, "POST", "/v3/example.com/templates/dup/versions", data=form(tag="v1", template="y"),
                     expect=400)
    assert "'tag'" in body["message"] and "already exists" in body["message"]
    body = await api(daemon, "PUT", "/v3/example.com/templates/dup/versions/v1/copy/v1", expect=400)
    assert "already exists" in body["message"]
    assert (await api(daemon, "GET", "/v3/example.com/templates/dup/versions/zz", expect=404))["message"]


async def test_answers_match_the_documented_schemas(daemon):
    """docs/openapi.yaml's schemas hold for answers with data in them (the fuzzer mostly sees empty lists)."""
    from tests.e2e.test_openapi_contract import SPEC_PATH, documented_schema
    import yaml
    from jsonschema import Draft202012Validator
    spec = yaml.safe_load(SPEC_PATH.read_text())
    base = "/v3/{domain}/templates"

    def check(path: str, method: str, data: dict) -> None:
        Draft202012Validator(documented_schema(spec, spec["paths"][path][method], 200)).validate(data)
    created = await api(daemon, "POST", "/v3/example.com/templates", data=form(
        name="schema", template="<p>{{x}}</p>", tag="v1", headers=json.dumps({"Subject": "S"})))
    check(base, "post", created)
    check(base, "get", await api(daemon, "GET", "/v3/example.com/templates"))
    check(base + "/{name}", "get", await api(daemon, "GET", "/v3/example.com/templates/schema?active=yes"))
    check(base + "/{name}/versions", "post", await api(daemon, "POST", "/v3/example.com/templates/schema/versions",
                                                       data=form(tag="v2", template="y")))
    check(base + "/{name}/versions", "get", await api(daemon, "GET", "/v3/example.com/templates/schema/versions"))
    check(base + "/{name}/versions/{tag}", "get",
          await api(daemon, "GET", "/v3/example.com/templates/schema/versions/v1"))
    check(base + "/{name}/versions/{tag}", "put",
          await api(daemon, "PUT", "/v3/example.com/templates/schema/versions/v1", data=form(comment="c")))
    check(base + "/{name}/versions/{tag}/copy/{new_tag}", "put",
          await api(daemon, "PUT", "/v3/example.com/templates/schema/versions/v1/copy/v3"))
    check(base + "/{name}/versions/{tag}", "delete",
          await api(daemon, "DELETE", "/v3/example.com/templates/schema/versions/v3"))
    check(base + "/{name}", "put", await api(daemon, "PUT", "/v3/example.com/templates/schema",
                                             data=form(description="new")))
    check(base + "/{name}", "delete", await api(daemon, "DELETE", "/v3/example.com/templates/schema"))
