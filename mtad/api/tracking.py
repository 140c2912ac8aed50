"""The tracking endpoints: clicks (``/c/{token}``), opens (``/o/{token}``) and unsubscribes (``/u/{token}``).

Served without authentication (their tokens are the capability: ``mtad.mail.tracktoken``), on the API listener
under the API's public URL, or on a listener of their own (``tracking.listen``; ``tracking_app``).

- ``GET /c/{token}``: ``302`` to the link the token names in its message's link list, after recording
  ``clicked``. A ``HEAD`` (what link checkers send) redirects without recording.
- ``GET /o/{token}``: a 1x1 transparent GIF, never cached, after recording ``opened``.
- ``GET /u/{token}``: a small confirmation page (the address, escaped, and one button); ``POST /u/{token}``
  (that button, or the RFC 8058 one-click body ``List-Unsubscribe=One-Click`` a mail program sends) puts the
  recipient on the sending domain's unsubscribes list (every message, or the message's tags for a tag
  unsubscribe link) and records ``unsubscribed``, in one transaction; the next message to that address is
  suppressed. Already unsubscribed: the same answer, no second event.

On either listener they are answered in front of the application (``Tracker.front``, ``api.server.FRONT``):
a tracking path goes straight to its handler, without the router, middlewares and signals, and its errors are
the tracking pages (HTML), never the API's JSON shape; every other request is the application's.

The client address of an event (``ip``, geolocation, machine detection) is the TCP peer's, or, when the peer is a
reverse proxy of ``tracking.trusted_proxies``, the one its ``X-Forwarded-For`` names (``net.forwarded``).

A token that is not one of mtad's (forged, altered, of another kind or purpose): ``404``, nothing recorded, no
redirect. A token of a message whose tracking data is gone (older than ``tracking.retention``): ``410`` with a
page saying the link expired. Events are written through the store's group commit (``record_engagements``:
event, counters, webhook rows, first-open/click row, suppression together), the opens and clicks of a burst in
one write every ``WRITE_EVERY`` (50 ms) at most (``base.coalesce``): a commit costs about a millisecond of
CPU whatever it holds (SQLite writes the same index and counter pages for one click as for hundreds), so under
a steady flow of clicks batching them is what keeps their cost down, while a click after a quiet spell is
written at once. Each one's rows (event JSON, counter, index and campaign keys: ``store.events.prepare``) are
made as it is answered, so that the store's writer thread, whose Python holds the GIL and stalls the event
loop, only stages them: a batch of 150 clicks held it about 4 ms longer when it made them all itself.

An open or a click is answered as soon as its event is built and queued for that write, not after the commit:
the reader's browser waits for nothing but mtad's own work (a commit's fsync alone has a tail of several ms,
which is no part of following a link). While more than ``MAX_UNCOMMITTED`` opens and clicks wait for their
commit, each further one is answered only after its own commit (back-pressure: an overloaded store slows the
answers, memory stays bounded, nothing is dropped). A stop (SIGTERM) writes every queued one before the store
closes (``flush``, on the application's cleanup). What a crash (SIGKILL, power loss) can lose: the opens and
clicks answered but not yet committed, at most ``MAX_UNCOMMITTED``; when the store keeps up, those answered in
the last ``WRITE_EVERY`` plus the commit in flight (50-60 ms). A store that refuses the write (disk full) loses
those opens or clicks, each logged at ERROR, but the reader still got the link or image. An unsubscribe is
answered only after its commit (503 when the store refuses it): it changes who gets mail. The first open and
the first click of a message by a recipient are recorded as unique (``flags.is-unique``);
a machine's (``flags.is-machine``: Apple Mail Privacy Protection, link scanners) never is, so the first person's
is.
"""

from __future__ import annotations

import asyncio
import base64
import html
import inspect
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Awaitable, Callable
from urllib.parse import quote

from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy

from mtad.api.lean import LeanAnswer
from mtad.api.server import FRONT, LEAN, Handler
from mtad.base.coalesce import Coalescer
from mtad.base.errors import StoreError
from mtad.events import engagement as engagement_mod
from mtad.mail import tracktoken
from mtad.net.forwarded import ClientAddress
from mtad.store.engagement import Engagement, EngagementStore, TrackedMessage
from mtad.store.events import NewEvent, prepare
from mtad.store.suppressions import Suppression

