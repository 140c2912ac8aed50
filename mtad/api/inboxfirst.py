"""InboxFirst-style campaigns over HTTP (seed 004), under ``/ga/api/v2/``, with the API key auth of the rest.

``GET/POST /ga/api/v2/mailing_lists/{list}/campaigns`` (``{list}``: the mtad list's numeric id or its address;
GET takes ``started_at__start``/``started_at__end``, a UNIX timestamp or ISO-8601: only campaigns that started,
in that range), ``GET/PUT /ga/api/v2/campaigns/{id}`` and ``.../campaigns/by_stat/{stat_id}`` (a campaign's stat id
is its id: mtad keeps one stat record per campaign), ``POST .../pause`` and ``.../resume`` (both forms),
``GET /ga/api/v2/campaigns/{id}/link_stats`` (``url`` with ``*`` wildcards, ``content_id``, ``scope``, ``page`` from
0, ``per_page`` ≤ 500).

Answers are the seed's: ``{"success": true, "data": ..., "error_code": null, "error_message": null}``; errors
``{"success": false, "data": null, "error_code": CODE, "error_message": TEXT, "message": TEXT}`` (``message`` as
every mtad error) with 400 (malformed or missing field, naming it), 404 (unknown list or campaign), 403 (a list
outside the key's domains), 409 (a change a started campaign cannot take).

The dispatch state machine: ``idle`` until the campaign has contents, a segment (``segmentation_criteria_ad_hoc``,
``[]`` = every subscribed member), delivery settings with ``from_email`` in a sending domain, and ``begins_at``;
then ``scheduled``; ``sending`` once the dispatcher (``outbound.dispatch``) takes it at ``begins_at``; ``finished``
after the last copy, ``failed`` (``state_description`` says why) or ``cancelled`` (``dispatch_attributes.state``
= ``cancelled``). ``begins_at`` more than 2 hours in the past is refused; within the last 2 hours it is now.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import time
from typing import Any, Mapping

from aiohttp import web

from mtad.api import context
from mtad.api.formdata import read_json
from mtad.base.types import domain_of
from mtad.events import ifstats
from mtad.store.dispatch import FORMATS, Campaign, CampaignChange, CampaignStarted, NewContent
from mtad.store.lists import MailingList

PAST_LIMIT = 2 * 3600.0
DELAY_UNITS = ("minutes", "hours", "days", "seconds")  # seconds: an mtad extension (tests, quick trials)
METRICS = frozenset({"opens_unique", "opens_total", "open_rate", "clicks_unique", "clicks_total", "click_rate",
                     "click_to_open_rate", "accepted_rate", "bounce_rate", "bounces_unique", "unsub_rate",
                     "unsubs_unique", "scomps_unique"})
MAX_PER_PAGE = 500
MAX_CONTENTS = 10
MAX_TEXT = 1_000_000  # characters of a content's body
DESCRIPTIONS = {"idle": "Step 1: Pending", "scheduled": "Step 2: Scheduled", "sending": "Step 3: Sending",
                "finished": "Step 4: Finished", "failed": "Failed", "cancelled": "Cancelled"}
_ADDRESS = re.compile(r"^[^\s@<>(),;:\"\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


class Invalid(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def ok(data: Any, **extra: Any) -> web.Response:
    return web.json_response({"success": True, "data": data, "error_code": None, "error_message": None, **extra})


def fail(exc: Invalid) -> web.Response:
    return web.json_response({"success": False, "data": None, "error_code": exc.code, "error_message": exc.message,
                              "message": exc.message}, status=exc.status)


def _iso(t: float | None) -> str | None:
    """``2024-01-31T12:00:00Z`` (a list shapes five per campaign: ``time.gmtime`` costs a third of strftime)."""
    if t is None:
        return None
    g = time.gmtime(t)
    return f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}Z"


MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z


def parse_time(value: Any, name: str) -> float:
    """A UNIX timestamp or an ISO-8601 date-time (UTC when it names no zone), from 1970 to 9999; raises Invalid."""
    when = _parse_time(value, name)
    if not 0 <= when <= MAX_TIME:
        raise Invalid(400, "invalid", f"'{name}': not between 1970 and 9999")
    return when


def _parse_time(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise Invalid(400, "invalid", f"'{name}': not a time")
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if re.fullmatch(r"\d{1,12}(\.\d+)?", text):
            return float(text)
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T", 1))
        except ValueError:
            pass
        else:
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.timezone.utc)
            return when.timestamp()
    raise Invalid(400, "invalid", f"'{name}': not a UNIX timestamp or an ISO-8601 date-time")


def _bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in (1, 0) or (isinstance(value, str) and value.lower() in ("1", "0", "true", "false", "yes", "no")):
        return str(value).lower() in ("1", "true", "yes")
    raise Invalid(400, "invalid", f"'{name}': not a boolean")


def _text(value: Any, name: str, limit: int = 1000) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise Invalid(400, "invalid", f"'{name}': not a string of at most {limit} characters")
    return value


def _email(value: Any, name: str) -> str:
    text = _text(value, name, 320).strip()
    if text and not _ADDRESS.match(text):
        raise Invalid(400, "invalid", f"'{name}': {text[:100]!r} is not an email address")
    return text.lower() if name == "bounce_email" else text


# --- lookups ---------------------------------------------------------------------------------------------------

async def _list(request: web.Request, ref: str) -> MailingList:
    store = context(request).store
    lst = await (store.get_list_by_id(int(ref)) if ref.isdigit() and len(ref) < 19 else store.get_list(ref))
    if lst is None:
        raise Invalid(404, "not_found", f"Mailing list not found: {ref[:100]}")
    if not request["api_key"].allows(domain_of(lst.address)):
        raise Invalid(403, "forbidden", "Forbidden: this key may not use that mailing list")
    return lst


async def _campaign(request: web.Request) -> tuple[Campaign, MailingList]:
    ref = request.match_info.get("id") or request.match_info.get("stat_id") or ""
    c = await context(request).store.dispatch_campaign(int(ref)) if ref.isdigit() and len(ref) < 19 else None
    if c is None:
        raise Invalid(404, "not_found", f"Campaign not found: {ref[:100]}")
    lst = await context(request).store.get_list_by_id(c.list_id)
    if lst is None:  # its list was deleted: still shown (its dispatch failed), to keys of every domain only
        if request["api_key"].domains:
            raise Invalid(403, "forbidden", "Forbidden: this key may not use that mailing list")
        return c, MailingList(c.list_id, "")
    return c, await _list(request, str(c.list_id))


# --- the campaign's JSON ---------------------------------------------------------------------------------------

async def _seed_lists(request: web.Request, ids: Any) -> list[dict[str, Any]]:
    out = []
    for i in ids or ():
        lst = await context(request).store.get_list_by_id(int(i))
        out.append({"id": int(i), "name": lst.address if lst else None})
    return out


async def shape(request: web.Request, c: Campaign, lst: MailingList, *, stats: bool = True) -> dict[str, Any]:
    """The seed's campaign record; ``stats`` False (a listing): no figures are read, ``stat_summary`` is null."""
    store = context(request).store
    first = c.contents[0] if c.contents else None
    started = c.started_at is not None and stats
    stat = content_stats = None
    if started:
        figures = await store.campaign_figures(c.id)
        stat = ifstats.summary(figures)
        ifstats.with_unique_by_link(stat, figures)
        stat["stat_id"] = c.id
    content_stats = []
    for x in c.contents:
        one = None
        if started:
            one = ifstats.summary(figures, x.id)
            ifstats.with_unique_by_link(one, figures, x.id)
            one["stat_id"] = c.id
        content_stats.append({"content": {"id": x.id, "name": x.name}, "stat_summary": one})
    data: dict[str, Any] = {
        "id": c.id, "stat_id": c.id, "name": c.name, "mailing_list_id": lst.id, "mailing_list_name": lst.address,
        "x_campaign_id": f"inboxfirst-{c.id}", "organization_id": 1, "organization_name": "mtad",
        "archived": False, "template": False, "active_html_editor": "wysiwyg",
        "content_determined": bool(c.contents), "created_at": _iso(c.created_at), "updated_at": _iso(c.updated_at),
        "segmentation_criteria_id": None, "segmentation_criteria_name": None,
        "segmentation_criteria_ad_hoc": None if c.segment is None else [dict(x) for x in c.segment],
        "content_subject": first.subject if first else "", "email_format": first.format if first else "html",
        "content_html": first.html if first else "", "content_text": first.text if first else "",
        "stat_summary": stat, "content_stats": content_stats, "automatic_winner_selection": None,
        "campaign_contents": [{"id": x.id, "name": x.name, "subject": x.subject, "html": x.html, "text": x.text,
                               "format": x.format} for x in c.contents],
    }
    if c.dispatch is not None or c.state != "idle":
        d: Mapping[str, Any] = c.dispatch or {}
        seeds = await _seed_lists(request, d.get("seed_list_ids"))
        data["dispatch"] = {
            "state": c.state, "state_description": DESCRIPTIONS[c.state] + (f": {c.note}" if c.note else ""),
            "paused": c.paused, "begins_at": _iso(c.begins_at), "started_at": _iso(c.started_at),
            "finished_at": _iso(c.finished_at), "speed": int(d.get("speed") or 0),
            "track_opens": bool(d.get("track_opens")), "track_links": bool(d.get("track_links")),
            "from_name": d.get("from_name"), "from_email": d.get("from_email"), "reply_to": d.get("reply_to"),
            "sender_email": d.get("sender_email"), "bounce_email_email": d.get("bounce_email") or None,
            "url_domain_domain": d.get("url_domain") or None, "virtual_mta_id": 0,
            "virtual_mta_name": "System Default Route", "virtual_mta_type": "default_route",
            "seed_lists": seeds, "seed_list_id": seeds[0]["id"] if seeds else None,
            "seed_list_name": seeds[0]["name"] if seeds else None,
            "special_sending_rule_id": None, "special_sending_rule_name": None,
            "autowinner_enabled": bool(d.get("autowinner_enabled")),
            "autowinner_percentage": d.get("autowinner_percentage"),
            "autowinner_delay_amount": d.get("autowinner_delay_amount"),
            "autowinner_delay_unit": d.get("autowinner_delay_unit", "minutes"),
            "autowinner_metric": d.get("autowinner_metric"),
        }
        if d.get("autowinner_enabled") and len(c.contents) > 1:
            names = {x.id: x.name for x in c.contents}
            data["automatic_winner_selection"] = {
                "state": c.ab_state or None,
                "winning_content": None if c.winner_id is None else {"id": c.winner_id,
                                                                      "name": names.get(c.winner_id)},
                "snapshots": [{"content": {"id": x["content_id"], "name": names.get(x["content_id"]),
                                           "is_winner": x["content_id"] == c.winner_id},
                               "snapshot": x["snapshot"]} for x in c.ab_snapshots],
            }
    return data


