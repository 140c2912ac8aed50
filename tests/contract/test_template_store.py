"""The stored templates' contract (``store.templates.TemplateStore``), run on every backend: names and tags are
unique, the limits hold, one version is active (the first one whatever was asked, a new active one replaces it),
updates change only what is given, a copy is an inactive twin, deletes cascade, paging by name and by tag."""

from __future__ import annotations

import asyncio

from mtad.store.templates import Template, TemplateVersion, new_id
from tests.support.stores import backend_store  # noqa: F401 - the fixture: each test on every backend


def version(tag: str, content: str = "Hi {{name}}", active: bool = False, now: float = 1.0,
            headers: tuple[tuple[str, str], ...] = ()) -> TemplateVersion:
    return TemplateVersion(tag, new_id(), "handlebars", f"comment {tag}", headers, active, now, content)


def template(name: str, v: TemplateVersion | None = None, domain: str = "example.com") -> Template:
    return Template(domain, name, new_id(), f"about {name}", "", 1.0, v)


async def test_a_template_is_stored_once_with_its_first_version_active(backend_store):
    store = backend_store()
    assert await store.add_template(template("welcome", version("v1", active=False)), 10) == "ok"
    assert await store.add_template(template("welcome"), 10) == "exists"
    got = await store.get_template("example.com", "welcome", active=True)
    assert got.description == "about welcome" and got.version.tag == "v1" and got.version.active
    assert got.version.content == "Hi {{name}}"
    assert (await store.get_template("example.com", "welcome")).version is None  # metadata only
    assert await store.get_template("other.org", "welcome") is None
    assert (await store.get_template("example.com", "welcome", tag="nope")).version is None


async def test_one_active_version_and_updates_change_only_what_is_given(backend_store):
    store = backend_store()
    await store.add_template(template("t"), 10)
    assert await store.add_template_version("example.com", "t", version("a", "A"), 5) == "ok"
    assert (await store.get_template("example.com", "t", active=True)).version.tag == "a"  # the first: active
    assert await store.add_template_version("example.com", "t", version("b", "B", active=True), 5) == "ok"
    assert await store.add_template_version("example.com", "t", version("b"), 5) == "exists"
    assert await store.add_template_version("example.com", "missing", version("b"), 5) == "missing"
    _, listed = await store.template_versions("example.com", "t", 10, "first")
    assert [(v.tag, v.active) for v in listed] == [("a", False), ("b", True)]
    assert await store.update_template_version("example.com", "t", "a", comment="new", active=True) == "ok"
    a = (await store.get_template("example.com", "t", tag="a")).version
    assert (a.comment, a.content, a.active) == ("new", "A", True)
    assert not (await store.get_template("example.com", "t", tag="b")).version.active
    assert await store.update_template_version("example.com", "t", "a", content="A2",
                                               headers=(("Subject", "S {{x}}"),)) == "ok"
    a = (await store.get_template("example.com", "t", tag="a")).version
    assert (a.content, a.headers, a.active) == ("A2", (("Subject", "S {{x}}"),), True)
    assert await store.update_template_version("example.com", "t", "zz", comment="x") == "missing"


async def test_limits_hold_under_racing_requests(backend_store):
    store = backend_store()
    outcomes = await asyncio.gather(*(store.add_template(template(f"t{i}"), 3) for i in range(8)))
    assert sorted(outcomes) == ["full"] * 5 + ["ok"] * 3
    outcomes = await asyncio.gather(*(store.add_template_version("example.com", "t0", version(f"v{i}"), 2)
                                      for i in range(6)))
    assert sorted(outcomes) == ["full"] * 4 + ["ok"] * 2
    _, listed = await store.template_versions("example.com", "t0", 10, "first")
    assert sum(v.active for v in listed) == 1


async def test_copy_makes_an_inactive_twin(backend_store):
    store = backend_store()
    await store.add_template(template("t", version("v1", "X {{y}}", headers=(("From", "a@example.com"),))), 10)
    outcome, copy = await store.copy_template_version("example.com", "t", "v1", "v2", None, 5.0, 10)
    assert outcome == "ok" and copy.tag == "v2" and not copy.active
    got = (await store.get_template("example.com", "t", tag="v2")).version
    assert (got.content, got.headers, got.comment, got.active) == ("X {{y}}", (("From", "a@example.com"),),
                                                                   "comment v1", False)
    assert (await store.copy_template_version("example.com", "t", "v1", "v2", "c", 5.0, 10))[0] == "exists"
    assert (await store.copy_template_version("example.com", "t", "nope", "v3", "c", 5.0, 10))[0] == "missing"
    assert (await store.get_template("example.com", "t", active=True)).version.tag == "v1"


async def test_deletes_and_paging(backend_store):
    store = backend_store()
    for name in ("c", "a", "e", "b", "d"):
        await store.add_template(template(name, version("v1")), 10)
    await store.add_template(template("z", domain="other.org"), 10)
    assert [t.name for t in await store.template_page("example.com", 2, "first")] == ["a", "b"]
    assert [t.name for t in await store.template_page("example.com", 2, "next", "b")] == ["c", "d"]
    assert [t.name for t in await store.template_page("example.com", 2, "previous", "c")] == ["a", "b"]
    assert [t.name for t in await store.template_page("example.com", 2, "last")] == ["d", "e"]
    assert await store.template_versions("example.com", "nope", 10, "first") is None
    assert (await store.describe_template("example.com", "a", "new")).description == "new"
    assert await store.describe_template("example.com", "nope", "new") is None
    assert await store.delete_template_version("example.com", "a", "v1")
    assert not await store.delete_template_version("example.com", "a", "v1")
    assert (await store.get_template("example.com", "a", active=True)).version is None
    assert await store.delete_template("example.com", "b")
    assert not await store.delete_template("example.com", "b")
    assert await store.add_template(template("b"), 10) == "ok"  # its versions went with it
    assert await store.add_template_version("example.com", "b", version("v1"), 10) == "ok"
    assert await store.delete_templates("example.com") == 5
    assert await store.template_page("example.com", 10, "first") == ()
    assert [t.name for t in await store.template_page("other.org", 10, "first")] == ["z"]


async def test_templates_survive_a_restart(backend_store):
    store = backend_store()
    await store.add_template(template("kept", version("v1", "Kept {{x}}")), 10)
    store.close()
    again = backend_store()
    assert (await again.get_template("example.com", "kept", active=True)).version.content == "Kept {{x}}"
