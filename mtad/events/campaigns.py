"""Campaign reports (Mailgun's campaigns API, seed 000): the query parameters read into the store's typed queries,
and the store's rows shaped as the seed's answers. Pure: the API module (``mtad.api.campaigns``) asks the store.

- A campaign: ``id``, ``name``, ``created_at`` (``Wed, 15 Feb 2012 11:31:17 GMT``) and the ``<kind>_count``
  counters (``submitted``, ``delivered``, ``opened``, ``clicked``, ``unsubscribed``, ``complained``, ``bounced``,
  ``dropped``; ``store.campaigns`` says how an event counts as each).
- ``/events``: filters ``event`` (repeatable: delivered, opened, clicked, unsubscribed, complained, bounced,
  dropped), ``recipient``, ``country``, ``region``, ``city``; ``limit`` (1-100, 100), ``page`` (from 1),
  ``count``. An item is the seed's (``event``, ``recipient``, ``domain`` of the recipient, ``tags``,
  ``timestamp``, ``user_vars``) with the event's ``id`` and ``message-id``, ``url`` for a click and the place
  (``country``, ``region``, ``city``) for an event that has one.
- ``/stats``: ``total`` (``sent`` = delivered + bounced) and ``unique`` (recipients who opened, who clicked, links
  clicked); with ``groupby`` (domain, daily_hour, city, region; ``limit``, ``page``) one such entry per group, by
  group value.
- ``/clicks``, ``/opens``, ``/unsubscribes``, ``/complaints``: ``groupby`` (repeatable or comma-separated; the
  seed's list for each), filters ``country``/``region``/``city``, ``limit``/``page``/``count``; one entry per group
  with its ``total`` and ``unique`` (distinct links and recipients not grouped by), most first. Time groups are
  the period's start as a date (``month``, ``day``, ``hour``, ``minute``) or the hour of the day, 0-23 UTC
  (``daily_hour``).
"""

from __future__ import annotations

import datetime
import json
import re
import secrets
from typing import Any, Mapping

from mtad.store.campaigns import (EVENT_KINDS, GROUPS, MAX_ID, STATS_GROUPS, Campaign, CampaignEventQuery,
                                  CampaignEventRow, ReportQuery, ReportRow, StatsRow)

MAX_LIMIT = 100  # records of a report or events page (the seed's "100 at most")
MAX_LIST_LIMIT = 1000  # campaigns of one list page
MAX_OFFSET = 100_000  # records skipped by page or skip at most (each is walked over)
REPORTS = {  # report -> (event kind, its groupings as the seed lists them)
    "clicks": ("clicked", GROUPS),
    "opens": ("opened", tuple(g for g in GROUPS if g != "link")),
    "unsubscribes": ("unsubscribed", ("domain", "country", "region", "city", "month", "day", "hour", "minute",
                                      "daily_hour")),
    "complaints": ("complained", ("recipient", "domain", "month", "day", "hour", "minute", "daily_hour")),
}
_ID = re.compile(r"[!-.0-~]{1,%d}" % MAX_ID)  # printable ASCII but the space and "/" (the id is a URL segment)


class Invalid(ValueError):
    """A bad parameter; the message is for the client (400)."""


# --- parameters ----------------------------------------------------------------------------------------------

def new_id() -> str:
    return secrets.token_hex(8)


def check_id(value: str, name: str = "id") -> str:
    if not _ID.fullmatch(value):
        raise Invalid(f"{name}: 1 to {MAX_ID} ASCII characters (letters, digits, punctuation but '/'), got "
                      f"{value[:80]!r}")
    return value


def check_name(value: str) -> str:
    value = value.strip()
    if not value or len(value) > MAX_ID:
        raise Invalid(f"name: 1 to {MAX_ID} characters")
    return value