# --- reading a create / update ---------------------------------------------------------------------------------

def _contents(value: Any) -> list[NewContent]:
    if not isinstance(value, list) or len(value) > MAX_CONTENTS:
        raise Invalid(400, "invalid", f"'contents': an array of at most {MAX_CONTENTS} contents")
    out = []
    for i, x in enumerate(value):
        if not isinstance(x, dict):
            raise Invalid(400, "invalid", f"'contents[{i}]': not an object")
        fmt = x.get("format", "html")
        if fmt not in FORMATS:
            raise Invalid(400, "invalid", f"'contents[{i}].format': one of html, text, both")
        c = NewContent(_text(x.get("name"), f"contents[{i}].name"), _text(x.get("subject"), f"contents[{i}].subject"),
                       fmt, _text(x.get("html"), f"contents[{i}].html", MAX_TEXT),
                       _text(x.get("text"), f"contents[{i}].text", MAX_TEXT))
        if any(ch in c.subject for ch in "\r\n"):
            raise Invalid(400, "invalid", f"'contents[{i}].subject': a line break")
        if fmt in ("html", "both") and not c.html or fmt in ("text", "both") and not c.text:
            raise Invalid(400, "invalid", f"'contents[{i}]': format {fmt} needs its "
                          + ("html and text" if fmt == "both" else fmt))
        out.append(c)
    return out


