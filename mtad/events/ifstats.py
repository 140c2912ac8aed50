"""An InboxFirst campaign's ``stat_summary`` and ``link_stats`` (seed 004), from the events of its copies: pure.

The store gives the figures (``store.dispatch.campaign_figures``: copies made per content, format and seed; the
events of the copies per content, kind and severity with their total and unique-by-recipient counts; unique clicks
by link; the copies still queued) and the clicked URLs' counts (``campaign_link_counts``), all of them counters
(``store.ifcounts``); this module shapes them.

What mtad's events honestly give: sent by format, messages_sent, total_messages (seeds included), bounces
(``failed`` events: ``permanent`` = hard, ``temporary`` = soft; mtad has no third kind, so ``other`` is 0; every
mtad bounce is a remote one except the suppressed, so ``local``/``remote`` split permanent failures by
``suppress-*`` reasons is not made: local is 0, remote all), opens, clicks, unsubscribes, complaints (total,
unique, duplicate), accepted (= unique ``delivered``), total_failure (permanent failures), in_queue (copies whose
delivery is still queued), the rates. Opens and clicks flagged as a machine's (``flags.is-machine``: Apple Mail
Privacy Protection, link scanners; the store's ``severity`` ``machine``) count in the totals and duplicates, never
in the unique figures (nor in the rates made of them, nor ``clicks_unique_by_link``). Always 0 or empty, as mtad has nothing they could count: skips_error and
skips_request (no Special Sending Rules), the *_status_updated figures, total_failure_toolong, bounces_unique_other,
bounces_unique_local, bounces_unique_by_code.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from mtad.store.dispatch import CampaignFigures, Link, LinkCount
from mtad.store.events import MACHINE
from mtad.store.ifcounts import MAX_URL


def _rate(a: int, b: int) -> float:
    return round(a / b, 6) if b else 0.0


def summary(figures: CampaignFigures, content_id: int | None = None) -> dict[str, Any]:
    """The seed's ``stat_summary`` over every content (``content_id`` None) or one."""
    def mine(cid: int) -> bool:
        return content_id is None or cid == content_id

    sent = {"text": 0, "html": 0, "both": 0}
    total_messages = 0
    for s in figures.sent:
        if mine(s.content_id):
            total_messages += s.count
            if not s.seed:
                sent[s.format] = sent.get(s.format, 0) + s.count
    ev: dict[tuple[str, str], list[int]] = {}
    for e in figures.events:
        if mine(e.content_id):
            t = ev.setdefault((e.event, e.severity), [0, 0])
            t[0] += e.total
            t[1] += e.unique if e.severity != MACHINE else 0  # a machine's opens and clicks: totals only

    def count(kind: str, severity: str | None = None) -> tuple[int, int]:
        rows = [v for (k, s), v in ev.items() if k == kind and (severity is None or s == severity)]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    hard, soft = count("failed", "permanent"), count("failed", "temporary")
    bounces_total, bounces_unique = hard[0] + soft[0], hard[1] + soft[1]
    opens, clicks, unsubs, scomps = count("opened"), count("clicked"), count("unsubscribed"), count("complained")
    accepted = count("delivered")[1]
    messages_sent = sent["text"] + sent["html"] + sent["both"]
    in_queue = sum(n for cid, n in figures.in_queue if mine(cid))
    return {
        "sent_text": sent["text"], "sent_html": sent["html"], "sent_multipart": sent["both"],
        "messages_sent": messages_sent, "messages_html": sent["html"] + sent["both"], "messages_text": sent["text"],
        "bounces_total": bounces_total, "bounces_unique": bounces_unique, "bounces_unique_hard": hard[1],
        "bounces_unique_soft": soft[1], "bounces_unique_other": 0, "bounces_unique_local": 0,
        "bounces_unique_remote": bounces_unique, "bounces_status_updated": 0, "bounces_unique_by_code": {},
        "bounced": bounces_unique, "duplicate_bounces": bounces_total - bounces_unique,
        "unbounced": messages_sent - bounces_unique, "bounce_rate": _rate(bounces_unique, messages_sent),
        "bounce_rate_hard": _rate(hard[1], bounces_unique), "bounce_rate_soft": _rate(soft[1], bounces_unique),
        "bounce_rate_other": 0.0, "bounce_local_rate": 0.0,
        "clicks_total": clicks[0], "clicks_unique": clicks[1], "clicks_unique_by_link": 0,
        "duplicate_clicks": clicks[0] - clicks[1], "click_rate": _rate(clicks[1], accepted),
        "click_to_open_rate": _rate(clicks[1], opens[1]), "unclicked": max(0, accepted - clicks[1]),
        "opens_total": opens[0], "opens_unique": opens[1], "open_rate": _rate(opens[1], accepted),
        "open_ratio": _rate(opens[0], opens[1]), "unopened": max(0, accepted - opens[1]),
        "duplicate_opens": opens[0] - opens[1],
        "scomps_total": scomps[0], "scomps_unique": scomps[1], "scomps_status_updated": 0,
        "duplicate_scomps": scomps[0] - scomps[1],
        "unsubs_total": unsubs[0], "unsubs_unique": unsubs[1], "unsubs_status_updated": 0,
        "duplicate_unsubs": unsubs[0] - unsubs[1], "unsub_rate": _rate(unsubs[1], accepted),
        "skips_error": 0, "skips_request": 0,
        "total_messages": total_messages, "total_success": accepted, "total_failure": hard[0],
        "total_failure_toolong": 0, "accepted": accepted, "accepted_rate": _rate(accepted, messages_sent),
        "in_queue": in_queue, "in_queue_rate": _rate(in_queue, total_messages),
        "max_unique_activities": max(opens[1], clicks[1], unsubs[1], scomps[1]),
    }


