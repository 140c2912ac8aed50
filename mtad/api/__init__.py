"""The Mailgun-compatible HTTP API: one aiohttp application, its authentication and error shapes.

Conventions (Mailgun's): HTTP basic auth with user ``api`` and an API key (keys may be limited to
domains); errors are ``{"message": "..."}`` with Mailgun's status codes; no stack trace ever reaches a
client (unexpected errors are logged and answered 500 ``{"message": "Internal error"}``). Failed
authentication is rate-limited per client address. Each feature lives in its own module under
``mtad.api`` with a ``setup(app)`` that adds its routes. ``ApiContext`` carries the collaborators handlers
use, each named and typed (``context(request).store``, ``.ingress``, ...), built by mtad/app.py: no handler
reaches the ``App`` or looks a collaborator up by name.


Layer: may import ``mtad.ingress`` and everything below it (sends go through ingress's one commit path); only
``mtad.app`` and ``mtad.cli`` import it. Contract: every answer, errors included, is in Mailgun's JSON shape.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable, Callable, Sequence

from aiohttp import web

from mtad.config.schema import ApiConfig

if TYPE_CHECKING:
    from mtad.api.metrics import MetricsSources
    from mtad.config.schema import Config
    from mtad.inbound.routing import Routing
    from mtad.ingress.pipeline import Ingress
    from mtad.store.accounts import Accounts
    from mtad.store.engine import Store

log = logging.getLogger("mtad.api")

CONTEXT: web.AppKey["ApiContext"] = web.AppKey("mtad_context")


def hash_key(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    key_hash: str
    domains: frozenset[str] = frozenset()  # empty: all domains

    def allows(self, domain: str | None) -> bool:
        return not self.domains or domain is None or domain.lower() in self.domains


@dataclass(frozen=True)
class ApiContext:
    """What the handlers need, built by app.py. What changes while mtad runs (a reload, a domain made
    through the API) is a function returning it now, never a copy taken at start."""

    config: ApiConfig  # the api: section as started (listener, body size, auth failure limit)
    store: "Store"  # every read and write of durable state
    base_url: str  # the API's URL as clients see it: paging links, stored-message URLs
    keys: Callable[[], Sequence[ApiKey]]  # the API keys now (a reload replaces them)
    running_config: Callable[[], "Config"]  # the configuration now (a reload replaces it): config-file domains,
    # users, DKIM key files, delivery settings
    allowed_networks: tuple[str, ...]  # routing.allowed_networks as the HTTP client applies it (fixed at start)
    ingress: "Ingress"  # the send paths' way in: hostname, limits, directory, commit_many
    routing: "Routing"  # the route table: config routes, API routes replaced after a change
    accounts: Callable[[], "Accounts"]  # domains and SMTP credentials made through the API, now
    apply_accounts: Callable[["Accounts"], None]  # after a change: new directory and DKIM keys, no restart
    metrics: Callable[[], "MetricsSources"]  # what /metrics reads, as it is now
    signing_key: str = ""  # mtad's signing key (app.signing_key): the keys of links made for recipients derive from it
    tracking_base_url: str = ""  # the tracking URLs' base (tracking.base_url, else base_url): domains' CNAME target


def printable(text: str, limit: int = 300) -> str:
    """``text`` for a log line: CR, LF and other non-printable characters escaped (a request path cannot forge
    a log line), cut at ``limit`` characters."""
    if text.isprintable() and len(text) <= limit:
        return text
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:limit])
    return out + ("..." if len(text) > limit else "")


def error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


class AuthLimiter:
    """Failed authentications per client address in a sliding minute."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def blocked(self, client: str, now: float) -> bool:
        q = self._failures.get(client)
        if not q:
            return False
        while q and q[0] < now - self.window:
            q.popleft()
        if not q:
            self._failures.pop(client, None)
        return len(q) >= self.limit

    def fail(self, client: str, now: float) -> None:
        self._failures[client].append(now)


def _authenticate(request: web.Request, keys: Sequence[ApiKey]) -> ApiKey | None:
    header = request.headers.get("Authorization", "")
    scheme, _, blob = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, key = base64.b64decode(blob.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    if user != "api" or not key:
        return None
    digest = hash_key(key)
    for candidate in keys:
        if hmac.compare_digest(candidate.key_hash, digest):
            return candidate
    return None


PUBLIC_PATHS = {"/metrics", "/healthz"}
PUBLIC_PREFIXES = ("/list-unsubscribe/", "/c/", "/o/", "/u/")  # links in mail to recipients (lists,
# tracking): their signed tokens are the credential


def _middlewares(ctx: ApiContext, own_auth: tuple[str, ...] = ()) -> list:
    limiter = AuthLimiter(ctx.config.max_auth_failures)

    @web.middleware
    async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
                resp = error(exc.status, message)
                for name in ("Allow", "WWW-Authenticate", "Retry-After"):  # 405 keeps its Allow
                    if name in exc.headers:
                        resp.headers[name] = exc.headers[name]
                return resp
            raise
        except Exception:  # noqa: BLE001 - never a stack trace to the client
            log.exception("API error on %s %s", request.method, printable(request.path))
            return error(500, "Internal error")

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.path in PUBLIC_PATHS or request.path.startswith(PUBLIC_PREFIXES) or any(
                request.path == p or request.path.startswith(p + "/")
                for p in own_auth):  # the web panel signs its users in itself
            return await handler(request)
        client = request.remote or "?"
        now = time.monotonic()
        if limiter.blocked(client, now):
            return error(429, "Too many failed authentication attempts, try again later")
        key = _authenticate(request, ctx.keys())
        if key is None:
            limiter.fail(client, now)
            resp = error(401, "Forbidden")
            resp.headers["WWW-Authenticate"] = 'Basic realm="MG API"'
            return resp
        domain = request.match_info.get("domain") or request.match_info.get("name")
        if not key.allows(domain):
            return error(403, "Forbidden: this key may not use domain " + str(domain))
        request["api_key"] = key
        return await handler(request)

    return [errors, auth]


def create_app(ctx: ApiContext, features: list[Callable[[web.Application], None]],
               own_auth: tuple[str, ...] = ()) -> web.Application:
    """The API application; paths under the prefixes ``own_auth`` (the web panel's ``/ui``) skip the API key
    check: their handlers authenticate each request themselves."""
    app = web.Application(middlewares=_middlewares(ctx, own_auth), client_max_size=int(ctx.config.max_body_size))
    app[CONTEXT] = ctx

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})
    app.router.add_get("/healthz", healthz)
    for setup in features:
        setup(app)
    return app


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
