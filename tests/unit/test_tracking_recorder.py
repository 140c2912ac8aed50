"""The click endpoint's recording when the store refuses the write: the reader still gets the 302 (answered
before the commit, ``mtad.api.tracking``) and each lost click is logged at ERROR, never dropped silently. The
tracking application is served by aiohttp on a loopback socket; the store is a stand-in that refuses writes."""

from __future__ import annotations

import logging
import time

import aiohttp
from aiohttp.test_utils import TestServer

from mtad.api.tracking import TRACKING, TrackingContext, tracking_app
from mtad.base.errors import StoreError
from mtad.base.keys import derive
from mtad.config.schema import TrackingConfig
from mtad.events.engagement import Clients
from mtad.mail.tracktoken import CLICK, Sealer, Token
from mtad.store.engagement import TrackedMessage

MSG = TrackedMessage("0123456789ABCDEF012", "example.com", time.time() - 3600, {"headers": {}, "size": 10},
                     ("https://shop.example/a", "https://shop.example/b"))


class FullDisk:
    def __init__(self):
        self.writes = 0

    async def tracked_message(self, queue_id):
        return MSG if queue_id == MSG.queue_id else None

    async def record_engagements(self, items, now):
        self.writes += 1
        raise StoreError("database or disk is full")


async def test_a_click_the_store_refuses_is_answered_and_logged_as_lost(caplog):
    sealer = Sealer(derive("key-recorder-test-0123456789", "tracking"))
    store = FullDisk()

    async def listed(*_):
        return False
    app = tracking_app(TrackingContext(store, sealer, sealer, Clients(TrackingConfig()), listed))
    caplog.set_level(logging.ERROR, logger="mtad.tracking")
    async with TestServer(app) as server:
        async with aiohttp.ClientSession() as session:
            for i, rcpt in enumerate(("a@dest.test", "b@dest.test")):
                url = server.make_url(f"/c/{sealer.seal(Token(CLICK, MSG.queue_id, rcpt, i))}")
                async with session.get(url, allow_redirects=False) as resp:
                    assert (resp.status, resp.headers["Location"]) == (302, MSG.links[i])
        await app[TRACKING].flush()
    assert store.writes >= 1
    lost = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("clicked of <a@dest.test> not recorded: database or disk is full" in m for m in lost), lost
    assert any("clicked of <b@dest.test> not recorded" in m for m in lost), lost
