"""Sending an InboxFirst-style campaign (seed 004) to its segment: one queued copy per recipient, paced, durably.

A ``Dispatcher`` claims the campaigns due (scheduled whose ``begins_at`` has come, or sending: a lease,
``store.leases``, renewed while it works) and walks the segment's recipients in address order from the committed
cursor (``store.dispatch.segment_members``: the list's subscribed members filtered by the ad hoc clauses, plus the
seed lists' members). Each batch's copies, their ``if_dispatch`` rows and the cursor's move are ONE transaction
(``store.dispatch_batch``), written only while this worker holds the campaign at that cursor and the campaign is
sending and not paused: after a kill -9 every recipient has exactly one copy once the campaign is taken up again,
and a pause stops new copies at the next batch (the state is also read at least every ``CHECK`` seconds while the
worker waits for tokens, so a paused campaign is given back within a second; a resume lets any worker claim it).

Pacing: a token bucket at ``speed`` messages per hour (0: unlimited) holding at most ``BURST`` seconds of tokens,
batches of ``rate * STEP`` copies (at least one, at most ``batch_size``; more when a late wake-up left tokens over);
the provider shaping still applies when the copies are delivered.

Automatic winner selection (A/B, seed 004's ``autowinner_*``; a campaign with several contents and
``autowinner_enabled``): the split-test portion is the recipients whose address hashes below ``autowinner_percentage``
(a stable sample, the same after a restart); the first walk (``split_testing``) sends them the contents in turn (by
hash), then the campaign waits ``autowinner_delay_amount`` units (``decision_delay``: given back, due again then),
then the content with the best ``autowinner_metric`` over its copies' events wins (ties: the first content) and a
second walk sends it to everyone else (``finished``).

A copy: the content (``html``, ``text`` or both, chosen per recipient by a stable hash of the address when there are
several contents) composed as an API send would be (``mail.compose``) from the dispatch settings (From, Reply-To,
Sender, the bounce address as envelope sender), with options ``o:campaign`` and ``o:tag`` = ``campaign_tag(id)``,
``o:tracking-opens``/``o:tracking-clicks`` from ``track_opens``/``track_links``, then the member's variables written
in (``mail.listcopy``: ``%recipient%``, names, ``%recipient.KEY%``, ``%mailing_list_unsubscribe_url%``). A
``url_domain`` goes with each copy as its ``tracking_host`` option: its click, open and unsubscribe URLs are made
on that host (``outbound.tracking``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from mtad.base.types import Envelope, NewMessage, domain_of
from mtad.events import ifstats, shape
from mtad.mail import compose as compose_mod
from mtad.mail import links as links_mod
from mtad.mail import listcopy
from mtad.mail import variables as variables_mod
from mtad.store import ifcounts, queue as spool
from mtad.store.dispatch import Campaign, Content, DispatchJob, DispatchRow, Segment
from mtad.store.leases import settle_call
from mtad.store.lists import ListMember
from mtad.store.protocol import StoreProtocol
from mtad.store.workloop import WorkLoop

log = logging.getLogger("mtad.campaigns")

BATCH = 500  # copies per transaction at most
STEP = 0.1  # seconds of tokens per batch when paced
CHECK = 0.5  # seconds between state checks while waiting for tokens
BURST = 1.0  # seconds of tokens the bucket holds at most


UNITS = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
LOWER_IS_BETTER = frozenset({"bounce_rate", "bounces_unique", "unsub_rate", "unsubs_unique", "scomps_unique"})


@dataclass(frozen=True)
class Autowinner:
    percentage: float
    delay: float  # seconds
    metric: str


def autowinner(c: Campaign) -> Autowinner | None:
    d: Mapping[str, Any] = c.dispatch or {}
    if not d.get("autowinner_enabled") or len(c.contents) < 2:
        return None
    delay = float(d.get("autowinner_delay_amount") or 0) * UNITS.get(str(d.get("autowinner_delay_unit")), 60)
    return Autowinner(float(d.get("autowinner_percentage") or 0), delay, str(d.get("autowinner_metric")
                                                                              or "opens_unique"))


def in_split(address: str, percentage: float) -> bool:
    """Whether ``address`` is in the split-test portion (a stable hash sample of ``percentage`` percent)."""
    return zlib.crc32(b"split:" + address.encode()) % 10000 < round(percentage * 100)


def winner(c: Campaign, figures, metric: str) -> tuple[int, list[dict[str, Any]]]:
    """(the winning content's id, each content's snapshot) by ``metric`` over the copies' events."""
    snapshots = [{"content_id": x.id, "snapshot": ifstats.summary(figures, x.id)} for x in c.contents]
    sign = -1 if metric in LOWER_IS_BETTER else 1
    best = max(snapshots, key=lambda s: (sign * float(s["snapshot"].get(metric) or 0), -s["content_id"]))
    return best["content_id"], snapshots


