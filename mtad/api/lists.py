"""Mailing lists over HTTP, in Mailgun's v3 shapes (the seed manual's ``/v2/lists`` paths are aliases), and the
public page behind ``%mailing_list_unsubscribe_url%``.

Lists: ``POST /v3/lists`` (``address`` — ``Name <addr>`` accepted —, ``name``, ``description``, ``access_level``
readonly | members | everyone, ``reply_preference`` list | sender), ``GET /v3/lists`` (``limit``, ``skip``,
``address``: ``{"total_count", "items"}``), ``GET /v3/lists/pages`` (``limit``, ``page`` = first | last | next |
prev, ``address`` = the pivot: ``{"items", "paging": {first, last, next, previous}}``), ``GET/PUT/DELETE
/v3/lists/{list}``. A list's JSON: ``address, name, description, access_level, reply_preference, created_at``
(RFC 2822), ``members_count``. A list's address must be in a domain mtad sends or receives for; an API key limited
to domains manages only the lists of those domains.

Members: ``POST /v3/lists/{list}/members`` (``address``, ``name``, ``vars`` a JSON object, ``subscribed``,
``upsert``: yes | no), ``POST .../members.json`` (``members``: a JSON array of addresses or objects, at most 1,000;
``upsert``), ``POST .../members.csv`` (a CSV file in ``members``, also ``file``: a header line naming ``address``
and any of ``name``, ``subscribed``, ``vars``, other columns becoming vars; or no header and ``address[,name]``
lines; ``subscribed``, ``upsert`` apply to every line), ``GET .../members`` (``subscribed``, ``limit``, ``skip``)
and ``.../members/pages`` (``subscribed``, ``limit``, ``page``, ``address``), ``GET/PUT/DELETE
.../members/{member}`` (PUT changes only the fields given: ``address``, ``name``, ``vars``, ``subscribed``).

Every error is ``{"message": ...}``: 400 for a malformed or missing field (naming it), 404 for an unknown list or
member, 403 for a list outside the key's domains. A list change is applied to ingress (which addresses are lists)
before the answer, and to the other nodes through ``store.changes``.

``GET /list-unsubscribe/{token}`` (no API key: the token is the credential, ``mail.listlinks``) shows a
confirmation page; ``POST`` to it unsubscribes the member from the list (``subscribed`` false) and records an
``unsubscribed`` event naming the list, in one transaction.
"""

from __future__ import annotations

import csv
import email.utils
import html
import io
import json
import re
import time
from typing import Any, Mapping
from urllib.parse import quote, urlencode

from aiohttp import web

from mtad.api import context, error
from mtad.api.formdata import FilePart, read_json, read_post
from mtad.base import keys as keys_mod
from mtad.base.types import domain_of
from mtad.events import lists as list_events
from mtad.mail import listlinks
from mtad.net import forwarded
from mtad.store.lists import (ACCESS_LEVELS, REPLY_PREFERENCES, ListChange, ListExists, ListMember, MailingList,
                              MemberChange, MemberExists)

MAX_BULK = 1000
MAX_PAGE = 1000
MAX_VARS = 10_000  # bytes of a member's vars as JSON
MAX_TEXT = 1024  # characters of a name or description
_ADDRESS = re.compile(r"^[^\s@<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}$")


class Invalid(ValueError):
    pass


# --- field readers --------------------------------------------------------------------------------------------------