def with_unique_by_link(stat: dict[str, Any], figures: CampaignFigures, content_id: int | None = None) -> None:
    stat["clicks_unique_by_link"] = sum(n for cid, n in figures.unique_by_link
                                        if content_id is None or cid == content_id)


def link_stats(links: Iterable[Link], counts: Iterable[LinkCount], *, url: str | None = None,
               content_id: int | None = None) -> tuple[bool, list[dict[str, Any]]]:
    """(all_unclicked_links_recorded, rows sorted by case-insensitive url then link id). ``clicks_unique`` counts
    a subscriber on the first link they clicked in the campaign (so the links' unique clicks add up to the
    campaign's), ``clicks_unique_by_link`` each subscriber once per link; a clicked URL that was not recorded as a
    content link gets a row too (negative link ids, in the counts' order: by content then URL). Every content link
    is recorded when sending starts, so the flag is always true."""
    rows: dict[tuple[int, str], dict[str, Any]] = {}
    for link in links:
        rows.setdefault((link.content_id, link.url[:MAX_URL]), {
            "link_id": link.id, "url": link.url, "clicks_total": 0, "clicks_unique": 0, "clicks_unique_by_link": 0})
    extra_id = -1
    for c in counts:
        row = rows.get((c.content_id, c.url))
        if row is None:
            row = rows[(c.content_id, c.url)] = {"link_id": extra_id, "url": c.url, "clicks_total": 0,
                                                 "clicks_unique": 0, "clicks_unique_by_link": 0}
            extra_id -= 1
        row["clicks_total"] += c.total
        row["clicks_unique"] += c.unique
        row["clicks_unique_by_link"] += c.unique_by_link
    out = []
    for (cid, u), row in rows.items():
        if content_id is not None and cid != content_id:
            continue
        if url is not None and not re.fullmatch(".*".join(map(re.escape, url.split("*"))), row["url"], re.IGNORECASE):
            continue
        out.append(row)
    out.sort(key=lambda r: (r["url"].lower(), r["link_id"]))
    return True, out
