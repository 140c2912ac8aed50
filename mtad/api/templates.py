"""Stored templates over HTTP, in Mailgun's shapes: ``/v3/{domain}/templates`` and their versions.

Routes (Mailgun's v3 Templates API):
- ``POST /v3/{domain}/templates``: ``name`` (required; letters, digits, ``.-_~``; stored lower-cased),
  ``description``, ``createdBy``, and optionally a first version: ``template`` (the content), ``tag`` (default
  ``initial``), ``engine`` (``handlebars``, the only one), ``comment``, ``headers`` (a JSON object of From,
  Subject, Reply-To). ``{"message": "template has been stored", "template": {...}}``.
- ``GET /v3/{domain}/templates``: paged by name (``limit``, default 10; ``page`` = first | last | next | previous
  with ``p`` the pivot name): ``{"items": [...], "paging": {...}}``.
- ``GET /v3/{domain}/templates/{name}`` (``active=yes``: with the active version and its content),
  ``PUT`` (``description``), ``DELETE`` (with its versions); ``DELETE /v3/{domain}/templates``: all of a domain.
- ``POST /v3/{domain}/templates/{name}/versions``: ``template``, ``tag`` (both required), ``engine``, ``comment``,
  ``active`` (``yes``: the only active one; the first version is active anyway), ``headers``.
- ``GET .../versions`` (paged by tag, as the templates), ``GET .../versions/{tag}`` (with its content),
  ``PUT .../versions/{tag}`` (``template``, ``comment``, ``active``, ``headers``), ``DELETE .../versions/{tag}``,
  ``PUT .../versions/{tag}/copy/{new_tag}`` (``comment``; an inactive copy).

Content is checked when it is stored (``mail.templating.check``: Handlebars syntax, no partials, the size and
nesting bounds), so a stored version renders or fails only on its variables. Limits (Mailgun's):
``MAX_TEMPLATES`` per domain, ``MAX_VERSIONS`` per template, ``templating.RenderLimits.max_source`` characters
of content. Errors in the JSON error shape: 400 naming the field (a duplicate name or tag too), 404 for an
unknown domain, template or version. A domain is one mtad sends for.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict

from mtad.api import context, error
from mtad.api.formdata import FilePart, read_post
from mtad.events.query import rfc2822
from mtad.mail import templating
from mtad.mail.compose import check_header_value, parse_addresses, ComposeError
from mtad.store.templates import Template, TemplateVersion, new_id

MAX_TEMPLATES = 100  # per domain (Mailgun's limit)
MAX_VERSIONS = 40  # per template (Mailgun's limit)
MAX_PAGE = 100
MAX_TEXT = 1000  # characters of a description, comment or createdBy
HEADER_NAMES = {"from": "From", "subject": "Subject", "reply-to": "Reply-To"}  # what a version may carry
_NAME = re.compile(r"[\w.\-~]{1,255}")


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# --- views ------------------------------------------------------------------------------------------------------

def version_view(v: TemplateVersion, content: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"tag": v.tag, "engine": v.engine, "mjml": "", "createdAt": rfc2822(v.created_at),
                           "comment": v.comment, "active": v.active, "id": v.id}
    if v.headers:
        out["headers"] = dict(v.headers)
    if content:
        out["template"] = v.content
    return out


def template_view(t: Template, content: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"name": t.name, "description": t.description, "createdAt": rfc2822(t.created_at),
                           "createdBy": t.created_by, "id": t.id}
    if t.version is not None:
        out["version"] = version_view(t.version, content)
    return out


# --- reading requests ---------------------------------------------------------------------------------------------

async def _form(request: web.Request) -> MultiDict[str]:
    """The query's parameters with the form's over them (the SDKs send some as either)."""
    merged: MultiDict[str] = MultiDict(request.query)
    if request.body_exists:
        for name, value in (await read_post(request)).items():
            if isinstance(value, FilePart):
                try:
                    value = value.data.decode("utf-8")
                except UnicodeDecodeError:
                    raise _Refused(400, f"'{name}' is not UTF-8 text") from None
            merged.popall(name, None)
            merged.add(name, value)
    return merged


def _domain(request: web.Request) -> str:
    domain = request.match_info["domain"].lower()
    if domain not in context(request).ingress.directory.sending_domains:
        raise _Refused(404, f"Domain not found: {domain}")
    return domain


def _name(value: str | None, field: str = "name") -> str:
    if value is None or not value.strip():
        raise _Refused(400, f"'{field}' parameter is missing")
    if not _NAME.fullmatch(value.strip()):
        raise _Refused(400, f"'{field}' may hold only letters, digits and . - _ ~ (at most 255): {value[:100]!r}")
    return value.strip()


def _text(form: MultiDict[str], field: str) -> str | None:
    value = form.get(field)
    if value is not None and len(value) > MAX_TEXT:
        raise _Refused(400, f"'{field}' is over {MAX_TEXT} characters")
    return value


def _engine(form: MultiDict[str]) -> str:
    engine = (form.get("engine") or templating.ENGINE).strip().lower()
    if engine != templating.ENGINE:
        raise _Refused(400, f"'engine' {engine[:50]!r} is not supported: mtad renders {templating.ENGINE} only")
    return engine


def _content(value: str | None, required: bool) -> str | None:
    if value is None or (not value.strip() and not required):
        if required:
            raise _Refused(400, "'template' parameter is missing")
        return None
    try:
        templating.check(value)
    except templating.TemplateError as exc:
        raise _Refused(400, f"'template' {exc}") from None
    return value


def _headers(value: str | None) -> tuple[tuple[str, str], ...] | None:
    """``headers``: a JSON object of From, Subject, Reply-To (Mailgun's three), values checked as headers and as
    templates (they are rendered too)."""
    if value is None or not value.strip():
        return None
    try:
        given = json.loads(value)
    except (ValueError, RecursionError):
        raise _Refused(400, "'headers' is not valid JSON") from None
    if not isinstance(given, dict):
        raise _Refused(400, "'headers' must be a JSON object of header names and values")
    out = []
    for name, text in given.items():
        canonical = HEADER_NAMES.get(str(name).lower())
        if canonical is None:
            raise _Refused(400, f"'headers' may set From, Subject and Reply-To only, not {str(name)[:50]!r}")
        if not isinstance(text, str):
            raise _Refused(400, f"'headers' {canonical} must be a string")
        try:
            check_header_value(f"headers {canonical}", text)
            templating.check(text)
            if canonical != "Subject" and "{{" not in text:
                parse_addresses(f"headers {canonical}", [text])
        except (ComposeError, templating.TemplateError) as exc:
            raise _Refused(400, f"'headers' {canonical}: {exc}") from None
        out.append((canonical, text))
    return tuple(out)


def _yes(form: MultiDict[str], field: str) -> bool:
    value = (form.get(field) or "").strip().lower()
    if value in ("", "no", "false", "0"):
        return False
    if value in ("yes", "true", "1"):
        return True
    raise _Refused(400, f"'{field}' expected yes or no")


def _paging(request: web.Request) -> tuple[int, str, str | None]:
    q = request.query
    try:
        limit = int(q.get("limit", 10))
    except ValueError:
        raise _Refused(400, "'limit' must be a number") from None
    if not 1 <= limit <= MAX_PAGE:
        raise _Refused(400, f"'limit' must be between 1 and {MAX_PAGE}")
    which = q.get("page", "first")
    if which not in ("first", "last", "next", "previous", "prev"):
        raise _Refused(400, "'page' expected first, last, next or previous")
    return limit, which, q.get("p")


def _links(base: str, limit: int, which: str, pivot: str | None, keys: list[str]) -> dict[str, str]:
    def link(**params: Any) -> str:
        return f"{base}?{urlencode({**params, 'limit': limit})}"
    if keys:
        nxt, prev = link(page="next", p=keys[-1]), link(page="previous", p=keys[0])
    elif which in ("previous", "prev"):
        nxt, prev = link(page="first"), link(page="previous", p=pivot or "")
    else:
        nxt, prev = link(page="next", p=pivot or ""), link(page="last")
    return {"first": link(page="first"), "last": link(page="last"), "next": nxt, "previous": prev, "prev": prev}


def _refusals(handler):
    async def run(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except _Refused as exc:
            return error(exc.status, exc.message)
    run.__name__ = handler.__name__
    return run


def _template_missing(name: str) -> _Refused:
    return _Refused(404, f"template {name!r} not found")


# --- handlers -----------------------------------------------------------------------------------------------------

@_refusals
async def create_template(request: web.Request) -> web.Response:
    domain = _domain(request)
    form = await _form(request)
    name = _name(form.get("name")).lower()
    content = _content(form.get("template"), required=False)
    now = time.time()
    version = None
    if content is not None:
        version = TemplateVersion(_name(form.get("tag") or "initial", "tag"), new_id(), _engine(form),
                                  _text(form, "comment") or "", _headers(form.get("headers")) or (), True, now,
                                  content)
    template = Template(domain, name, new_id(), _text(form, "description") or "", _text(form, "createdBy") or "",
                        now, version)
    outcome = await context(request).store.add_template(template, MAX_TEMPLATES)
    if outcome == "exists":
        return error(400, f"'name' template {name!r} already exists")
    if outcome == "full":
        return error(400, f"domain {domain} has {MAX_TEMPLATES} templates, the limit")
    return web.json_response({"message": "template has been stored", "template": template_view(template)})


@_refusals
async def list_templates(request: web.Request) -> web.Response:
    domain = _domain(request)
    limit, which, pivot = _paging(request)
    rows = await context(request).store.template_page(domain, limit, which, pivot)  # type: ignore[arg-type]
    base = f"{context(request).base_url}/v3/{domain}/templates"
    return web.json_response({"items": [template_view(t) for t in rows],
                              "paging": _links(base, limit, which, pivot, [t.name for t in rows])})


@_refusals
async def get_template(request: web.Request) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    active = _yes(MultiDict(request.query), "active")
    found = await context(request).store.get_template(domain, name, active=active)
    if found is None:
        raise _template_missing(name)
    return web.json_response({"template": template_view(found, content=True)})


@_refusals
async def update_template(request: web.Request) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    form = await _form(request)
    description = _text(form, "description")
    if description is None:
        raise _Refused(400, "'description' parameter is missing")
    found = await context(request).store.describe_template(domain, name, description)
    if found is None:
        raise _template_missing(name)
    return web.json_response({"message": "template has been updated", "template": template_view(found)})


@_refusals
async def delete_template(request: web.Request) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    if not await context(request).store.delete_template(domain, name):
        raise _template_missing(name)
    return web.json_response({"message": "template has been deleted", "template": {"name": name}})


@_refusals
async def delete_templates(request: web.Request) -> web.Response:
    domain = _domain(request)
    await context(request).store.delete_templates(domain)
    return web.json_response({"message": "templates have been deleted"})


@_refusals
async def create_version(request: web.Request) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    form = await _form(request)
    content = _content(form.get("template"), required=True)
    tag = _name(form.get("tag"), "tag")
    version = TemplateVersion(tag, new_id(), _engine(form), _text(form, "comment") or "",
                              _headers(form.get("headers")) or (), _yes(form, "active"), time.time(), content or "")
    store = context(request).store
    outcome = await store.add_template_version(domain, name, version, MAX_VERSIONS)
    if outcome == "missing":
        raise _template_missing(name)
    if outcome == "exists":
        return error(400, f"'tag' version {tag!r} of template {name!r} already exists")
    if outcome == "full":
        return error(400, f"template {name!r} has {MAX_VERSIONS} versions, the limit")
    found = await store.get_template(domain, name, tag=tag)
    assert found is not None
    return web.json_response({"message": "new version of the template has been stored",
                              "template": template_view(found)})


@_refusals
async def list_versions(request: web.Request) -> web.Response:
    domain = _domain(request)
    name = request.match_info["name"].lower()
    limit, which, pivot = _paging(request)
    found = await context(request).store.template_versions(domain, name, limit, which, pivot)  # type: ignore
    if found is None:
        raise _template_missing(name)
    template, versions = found
    view = template_view(template)
    view["versions"] = [version_view(v) for v in versions]
    base = f"{context(request).base_url}/v3/{domain}/templates/{name}/versions"
    return web.json_response({"template": view,
                              "paging": _links(base, limit, which, pivot, [v.tag for v in versions])})


async def _version(request: web.Request, domain: str, name: str, tag: str) -> Template:
    found = await context(request).store.get_template(domain, name, tag=tag)
    if found is None:
        raise _template_missing(name)
    if found.version is None:
        raise _Refused(404, f"version {tag!r} of template {name!r} not found")
    return found


@_refusals
async def get_version(request: web.Request) -> web.Response:
    domain = _domain(request)
    name, tag = request.match_info["name"].lower(), request.match_info["tag"]
    return web.json_response({"template": template_view(await _version(request, domain, name, tag), content=True)})


@_refusals
async def update_version(request: web.Request) -> web.Response:
    domain = _domain(request)
    name, tag = request.match_info["name"].lower(), request.match_info["tag"]
    form = await _form(request)
    content = _content(form.get("template"), required=False)
    comment, headers, active = _text(form, "comment"), _headers(form.get("headers")), _yes(form, "active")
    await _version(request, domain, name, tag)
    outcome = await context(request).store.update_template_version(domain, name, tag, content=content,
                                                                   comment=comment, headers=headers, active=active)
    if outcome == "missing":  # deleted meanwhile
        raise _Refused(404, f"version {tag!r} of template {name!r} not found")
    return web.json_response({"message": "version has been updated",
                              "template": {"name": name, "version": {"tag": tag}}})


@_refusals
async def delete_version(request: web.Request) -> web.Response:
    domain = _domain(request)
    name, tag = request.match_info["name"].lower(), request.match_info["tag"]
    await _version(request, domain, name, tag)
    if not await context(request).store.delete_template_version(domain, name, tag):
        raise _Refused(404, f"version {tag!r} of template {name!r} not found")
    return web.json_response({"message": "version has been deleted",
                              "template": {"name": name, "version": {"tag": tag}}})


@_refusals
async def copy_version(request: web.Request) -> web.Response:
    domain = _domain(request)
    name, tag = request.match_info["name"].lower(), request.match_info["tag"]
    new_tag = _name(request.match_info["new_tag"], "new_tag")
    form = await _form(request)
    store = context(request).store
    source = await _version(request, domain, name, tag)
    outcome, copy = await store.copy_template_version(domain, name, tag, new_tag, _text(form, "comment"),
                                                      time.time(), MAX_VERSIONS)
    if outcome == "missing":
        raise _Refused(404, f"version {tag!r} of template {name!r} not found")
    if outcome == "exists":
        return error(400, f"'new_tag' version {new_tag!r} of template {name!r} already exists")
    if outcome == "full":
        return error(400, f"template {name!r} has {MAX_VERSIONS} versions, the limit")
    assert copy is not None
    view = template_view(Template(source.domain, source.name, source.id, source.description, source.created_by,
                                  source.created_at, copy))
    return web.json_response({"message": "version has been copied", "version": version_view(copy), "template": view})


def setup(app: web.Application) -> None:
    base = "/v3/{domain}/templates"
    app.router.add_post(base, create_template)
    app.router.add_get(base, list_templates)
    app.router.add_delete(base, delete_templates)
    app.router.add_get(base + "/{name}", get_template)
    app.router.add_put(base + "/{name}", update_template)
    app.router.add_delete(base + "/{name}", delete_template)
    app.router.add_post(base + "/{name}/versions", create_version)
    app.router.add_get(base + "/{name}/versions", list_versions)
    app.router.add_get(base + "/{name}/versions/{tag}", get_version)
    app.router.add_put(base + "/{name}/versions/{tag}", update_version)
    app.router.add_delete(base + "/{name}/versions/{tag}", delete_version)
    app.router.add_put(base + "/{name}/versions/{tag}/copy/{new_tag}", copy_version)