log = logging.getLogger("mtad.tracking")

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")  # 1x1 transparent GIF
PATHS = ("/c/", "/o/", "/u/")  # public: no API key (api._middlewares)
_NO_CACHE = {"Cache-Control": "no-store, no-cache, must-revalidate, max-age=0", "Pragma": "no-cache",
             "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}
_CACHE_SIZE = 10_000
MAX_UNCOMMITTED = 2048  # opens and clicks answered before their commit, at most (the crash window)
WRITE_EVERY = 0.05  # seconds between store writes of opens and clicks: those answered meanwhile share one commit
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"  # reserved and already-escaped characters stay; spaces, controls, non-ASCII: %XX


@dataclass(frozen=True)
class TrackingContext:
    """What the endpoints need, built by app.py."""

    store: EngagementStore
    tracking: tracktoken.Sealer  # click and open tokens
    unsubscribe: tracktoken.Sealer  # unsubscribe tokens
    clients: engagement_mod.Clients
    suppressed: Callable[[str, str, tuple[str, ...]], Awaitable[bool]]  # (domain, address, tags): listed already
    retention: float = 90 * 86400.0  # tracking.retention: older messages' URLs answer 410 (even when cached)
    client_address: ClientAddress = ClientAddress()  # tracking.trusted_proxies: whose X-Forwarded-For is read


TRACKING: web.AppKey["Tracker"] = web.AppKey("mtad_tracking")


class _Cached:
    """A tracked message as the endpoints keep it: its events' shared parts and its links' redirect headers,
    each made once."""

    __slots__ = ("tracked", "events", "_redirects", "_lean")

    def __init__(self, tracked: TrackedMessage):
        self.tracked = tracked
        self.events = engagement_mod.MessageEvents(tracked)
        self._redirects: dict[int, CIMultiDictProxy[str]] = {}
        self._lean: dict[int, tuple[bytes, bytes]] = {}

    def lean_redirect(self, index: int) -> tuple[bytes, bytes]:
        """The 302 to link ``index`` as ``api.lean`` writes it (the headers of ``redirect``)."""
        found = self._lean.get(index)
        if found is None:
            found = self._lean[index] = (_lean_head(302, "Found", self.redirect(index).items(), 0), b"")
        return found

    def redirect(self, index: int) -> CIMultiDictProxy[str]:
        """The headers of the 302 to link ``index`` (shared by its clicks: read-only)."""
        found = self._redirects.get(index)
        if found is None:
            location = quote(self.tracked.links[index], safe=_URL_SAFE)
            found = self._redirects[index] = CIMultiDictProxy(CIMultiDict({**_NO_CACHE, "Location": location}))
        return found


class Tracker:
    """The handlers, with a cache of tracked messages (they never change once written)."""

    def __init__(self, ctx: TrackingContext):
        self.ctx = ctx
        self._messages: OrderedDict[str, _Cached] = OrderedDict()
        # the opens and clicks answered within WRITE_EVERY (or while a write runs) share one store write
        self._recorder: Coalescer[Engagement, bool] = Coalescer(self._write, max_batch=512, interval=WRITE_EVERY)
        self._uncommitted = 0  # opens and clicks queued or being written

    async def _cached(self, queue_id: str) -> _Cached | None:
        found = self._messages.get(queue_id)
        if found is not None:
            if found.tracked.created_at < time.time() - self.ctx.retention:
                del self._messages[queue_id]
                return None
            self._messages.move_to_end(queue_id)
            return found
        tracked = await self.ctx.store.tracked_message(queue_id)
        if tracked is None or tracked.created_at < time.time() - self.ctx.retention:
            return None  # never tracked, or pruned, or not pruned yet
        found = self._messages[queue_id] = _Cached(tracked)
        if len(self._messages) > _CACHE_SIZE:
            self._messages.popitem(last=False)
        return found

    def _cached_now(self, queue_id: str) -> _Cached | None:
        """The message when it is in the cache and still tracked (``_cached`` without a store read), else None."""
        found = self._messages.get(queue_id)
        if found is None or found.tracked.created_at < time.time() - self.ctx.retention:
            return None
        self._messages.move_to_end(queue_id)
        return found

    async def _message(self, queue_id: str) -> TrackedMessage | None:
        found = await self._cached(queue_id)
        return found.tracked if found is not None else None

    def _fetch(self, request: web.BaseRequest) -> engagement_mod.Fetch:
        return self._fetch_of(request.remote or "", request.headers)

    def _fetch_of(self, remote: str, headers: CIMultiDict | CIMultiDictProxy) -> engagement_mod.Fetch:
        ip = remote
        if self.ctx.client_address.trusted:  # else X-Forwarded-For is never read (net.forwarded)
            ip = self.ctx.client_address.of(ip, tuple(headers.getall("X-Forwarded-For", ())))
        return engagement_mod.Fetch(ip, headers.get("User-Agent", "")[:1024])

    async def _record(self, kind: str, cached: _Cached, token: tracktoken.Token, request: web.BaseRequest,
                      url: str | None = None) -> None:
        future = self._queue(kind, cached, token, self._fetch(request), url)
        if future is not None:  # back-pressure: this one is answered after its commit
            await asyncio.wait((future,))  # (not cancelled with the request: it is written all the same)

    def _queue(self, kind: str, cached: _Cached, token: tracktoken.Token, fetch: engagement_mod.Fetch,
               url: str | None = None) -> asyncio.Future | None:
        """Queue an open or click for the next store write; its future when the answer must wait for its commit
        (more than ``MAX_UNCOMMITTED`` wait), else None."""
        tracked = cached.tracked
        event = engagement_mod.engagement_event(kind, tracked, token.recipient, time.time(), fetch,
                                                self.ctx.clients, url=url, events=cached.events)
        human = not event["flags"]["is-machine"]  # a machine's fetch is never the unique one (events.engagement)
        future = self._recorder.enqueue(Engagement(  # the unique variant is made by the store if it is the first
            NewEvent(tracked.domain, event), (tracked.queue_id, token.recipient.lower(), kind) if human else None,
            prepared=prepare(tracked.domain, event)))  # its rows now: not all of a batch's on the writer thread
        self._uncommitted += 1
        return future if self._uncommitted > MAX_UNCOMMITTED else None

    async def _write(self, items: list[Engagement]) -> tuple[bool, ...]:
        """One store write for a batch of opens and clicks; a failure is logged for each (the readers already
        have their links or images), never raised."""
        try:
            return await self.ctx.store.record_engagements(items, time.time())
        except Exception as exc:  # noqa: BLE001 - logged per event below; a bug's traceback once
            if not isinstance(exc, StoreError):
                log.exception("tracking: recording %d opens and clicks failed", len(items))
            for item in items:
                log.error("%s: %s of <%s> not recorded: %s", item.event.data.get("storage", {}).get("key"),
                          item.event.data.get("event"), item.event.data.get("recipient"), exc)
            return (False,) * len(items)
        finally:
            self._uncommitted -= len(items)

    async def flush(self, _app: web.Application | None = None) -> None:
        """Wait until every open and click answered so far is written (or its failure logged)."""
        while not self._recorder.idle:
            await asyncio.sleep(0.01)

    def front(self, fallback: Handler) -> Handler:
        """The request handler of a listener serving the tracking routes (``api.server.FRONT``): a tracking
        path (``/c/{token}``, ``/o/{token}``, ``/u/{token}`` with a method its route has) goes straight to its
        handler, without the application's router, middlewares and signals (their share of a click's CPU is
        about a fifth); anything else, and a request that waits for ``100 Continue``, to ``fallback`` (the
        application: its router answers 404 and 405 as before). Errors answer the tracking pages (never a
        stack trace), on the API listener too."""
        routes: dict[tuple[str, str], Handler] = {
            ("GET", "/c/"): self.click, ("HEAD", "/c/"): self.click, ("GET", "/o/"): self.open,
            ("HEAD", "/o/"): self.open, ("GET", "/u/"): self.unsubscribe_page,
            ("HEAD", "/u/"): self.unsubscribe_page, ("POST", "/u/"): self.unsubscribe}

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            path = request.path
            handler = routes.get((request.method, path[:3]))
            if handler is None or len(path) == 3 or "/" in path[3:] or hdrs.EXPECT in request.headers:
                return await fallback(request)
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - never a stack trace to the client
                return _error_page(request, exc)
        return handle

    def lean(self, method: str, path: str, headers: CIMultiDict, remote: str) -> LeanAnswer | Awaitable[LeanAnswer]:
        """``api.lean``'s handler (``api.server.LEAN``): the whole answer to a ``GET`` or ``HEAD`` of a good click
        or open token, as ``click`` and ``open`` give it; None for anything else, before recording anything (the
        application answers it: 404 and 410 pages, other paths). Answered at once, without a task, when the
        message is cached and the store keeps up; else awaitable."""
        if not path.startswith(("/c/", "/o/")) or "/" in path[3:] or len(path) == 3:
            return None
        click = path.startswith("/c/")
        token = self.ctx.tracking.open(path[3:])
        if token is None or token.kind != (tracktoken.CLICK if click else tracktoken.OPEN):
            return None
        cached = self._cached_now(token.queue_id)
        if cached is None:
            return self._lean_later(method, click, token, headers, remote)
        return self._lean_answer(method, click, token, cached, headers, remote)

    async def _lean_later(self, method: str, click: bool, token: tracktoken.Token, headers: CIMultiDict,
                          remote: str) -> LeanAnswer:
        cached = await self._cached(token.queue_id)
        if cached is None:
            return None
        answer = self._lean_answer(method, click, token, cached, headers, remote)
        return await answer if inspect.isawaitable(answer) else answer

    def _lean_answer(self, method: str, click: bool, token: tracktoken.Token, cached: _Cached,
                     headers: CIMultiDict, remote: str) -> LeanAnswer | Awaitable[LeanAnswer]:
        if click and token.index >= len(cached.tracked.links):
            return None
        answer = cached.lean_redirect(token.index) if click else \
            (_LEAN_PIXEL if method == "GET" else (_LEAN_PIXEL[0], b""))
        if method != "GET":
            return answer
        future = self._queue("clicked" if click else "opened", cached, token, self._fetch_of(remote, headers),
                             cached.tracked.links[token.index] if click else None)
        return answer if future is None else _after(future, answer)

    # --- clicks and opens -------------------------------------------------------------------------------
    async def click(self, request: web.BaseRequest) -> web.StreamResponse:
        token = self.ctx.tracking.open(request.path[3:])  # /c/{token}
        if token is None or token.kind != tracktoken.CLICK:
            return _page(404, "Not found", "This is not a link mtad made.")
        cached = await self._cached(token.queue_id)
        if cached is None:
            return _expired()
        if token.index >= len(cached.tracked.links):
            return _page(404, "Not found", "This is not a link mtad made.")
        if request.method == "GET":
            await self._record("clicked", cached, token, request, cached.tracked.links[token.index])
        return web.Response(status=302, headers=cached.redirect(token.index))

    async def open(self, request: web.BaseRequest) -> web.StreamResponse:
        token = self.ctx.tracking.open(request.path[3:])  # /o/{token}
        if token is None or token.kind != tracktoken.OPEN:
            return _page(404, "Not found", "This is not an image mtad made.")
        cached = await self._cached(token.queue_id)
        if cached is None:
            return _expired()
        if request.method == "GET":
            await self._record("opened", cached, token, request)
        return web.Response(body=PIXEL, content_type="image/gif", headers=_NO_CACHE)

    # --- unsubscribes -----------------------------------------------------------------------------------
    async def _unsubscribe_token(self, request: web.BaseRequest) -> tuple[tracktoken.Token, TrackedMessage] | web.Response:
        token = self.ctx.unsubscribe.open(request.path[3:])  # /u/{token}
        if token is None or token.kind not in (tracktoken.UNSUBSCRIBE, tracktoken.TAG_UNSUBSCRIBE):
            return _page(404, "Not found", "This is not an unsubscribe link mtad made.")
        tracked = await self._message(token.queue_id)
        if tracked is None:
            return _expired()
        return token, tracked

    @staticmethod
    def _tags(token: tracktoken.Token, tracked: TrackedMessage) -> tuple[str, ...]:
        tags = tuple((tracked.data.get("options") or {}).get("tags") or ())
        return tags if token.kind == tracktoken.TAG_UNSUBSCRIBE and tags else ("*",)

    async def unsubscribe_page(self, request: web.BaseRequest) -> web.StreamResponse:
        found = await self._unsubscribe_token(request)
        if isinstance(found, web.Response):
            return found
        token, tracked = found
        tags = self._tags(token, tracked)
        what = f"messages from {tracked.domain}" if tags == ("*",) else \
            f"messages from {tracked.domain} tagged {', '.join(tags)}"
        body = (f"<p>Unsubscribe <strong>{html.escape(token.recipient)}</strong> from {html.escape(what)}?</p>"
                '<form method="post"><input type="hidden" name="confirm" value="yes">'
                '<button type="submit">Unsubscribe</button></form>')
        return _page(200, "Unsubscribe", body, raw=True)

    async def unsubscribe(self, request: web.BaseRequest) -> web.StreamResponse:
        found = await self._unsubscribe_token(request)
        if isinstance(found, web.Response):
            return found
        token, tracked = found
        form = await request.post() if request.content_type in ("application/x-www-form-urlencoded",
                                                                "multipart/form-data") else {}
        one_click = form.get("List-Unsubscribe") == "One-Click"
        if not one_click and form.get("confirm") != "yes":
            return _page(400, "Not unsubscribed", "Use the button of the unsubscribe page.")
        tags = self._tags(token, tracked)
        address = token.recipient.lower()
        if not await self.ctx.suppressed(tracked.domain, address, tags):
            now = time.time()
            event = engagement_mod.engagement_event("unsubscribed", tracked, token.recipient, now,
                                                    self._fetch(request), self.ctx.clients)
            try:
                await self.ctx.store.record_engagements([Engagement(
                    NewEvent(tracked.domain, event),
                    suppression=Suppression("unsubscribes", address, now, tags=tags))], now)
            except StoreError as exc:
                log.error("%s: unsubscribe of <%s> not recorded: %s", tracked.queue_id, token.recipient, exc)
                return _page(503, "Not unsubscribed", "Please try again in a few minutes.")
        if one_click:
            return web.Response(text="Unsubscribed\n", headers=_NO_CACHE)
        return _page(200, "Unsubscribed", f"{html.escape(token.recipient)} will get no more of these messages.")


def _error_page(request: web.BaseRequest, exc: Exception) -> web.StreamResponse:
    """The page for an exception of a tracking handler (re-raised: a redirect's); never a stack trace."""
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _page(exc.status, exc.reason or "Error", exc.reason or "Error")
    log.error("tracking error on %s", request.method, exc_info=exc)
    return _page(500, "Error", "Internal error")


def _page(status: int, title: str, text: str, raw: bool = False) -> web.Response:
    body = text if raw else f"<p>{html.escape(text)}</p>"
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><meta name="robots" content="noindex">'
            f'</head><body style="font-family:sans-serif;max-width:36em;margin:3em auto">'
            f"<h1>{html.escape(title)}</h1>{body}</body></html>")
    headers = {**_NO_CACHE, "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'"}
    return web.Response(status=status, text=page, content_type="text/html", headers=headers)