def integer(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise Invalid(f"{name}: expected a number, got {text[:40]!r}") from None
    if not lo <= value <= hi:
        raise Invalid(f"{name}: must be between {lo} and {hi}")
    return value


def flag(params: Mapping[str, str], name: str) -> bool:
    text = params.get(name)
    if text is None:
        return False
    value = text.strip().lower()
    if value in ("yes", "true", "1", ""):
        return True
    if value in ("no", "false", "0"):
        return False
    raise Invalid(f"{name}: expected yes or no, got {text[:40]!r}")


def paging(params: Mapping[str, str]) -> tuple[int, int]:
    """(limit, offset) of ``limit`` and ``page`` (from 1)."""
    limit = integer(params, "limit", MAX_LIMIT, 1, MAX_LIMIT)
    page = integer(params, "page", 1, 1, MAX_OFFSET)
    if (page - 1) * limit > MAX_OFFSET:
        raise Invalid(f"page: at most {MAX_OFFSET} records can be skipped")
    return limit, (page - 1) * limit


def _place(params: Mapping[str, str], name: str) -> str | None:
    value = params.get(name)
    return value.strip()[:256] if value is not None and value.strip() else None


def events_query(params: Any) -> CampaignEventQuery:
    """``/events`` parameters (``params``: a multidict, ``event`` repeatable)."""
    kinds = tuple(dict.fromkeys(v.strip().lower() for v in params.getall("event", []) if v.strip()))
    unknown = [k for k in kinds if k not in EVENT_KINDS]
    if unknown:
        raise Invalid(f"event: unknown event '{unknown[0][:40]}' (one of {', '.join(EVENT_KINDS)})")
    limit, offset = paging(params)
    recipient = params.get("recipient")
    return CampaignEventQuery(kinds, recipient.strip() if recipient and recipient.strip() else None,
                              _place(params, "country"), _place(params, "region"), _place(params, "city"),
                              limit, offset)


def groupings(params: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(g.strip().lower() for v in params.getall("groupby", []) for g in v.split(",")
                                if g.strip()))
    for g in found:
        if g not in allowed:
            raise Invalid(f"groupby: '{g[:40]}' is not one of {', '.join(allowed)}")
    return found


def report_query(report: str, params: Any) -> ReportQuery:
    """``/clicks``, ``/opens``, ``/unsubscribes``, ``/complaints`` parameters."""
    kind, allowed = REPORTS[report]
    groupby = groupings(params, allowed)
    dims = ("link", "recipient") if report == "clicks" else ("recipient",)
    limit, offset = paging(params)
    return ReportQuery(kind, groupby, tuple(d for d in dims if d not in groupby), _place(params, "country"),
                       _place(params, "region"), _place(params, "city"), limit, offset)


def stats_grouping(params: Any) -> str | None:
    found = groupings(params, STATS_GROUPS)
    if len(found) > 1:
        raise Invalid("groupby: one of " + ", ".join(STATS_GROUPS))
    return found[0] if found else None


# --- answers -------------------------------------------------------------------------------------------------

def gmt(ts: float) -> str:
    """The seed's date format: ``Wed, 15 Feb 2012 11:31:17 GMT``."""
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def campaign_json(c: Campaign) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "created_at": gmt(c.created_at),
            **{f"{kind}_count": c.count(kind) for kind in ("delivered", "clicked", "opened", "submitted",
                                                             "unsubscribed", "bounced", "complained", "dropped")}}


def event_json(row: CampaignEventRow) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if row.data is not None:
        try:
            data = json.loads(row.data)
        except ValueError:
            data = {}
    item: dict[str, Any] = {"event": row.event, "recipient": data.get("recipient") or row.recipient,
                            "domain": row.recipient.rpartition("@")[2], "tags": list(data.get("tags") or []),
                            "timestamp": gmt(row.timestamp), "user_vars": dict(data.get("user-variables") or {})}
    if data.get("id"):
        item["id"] = data["id"]
    message_id = ((data.get("message") or {}).get("headers") or {}).get("message-id")
    if message_id:
        item["message-id"] = message_id
    if row.event == "clicked":
        item["url"] = row.link
    if isinstance(data.get("geolocation"), Mapping):
        item.update(country=row.country, region=row.region, city=row.city)
    return item


def _time(name: str, value: int) -> Any:
    if name == "daily_hour":
        return int(value)
    if name == "month":
        year, month = divmod(int(value), 12)
        return gmt(datetime.datetime(year, month + 1, 1, tzinfo=datetime.timezone.utc).timestamp())
    return gmt(int(value) * {"day": 86400, "hour": 3600, "minute": 60}[name])


def group_value(name: str, value: Any) -> Any:
    return _time(name, value) if name in ("month", "day", "hour", "minute", "daily_hour") else value


def report_json(q: ReportQuery, rows: tuple[ReportRow, ...]) -> list[dict[str, Any]]:
    items = []
    for row in rows:
        item: dict[str, Any] = {name: group_value(name, value) for name, value in zip(q.groupby, row.groups)}
        item["total"] = row.total
        if q.uniques:
            item["unique"] = dict(zip(q.uniques, row.uniques))
        items.append(item)
    return items


def _unique(row: StatsRow) -> dict[str, Any]:
    return {"clicked": {"link": row.clicked_links, "recipient": row.clicked_recipients},
            "opened": {"recipient": row.opened_recipients}}


def stats_json(row: StatsRow) -> dict[str, Any]:
    """The whole campaign's stats."""
    t = row.total
    total = {k: t.get(k, 0) for k in ("complained", "delivered", "clicked", "opened", "dropped", "bounced")}
    total["sent"] = t.get("delivered", 0) + t.get("bounced", 0)
    total["unsubscribed"] = t.get("unsubscribed", 0)
    return {"unique": _unique(row), "total": total}


def grouped_stats_json(groupby: str, rows: tuple[StatsRow, ...]) -> list[dict[str, Any]]:
    return [{groupby: group_value(groupby, r.group),
             "total": {k: r.total.get(k, 0) for k in ("unsubscribed", "opened", "delivered", "clicked", "bounced",
                                                       "complained")},
             "unique": _unique(r)} for r in rows]