def campaign_tag(campaign_id: int) -> str:
    """The ``o:campaign`` and ``o:tag`` value of a campaign's copies (also its ``x_campaign_id``)."""
    return f"{ifcounts.CAMPAIGN_PREFIX}{campaign_id}"  # the store counts the events of copies by it


def segment_of(c: Campaign) -> Segment:
    clauses = c.segment or ()
    is_in = tuple(int(x["mailing_list_id"]) for x in clauses if x.get("operator") == "is_in")
    is_not_in = tuple(int(x["mailing_list_id"]) for x in clauses if x.get("operator") == "is_not_in")
    seeds = tuple(int(s) for s in (c.dispatch or {}).get("seed_list_ids") or ())
    return Segment(c.list_id, is_in, is_not_in, seeds)


def content_for(c: Campaign, address: str) -> Content:
    if c.winner_id is not None and c.ab_state == "finished":
        return next((x for x in c.contents if x.id == c.winner_id), c.contents[0])
    return c.contents[zlib.crc32(address.encode()) % len(c.contents)] if len(c.contents) > 1 else c.contents[0]


def _yes(value: Any) -> str:
    return "yes" if value else "no"


@dataclass(frozen=True)
class Plan:
    """What every copy of a campaign shares."""

    campaign: Campaign
    domain: str
    sender: str
    fields: tuple[tuple[str, str], ...]
    personal: frozenset[int]  # ids of the contents that name variables
    url_domain: str = ""  # dispatch.url_domain: the host of the copies' tracking URLs (empty: the tracking host)


def plan(c: Campaign) -> Plan:
    d: Mapping[str, Any] = c.dispatch or {}
    from_email = str(d.get("from_email") or "")
    tag = campaign_tag(c.id)
    fields = [("from", email.utils.formataddr((str(d.get("from_name") or ""), from_email))),
              ("o:campaign", tag), ("o:tag", tag), ("o:tracking-opens", _yes(d.get("track_opens"))),
              ("o:tracking-clicks", _yes(d.get("track_links"))), ("h:X-CampaignID", "s4:" + tag)]
    if d.get("reply_to"):
        fields.append(("h:Reply-To", str(d["reply_to"])))
    if d.get("sender_email"):
        fields.append(("h:Sender", str(d["sender_email"])))
    personal = frozenset(x.id for x in c.contents if any(variables_mod.has_variables(t)
                                                         for t in (x.subject, x.html, x.text)))
    domain = domain_of(from_email)
    sender = str(d.get("bounce_email") or "") or compose_mod.envelope_sender(from_email, domain)
    return Plan(c, domain, sender, tuple(fields), personal, str(d.get("url_domain") or ""))


def content_fields(content: Content) -> list[tuple[str, str]]:
    out = [("subject", content.subject)]
    if content.format in ("html", "both"):
        out.append(("html", content.html))
    if content.format in ("text", "both"):
        out.append(("text", content.text))
    return out


def content_links(c: Campaign) -> list[tuple[int, str]]:
    """(content id, url) of every trackable link of the campaign's contents, in order."""
    out = []
    for x in c.contents:
        parts = [(s, t) for s, t in (("html", x.html), ("plain", x.text)) if t and
                 (x.format == "both" or x.format == ("text" if s == "plain" else s))]
        out += [(x.id, url) for url in links_mod.collect(parts)]
    return out