def _address(value: Any, field: str = "address") -> tuple[str, str]:
    """(display name, address lower-cased) of ``value``: ``addr`` or ``Name <addr>``; raises Invalid."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"'{field}' parameter is missing")
    if len(value) > 600 or any(c in value for c in "\r\n\x00"):
        raise Invalid(f"'{field}': not a valid address")
    name, addr = email.utils.parseaddr(value.strip())
    if not _ADDRESS.match(addr) or ".." in addr or addr.rpartition("@")[2].startswith(("-", ".")):
        raise Invalid(f"'{field}': {value[:100]!r} is not a valid address")
    return name, addr.lower()


def _bool(value: Any, field: str, default: bool) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off"):
        return False
    raise Invalid(f"'{field}' must be yes or no")


def _text(value: Any, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        raise Invalid(f"'{field}' must be text of at most {MAX_TEXT} characters")
    return value


def _vars(value: Any) -> dict[str, Any] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise Invalid("'vars' must be a JSON object") from None
    if not isinstance(value, dict):
        raise Invalid("'vars' must be a JSON object")
    if len(json.dumps(value)) > MAX_VARS:
        raise Invalid(f"'vars' is larger than {MAX_VARS} bytes")
    return value


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str | None:
    if value is None or value == "":
        return None
    text = str(value).strip().lower()
    if text == "read-only":
        text = "readonly"
    if text not in choices:
        raise Invalid(f"'{field}' must be one of {', '.join(choices)}")
    return text


def _int(value: str | None, field: str, default: int, low: int, high: int) -> int:
    if value is None or value == "":
        return default
    try:
        n = int(value)
    except ValueError:
        raise Invalid(f"'{field}' must be an integer") from None
    if not low <= n <= high:
        raise Invalid(f"'{field}' must be between {low} and {high}")
    return n


def _member(item: Any, subscribed: bool = True) -> ListMember:
    """A member from a form or a members.json element (a string or an object)."""
    if isinstance(item, str):
        name, addr = _address(item)
        return ListMember(addr, name, {}, subscribed)
    if not isinstance(item, Mapping):
        raise Invalid("a member must be an address or an object with 'address'")
    display, addr = _address(item.get("address"))
    name = _text(item.get("name"), "name")
    return ListMember(addr, display if name is None else name, _vars(item.get("vars")) or {},
                      _bool(item.get("subscribed"), "subscribed", subscribed))


# --- views ----------------------------------------------------------------------------------------------------------

def list_json(lst: MailingList) -> dict[str, Any]:
    return {"address": lst.address, "name": lst.name, "description": lst.description,
            "access_level": lst.access_level, "reply_preference": lst.reply_preference,
            "created_at": email.utils.formatdate(lst.created_at, usegmt=True), "members_count": lst.members_count}


def member_json(m: ListMember) -> dict[str, Any]:
    return {"address": m.address, "name": m.name, "vars": dict(m.vars), "subscribed": m.subscribed}


def _paging(base: str, which: str, pivot: str | None, limit: int, first: str | None, last: str | None,
            extra: Mapping[str, str]) -> dict[str, str]:
    def link(**params: Any) -> str:
        return f"{base}?{urlencode({**params, **extra, 'limit': limit})}"
    if first is not None and last is not None:
        nxt, prev = link(page="next", address=last), link(page="prev", address=first)
    elif which in ("previous", "prev"):
        nxt, prev = link(page="first"), link(page="prev", address=pivot or "")
    else:
        nxt, prev = link(page="next", address=pivot or ""), link(page="last")
    return {"first": link(page="first"), "last": link(page="last"), "next": nxt, "previous": prev}


# --- handlers: lists ------------------------------------------------------------------------------------------------

def _key_allows(request: web.Request, address: str) -> None:
    key = request.get("api_key")
    if key is not None and not key.allows(domain_of(address)):
        raise web.HTTPForbidden(text=f"Forbidden: this key may not use domain {domain_of(address)}")


def _list_address(request: web.Request) -> str:
    address = request.match_info["list"].lower()
    _key_allows(request, address)
    return address


def _check_domain(request: web.Request, address: str) -> None:
    directory = context(request).ingress.directory
    domain = domain_of(address)
    if domain not in directory.sending_domains and not directory.receives(domain):
        raise Invalid(f"'address': {domain} is not a domain mtad sends or receives mail for")
    _key_allows(request, address)


def _not_found(address: str) -> web.Response:
    return error(404, f"Mailing list {address} not found")


async def _applied(request: web.Request) -> None:
    """A list changed: ingress sees it before the client does."""
    await context(request).ingress.lists.reload()


async def create_list(request: web.Request) -> web.Response:
    ctx = context(request)
    form = await read_post(request)
    try:
        display, address = _address(form.get("address"))
        _check_domain(request, address)
        name = _text(form.get("name"), "name")
        lst = MailingList(0, address, display if name is None else name,
                          _text(form.get("description"), "description") or "",
                          _choice(form.get("access_level"), "access_level", ACCESS_LEVELS) or "readonly",
                          _choice(form.get("reply_preference"), "reply_preference", REPLY_PREFERENCES) or "list",
                          time.time())
    except Invalid as exc:
        return error(400, str(exc))
    try:
        made = await ctx.store.create_list(lst)
    except ListExists:
        return error(400, f"Mailing list {address} already exists")
    await _applied(request)
    return web.json_response({"message": "Mailing list has been created", "list": list_json(made)})


def _allowed(request: web.Request, lists: list[MailingList]) -> list[MailingList]:
    key = request.get("api_key")
    return [lst for lst in lists if key is None or key.allows(domain_of(lst.address))]


async def list_lists(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = _int(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        skip = _int(q.get("skip"), "skip", 0, 0, 10**9)
    except Invalid as exc:
        return error(400, str(exc))
    total, items = await context(request).store.lists_skip(skip, limit, q.get("address") or None)
    return web.json_response({"total_count": total, "items": [list_json(lst) for lst in _allowed(request, items)]})


async def lists_pages(request: web.Request) -> web.Response:
    q = request.query
    try:
        limit = _int(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        which = _page(q.get("page"))
    except Invalid as exc:
        return error(400, str(exc))
    pivot = q.get("address")
    rows = _allowed(request, await context(request).store.lists_page(limit, which, pivot))
    paging = _paging(f"{context(request).base_url}/v3/lists/pages", which, pivot, limit,
                     rows[0].address if rows else None, rows[-1].address if rows else None, {})
    return web.json_response({"items": [list_json(lst) for lst in rows], "paging": paging})


def _page(value: str | None) -> str:
    which = value or "first"
    if which not in ("first", "last", "next", "prev", "previous"):
        raise Invalid("'page' must be first, last, next or prev")
    return which


async def get_list(request: web.Request) -> web.Response:
    address = _list_address(request)
    lst = await context(request).store.get_list(address)
    if lst is None:
        return _not_found(address)
    return web.json_response({"list": list_json(lst)})


async def update_list(request: web.Request) -> web.Response:
    ctx = context(request)
    address = _list_address(request)
    form = await read_post(request)
    try:
        new_address = None
        if form.get("address"):
            _, new_address = _address(form.get("address"))
            _check_domain(request, new_address)
        change = ListChange(new_address, _text(form.get("name"), "name"),
                            _text(form.get("description"), "description"),
                            _choice(form.get("access_level"), "access_level", ACCESS_LEVELS),
                            _choice(form.get("reply_preference"), "reply_preference", REPLY_PREFERENCES))
    except Invalid as exc:
        return error(400, str(exc))
    try:
        lst = await ctx.store.update_list(address, change)
    except ListExists:
        return error(400, f"Mailing list {new_address} already exists")
    if lst is None:
        return _not_found(address)
    await _applied(request)
    found = await ctx.store.get_list(lst.address)
    return web.json_response({"message": "Mailing list has been updated", "list": list_json(found or lst)})


async def delete_list(request: web.Request) -> web.Response:
    address = _list_address(request)
    if not await context(request).store.delete_list(address):
        return _not_found(address)
    await _applied(request)
    return web.json_response({"message": "Mailing list has been deleted", "address": address})


# --- handlers: members ----------------------------------------------------------------------------------------------

async def _list_of(request: web.Request) -> MailingList:
    address = _list_address(request)
    lst = await context(request).store.get_list(address)
    if lst is None:
        raise web.HTTPNotFound(text=f"Mailing list {address} not found")
    return lst


async def add_member(request: web.Request) -> web.Response:
    ctx = context(request)
    lst = await _list_of(request)
    form = await read_post(request)
    try:
        display, addr = _address(form.get("address"))
        name = _text(form.get("name"), "name")
        member = ListMember(addr, display if name is None else name, _vars(form.get("vars")) or {},
                            _bool(form.get("subscribed"), "subscribed", True))
        upsert = _bool(form.get("upsert"), "upsert", False)
    except Invalid as exc:
        return error(400, str(exc))
    try:
        found = await ctx.store.add_members(lst.address, [member], "upsert" if upsert else "strict", time.time())
    except MemberExists:
        return error(400, f"Address already exists '{addr}'")
    if found is None:
        return _not_found(lst.address)
    return web.json_response({"member": member_json(member), "message": "Mailing list member has been created"})


async def add_members_json(request: web.Request) -> web.Response:
    ctx = context(request)
    lst = await _list_of(request)
    try:
        if request.content_type == "application/json":  # also a JSON body: the array, or {"members", "upsert"}
            body = await read_json(request)
            raw, upsert_field = (body.get("members"), body.get("upsert")) if isinstance(body, dict) else (body, None)
        else:
            form = await read_post(request)
            raw, upsert_field = form.get("members"), form.get("upsert")
            if isinstance(raw, FilePart):
                raw = raw.data.decode("utf-8", "replace")
        if raw is None or raw == "":
            raise Invalid("'members' parameter is missing")
        items = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(items, list):
            raise Invalid("'members' must be a JSON array")
        if len(items) > MAX_BULK:
            raise Invalid(f"'members': at most {MAX_BULK} members per request")
        members = [_member(item) for item in items]
        upsert = _bool(upsert_field, "upsert", False)
    except ValueError as exc:  # Invalid, and JSON that does not parse
        return error(400, str(exc) if isinstance(exc, Invalid) else "'members' must be a JSON array")
    found = await ctx.store.add_members(lst.address, members, "upsert" if upsert else "ignore", time.time())
    if found is None:
        return _not_found(lst.address)
    return web.json_response({"message": "Mailing list has been updated", "list": list_json(found),
                              "task-id": ""})


def _csv_members(text: str, subscribed: bool) -> list[ListMember]:
    rows = list(csv.reader(io.StringIO(text)))
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise Invalid("'members': the CSV file is empty")
    head = [cell.strip().lower() for cell in rows[0]]
    members: list[ListMember] = []
    if "address" in head:
        for n, row in enumerate(rows[1:], start=2):
            item: dict[str, Any] = {}
            extra: dict[str, str] = {}
            for name, cell in zip(head, row):
                if name in ("address", "name", "subscribed", "vars"):
                    item[name] = cell
                elif name and cell != "":
                    extra[name] = cell
            try:
                member = _member(item, subscribed)
            except Invalid as exc:
                raise Invalid(f"'members' line {n}: {exc}") from None
            members.append(ListMember(member.address, member.name, {**extra, **member.vars}, member.subscribed))
    else:
        for n, row in enumerate(rows, start=1):
            try:
                display, addr = _address(row[0])
                name = _text(row[1], "name") if len(row) > 1 and row[1].strip() else None
            except Invalid as exc:
                raise Invalid(f"'members' line {n}: {exc}") from None
            members.append(ListMember(addr, name or display, {}, subscribed))
    if len(members) > MAX_BULK:
        raise Invalid(f"'members': at most {MAX_BULK} members per request")
    return members


async def add_members_csv(request: web.Request) -> web.Response:
    ctx = context(request)
    lst = await _list_of(request)
    form = await read_post(request)
    upload = form.get("members") or form.get("file")
    try:
        if isinstance(upload, FilePart):
            data = upload.data
        elif isinstance(upload, str) and upload:
            data = upload.encode("utf-8")
        else:
            raise Invalid("'members' parameter is missing (a CSV file)")
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise Invalid("'members': expected a UTF-8 CSV file") from None
        members = _csv_members(text, _bool(form.get("subscribed"), "subscribed", True))
        upsert = _bool(form.get("upsert"), "upsert", False)
    except (Invalid, csv.Error) as exc:
        return error(400, str(exc) if isinstance(exc, Invalid) else f"'members': {exc}")
    found = await ctx.store.add_members(lst.address, members, "upsert" if upsert else "ignore", time.time())
    if found is None:
        return _not_found(lst.address)
    return web.json_response({"message": "Mailing list has been updated", "list": list_json(found),
                              "task-id": ""})


def _subscribed_filter(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return _bool(value, "subscribed", True)


async def list_members(request: web.Request) -> web.Response:
    lst = await _list_of(request)
    q = request.query
    try:
        limit = _int(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        skip = _int(q.get("skip"), "skip", 0, 0, 10**9)
        subscribed = _subscribed_filter(q.get("subscribed"))
    except Invalid as exc:
        return error(400, str(exc))
    total, items = await context(request).store.members_skip(lst.id, skip, limit, subscribed, q.get("address"))
    return web.json_response({"total_count": total, "items": [member_json(m) for m in items]})


async def members_pages(request: web.Request) -> web.Response:
    lst = await _list_of(request)
    q = request.query
    try:
        limit = _int(q.get("limit"), "limit", 100, 1, MAX_PAGE)
        which = _page(q.get("page"))
        subscribed = _subscribed_filter(q.get("subscribed"))
    except Invalid as exc:
        return error(400, str(exc))
    pivot = q.get("address")
    rows = await context(request).store.members_page(lst.id, limit, which, pivot, subscribed)
    extra = {} if subscribed is None else {"subscribed": "yes" if subscribed else "no"}
    paging = _paging(f"{context(request).base_url}/v3/lists/{quote(lst.address, safe='@')}/members/pages", which,
                     pivot, limit, rows[0].address if rows else None, rows[-1].address if rows else None, extra)
    return web.json_response({"items": [member_json(m) for m in rows], "paging": paging})


def _member_not_found(address: str) -> web.Response:
    return error(404, f"Member {address} of the mailing list not found")


async def get_member(request: web.Request) -> web.Response:
    lst = await _list_of(request)
    address = request.match_info["member"].lower()
    found = await context(request).store.get_member(lst.address, address)
    if found is None:
        return _member_not_found(address)
    return web.json_response({"member": member_json(found)})


async def update_member(request: web.Request) -> web.Response:
    ctx = context(request)
    lst = await _list_of(request)
    address = request.match_info["member"].lower()
    form = await read_post(request)
    try:
        new_address = _address(form.get("address"))[1] if form.get("address") else None
        subscribed = form.get("subscribed")
        change = MemberChange(new_address, _text(form.get("name"), "name"), _vars(form.get("vars")),
                              None if subscribed in (None, "") else _bool(subscribed, "subscribed", True))
    except Invalid as exc:
        return error(400, str(exc))
    try:
        found = await ctx.store.update_member(lst.address, address, change)
    except MemberExists:
        return error(400, f"Address already exists '{new_address}'")
    if found is None:
        return _member_not_found(address)
    return web.json_response({"member": member_json(found), "message": "Mailing list member has been updated"})


async def delete_member(request: web.Request) -> web.Response:
    lst = await _list_of(request)
    address = request.match_info["member"].lower()
    if not await context(request).store.delete_member(lst.address, address):
        return _member_not_found(address)
    return web.json_response({"member": {"address": address}, "message": "Mailing list member has been deleted"})


# --- the unsubscribe link -------------------------------------------------------------------------------------------

_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><meta name="robots" content="noindex"><title>{title}</title></head>
<body><h1>{title}</h1><p>{text}</p>{form}</body></html>
"""


