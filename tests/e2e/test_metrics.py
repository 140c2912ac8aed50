"""Prometheus metrics at /metrics: public, parseable, and moving with real traffic."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.events_support import World, running_world
from tests.support.api import api
from tests.support.wait import wait_for


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "metrics") as w:
        yield w


async def scrape(world: World) -> dict[tuple[str, tuple], float]:
    async with aiohttp.ClientSession() as session:  # no API key: /metrics is public
        async with session.get(world.api_url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: dict, name: str, **labels: str) -> float:
    """Sum over the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


async def test_metrics_are_exposed_and_move_with_traffic(world):
    before = await scrape(world)
    for name in ("mtad_queue_depth", "mtad_deliveries_total", "mtad_smtp_sessions_total", "mtad_smtp_sessions_active",
                 "mtad_smtp_messages_total", "mtad_forwards_total", "mtad_forward_queue_depth", "mtad_webhook_backlog",
                 "mtad_webhook_posts_total", "mtad_events_total", "mtad_store_commits_total",
                 "mtad_store_commit_seconds"):
        assert any(n == name for n, _ in before), name
    await api(world, "POST", "/v3/domains/example.com/webhooks",
              data=[("id", "temporary_fail"), ("url", world.receiver.url("metrics-fail"))])
    world.receiver.modes["metrics-fail"] = "fail"
    world.send(["ok@dest.test", "ok@yahoo.test", "soft@dest.test"], "Metrics")
    world.receive("someone@inbound.test")

    async def moved():
        now = await scrape(world)
        if value(now, "mtad_deliveries_total", outcome="deferred", provider="dest.test") >= 1 and \
                value(now, "mtad_forwards_total", outcome="delivered") >= 1 and \
                total(now, "mtad_webhook_posts_total") >= 1:
            return now
        return None
    after = await wait_for(moved, 15, "the metrics to move")
    # the provider is the shaping policy's name: a configured provider, or the destination domain itself
    assert value(after, "mtad_deliveries_total", outcome="delivered", provider="dest.test") == 1
    assert value(after, "mtad_deliveries_total", outcome="delivered", provider="yahoo") == 1
    assert value(after, "mtad_queue_depth", state="deferred", provider="dest.test") == 1  # soft@ awaits its retry
    assert value(after, "mtad_events_total", event="accepted") - value(before, "mtad_events_total", event="accepted") == 4
    assert value(after, "mtad_smtp_sessions_total") >= value(before, "mtad_smtp_sessions_total") + 2
    assert value(after, "mtad_smtp_messages_total", result="accepted") == \
        value(before, "mtad_smtp_messages_total", result="accepted") + 2
    assert value(after, "mtad_store_commits_total") > value(before, "mtad_store_commits_total")
    assert value(after, "mtad_store_commit_seconds") > 0
    # the failing webhook is retried: it sits in the backlog as deferred between attempts
    seen = await wait_for(lambda: scrape_backlog(world), 10, "a deferred webhook in the backlog")
    assert seen >= 1


async def scrape_backlog(world: World) -> float:
    return value(await scrape(world), "mtad_webhook_backlog", state="deferred")
