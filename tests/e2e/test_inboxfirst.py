"""InboxFirst-style campaigns (issue 16, seed 004) through raw HTTP: the seed's example create, get by id and by stat
id, list with started_at filters, update, the refusals; a 120-member campaign paced at the receiving MX; pause and
resume mid-send (nobody twice, nobody skipped); stat_summary and link_stats matching opens and clicks made by
fetching the tracking URLs."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import time

import aiohttp
import pytest

from tests.support.api import api
from tests.support.wait import wait_for

DEST = "members.test"  # where members live: the sink MX
V2 = "/ga/api/v2"


@pytest.fixture(scope="module")
def env(daemon_factory, mx_farm):
    """(daemon, sink): the module's mtad delivering ``DEST`` to a sink MX; the tests' fetches right after delivery
    are a person's (``tracking.scanner_window`` 0: a machine's opens and clicks are never unique)."""
    from tests.e2e.apihelpers import delivering
    from tests.support.dns_server import DnsServer
    dns = DnsServer(ttl=300).start()
    sink = mx_farm.add("mx.sink.test")
    daemon = daemon_factory(**delivering(dns, sink, [DEST]), tracking={"scanner_window": "0s"})
    yield daemon, sink
    dns.stop()


async def _list(daemon, address: str, members: list) -> int:
    await api(daemon, "POST", "/v3/lists", data={"address": address})
    for i in range(0, len(members), 1000):
        await api(daemon, "POST", f"/v3/lists/{address}/members.json",
                  data={"members": json.dumps(members[i:i + 1000])})
    return int(await _list_id(daemon, address))


async def _list_id(daemon, address: str) -> int:
    # the list's numeric id: what a campaign created by address reports as mailing_list_id
    body = await api(daemon, "GET", f"{V2}/mailing_lists/{address}/campaigns")
    assert body["success"] is True and body["error_message"] is None
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{address}/campaigns", json={"campaign": {"name": "probe"}})
    return made["data"]["mailing_list_id"]


def _campaign(name: str, speed: int, html: str, *, begins_at=None, **dispatch) -> dict:
    return {"campaign": {
        "name": name,
        "contents": [{"name": "A", "format": "both", "subject": "Hi %recipient_fname%", "html": html,
                      "text": "plain %recipient%"}],
        "segmentation_criteria_ad_hoc": [],
        "dispatch_attributes": {"state": "scheduled", "from_email": "news@example.com", "from_name": "News",
                                "speed": speed, "begins_at": begins_at or int(time.time()),
                                "track_opens": True, "track_links": "1", **dispatch}}}


async def test_crud_with_the_seed_examples_and_refusals(env):
    daemon, _ = env
    lid = await _list(daemon, "crud@example.com", [f"m{i}@{DEST}" for i in range(3)])
    await _list(daemon, "other@example.com", [f"m1@{DEST}"])
    # the seed's create example (begins_at in the far past is refused as the seed says)
    seed = {"campaign": {
        "name": "Daily News 1002",
        "contents": [{"name": "multipart content", "format": "both", "subject": "this is my email",
                      "html": "hello world", "text": "a text part"},
                     {"name": "plaintext content", "format": "text", "subject": "this is my plaintext email",
                      "text": "hello world"}],
        "segmentation_criteria_ad_hoc": [],
        "dispatch_attributes": {"state": "scheduled", "from_email": "from@example.com", "from_name": "From Example",
                                "speed": 0, "virtual_mta_id": 0, "bounce_email_id": "1@1", "url_domain_id": 1,
                                "begins_at": "2015-01-22T17:10:00Z", "track_opens": True, "track_links": "1"}}}
    refused = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json=seed, expect=400)
    assert refused["success"] is False and "2 hours" in refused["error_message"] and refused["message"]
    # in the future: scheduled, every field as the seed shows
    seed["campaign"]["dispatch_attributes"]["begins_at"] = "2099-01-22T17:10:00Z"
    seed["campaign"]["segmentation_criteria_ad_hoc"] = [
        {"type": "in_mailing_list", "operator": "is_not_in", "mailing_list_id": "other@example.com"}]
    body = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json=seed)
    data = body["data"]
    assert body["success"] is True and body["error_code"] is None
    assert data["name"] == "Daily News 1002" and data["mailing_list_id"] == lid
    assert data["mailing_list_name"] == "crud@example.com"
    d = data["dispatch"]
    assert (d["state"], d["state_description"], d["paused"]) == ("scheduled", "Step 2: Scheduled", False)
    assert d["begins_at"] == "2099-01-22T17:10:00Z" and d["started_at"] is None and d["finished_at"] is None
    assert d["track_opens"] is True and d["track_links"] is True and d["from_email"] == "from@example.com"
    assert [(c["name"], c["format"], c["html"], c["text"]) for c in data["campaign_contents"]] == [
        ("multipart content", "both", "hello world", "a text part"), ("plaintext content", "text", "", "hello world")]
    assert data["stat_summary"] is None and [c["stat_summary"] for c in data["content_stats"]] == [None, None]
    cid = data["id"]
    # get by id and by stat id
    assert (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]["name"] == "Daily News 1002"
    assert (await api(daemon, "GET", f"{V2}/campaigns/by_stat/{data['stat_id']}"))["data"]["id"] == cid
    # the seed's update example, by id then by stat id
    upd = await api(daemon, "PUT", f"{V2}/campaigns/{cid}", json={"campaign": {"name": "My Campaign's New Name 3"}})
    assert upd["data"]["name"] == "My Campaign's New Name 3" and upd["data"]["dispatch"]["state"] == "scheduled"
    upd = await api(daemon, "PUT", f"{V2}/campaigns/by_stat/{cid}",
                    json={"campaign": {"dispatch_attributes": {"begins_at": None}}})
    d = upd["data"]["dispatch"]
    assert d["state"] == "idle" and d["state_description"] == "Step 1: Pending"
    # list by address and by id; the started_at filter keeps only started campaigns
    listed = await api(daemon, "GET", f"{V2}/mailing_lists/crud@example.com/campaigns")
    assert cid in [c["id"] for c in listed["data"]]
    assert (await api(daemon, "GET", f"{V2}/mailing_lists/{lid}/campaigns",
                      params={"started_at__start": "0"}))["data"] == []
    # source_template_id copies what it is told to
    dup = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json={
        "source_template_id": cid, "duplicate_content": True, "campaign": {"name": "copy"}})
    assert len(dup["data"]["campaign_contents"]) == 2 and "dispatch" not in dup["data"]
    # pause and resume answer the campaign
    assert (await api(daemon, "POST", f"{V2}/campaigns/{cid}/pause"))["data"]["dispatch"]["paused"] is True
    assert (await api(daemon, "POST", f"{V2}/campaigns/by_stat/{cid}/resume"))["data"]["dispatch"]["paused"] is False
    # refusals: each in the seed's error shape
    for method, path, kwargs, status in [
            ("GET", f"{V2}/campaigns/999999", {}, 404),
            ("GET", f"{V2}/mailing_lists/nope@example.com/campaigns", {}, 404),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns", {"data": "{not json"}, 400),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns", {"json": {"campaign": {}}}, 400),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns",
             {"json": {"campaign": {"name": "x", "contents": [{"format": "pdf"}]}}}, 400),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns",
             {"json": {"campaign": {"name": "x", "dispatch_attributes": {"from_email": "a@elsewhere.test"}}}}, 400),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns",
             {"json": {"campaign": {"name": "x", "dispatch_attributes": {"speed": -1}}}}, 400),
            ("POST", f"{V2}/mailing_lists/{lid}/campaigns",
             {"json": {"campaign": {"name": "x", "dispatch_attributes": {"begins_at": 10 ** 12}}}}, 400),
            ("PUT", f"{V2}/campaigns/{cid}",
             {"json": {"campaign": {"dispatch_attributes": {"autowinner_percentage": "94.851"}}}}, 400),
            ("GET", f"{V2}/mailing_lists/{lid}/campaigns", {"params": {"started_at__end": "soon"}}, 400),
            ("GET", f"{V2}/campaigns/{cid}/link_stats", {"params": {"per_page": "501"}}, 400)]:
        got = await api(daemon, method, path, expect=status, **kwargs)
        assert got["success"] is False and got["error_message"], (path, got)
    async with aiohttp.ClientSession() as s:
        async with s.get(daemon.api_url + f"{V2}/campaigns/{cid}") as resp:
            assert resp.status == 401


def _rate(times: list[float]) -> float:
    """Arrivals per second in the steady state: between the 10th and the 90th percentile of arrivals (the first
    connection's set-up and the last delivery's tail left out)."""
    times = sorted(times)
    lo, hi = len(times) // 10, len(times) * 9 // 10
    return (hi - lo) / (times[hi] - times[lo])


async def test_a_120_member_campaign_is_paced_at_the_receiving_mx(env):
    daemon, sink = env
    members = [f"p{i:03d}@{DEST}" for i in range(120)]
    lid = await _list(daemon, "paced@example.com", members)
    speed = 72_000  # per hour: 20 per second, 120 in about 6 s
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns",
                     json=_campaign("paced", speed, "<p>hello</p>"))
    cid = made["data"]["id"]
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=25, what="120 copies")
    made_at = sorted(r[0] for r in daemon.query("SELECT created_at FROM if_dispatch WHERE campaign_id = ?", (cid,)))
    arrivals = sorted(sink.to(m)[0].at for m in members)
    rate = _rate(arrivals)
    assert speed / 3600 * 0.8 <= rate <= speed / 3600 * 1.2, rate
    assert all(len(sink.to(m)) == 1 for m in members)
    got = await wait_for(lambda: _state(daemon, cid, "finished"), what="finished")
    assert got["dispatch"]["started_at"] and got["dispatch"]["finished_at"]
    started = got["dispatch"]["started_at"]  # the started_at range filters, ISO-8601 and UNIX time
    listed = await api(daemon, "GET", f"{V2}/mailing_lists/{lid}/campaigns", params={"started_at__start": started})
    assert [c["id"] for c in listed["data"]] == [cid] and listed["data"][0]["dispatch"]["state"] == "finished"
    early = int(time.time()) - 3600
    assert (await api(daemon, "GET", f"{V2}/mailing_lists/{lid}/campaigns",
                      params={"started_at__end": str(early)}))["data"] == []
    print(f"paced: {rate:.2f} messages/s at the MX in the steady state, {119 / (arrivals[-1] - arrivals[0]):.2f}"
          f" first to last, for a setting of {speed / 3600:.2f}/s; copies made at {_rate(made_at):.2f}/s")
    copy = sink.to(members[0])[0]
    msg = email.message_from_bytes(copy.data, policy=email.policy.default)
    assert msg["X-CampaignID"] == f"s4:inboxfirst-{cid}" and str(msg["To"]) == members[0]


async def test_pause_stops_new_copies_within_a_second_and_resume_completes(env):
    daemon, sink = env
    members = [f"q{i:03d}@{DEST}" for i in range(150)]
    lid = await _list(daemon, "pausing@example.com", members)
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns",
                     json=_campaign("paused", 144_000, "<p>hello</p>"))  # 40 per second: ~4 s in all
    cid = made["data"]["id"]
    await wait_for(lambda: sum(bool(sink.to(m)) for m in members) >= 20, timeout=10, what="20 copies")
    paused = await api(daemon, "POST", f"{V2}/campaigns/{cid}/pause")
    assert paused["data"]["dispatch"]["paused"] is True
    await asyncio.sleep(1.0)
    made_at_1s = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]["stat_summary"]["total_messages"]
    await asyncio.sleep(2.0)
    still = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]
    assert still["stat_summary"]["total_messages"] == made_at_1s < 150
    assert still["dispatch"]["state"] == "sending" and still["dispatch"]["paused"] is True
    received = sum(len(sink.to(m)) for m in members)
    assert received == made_at_1s  # what was queued was delivered, nothing more
    await api(daemon, "POST", f"{V2}/campaigns/{cid}/resume")
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=30, what="every member")
    await asyncio.sleep(0.5)
    assert [len(sink.to(m)) for m in members] == [1] * 150
    done = await wait_for(lambda: _state(daemon, cid, "finished"), what="finished")
    assert done["stat_summary"]["total_messages"] == 150


async def _state(daemon, cid: int, state: str) -> dict | None:
    data = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]
    return data if data["dispatch"]["state"] == state else None


async def _fetch(url: str) -> int:
    async with aiohttp.ClientSession(headers={"User-Agent": "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101"
                                              " Thunderbird/115.10.1"}) as s:
        async with s.get(url, allow_redirects=False) as resp:
            await resp.read()
            return resp.status


async def test_stat_summary_and_link_stats_match_the_opens_and_clicks_made(env):
    daemon, sink = env
    members = [f"s{i}@{DEST}" for i in range(4)]
    lid = await _list(daemon, "stats@example.com", members)
    html = ('<p>Hi <a href="https://shop.example/sale">sale</a> <a href="https://docs.example/Guide">guide</a>'
            ' <a href="https://blog.example/">blog</a></p>')
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json=_campaign("stats", 0, html))
    cid = made["data"]["id"]
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=15, what="4 copies")
    await wait_for(lambda: _delivered(daemon, cid, 4), what="4 delivered")

    def urls(member: str, kind: str) -> list[str]:
        msg = email.message_from_bytes(sink.to(member)[0].data, policy=email.policy.default)
        return re.findall(re.escape(daemon.api_url) + f"/{kind}/[A-Za-z0-9_-]+", msg.get_body(("html",)).get_content())

    # s0 opens twice, clicks sale twice and guide once; s1 opens once, clicks guide; s2 opens once; s3 nothing
    for member, opens, clicks in [(members[0], 2, [0, 0, 1]), (members[1], 1, [1]), (members[2], 1, [])]:
        for _ in range(opens):
            assert await _fetch(urls(member, "o")[0]) == 200
        for i in clicks:
            assert await _fetch(urls(member, "c")[i]) in (301, 302)
    await wait_for(lambda: _opens(daemon, cid, 4, 3), what="opens and clicks recorded")
    s = (await api(daemon, "GET", f"{V2}/campaigns/by_stat/{cid}"))["data"]["stat_summary"]
    assert (s["sent_multipart"], s["messages_sent"], s["total_messages"], s["accepted"]) == (4, 4, 4, 4)
    assert (s["opens_total"], s["opens_unique"], s["duplicate_opens"]) == (4, 3, 1)
    assert (s["clicks_total"], s["clicks_unique"], s["duplicate_clicks"], s["clicks_unique_by_link"]) == (4, 2, 2, 3)
    assert (s["open_rate"], s["click_rate"], s["click_to_open_rate"]) == (0.75, 0.5, round(2 / 3, 6))
    assert (s["bounces_unique"], s["bounce_rate"], s["accepted_rate"], s["in_queue"]) == (0, 0.0, 1.0, 0)
    assert (s["unopened"], s["unclicked"]) == (1, 2)
    links = await api(daemon, "GET", f"{V2}/campaigns/{cid}/link_stats")
    assert links["num_records"] == 3 and links["num_pages"] == 1 and links["page"] == 0
    assert links["data"]["all_unclicked_links_recorded"] is True
    got = {r["url"]: (r["clicks_total"], r["clicks_unique"], r["clicks_unique_by_link"])
           for r in links["data"]["links"]}
    assert got == {"https://shop.example/sale": (2, 1, 1), "https://docs.example/Guide": (2, 1, 2),
                   "https://blog.example/": (0, 0, 0)}
    assert [r["url"] for r in links["data"]["links"]] == ["https://blog.example/", "https://docs.example/Guide",
                                                          "https://shop.example/sale"]  # case-insensitive url order
    one = await api(daemon, "GET", f"{V2}/campaigns/{cid}/link_stats",
                    params={"url": "https://DOCS.*", "per_page": "1"})
    assert one["num_records"] == 1 and one["data"]["links"][0]["url"] == "https://docs.example/Guide"
    paged = await api(daemon, "GET", f"{V2}/campaigns/{cid}/link_stats", params={"page": "2", "per_page": "1"})
    assert paged["num_pages"] == 3 and paged["data"]["links"][0]["url"] == "https://shop.example/sale"


async def _delivered(daemon, cid: int, n: int) -> bool:
    data = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]
    return data["stat_summary"]["accepted"] >= n


async def _opens(daemon, cid: int, opens: int, clicks: int) -> bool:
    s = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]["stat_summary"]
    return s["opens_total"] >= opens and s["clicks_total"] >= clicks + 1


def _cli(daemon, *args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "mtad", "campaigns", *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, timeout=30)


async def test_the_cli_pauses_and_resumes_a_sending_campaign(env):
    daemon, sink = env
    members = [f"cli{i:03d}@{DEST}" for i in range(150)]
    lid = await _list(daemon, "cli@example.com", members)
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns",
                     json=_campaign("cli", 144_000, "<p>hello</p>"))  # 40 per second: ~4 s in all
    cid = made["data"]["id"]
    await wait_for(lambda: sum(bool(sink.to(m)) for m in members) >= 5, timeout=10, what="5 copies")
    out = await asyncio.to_thread(_cli, daemon, "pause", str(cid))
    assert out.returncode == 0 and f"campaign {cid} (cli): paused; state sending" in out.stdout, out
    await asyncio.sleep(1.0)
    at_1s = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]["stat_summary"]["total_messages"]
    await asyncio.sleep(1.5)
    data = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]
    assert data["stat_summary"]["total_messages"] == at_1s < 150 and data["dispatch"]["paused"] is True
    out = await asyncio.to_thread(_cli, daemon, "resume", str(cid))
    assert out.returncode == 0 and "resumed" in out.stdout, out
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=20, what="every member")
    assert [len(sink.to(m)) for m in members] == [1] * 150
    missing = await asyncio.to_thread(_cli, daemon, "pause", "999999")
    assert missing.returncode == 1 and "no InboxFirst campaign 999999" in missing.stderr


async def test_an_ab_split_test_sends_the_winner_by_unique_opens_to_the_rest(env):
    daemon, sink = env
    members = [f"ab{i:02d}@{DEST}" for i in range(40)]
    lid = await _list(daemon, "ab@example.com", members)
    body = _campaign("ab", 0, "<p>x</p>")
    body["campaign"]["contents"] = [
        {"name": "Content A", "format": "html", "subject": "Subject A", "html": "<p>content A</p>"},
        {"name": "Content B", "format": "html", "subject": "Subject B", "html": "<p>content B</p>"}]
    body["campaign"]["dispatch_attributes"].update({
        "autowinner_enabled": True, "autowinner_percentage": 50, "autowinner_delay_amount": 6,
        "autowinner_delay_unit": "seconds", "autowinner_metric": "opens_unique"})
    made = (await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json=body))["data"]
    assert made["dispatch"]["autowinner_percentage"] == "50.0" and made["dispatch"]["autowinner_enabled"] is True
    assert made["automatic_winner_selection"] == {"state": None, "winning_content": None, "snapshots": []}
    cid = made["id"]

    async def ab_state(state: str) -> dict | None:
        data = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]
        return data if data["automatic_winner_selection"]["state"] == state else None
    delay = await wait_for(lambda: ab_state("decision_delay"), timeout=10, what="the decision delay")
    split = delay["stat_summary"]["total_messages"]
    assert 8 <= split <= 32 and delay["dispatch"]["state"] == "sending"
    await wait_for(lambda: sum(len(sink.to(m)) for m in members) >= split, timeout=10, what="the split copies")
    got = {m: sink.to(m)[0] for m in members if sink.to(m)}
    assert len(got) == split
    subjects = {m: str(email.message_from_bytes(r.data, policy=email.policy.default)["Subject"])
                for m, r in got.items()}
    b_copies = [m for m, s in subjects.items() if s == "Subject B"]
    assert b_copies and len(b_copies) < split  # both contents were tried
    for m in b_copies:  # every B reader opens; no A reader does
        msg = email.message_from_bytes(got[m].data, policy=email.policy.default)
        pixel = re.search(re.escape(daemon.api_url) + r"/o/[A-Za-z0-9_-]+", msg.get_body(("html",)).get_content())
        assert await _fetch(pixel.group(0)) == 200
    done = await wait_for(lambda: _state(daemon, cid, "finished"), timeout=20, what="the campaign to finish")
    aws = done["automatic_winner_selection"]
    assert aws["state"] == "finished" and aws["winning_content"]["name"] == "Content B"
    snaps = {s["content"]["name"]: (s["content"]["is_winner"], s["snapshot"]["opens_unique"],
                                    s["snapshot"]["messages_sent"]) for s in aws["snapshots"]}
    assert snaps == {"Content A": (False, 0, split - len(b_copies)), "Content B": (True, len(b_copies), len(b_copies))}
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=15, what="every member")
    await asyncio.sleep(0.3)
    assert [len(sink.to(m)) for m in members] == [1] * 40
    rest = [m for m in members if m not in got]
    assert rest and all(str(sink.to(m)[0].message["Subject"]) == "Subject B" for m in rest)
    assert done["stat_summary"]["total_messages"] == 40


async def test_a_url_domain_campaign_tracks_on_that_host(env):
    # dispatch.url_domain: the copies' click and open URLs are on that host (the tracking base URL's scheme and
    # port); a request arriving for that host (Host header) redirects and is counted for the campaign
    daemon, sink = env
    members = [f"u{i}@{DEST}" for i in range(2)]
    lid = await _list(daemon, "urldomain@example.com", members)
    bad = _campaign("bad url domain", 0, "<p>x</p>", url_domain="links.example.com/evil?x=")
    refused = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns", json=bad, expect=400)
    assert "url_domain" in refused["error_message"]
    html = '<p>Hi <a href="https://shop.example/sale">sale</a> <a href="%unsubscribe_url%">unsubscribe</a></p>'
    made = await api(daemon, "POST", f"{V2}/mailing_lists/{lid}/campaigns",
                     json=_campaign("url domain", 0, html, url_domain="Links.Example.com"))
    cid = made["data"]["id"]
    assert made["data"]["dispatch"]["url_domain_domain"] == "links.example.com"
    await wait_for(lambda: all(sink.to(m) for m in members), timeout=15, what="2 copies")
    await wait_for(lambda: _delivered(daemon, cid, 2), what="2 delivered")
    scheme, _, hostport = daemon.api_url.partition("://")
    port = hostport.rsplit(":", 1)[1]
    own = f"{scheme}://links.example.com:{port}"
    msg = email.message_from_bytes(sink.to(members[0])[0].data, policy=email.policy.default)
    body = msg.get_body(("html",)).get_content()
    clicks = re.findall(re.escape(own) + r"/c/[A-Za-z0-9_-]+", body)
    opens = re.findall(re.escape(own) + r"/o/[A-Za-z0-9_-]+", body)
    unsubscribes = re.findall(re.escape(own) + r"/u/[A-Za-z0-9_-]+", body)
    assert len(clicks) == 1 and len(opens) == 1 and len(unsubscribes) == 1, body
    assert hostport not in body  # no URL left on the tracking base URL's own host
    assert f"<{unsubscribes[0]}>" in str(msg["List-Unsubscribe"]) and hostport not in str(msg["List-Unsubscribe"])

    async def fetch(url: str, agent: str = "Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 "
                                           "Thunderbird/115.10.1") -> aiohttp.ClientResponse:
        path = url[len(own):]
        async with aiohttp.ClientSession(headers={"User-Agent": agent}) as s:
            async with s.get(daemon.api_url + path, headers={"Host": f"links.example.com:{port}"},
                             allow_redirects=False) as resp:
                await resp.read()
                return resp

    machine = await fetch(opens[0], "Mozilla/5.0")  # Apple Mail Privacy Protection's proxy: counted, not unique
    assert machine.status == 200
    opened = await fetch(opens[0])
    assert opened.status == 200 and opened.headers["Content-Type"] == "image/gif"
    clicked = await fetch(clicks[0])
    assert clicked.status == 302 and clicked.headers["Location"] == "https://shop.example/sale"
    await wait_for(lambda: _opens(daemon, cid, 2, 0), what="the opens and the click recorded")
    s = (await api(daemon, "GET", f"{V2}/campaigns/{cid}"))["data"]["stat_summary"]
    assert (s["opens_total"], s["opens_unique"], s["duplicate_opens"]) == (2, 1, 1)
    assert (s["clicks_total"], s["clicks_unique"]) == (1, 1)
    page = await fetch(unsubscribes[0])  # the unsubscribe page answers on that host too
    assert page.status == 200
    links = await api(daemon, "GET", f"{V2}/campaigns/{cid}/link_stats")
    assert [(r["url"], r["clicks_total"], r["clicks_unique"]) for r in links["data"]["links"]] == [
        ("https://shop.example/sale", 1, 1)]
