"""The tracking routes answered in front of the application (``api.server.FRONT``, ``api.tracking.Tracker.front``):
served by ``ApiRunner`` on a loopback socket, a click or an open goes straight to its handler (the application's
signals never see it), while any other path, method or shape is the application's (its 404 and 405 pages), and
an error of a handler is a page, never a traceback."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from mtad.api.server import ApiRunner
from mtad.api.tracking import TRACKING, TrackingContext, tracking_app
from mtad.base.keys import derive
from mtad.config.schema import TrackingConfig
from mtad.events.engagement import Clients
from mtad.mail.tracktoken import CLICK, OPEN, UNSUBSCRIBE, Sealer, Token
from mtad.store.engagement import TrackedMessage
from tests.support.daemon import free_port

MSG = TrackedMessage("0123456789ABCDEF012", "example.com", time.time() - 3600, {"headers": {}, "size": 10},
                     ("https://shop.example/a", "https://shop.example/b"))


class Store:
    def __init__(self):
        self.recorded = []

    async def tracked_message(self, queue_id):
        if queue_id == "BROKEN0123456789ABC":
            raise RuntimeError("a bug")
        return MSG if queue_id == MSG.queue_id else None

    async def record_engagements(self, items, now):
        self.recorded.extend(items)
        return (False,) * len(items)


async def test_tracking_paths_are_answered_in_front_of_the_application_and_the_rest_by_it():
    sealer = Sealer(derive("key-front-test-0123456789", "tracking"))
    store = Store()

    async def listed(*_):
        return False
    app = tracking_app(TrackingContext(store, sealer, sealer, Clients(TrackingConfig()), listed))
    seen = []

    async def prepared(request, response):  # the application's signal: not for the requests answered in front
        seen.append(request.path)
    app.on_response_prepare.append(prepared)
    runner = ApiRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    base = f"http://127.0.0.1:{port}"
    click = sealer.seal(Token(CLICK, MSG.queue_id, "a@dest.test", 1))
    pixel = sealer.seal(Token(OPEN, MSG.queue_id, "a@dest.test"))
    try:
        async with aiohttp.ClientSession() as session:
            async def get(path, method="GET"):
                async with session.request(method, base + path, allow_redirects=False) as resp:
                    return resp.status, resp.headers, await resp.read()
            status, headers, _ = await get(f"/c/{click}")
            assert (status, headers["Location"]) == (302, MSG.links[1])
            assert (await get(f"/c/{click}", "HEAD"))[0] == 302
            status, headers, body = await get(f"/o/{pixel}")
            assert status == 200 and headers["Content-Type"] == "image/gif" and body.startswith(b"GIF89a")
            assert (await get(f"/c/{pixel}"))[0] == 404  # a pixel's token is no link
            assert seen == []  # all of those answered in front
            await app[TRACKING].flush()
            assert [item.event.data["event"] for item in store.recorded] == ["clicked", "opened"]
            # the application's: other paths, methods, shapes
            status, _, body = await get("/elsewhere")
            assert status == 404 and b"Not Found" in body
            assert (await get(f"/c/{click}", "POST"))[0] == 405
            assert (await get(f"/c/{click}/more"))[0] == 404
            assert seen == ["/elsewhere", f"/c/{click}", f"/c/{click}/more"]
            # a handler's error: a page, no traceback
            status, _, body = await get("/u/" + sealer.seal(Token(UNSUBSCRIBE, "BROKEN0123456789ABC", "a@dest.test")))
            assert status == 500 and b"Internal error" in body and b"Traceback" not in body
    finally:
        await runner.cleanup()
