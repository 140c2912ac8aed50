"""Mailing lists (``/ui/lists``): the lists, one list with its members; create, edit, delete; members added one by
one or from a CSV file, edited, removed.

Every read and change is the mailing-lists API's own handler run on the panel's request (``web.call_api``, the
session's key limiting the domains as it limits the API's): the lists page by address (``GET /v3/lists/pages``:
``page`` first | next | prev | last, ``address`` the pivot), a list's members paged the same way with its
``subscribed`` filter (``GET .../members/pages``), creation, change and deletion of lists and members, the CSV
upload (``POST .../members.csv``: a header line naming ``address`` and any of ``name``, ``subscribed``, ``vars``,
other columns becoming vars). The panel's query parameters are the API's, so the API reads them as it would.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from aiohttp import web

from mtad.api import lists as api_lists
from mtad.store.lists import ACCESS_LEVELS, REPLY_PREFERENCES
from mtad.ui import PREFIX
from mtad.ui.web import call_api, error_page, form, notify, page, redirect, render

PAGE_SIZE = 100  # the API's default page


def _url(address: str, tail: str = "") -> str:
    return f"{PREFIX}/lists/{quote(address, safe='@')}{tail}"


def _pager(base: str, rows: list[dict[str, Any]], extra: dict[str, str]) -> dict[str, str]:
    """Links to the first, previous, next and last pages around ``rows`` (the API's address cursor)."""
    links = {"first": f"{base}?{urlencode({**extra, 'page': 'first'})}",
             "last": f"{base}?{urlencode({**extra, 'page': 'last'})}"}
    if rows:
        links["previous"] = f"{base}?{urlencode({**extra, 'page': 'prev', 'address': rows[0]['address']})}"
        links["next"] = f"{base}?{urlencode({**extra, 'page': 'next', 'address': rows[-1]['address']})}"
    return links


async def _lists_page(request: web.Request, *, status: int = 200, error: str = "",
                      values: dict[str, str] | None = None) -> web.Response:
    code, message, body = await call_api(api_lists.lists_pages, request)
    rows = body.get("items", []) if code == 200 else []
    return render(request, "lists.html", status=status, title="Mailing lists", lists=rows,
                  links=_pager(f"{PREFIX}/lists", rows, {}), error=error or (message if code != 200 else ""),
                  values=values or {}, access_levels=ACCESS_LEVELS, reply_preferences=REPLY_PREFERENCES)


@page
async def listing(request: web.Request) -> web.Response:
    return await _lists_page(request)


@page
async def create(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.create_list, request)
    if status != 200:
        fields = await form(request)
        values = {k: str(fields.get(k, "")) for k in ("address", "name", "description", "access_level",
                                                        "reply_preference")}
        return await _lists_page(request, status=status, error=message, values=values)
    address = body["list"]["address"]
    notify(request, f"Mailing list {address} created.")
    raise redirect(_url(address))


async def _list_page(request: web.Request, *, status: int = 200, errors: dict[str, str] | None = None,
                     values: dict[str, str] | None = None) -> web.Response:
    code, message, body = await call_api(api_lists.get_list, request)
    if code != 200:
        return error_page(request, code, message)
    lst = body["list"]
    code, message, members = await call_api(api_lists.members_pages, request)
    rows = members.get("items", []) if code == 200 else []
    errors = dict(errors or {})
    if code != 200:
        errors.setdefault("members", message)
    subscribed = request.query.get("subscribed", "")
    extra = {"subscribed": subscribed} if subscribed else {}
    return render(request, "list.html", status=status, title=lst["address"], lst=lst, members=rows,
                  subscribed=subscribed, links=_pager(_url(lst["address"]), rows, extra), errors=errors,
                  values=values or {}, access_levels=ACCESS_LEVELS, reply_preferences=REPLY_PREFERENCES,
                  page_size=PAGE_SIZE)


@page
async def show(request: web.Request) -> web.Response:
    return await _list_page(request)


async def _values(request: web.Request) -> dict[str, str]:
    fields = await form(request)
    return {k: v for k, v in fields.items() if isinstance(v, str) and k != "csrf"}


@page
async def update(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.update_list, request)
    if status != 200:
        return await _list_page(request, status=status, errors={"list": message})
    notify(request, "Mailing list saved.")
    raise redirect(_url(body["list"]["address"]))


@page
async def delete(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.delete_list, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Mailing list {body.get('address', '')} deleted.")
    raise redirect(PREFIX + "/lists")


@page
async def add_member(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.add_member, request)
    if status != 200:
        return await _list_page(request, status=status, errors={"member": message}, values=await _values(request))
    notify(request, f"Member {body['member']['address']} added.")
    raise redirect(_url(request.match_info["list"].lower()))


@page
async def upload(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.add_members_csv, request)
    if status != 200:
        return await _list_page(request, status=status, errors={"csv": message})
    notify(request, f"CSV imported: the list has {body['list']['members_count']} members.")
    raise redirect(_url(request.match_info["list"].lower()))


@page
async def update_member(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.update_member, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Member {body['member']['address']} saved.")
    raise redirect(_url(request.match_info["list"].lower()))


@page
async def delete_member(request: web.Request) -> web.StreamResponse:
    status, message, body = await call_api(api_lists.delete_member, request)
    if status != 200:
        return error_page(request, status, message)
    notify(request, f"Member {body['member']['address']} removed.")
    raise redirect(_url(request.match_info["list"].lower()))


def setup(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/lists", listing)
    app.router.add_post(PREFIX + "/lists", create)
    app.router.add_get(PREFIX + "/lists/{list}", show)
    app.router.add_post(PREFIX + "/lists/{list}", update)
    app.router.add_post(PREFIX + "/lists/{list}/delete", delete)
    app.router.add_post(PREFIX + "/lists/{list}/members", add_member)
    app.router.add_post(PREFIX + "/lists/{list}/members.csv", upload)
    app.router.add_post(PREFIX + "/lists/{list}/members/{member}", update_member)
    app.router.add_post(PREFIX + "/lists/{list}/members/{member}/delete", delete_member)
