"""Campaign reports: how fast they answer on a big store (issue 16, "Benchmark": p99 <= 100 ms each).

    python bench/campaigns_bench.py [--events 1000000] [--campaigns 100] [--requests 200] [--kinds mailgun,inboxfirst]
                                    [--keep DIR [--fill-only]]
    python bench/campaigns_bench.py --write-cost 20000

1. **fill**, for each kind of campaign asked (``--kinds``), on one SQLite store:
   - ``inboxfirst`` (seed 004): ``--campaigns`` dispatch campaigns on one mailing list, started as the dispatcher
     starts them (``claim_campaigns``, ``record_campaign_links``: 20 links), their copies committed by
     ``dispatch_batch`` (messages, deliveries, ``accepted`` events, ``if_dispatch`` rows; 250 per campaign per round,
     round-robin), and each copy's later events recorded through ``record_events`` (batches of 2,000, 4 in flight)
     as the daemon records them: delivered (or a hard bounce, 3%; a soft bounce first for 4%), opens (45% open,
     1-6 times), clicks (55% of openers, 1-4 clicks on the 20 links), unsubscribes and complaints (1% each), all
     naming the campaign's ``o:campaign``/tag ``inboxfirst-ID``; until ``--events`` events in all (with the
     ``accepted`` ones): about 2,400 copies and 10,000 events per campaign at the defaults. Then finished.
   - ``mailgun`` (seed 000): ``--campaigns`` campaigns (``create_campaign``) and ``--events`` events spread evenly
     over them, recorded through ``record_events`` (the event rows, the stats counters, and the campaigns'
     counters and index rows, in the same group-committed writes as the daemon makes them), in batches of 2,000
     with 4 batches in flight. The mix per campaign, like a newsletter's: accepted 22%, delivered 21%, failed 2%
     (bounces and drops), opened 30%, clicked 21%, unsubscribed 2%, complained 2%; 2,000 recipients on 40
     domains, 20 links, places from 12 cities, over 30 days.
2. **reports** — mtad's real API apps (``mtad.api.campaigns``, ``mtad.api.inboxfirst``) on a loopback port, asked
   over HTTP with aiohttp, ``--requests`` times per kind, each time for a random campaign. Mailgun: the campaign's
   stats, clicks grouped by link, by recipient, by link and recipient (the seed's "spy mode"), opens by country,
   stats by daily hour, the campaign's first page of events, one event kind's page 5, and the campaigns list.
   InboxFirst: the campaign with its ``stat_summary`` and ``content_stats`` (by id, by stat id), its
   ``link_stats`` (all; ``url`` wildcard with ``scope=clicked``; a page of 5), and the list's campaigns.
   Reported: p50/p99 per kind, and the mean CPU milliseconds of the process per request (client and server: on
   a loaded machine, what a request costs beside what it waited).

``--keep DIR`` keeps the store in DIR (created if needed) and reuses what a run filled there before: each kind's
fill, once complete, writes ``DIR/filled-KIND.json``, and a later run with the same DIR skips that fill (the
store is opened, and migrated if this mtad's schema is newer: the time is printed). ``--fill-only`` stops after
the fill. So the slow fill runs once and the query phase can be rerun on an idle machine.

``--write-cost N`` measures instead what campaigns add to the event write path: ``record_events`` of N events
naming a campaign, and of N events naming none, on one fresh store, alternated over 3 rounds (the same events
but for their ``campaigns``): events/s each way.

Without ``--keep`` the store lives in a temporary folder, removed at the end. Figures vary between machines and
runs: on a shared machine read the order of magnitude and the CPU column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtad.base.types import Envelope, HeaderSummary, NewMessage, SendOptions  # noqa: E402
from mtad.events import shape  # noqa: E402
from mtad.store import queue as spool  # noqa: E402
from mtad.store.dispatch import CampaignChange, DispatchRow, NewContent  # noqa: E402
from mtad.store.events import NewEvent  # noqa: E402
from mtad.store.lists import MailingList  # noqa: E402
from mtad.store.sqlite import SqliteStore  # noqa: E402

KEY = "key-bench"
DOMAIN = "example.com"
PLACES = [("US", "IL", "Chicago"), ("US", "CA", "San Francisco"), ("US", "NY", "New York"), ("RU", "MOW", "Moscow"),
          ("FR", "IDF", "Paris"), ("DE", "BE", "Berlin"), ("GB", "ENG", "London"), ("JP", "13", "Tokyo"),
          ("BR", "SP", "Sao Paulo"), ("IN", "MH", "Mumbai"), ("CA", "ON", "Toronto"), ("AU", "NSW", "Sydney")]
MIX = [("accepted", 22), ("delivered", 21), ("failed", 2), ("opened", 30), ("clicked", 21), ("unsubscribed", 2),
       ("complained", 2)]


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def make_event(rng: random.Random, campaign: str, now: float) -> dict:
    kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
    n = rng.randrange(2000)
    rcpt = f"user{n}@dest{n % 40}.test"
    extra: dict = {}
    if kind == "accepted":
        extra = {"direction": "outgoing", "method": "http"}
    elif kind == "failed":
        extra = {"severity": "permanent", "reason": rng.choice(["bounce", "bounce", "suppress-bounce"])}
    elif kind in ("opened", "clicked", "unsubscribed"):
        extra = {"geolocation": dict(zip(("country", "region", "city"), rng.choice(PLACES))),
                 "client-info": {"client-type": "browser", "device-type": "desktop"}, "ip": "192.0.2.1"}
        if kind == "clicked":
            extra["url"] = f"https://shop.test/item/{rng.randrange(20)}"
    return shape.base_event(kind, timestamp=now - rng.uniform(0, 30 * 86400), recipient=rcpt,
                            queue_id=f"Q{n}", message=shape.message_part({"message-id": f"{n}@example.com",
                                                                          "subject": "Newsletter"}, 2000),
                            options={"campaigns": [campaign], "tags": ["newsletter"]}, envelope={},
                            flags={"is-unique": False}, extra=extra)


async def fill(store: SqliteStore, events: int, campaigns: int) -> float:
    ids = [f"campaign-{i:03d}" for i in range(campaigns)]
    for cid in ids:
        await store.create_campaign(DOMAIN, cid, f"Newsletter {cid}", time.time())
    rng = random.Random(16)
    now = time.time()
    started = time.perf_counter()
    sem = asyncio.Semaphore(4)
    batch = 2000

    async def one(start: int) -> None:
        async with sem:
            await store.record_events([NewEvent(DOMAIN, make_event(rng, ids[(start + i) % campaigns], now))
                                       for i in range(min(batch, events - start))])
    tasks = []
    for start in range(0, events, batch):
        tasks.append(asyncio.ensure_future(one(start)))
        if len(tasks) >= 8:
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()
            tasks = list(pending)
        if start and start % 100_000 == 0:
            print(f"  {start:,} events recorded ({start / (time.perf_counter() - started):,.0f}/s)", flush=True)
    await asyncio.gather(*tasks)
    return time.perf_counter() - started


IF_LIST = "news@example.com"
IF_LINKS = [f"https://shop.test/item/{i}" for i in range(20)]
IF_HTML = "<html><body><p>Hello</p>" + "".join(f'<a href="{u}">item {i}</a>' for i, u in enumerate(IF_LINKS)) + \
    "</body></html>"
IF_BODY = ("From: news@example.com\r\nTo: someone@dest.test\r\nSubject: Newsletter\r\nMIME-Version: 1.0\r\n"
           "Content-Type: text/html; charset=utf-8\r\n\r\n" + IF_HTML + "\r\n").encode()


def if_copy_events(rng: random.Random, address: str, queue_id: str, sent: float, tag: str) -> list[dict]:
    """What the daemon records about one dispatched copy after its ``accepted`` event: its delivery (or a hard
    bounce; some soft bounces first), then for some the opens, clicks (tracked links), an unsubscribe or a
    complaint, each at a later time; like the copy, they name the campaign's tag and ``o:campaign``
    (``inboxfirst-ID``)."""
    msg = shape.message_part({"message-id": f"{queue_id}@example.com", "subject": "Newsletter"}, len(IF_BODY))

    def event(kind: str, delay: float, extra: dict) -> dict:
        return shape.base_event(kind, timestamp=sent + delay, recipient=address, queue_id=queue_id, message=msg,
                                options={"campaigns": [tag], "tags": [tag]},
                                envelope={"sender": "bounces@example.com", "transport": "smtp"},
                                flags={"is-unique": False}, extra=extra)
    out = []
    if rng.random() < 0.04:
        out.append(event("failed", 60, {"severity": "temporary", "reason": "generic",
                                        "delivery-status": {"code": 451, "message": "try later"}}))
    if rng.random() < 0.03:
        out.append(event("failed", 120, {"severity": "permanent", "reason": "bounce",
                                         "delivery-status": {"code": 550, "message": "no such user"}}))
        return out
    out.append(event("delivered", 120, {"delivery-status": {"code": 250, "message": "OK"}}))
    where = {"geolocation": dict(zip(("country", "region", "city"), rng.choice(PLACES))),
             "client-info": {"client-type": "browser", "device-type": "desktop"}, "ip": "192.0.2.1"}
    if rng.random() < 0.45:
        for _ in range(rng.randint(1, 6)):
            out.append(event("opened", rng.uniform(300, 30 * 86400), dict(where)))
        if rng.random() < 0.55:
            for _ in range(rng.randint(1, 4)):
                out.append(event("clicked", rng.uniform(300, 30 * 86400), {**where, "url": rng.choice(IF_LINKS)}))
    if rng.random() < 0.01:
        out.append(event("unsubscribed", rng.uniform(300, 30 * 86400), dict(where)))
    if rng.random() < 0.01:
        out.append(event("complained", rng.uniform(300, 30 * 86400), {}))
    return out


async def fill_inboxfirst(store: SqliteStore, events: int, campaigns: int) -> tuple[float, int]:
    """InboxFirst campaigns as the dispatcher leaves them: ``campaigns`` campaigns on one list, started (claimed),
    their links recorded, their copies committed by ``dispatch_batch`` (messages, deliveries, ``accepted`` events,
    ``if_dispatch`` rows) 250 per campaign per round, round-robin, each round's later events recorded through
    ``record_events`` in batches of 2,000 (4 in flight), until ``events`` events in all; then finished. Returns
    (seconds, copies)."""
    now = time.time()
    lst = await store.create_list(MailingList(0, IF_LIST, "News", created_at=now))
    ids = []
    for i in range(campaigns):
        c = await store.create_dispatch_campaign(lst.id, CampaignChange(
            name=f"Newsletter {i:03d}", segment=[], state="scheduled", begins_at=now - 3600,
            dispatch={"from_email": "news@example.com", "from_name": "News", "track_opens": True,
                      "track_links": True, "speed": 0},
            contents=[NewContent("A", "Newsletter", "html", html=IF_HTML)]), now)
        ids.append(c.id)
    jobs = await store.claim_campaigns("bench", now, campaigns + 1, lease_until=now + 86400 * 365)
    assert len(jobs) == campaigns, jobs
    contents = {}
    for cid in ids:
        c = await store.dispatch_campaign(cid)
        assert c is not None
        contents[cid] = c.contents[0].id
        await store.record_campaign_links(cid, [(contents[cid], u) for u in IF_LINKS])
    rng = random.Random(4)
    per_campaign = events // campaigns
    counts = dict.fromkeys(ids, 0)
    cursor = dict.fromkeys(ids, "")
    serial = dict.fromkeys(ids, 0)
    copies = 0
    started = time.perf_counter()
    sem = asyncio.Semaphore(4)
    pending: list[dict] = []
    tasks: list[asyncio.Future] = []
    reported = 0

    async def record(chunk: list[dict]) -> None:
        async with sem:
            await store.record_events([NewEvent("example.com", e) for e in chunk])

    async def flush(final: bool) -> None:
        nonlocal tasks
        while len(pending) >= 2000 or (final and pending):
            chunk = pending[:2000]
            del pending[:2000]
            tasks.append(asyncio.ensure_future(record(chunk)))
            if len(tasks) >= 8:
                done, rest = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    t.result()
                tasks = list(rest)
    while any(n < per_campaign for n in counts.values()):
        for cid in ids:
            if counts[cid] >= per_campaign:
                continue
            batch, rows = [], []
            sent = now - 31 * 86400 + serial[cid]
            while len(batch) < 250 and counts[cid] < per_campaign:
                n = serial[cid]
                serial[cid] += 1
                address = f"user{n:06d}@dest{n % 40}.test"
                msg = NewMessage(Envelope("bounces@example.com", (address,), auth_user="campaigns",
                                          transport="http", listener="campaigns"), IF_BODY, "outbound",
                                 "example.com", HeaderSummary(f"{cid}.{n}@example.com", "News <news@example.com>",
                                                              address, "Newsletter"),
                                 SendOptions(tags=(f"inboxfirst-{cid}",), campaigns=(f"inboxfirst-{cid}",)))
                qid = spool.new_queue_id()
                batch.append(spool.Enqueue(qid, msg, shape.accepted(msg, qid, sent)))
                rows.append(DispatchRow(address, qid, contents[cid], "html"))
                later = if_copy_events(rng, address, qid, sent, f"inboxfirst-{cid}")
                counts[cid] += 1 + len(later)
                pending.extend(later)
            async with sem:
                result = await store.dispatch_batch(cid, "bench", cursor[cid], rows[-1].address, batch, rows,
                                                    False, now)
            assert result == "written", result
            cursor[cid] = rows[-1].address
            copies += len(rows)
            await flush(False)
            total = sum(counts.values())
            if total - reported >= 100_000:
                reported = total
                print(f"  {total:,} events ({total / (time.perf_counter() - started):,.0f}/s)", flush=True)
    await flush(True)
    await asyncio.gather(*tasks)
    for cid in ids:
        assert await store.end_dispatch(cid, "bench", "finished", "", time.time())
    return time.perf_counter() - started, copies


async def write_cost(folder: Path, n: int) -> None:
    store = SqliteStore(folder / "write-cost.sqlite3")
    store.open()
    try:
        await store.create_campaign(DOMAIN, "campaign-000", "Newsletter", time.time())
        rates: dict[bool, list[float]] = {True: [], False: []}
        for round_no in range(3):
            for with_campaign in ((True, False) if round_no % 2 == 0 else (False, True)):
                rng = random.Random(round_no)
                events = [make_event(rng, "campaign-000", time.time()) for _ in range(n)]
                if not with_campaign:
                    for e in events:
                        e["campaigns"] = []
                started = time.perf_counter()
                sem = asyncio.Semaphore(4)

                async def one(chunk: list[dict]) -> None:
                    async with sem:
                        await store.record_events([NewEvent(DOMAIN, e) for e in chunk])
                await asyncio.gather(*(one(events[i:i + 2000]) for i in range(0, n, 2000)))
                rates[with_campaign].append(n / (time.perf_counter() - started))
        for with_campaign, found in rates.items():
            print(f"{'with a campaign' if with_campaign else 'without'}: {', '.join(f'{r:,.0f}' for r in found)}"
                  f" events/s (best {max(found):,.0f})")
    finally:
        store.close()


async def serve(store: SqliteStore):
    """mtad's campaigns API app on a loopback port: (session, base URL, runner)."""
    import aiohttp
    from aiohttp import web
    from mtad.api import ApiContext, ApiKey, campaigns as campaigns_api, create_app, hash_key
    from mtad.api import inboxfirst as inboxfirst_api
    from mtad.config.schema import ApiConfig
    ingress = types.SimpleNamespace(directory=types.SimpleNamespace(sending_domains=frozenset({DOMAIN})))
    ctx = ApiContext(config=ApiConfig(), store=store, base_url="", keys=lambda: [ApiKey(hash_key(KEY))],
                     running_config=None, allowed_networks=(), ingress=ingress, routing=None,  # type: ignore[arg-type]
                     accounts=None, apply_accounts=None, metrics=None)  # type: ignore[arg-type]
    runner = web.AppRunner(create_app(ctx, [campaigns_api.setup, inboxfirst_api.setup]), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = aiohttp.ClientSession(headers={"Authorization": aiohttp.encode_basic_auth("api", KEY)})
    return session, f"http://127.0.0.1:{port}", runner


CPU: list[float] = []  # process CPU seconds of each timed request (client and server: one process)


async def timed(session, url: str, params: list | dict) -> tuple[float, object]:
    started, cpu = time.perf_counter(), time.process_time()
    async with session.get(url, params=params) as resp:
        data = await resp.json()
        assert resp.status == 200, (url, resp.status, data)
    CPU.append(time.process_time() - cpu)
    return time.perf_counter() - started, data


def row(name: str, lat: list[float], items: float) -> str:
    """A table row: p50, p99 and the mean CPU milliseconds (of the process: client and server) of the requests
    timed since the last row; on a loaded machine the CPU time says what a request costs, the p99 what it waited."""
    cpu = sum(CPU) / len(CPU) * 1000 if CPU else 0.0
    CPU.clear()
    return f"| {name} | {pct(lat, 50):.1f} | {pct(lat, 99):.1f} | {cpu:.1f} | {items:.0f} |"


async def reports(store: SqliteStore, campaigns: int, requests: int) -> None:
    session, base, runner = await serve(store)
    rng = random.Random(2)
    url = f"{base}/v3/{DOMAIN}/campaigns"
    kinds = {
        "campaign stats (totals + unique)": ("stats", {}),
        "clicks groupby=link": ("clicks", {"groupby": "link"}),
        "clicks groupby=recipient": ("clicks", {"groupby": "recipient"}),
        "clicks groupby=link&groupby=recipient": ("clicks", [("groupby", "link"), ("groupby", "recipient")]),
        "opens groupby=country, limit 10": ("opens", {"groupby": "country", "limit": "10"}),
        "stats groupby=daily_hour": ("stats", {"groupby": "daily_hour"}),
        "events, first page (100)": ("events", {}),
        "events event=clicked, page 5": ("events", {"event": "clicked", "page": "5"}),
    }
    try:
        print("| request | p50 ms | p99 ms | CPU ms | items |")
        print("|---|---:|---:|---:|---:|")
        for name, (report, params) in kinds.items():
            lat, items = [], []
            for _ in range(requests):
                campaign = f"campaign-{rng.randrange(campaigns):03d}"
                seconds, data = await timed(session, f"{url}/{campaign}/{report}", params)
                lat.append(seconds * 1000)
                items.append(len(data) if isinstance(data, list) else 1)
            print(row(name, lat, sum(items) / len(items)), flush=True)
        lat = []
        CPU.clear()
        for _ in range(requests):
            seconds, data = await timed(session, url, {"limit": "100"})
            lat.append(seconds * 1000)
        print(row("campaigns list (100, with counters)", lat, len(data["items"])))  # type: ignore[index]
    finally:
        await session.close()
        await runner.cleanup()


async def if_reports(store: SqliteStore, requests: int) -> None:
    """The InboxFirst requests: a campaign with its ``stat_summary`` (GET by id and by stat id), its link stats
    (all, a ``url`` wildcard with ``scope=clicked``, a page of 5), and the list's campaigns."""
    session, base, runner = await serve(store)
    rng = random.Random(3)
    lst = await store.get_list(IF_LIST)
    assert lst is not None
    ids = [c.id for c in await store.list_dispatch_campaigns(lst.id)]
    url = f"{base}/ga/api/v2/campaigns"
    kinds = {
        "campaign with stat_summary (GET /campaigns/{id})": ("", {}),
        "by_stat/{id}": ("by_stat", {}),
        "link_stats": ("link_stats", {}),
        "link_stats url=*item/1* scope=clicked": ("link_stats", {"url": "*item/1*", "scope": "clicked"}),
        "link_stats per_page=5 page=2": ("link_stats", {"per_page": "5", "page": "2"}),
    }
    try:
        print("| request | p50 ms | p99 ms | CPU ms | items |")
        print("|---|---:|---:|---:|---:|")
        for name, (what, params) in kinds.items():
            lat, items = [], []
            for _ in range(requests):
                cid = rng.choice(ids)
                target = f"{url}/by_stat/{cid}" if what == "by_stat" else f"{url}/{cid}" + (f"/{what}" if what
                                                                                            else "")
                seconds, data = await timed(session, target, params)
                lat.append(seconds * 1000)
                got = data["data"]  # type: ignore[index]
                items.append(len(got["links"]) if "links" in got else got["stat_summary"]["messages_sent"])
            print(row(name, lat, sum(items) / len(items)), flush=True)
        lat = []
        CPU.clear()
        for _ in range(requests):
            seconds, data = await timed(session, f"{base}/ga/api/v2/mailing_lists/{lst.id}/campaigns", {})
            lat.append(seconds * 1000)
        print(row("list's campaigns", lat, len(data["data"])))  # type: ignore[index]
    finally:
        await session.close()
        await runner.cleanup()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="events per kind of campaign")
    parser.add_argument("--campaigns", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--kinds", default="mailgun,inboxfirst",
                        help="which campaigns to fill and ask: mailgun, inboxfirst or both (comma-separated)")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="the store's folder, kept: a part filled there before (DIR/filled-KIND.json) is reused")
    parser.add_argument("--fill-only", action="store_true", help="fill (into --keep DIR) and stop")
    parser.add_argument("--write-cost", type=int, metavar="N", help="measure the event write path instead")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if set(kinds) - {"mailgun", "inboxfirst"}:
        parser.error("--kinds: mailgun and/or inboxfirst")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mtad-campaigns-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if args.write_cost:
            print(f"## Event write path: record_events of {args.write_cost:,} events, with and without a campaign")
            await write_cost(folder, args.write_cost)
            return
        store = SqliteStore(folder / "mtad.sqlite3")
        started = time.perf_counter()
        store.open()
        print(f"store opened in {time.perf_counter() - started:.1f} s (a migration of a kept store included)")
        try:
            for kind in ("inboxfirst", "mailgun"):
                if kind not in kinds:
                    continue
                marker = folder / f"filled-{kind}.json"
                if marker.exists():
                    print(f"## 1. {kind}: reusing the store filled before: {marker.read_text().strip()}")
                    continue
                print(f"## 1. Fill ({kind}): {args.events:,} events over {args.campaigns} campaigns", flush=True)
                copies = 0
                if kind == "mailgun":
                    seconds = await fill(store, args.events, args.campaigns)
                else:
                    seconds, copies = await fill_inboxfirst(store, args.events, args.campaigns)
                size = sum(p.stat().st_size for p in folder.iterdir()) / 1e6
                print(f"filled in {seconds:.0f} s ({args.events / seconds:,.0f} events/s), store {size:,.0f} MB\n")
                marker.write_text(json.dumps({"events": args.events, "campaigns": args.campaigns, "copies": copies,
                                              "seconds": round(seconds)}) + "\n")
            if args.fill_only:
                return
            if "mailgun" in kinds:
                print(f"## 2. Mailgun campaign reports over HTTP, {args.requests} requests per kind, random campaign"
                      " each time")
                await reports(store, args.campaigns, args.requests)
            if "inboxfirst" in kinds:
                print(f"\n## 3. InboxFirst campaigns over HTTP, {args.requests} requests per kind, random campaign"
                      " each time")
                await if_reports(store, args.requests)
        finally:
            store.close()
    finally:
        if args.keep:
            print(f"\nstore kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