def member_copy(p: Plan, member: ListMember, seed: bool, unsubscribe_url: str, now: float
                ) -> tuple[spool.Enqueue, DispatchRow]:
    content = content_for(p.campaign, member.address)
    fields = [*p.fields, ("to", email.utils.formataddr((member.name, member.address))), *content_fields(content)]
    composed = compose_mod.compose(fields, (), domain=p.domain, now=now, max_size=50 << 20)
    copy = composed.copies[0]
    body, summary = copy.content, copy.summary
    if content.id in p.personal:
        ctx = variables_mod.RecipientContext(member.address, member.name, member.vars,
                                             {"mailing_list_unsubscribe_url": unsubscribe_url})
        body = listcopy.personalise(body, ctx)
        if "%" in summary.subject:
            summary = type(summary)(summary.message_id, summary.from_, summary.to,
                                    variables_mod.substitute(summary.subject, ctx))
    envelope = Envelope(sender=p.sender, recipients=(member.address,), client_ip="", client_helo="",
                        auth_user="campaigns", tls=False, transport="http", listener="campaigns")
    options = dataclasses.replace(copy.options, tracking_host=p.url_domain) if p.url_domain else copy.options
    msg = NewMessage(envelope, body, "outbound", p.domain, summary, options)
    queue_id = spool.new_queue_id()
    return (spool.Enqueue(queue_id, msg, shape.accepted(msg, queue_id, now)),
            DispatchRow(member.address, queue_id, content.id, content.format, seed))