async def _segment(request: web.Request, value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > 20:
        raise Invalid(400, "invalid", "'segmentation_criteria_ad_hoc': an array of at most 20 clauses")
    out = []
    for i, x in enumerate(value):
        if not isinstance(x, dict) or x.get("type") != "in_mailing_list" or x.get("operator") not in ("is_in",
                                                                                                    "is_not_in"):
            raise Invalid(400, "invalid", f"'segmentation_criteria_ad_hoc[{i}]': type in_mailing_list with operator"
                          " is_in or is_not_in")
        lst = await _list(request, str(x.get("mailing_list_id", "")))
        out.append({"type": "in_mailing_list", "operator": x["operator"], "mailing_list_id": lst.id})
    return out


def _percentage(value: Any) -> str:
    """The split-test portion as the seed keeps it: a string with at most 2 decimals, above 0 and below 100."""
    text = str(value).strip() if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"\d{1,2}(\.\d{1,2})?", text) or not 0 < float(text) < 100:
        raise Invalid(400, "invalid", "'autowinner_percentage': a number above 0 and below 100, at most 2 decimals")
    return f"{float(text):.1f}" if len(text.partition(".")[2]) <= 1 else text


async def _dispatch(request: web.Request, value: Any, old: Mapping[str, Any] | None) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Invalid(400, "invalid", "'dispatch_attributes': not an object")
    d = dict(old or {})
    for name in ("from_name",):
        if name in value:
            d[name] = _text(value[name], name, 200)
    for name in ("from_email", "reply_to", "sender_email", "bounce_email"):
        if name in value:
            d[name] = _email(value[name], name)
    if "url_domain" in value:
        d["url_domain"] = _text(value["url_domain"], "url_domain", 253).strip().lower().rstrip(".")
        if d["url_domain"] and not _HOSTNAME.match(d["url_domain"]):
            raise Invalid(400, "invalid", "'url_domain': a host name (the copies' tracking URLs are made on it)")
    for name in ("track_opens", "track_links"):
        if name in value:
            d[name] = _bool(value[name], name)
    if "speed" in value:
        speed = value["speed"]
        if isinstance(speed, str) and speed.isdigit():
            speed = int(speed)
        if not isinstance(speed, int) or isinstance(speed, bool) or not 0 <= speed <= 100_000_000:
            raise Invalid(400, "invalid", "'speed': messages per hour, an integer from 0 (unlimited)")
        d["speed"] = speed
    if "autowinner_enabled" in value:
        d["autowinner_enabled"] = _bool(value["autowinner_enabled"], "autowinner_enabled")
    if "autowinner_percentage" in value:
        d["autowinner_percentage"] = _percentage(value["autowinner_percentage"])
    if "autowinner_delay_amount" in value:
        amount = value["autowinner_delay_amount"]
        if isinstance(amount, str) and amount.isdigit():
            amount = int(amount)
        if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= 100_000:
            raise Invalid(400, "invalid", "'autowinner_delay_amount': an integer from 0")
        d["autowinner_delay_amount"] = amount
    if "autowinner_delay_unit" in value:
        if value["autowinner_delay_unit"] not in DELAY_UNITS:
            raise Invalid(400, "invalid", "'autowinner_delay_unit': minutes, hours or days (or seconds)")
        d["autowinner_delay_unit"] = value["autowinner_delay_unit"]
    if "autowinner_metric" in value:
        if value["autowinner_metric"] not in METRICS:
            raise Invalid(400, "invalid", "'autowinner_metric': one of " + ", ".join(sorted(METRICS)))
        d["autowinner_metric"] = value["autowinner_metric"]
    given = [k for k in ("seed_list_id", "seed_list_name", "seed_list_ids", "seed_list_names") if k in value]
    if len(given) > 1:
        raise Invalid(400, "invalid", "only one of seed_list_id, seed_list_name, seed_list_ids, seed_list_names")
    if given:
        raw = value[given[0]]
        refs = raw if given[0].endswith("s") else ([] if raw in (None, "") else [raw])
        if not isinstance(refs, list) or len(refs) > 20:
            raise Invalid(400, "invalid", f"'{given[0]}': at most 20 seed lists")
        d["seed_list_ids"] = [(await _list(request, str(r))).id for r in refs]
    if d.get("from_email") and domain_of(d["from_email"]) not in context(request).ingress.directory.sending_domains:
        raise Invalid(400, "invalid", f"'from_email': {domain_of(d['from_email'])} is not a sending domain of mtad")
    return d


