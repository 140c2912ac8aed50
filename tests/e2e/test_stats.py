"""Stats (seed 001) read from the counters kept as events are written: totals equal to the events that real
mail produced, per resolution and per tag; account totals, filter and group by; aggregates; tags."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from tests.e2e.events_support import World, events
from tests.support.api import api
from tests.support.wait import wait_for

EVENTS = [("event", "accepted"), ("event", "delivered"), ("event", "failed")]


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    w = World(tmp_path_factory.mktemp("stats"), certs)
    problems: list[str] = []
    try:
        w.send(["ok1@dest.test", "ok2@yahoo.test", "bad1@dest.test"], "Tagged news", tags=("news",))
        w.send(["soft1@dest.test"], "Tagged alerts", tags=("alerts",))
        w.send(["ok3@dest.test"], "Untagged")
        w.send(["ok4@yahoo.test"], "Other", sender="app@other.org", login="app@other.org")
        w.receive("someone@inbound.test")
        yield w
    finally:
        problems = w.close()
    assert not problems, "\n".join(problems)


async def settled(world: World) -> dict[str, list[dict]]:
    async def check():
        got = {d: await events(world, d) for d in ("example.com", "other.org", "inbound.test")}
        kinds = Counter(e["event"] for e in got["example.com"])
        if kinds == {"accepted": 5, "delivered": 3, "failed": 2} and len(got["other.org"]) == 2 \
                and len(got["inbound.test"]) == 2:
            return got
        return None
    return await wait_for(check, 20, "the module's events")


def summed(stats: list[dict]) -> dict:
    """Adds up the buckets of a stats answer, leaf by leaf."""
    out: dict = {}

    def add(into: dict, item: dict) -> None:
        for key, value in item.items():
            if isinstance(value, dict):
                add(into.setdefault(key, {}), value)
            elif isinstance(value, int):
                into[key] = into.get(key, 0) + value
    for item in stats:
        add(out, {k: v for k, v in item.items() if k != "time"})
    return out


def expected_from(evts: list[dict]) -> dict:
    kinds = Counter(e["event"] for e in evts)
    perm = Counter(e.get("reason") for e in evts if e["event"] == "failed" and e.get("severity") == "permanent")
    return {"accepted": kinds["accepted"], "delivered": kinds["delivered"],
            "temporary": sum(1 for e in evts if e["event"] == "failed" and e.get("severity") == "temporary"),
            "permanent": sum(perm.values()), "bounce": perm["bounce"],
            "outgoing": sum(1 for e in evts if e["event"] == "accepted" and e["flags"]["is-authenticated"]),
            "smtp": sum(1 for e in evts if e["event"] == "delivered" and e["envelope"]["transport"] == "smtp")}


def actual(total: dict) -> dict:
    return {"accepted": total["accepted"]["total"], "delivered": total["delivered"]["total"],
            "temporary": total["failed"]["temporary"]["total"], "permanent": total["failed"]["permanent"]["total"],
            "bounce": total["failed"]["permanent"]["bounce"], "outgoing": total["accepted"]["outgoing"],
            "smtp": total["delivered"]["smtp"]}


@pytest.mark.parametrize("resolution, window", [("hour", "3h"), ("day", "2d"), ("month", "1m")])
async def test_domain_totals_equal_the_events_per_resolution(world, resolution, window):
    got = await settled(world)
    answer = await api(world, "GET", "/v3/example.com/stats/total",
                       params=EVENTS + [("resolution", resolution), ("duration", window)])
    assert answer["resolution"] == resolution and answer["start"].endswith("UTC") and answer["end"].endswith("UTC")
    assert len(answer["stats"]) >= 1 and all("time" in s for s in answer["stats"])
    assert actual(summed(answer["stats"])) == expected_from(got["example.com"])
    if resolution == "hour":
        assert len(answer["stats"]) in (3, 4)  # every bucket, zeros included


async def test_tag_stats_and_tags(world):
    got = await settled(world)
    news = [e for e in got["example.com"] if "news" in e["tags"]]
    answer = await api(world, "GET", "/v3/example.com/tags/news/stats", params=EVENTS + [("duration", "1d")])
    assert answer["tag"] == "news"
    assert actual(summed(answer["stats"])) == expected_from(news)
    tags = await api(world, "GET", "/v3/example.com/tags")
    assert [t["tag"] for t in tags["items"]] == ["alerts", "news"]
    assert all(t["first-seen"].endswith("Z") and "last-seen" in t for t in tags["items"])
    page = await api(world, "GET", "/v3/example.com/tags", params={"limit": "1"})
    assert [t["tag"] for t in page["items"]] == ["alerts"]
    assert [t["tag"] for t in (await api(world, "GET", page["paging"]["next"]))["items"]] == ["news"]
    await api(world, "PUT", "/v3/example.com/tags/news", data={"description": "Weekly news"})
    assert (await api(world, "GET", "/v3/example.com/tags/news"))["description"] == "Weekly news"
    await api(world, "GET", "/v3/example.com/tags/none", expect=404)


async def test_account_totals_filter_and_group(world):
    got = await settled(world)
    every = [e for evts in got.values() for e in evts]
    total = await api(world, "GET", "/v3/stats/total", params=EVENTS + [("duration", "1d"), ("resolution", "day")])
    assert actual(summed(total["stats"])) == expected_from(every)
    incoming = summed(total["stats"])["accepted"]["incoming"]
    assert incoming == 1 and summed(total["stats"])["delivered"]["http"] == 1
    by_domain = await api(world, "GET", "/v3/stats/filter", params=EVENTS + [("group", "domain"), ("duration", "1d")])
    assert {s["domain"]: s["accepted"]["total"] for s in by_domain["stats"]} == \
        {"example.com": 5, "other.org": 1, "inbound.test": 1}
    by_tag = await api(world, "GET", "/v3/stats/filter",
                       params=EVENTS + [("group", "tag"), ("filter", "domain:example.com"), ("duration", "1d")])
    assert {s["tag"]: s["accepted"]["total"] for s in by_tag["stats"]} == {"news": 3, "alerts": 1}
    by_provider = await api(world, "GET", "/v3/stats/filter",
                            params=EVENTS + [("group", "provider"), ("filter", "domain:example.com"), ("duration", "1d")])
    assert {s["provider"]: s["delivered"]["total"] for s in by_provider["stats"]} == {"dest.test": 2, "yahoo.test": 1}
    by_day = await api(world, "GET", "/v3/stats/filter", params=EVENTS + [("group", "day"), ("duration", "2d")])
    assert actual(summed(by_day["stats"])) == expected_from(every)
    domains = await api(world, "GET", "/v3/stats/total/domains",
                        params=EVENTS + [("timestamp", str(int(time.time()))), ("resolution", "month")])
    assert {s["domain"]: s["delivered"]["total"] for s in domains["stats"]} == \
        {"example.com": 3, "other.org": 1, "inbound.test": 1}
    providers = (await api(world, "GET", "/v3/example.com/aggregates/providers"))["providers"]
    assert providers["dest.test"]["delivered"] == 2 and providers["dest.test"]["bounced"] == 1
    assert providers["yahoo.test"]["accepted"] == 1
    assert (await api(world, "GET", "/v3/example.com/aggregates/countries")) == {"countries": {}}


@pytest.mark.parametrize("path, params", [
    ("/v3/stats/total", []),
    ("/v3/stats/total", [("event", "bounced")]),
    ("/v3/example.com/stats/total", EVENTS[:1] + [("resolution", "week")]),
    ("/v3/stats/filter", EVENTS[:1] + [("group", "planet")]),
    ("/v3/stats/total/domains", EVENTS[:1]),
])
async def test_bad_stats_queries_are_refused(world, path, params):
    assert (await api(world, "GET", path, params=params, expect=400))["message"]


async def test_deleting_a_tag(world):
    await settled(world)
    assert (await api(world, "DELETE", "/v3/example.com/tags/alerts")) == {"message": "Tag deleted"}
    await api(world, "GET", "/v3/example.com/tags/alerts", expect=404)