class Dispatcher(WorkLoop):
    """Claims due campaigns and sends them (see the module doc): the durable claim loop of ``store.workloop``
    (leases renewed while held, a failed campaign given back) over ``if_campaigns``. ``unsubscribe_url(list_id,
    address)`` makes a member's list-unsubscribe link; ``wake`` tells the scheduler that copies were committed."""

    def __init__(self, *, store: StoreProtocol, unsubscribe_url: Callable[[int, str], str],
                 wake: Callable[[], None] = lambda: None, node_id: str = "", batch_size: int = BATCH,
                 max_concurrent: int = 4, poll_interval: float = 0.5, clock: Callable[[], float] = time.time):
        # the worker id (``node_id``, else campaigns-<pid>-<random>) is released at start by node id
        super().__init__(name="campaigns", store=store, table="if_campaigns", handle=self.send,
                         max_concurrent=max_concurrent, poll_interval=poll_interval, clock=clock, node_id=node_id)
        self.store: StoreProtocol = store
        self.unsubscribe_url = unsubscribe_url
        self.wake_scheduler = wake
        self.batch_size = batch_size
        self.copies = 0

    async def claim(self, now: float, room: int) -> list[DispatchJob]:  # type: ignore[override]
        due = [i for i in await self.store.due_campaigns(now, room + len(self.leases.held))
               if i not in self.leases.held]  # a read first: an idle daemon writes nothing
        if not due:
            return []
        return await self.store.claim_campaigns(self.worker, now, room, lease_until=self.leases.until(now),
                                                skip=self.leases.held)

    async def _fail(self, job: DispatchJob, note: str) -> None:
        log.warning("campaigns: campaign %s failed: %s", job.id, note)
        await settle_call(self.store, lambda: self.store.end_dispatch(job.id, self.worker, "failed", note,
                                                                      self.clock()), f"campaigns: end of {job.id}")

    async def _stopped(self, job: DispatchJob) -> bool:
        state = await self.store.campaign_state(job.id)
        if state is None or state[0] != "sending" or state[1]:
            await self.store.release_campaign(job.id, self.worker)
            return True
        return False

    async def send(self, job: DispatchJob) -> None:
        """Send one claimed campaign on from its cursor, until done, paused, or the claim is lost."""
        store = self.store
        c = await store.dispatch_campaign(job.id)
        if c is None:
            return
        if not c.contents or not (c.dispatch or {}).get("from_email"):
            return await self._fail(job, "the campaign has no content or no from_email")
        if await store.get_list_by_id(c.list_id) is None:
            return await self._fail(job, "its mailing list was deleted")
        try:
            p = plan(c)
        except Exception as exc:  # noqa: BLE001 - a campaign that cannot be composed fails, with the reason
            return await self._fail(job, f"cannot compose: {exc}")
        await store.record_campaign_links(c.id, content_links(c))
        ab = autowinner(c)
        if ab is not None and c.ab_state == "":
            await store.start_split(c.id, self.worker)
            c = await store.dispatch_campaign(c.id) or c
        if ab is not None and c.ab_state == "decision_delay":
            if self.clock() < (c.ab_decide_at or 0):
                await store.release_campaign(c.id, self.worker)
                return
            win, snapshots = winner(c, await store.campaign_figures(c.id), ab.metric)
            await store.decide_winner(c.id, self.worker, win, snapshots, self.clock())
            log.info("campaigns: campaign %s: content %s won on %s", c.id, win, ab.metric)
            c = await store.dispatch_campaign(c.id) or c
            p = plan(c)
        splitting = ab is not None and c.ab_state == "split_testing"
        keep: Callable[[str, bool], bool] = (
            (lambda a, seed: not seed and in_split(a, ab.percentage)) if splitting and ab is not None
            else (lambda a, seed: seed or not in_split(a, ab.percentage)) if ab is not None
            else (lambda a, seed: True))
        segment = segment_of(c)
        speed = int((c.dispatch or {}).get("speed") or 0)
        rate = speed / 3600.0
        cursor, made, started = job.cursor, job.copies, time.monotonic()
        tokens, last, checked = (max(1.0, rate * STEP) if rate else 0.0), time.monotonic(), time.monotonic()
        while not self._stopping:
            if rate:
                want = max(1, min(self.batch_size, int(rate * STEP)))
                now_m = time.monotonic()
                # the bucket holds up to a second's worth: a late wake-up is made up, never more than that
                tokens = min(max(float(want), rate * BURST), tokens + (now_m - last) * rate)
                last = now_m
                if tokens < want:
                    await asyncio.sleep(min(CHECK, (want - tokens) / rate))
                    if time.monotonic() - checked >= CHECK:
                        checked = time.monotonic()
                        if await self._stopped(job):
                            return
                    continue
                n = min(self.batch_size, max(want, int(tokens)))
            else:
                n = self.batch_size
            members = await store.segment_members(segment, cursor, n)
            now = self.clock()
            try:
                built = [member_copy(p, m, seed, self.unsubscribe_url(c.list_id, m.address), now)
                         for m, seed in members if keep(m.address, seed)]
            except compose_mod.ComposeError as exc:
                return await self._fail(job, f"cannot compose: {exc}")
            after, cursor = cursor, (members[-1][0].address if members else cursor)
            done = len(members) < n
            decide_at = now + ab.delay if splitting and ab is not None and done else None
            result = await settle_call(store, lambda: store.dispatch_batch(
                c.id, self.worker, after, cursor, [b[0] for b in built], [b[1] for b in built], done, now,
                decide_at), f"campaigns: copies of campaign {c.id}")
            if result == "lost":
                log.warning("campaigns: campaign %s is no longer held by %s at %r", c.id, self.worker, after)
                return
            if result == "stopped":
                await store.release_campaign(c.id, self.worker)
                log.info("campaigns: campaign %s paused or stopped after %d copies", c.id, made)
                return
            made += len(built)
            self.copies += len(built)
            if rate:
                tokens -= len(built)
            if built:
                self.wake_scheduler()
            if done:
                log.info("campaigns: campaign %s %s: %d copies in %.1fs", c.id,
                         "split test sent" if decide_at is not None else "sent", made, time.monotonic() - started)
                if decide_at is not None:
                    self.leases.done(c.id)  # given back by the write: due again at decide_at
                return