async def _change(request: web.Request, body: Any, old: Campaign | None) -> CampaignChange:
    if not isinstance(body, dict) or not isinstance(body.get("campaign", {}), dict):
        raise Invalid(400, "invalid", "expected a JSON object with a 'campaign' object")
    camp: dict[str, Any] = body.get("campaign") or {}
    name = _text(camp["name"], "name", 255) if "name" in camp else None
    contents = _contents(camp["contents"]) if "contents" in camp else None
    segment = await _segment(request, camp["segmentation_criteria_ad_hoc"]) \
        if "segmentation_criteria_ad_hoc" in camp else None
    raw = camp.get("dispatch_attributes", camp.get("dispatch"))
    base = old.dispatch if old is not None else None
    if old is None and body.get("source_template_id") is not None:
        tid = str(body["source_template_id"])
        tpl = await context(request).store.dispatch_campaign(int(tid)) if tid.isdigit() and len(tid) < 19 else None
        if tpl is None:
            raise Invalid(404, "not_found", f"Campaign not found: {tid[:100]}")
        await _list(request, str(tpl.list_id))
        name = tpl.name if name is None else name
        if contents is None and _bool(body.get("duplicate_content", False), "duplicate_content"):
            contents = [NewContent(x.name, x.subject, x.format, x.html, x.text) for x in tpl.contents]
        if segment is None and _bool(body.get("duplicate_segmentation_criteria", False),
                                     "duplicate_segmentation_criteria"):
            segment = None if tpl.segment is None else [dict(x) for x in tpl.segment]
        if _bool(body.get("duplicate_dispatch", False), "duplicate_dispatch"):
            base = tpl.dispatch
    dispatch = await _dispatch(request, raw, base) if raw is not None else (
        dict(base) if base is not None and old is None else None)
    raw = raw or {}
    state = raw.get("state")
    if state is not None and state not in ("idle", "scheduled", "cancelled"):
        raise Invalid(400, "invalid", "'state': idle, scheduled or cancelled")
    begins_at, clear = None, False
    if "begins_at" in raw:
        if raw["begins_at"] in (None, ""):
            clear = True
        else:
            begins_at = parse_time(raw["begins_at"], "begins_at")
            now = time.time()
            if begins_at < now - PAST_LIMIT:
                raise Invalid(400, "invalid", "'begins_at': more than 2 hours in the past")
            begins_at = max(begins_at, now)
    if name is None and old is None:
        raise Invalid(400, "missing", "'name' parameter is missing")
    if old is not None and old.state not in ("idle", "scheduled"):
        if state == "cancelled" and old.state == "sending":
            return CampaignChange(name=name, state="cancelled")
        if contents is not None or segment is not None or raw:
            raise Invalid(409, "started", f"the campaign is {old.state}: only its name can change")
        return CampaignChange(name=name)
    if state == "cancelled":
        return CampaignChange(name=name, contents=contents, segment=segment, dispatch=dispatch, state="cancelled")
    # the new state: scheduled when every section is there and begins_at is set, else idle
    have_contents = contents if contents is not None else (old.contents if old else ())
    have_segment = segment if segment is not None else (old.segment if old else None)
    have_dispatch = dispatch if dispatch is not None else (old.dispatch if old else None)
    have_begins = None if clear else (begins_at if begins_at is not None else (old.begins_at if old else None))
    ready = bool(have_contents) and have_segment is not None and bool((have_dispatch or {}).get("from_email")) \
        and have_begins is not None and state != "idle"
    return CampaignChange(name=name, contents=contents, segment=segment, dispatch=dispatch,
                          state="scheduled" if ready else "idle", begins_at=begins_at, clear_begins_at=clear)


