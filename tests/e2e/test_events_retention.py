"""Event retention: with a short ``store.event_retention`` old events disappear from the events API while
the daemon runs, the stats counters stay, and mail keeps flowing."""

from __future__ import annotations

import time

import pytest

from tests.e2e.events_support import World, running_world, events
from tests.support.api import api
from tests.support.wait import wait_for


def short_retention(cfg: dict, world: World) -> None:
    cfg["store"] = {"event_retention": "3s"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, certs):
    with running_world(tmp_path_factory, certs, "retention", short_retention) as w:
        yield w


async def test_old_events_are_pruned_and_counters_stay(world):
    world.send(["old@dest.test"], "Old news", variables={"blob": "x" * 600})  # stored once (events.variables)
    await wait_for(lambda: events(world, "example.com", event="delivered"), 10, "the first delivery")
    assert world.mtad.query("SELECT count(*) FROM event_variables") == [(1,)]
    sent_at = time.time()
    await wait_for(lambda: _none(world), 10, "the old events to be pruned")
    assert time.time() - sent_at >= 2  # not before their time
    world.send(["new@dest.test"], "New news")
    fresh = await wait_for(lambda: events(world, "example.com", event="delivered"), 10, "the new delivery")
    assert [e["recipient"] for e in fresh] == ["new@dest.test"]
    totals = await api(world, "GET", "/v3/example.com/stats/total", params={"event": "delivered", "duration": "1d"})
    assert sum(s["delivered"]["total"] for s in totals["stats"]) == 2  # counters are not pruned
    assert world.mtad.query("SELECT count(*) FROM events WHERE recipient = 'old@dest.test'") == [(0,)]
    assert world.mtad.query("SELECT count(*) FROM event_variables") == [(0,)]  # gone with the events naming them


async def _none(world: World) -> bool:
    return not await events(world, "example.com", recipient="old@dest.test")