def _lean_head(status: int, reason: str, headers, length: int) -> bytes:
    """A response's status line and header lines for ``api.lean`` (the values are ASCII: quoted URLs, constants)."""
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + f"\r\nContent-Length: {length}\r\n").encode("ascii")


_LEAN_PIXEL = (_lean_head(200, "OK", [("Content-Type", "image/gif"), *_NO_CACHE.items()], len(PIXEL)), PIXEL)


async def _after(future: asyncio.Future, answer: LeanAnswer) -> LeanAnswer:
    """``answer`` once ``future`` (its event's commit) is done: back-pressure (``MAX_UNCOMMITTED``)."""
    await asyncio.wait((future,))
    return answer


def _expired() -> web.Response:
    return _page(410, "Link expired", "This link has expired: its message is no longer tracked.")


def add_routes(app: web.Application, ctx: TrackingContext) -> None:
    """The tracking routes on ``app`` (the API's, or ``tracking_app``'s), answered in front of the application
    (``front``) when it is served by ``api.server.ApiRunner``, by its router otherwise."""
    tracker = app[TRACKING] = Tracker(ctx)
    app[FRONT] = tracker.front
    app[LEAN] = tracker.lean
    app.on_cleanup.append(tracker.flush)  # after the last request: the queued opens and clicks are written
    app.router.add_get("/c/{token}", tracker.click)
    app.router.add_get("/o/{token}", tracker.open)
    app.router.add_get("/u/{token}", tracker.unsubscribe_page)
    app.router.add_post("/u/{token}", tracker.unsubscribe)


def tracking_app(ctx: TrackingContext) -> web.Application:
    """An application serving only the tracking routes (``tracking.listen``); unexpected errors answer a plain
    500 page, never a traceback."""
    @web.middleware
    async def errors(request: web.Request, handler):
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - never a stack trace to the client
            return _error_page(request, exc)
    app = web.Application(middlewares=[errors], client_max_size=64 * 1024)
    add_routes(app, ctx)
    return app