async def _body(request: web.Request) -> Any:
    try:
        return await read_json(request)
    except web.HTTPBadRequest as exc:
        raise Invalid(400, "invalid", exc.text or "expected a JSON body") from None


# --- handlers --------------------------------------------------------------------------------------------------

def handler(fn):
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await fn(request)
        except Invalid as exc:
            return fail(exc)
    return wrapped


@handler
async def list_campaigns(request: web.Request) -> web.Response:
    lst = await _list(request, request.match_info["list"])
    q = request.query
    start = parse_time(q["started_at__start"], "started_at__start") if q.get("started_at__start") else None
    end = parse_time(q["started_at__end"], "started_at__end") if q.get("started_at__end") else None
    found = await context(request).store.list_dispatch_campaigns(lst.id, start, end)
    out = []
    for c in found:
        full = await shape(request, c, lst, stats=False)
        out.append({k: full[k] for k in ("id", "name", "mailing_list_id", "mailing_list_name", "created_at",
                                         "updated_at", "archived", "content_determined", "content_subject",
                                         "email_format", "content_html", "content_text", "segmentation_criteria_id",
                                         "organization_id", "organization_name", "stat_id") + (
                                             ("dispatch",) if "dispatch" in full else ())})
    return ok(out)


@handler
async def create_campaign(request: web.Request) -> web.Response:
    lst = await _list(request, request.match_info["list"])
    change = await _change(request, await _body(request), None)
    c = await context(request).store.create_dispatch_campaign(lst.id, change, time.time())
    return ok(await shape(request, c, lst))