def _page_response(status: int, title: str, text: str, form: str = "") -> web.Response:
    body = _PAGE.format(title=html.escape(title), text=text, form=form)
    resp = web.Response(status=status, text=body, content_type="text/html", charset="utf-8")
    resp.headers["Cache-Control"] = "no-store"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Content-Security-Policy"] = "default-src 'none'; form-action 'self'"
    resp.headers["Referrer-Policy"] = "no-referrer"
    return resp


async def _link(request: web.Request) -> tuple[MailingList, str] | web.Response:
    found = listlinks.verify(unsubscribe_key(context(request).signing_key), request.match_info["token"])
    if found is None:
        return _page_response(404, "Link not valid", "This unsubscribe link is not valid.")
    lst = await context(request).store.get_list_by_id(found[0])
    if lst is None:
        return _page_response(404, "List not found", "This mailing list no longer exists.")
    return lst, found[1]


async def unsubscribe_page(request: web.Request) -> web.Response:
    found = await _link(request)
    if isinstance(found, web.Response):
        return found
    lst, member = found
    who, where = html.escape(member), html.escape(lst.name or lst.address)
    return _page_response(200, "Unsubscribe", f"Unsubscribe <b>{who}</b> from the mailing list <b>{where}</b>?",
                          '<form method="post"><button type="submit">Unsubscribe</button></form>')