@handler
async def get_campaign(request: web.Request) -> web.Response:
    c, lst = await _campaign(request)
    return ok(await shape(request, c, lst))


@handler
async def update_campaign(request: web.Request) -> web.Response:
    c, lst = await _campaign(request)
    change = await _change(request, await _body(request), c)
    try:
        found = await context(request).store.update_dispatch_campaign(c.id, change, time.time())
    except CampaignStarted as exc:
        raise Invalid(409, "started", f"the campaign is {exc}: only its name can change") from None
    if found is None:
        raise Invalid(404, "not_found", f"Campaign not found: {c.id}")
    return ok(await shape(request, found, lst))


async def _set_paused(request: web.Request, paused: bool) -> web.Response:
    c, lst = await _campaign(request)
    found = await context(request).store.set_campaign_paused(c.id, paused, time.time())
    if found is None:
        raise Invalid(404, "not_found", f"Campaign not found: {c.id}")
    return ok(await shape(request, found, lst))


@handler
async def pause(request: web.Request) -> web.Response:
    return await _set_paused(request, True)


@handler
async def resume(request: web.Request) -> web.Response:
    return await _set_paused(request, False)


def _int(q: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = q.get(name)
    if raw in (None, ""):
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise Invalid(400, "invalid", f"'{name}': an integer from {low} to {high}")
    return int(raw)


@handler
async def link_stats(request: web.Request) -> web.Response:
    c, _ = await _campaign(request)
    q = request.query
    page = _int(q, "page", 0, 0, 1_000_000)
    per_page = _int(q, "per_page", 100, 1, MAX_PER_PAGE)
    content_id = _int(q, "content_id", 0, 0, 1 << 62) if q.get("content_id") else None
    scope = q.get("scope", "all")
    if scope not in ("all", "clicked"):
        raise Invalid(400, "invalid", "'scope': all or clicked")
    url = q.get("url") or None
    store = context(request).store
    recorded, rows = ifstats.link_stats(await store.campaign_links(c.id), await store.campaign_link_counts(c.id),
                                        url=url, content_id=content_id)
    if scope == "clicked":
        rows = [r for r in rows if r["clicks_total"]]
    n = len(rows)
    return ok({"all_unclicked_links_recorded": recorded, "links": rows[page * per_page:(page + 1) * per_page]},
              page=page, per_page=per_page, num_records=n, num_pages=(n + per_page - 1) // per_page)


def setup(app: web.Application) -> None:
    base = "/ga/api/v2"
    app.router.add_get(base + "/mailing_lists/{list}/campaigns", list_campaigns)
    app.router.add_post(base + "/mailing_lists/{list}/campaigns", create_campaign)
    for ref in ("{id}", "by_stat/{stat_id}"):
        app.router.add_get(f"{base}/campaigns/{ref}", get_campaign)
        app.router.add_put(f"{base}/campaigns/{ref}", update_campaign)
        app.router.add_post(f"{base}/campaigns/{ref}/pause", pause)
        app.router.add_post(f"{base}/campaigns/{ref}/resume", resume)
        app.router.add_get(f"{base}/campaigns/{ref}/link_stats", link_stats)