async def unsubscribe(request: web.Request) -> web.Response:
    found = await _link(request)
    if isinstance(found, web.Response):
        return found
    lst, member = found
    await request.read()  # RFC 8058 one-click posts "List-Unsubscribe=One-Click"; any POST is a confirmation
    trusted = context(request).running_config().tracking.trusted_proxies
    ip = forwarded.client_address(trusted).of(request.remote or "",
                                              tuple(request.headers.getall("X-Forwarded-For", ())))
    event = list_events.unsubscribed(lst.address, member, time.time(), ip, request.headers.get("User-Agent", ""))
    done = await context(request).store.unsubscribe_member(lst.id, member, [event])
    if done is None:
        return _page_response(404, "Not a member", f"{html.escape(member)} is not on this mailing list.")
    return _page_response(200, "Unsubscribed", f"<b>{html.escape(member)}</b> will no longer receive mail sent to"
                                               f" the mailing list <b>{html.escape(lst.name or lst.address)}</b>.")


# --- routes ---------------------------------------------------------------------------------------------------------

def unsubscribe_key(signing_key: str) -> bytes:
    """The key of the links (``mail.listlinks``): derived from mtad's signing key, shared by the nodes."""
    return keys_mod.derive(signing_key or "mtad", listlinks.PURPOSE)


def setup(app: web.Application) -> None:
    for version in ("v3", "v2"):
        base = f"/{version}/lists"
        app.router.add_get(base, list_lists)
        app.router.add_post(base, create_list)
        app.router.add_get(f"{base}/pages", lists_pages)
        app.router.add_get(base + "/{list}", get_list)
        app.router.add_put(base + "/{list}", update_list)
        app.router.add_delete(base + "/{list}", delete_list)
        app.router.add_get(base + "/{list}/members", list_members)
        app.router.add_post(base + "/{list}/members", add_member)
        app.router.add_get(base + "/{list}/members/pages", members_pages)
        app.router.add_post(base + "/{list}/members.json", add_members_json)
        app.router.add_post(base + "/{list}/members.csv", add_members_csv)
        app.router.add_get(base + "/{list}/members/{member}", get_member)
        app.router.add_put(base + "/{list}/members/{member}", update_member)
        app.router.add_delete(base + "/{list}/members/{member}", delete_member)
    app.router.add_get(listlinks.PATH + "{token}", unsubscribe_page)
    app.router.add_post(listlinks.PATH + "{token}", unsubscribe)
