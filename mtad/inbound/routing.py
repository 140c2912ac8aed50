"""Inbound routing at acceptance: which recipients are kept, and the work each one creates.

``Routing`` holds the compiled route table (config routes and API routes together, swapped as a
whole when routes change) and answers ingress: ``would_handle`` at RCPT time, ``forwards_for`` at the
end of DATA. Forward URLs become HTTP work rows, forward addresses become outbound deliveries with an
SRS envelope sender, store() becomes a stored-message row. Bounces to our SRS addresses are accepted
and returned to the original sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Awaitable, Callable, Iterable

from mtad.mail import headers as headers_mod
from mtad.mail import srs
from mtad.base.errors import ConfigError, RouteSyntaxError
from mtad.config.schema import Config, RoutingConfig
from mtad.inbound.router import Route, RouteTable, compile_route
from mtad.store.queue import ForwardRow
from mtad.store.routes import RouteRecord

log = logging.getLogger("mtad.inbound")


def route_of(record: RouteRecord) -> Route:
    """The route an API route record holds (compiled when a table is built)."""
    return Route(record.id, record.priority, record.description, record.expression, tuple(record.actions))


def config_routes(cfg: Config) -> list[Route]:
    """The config file's routes (an id made from its content for a route without one)."""
    routes = []
    for r in cfg.routing.routes:
        rid = r.id or hashlib.sha1(f"{r.priority}|{r.expression}|{r.actions}".encode()).hexdigest()[:24]
        routes.append(Route(rid, r.priority, r.description, r.expression, tuple(r.actions)))
    return routes


def record_of(route: Route, created_at: float) -> RouteRecord:
    """The record the store keeps of an API route."""
    return RouteRecord(route.id, route.priority, route.description, route.expression, tuple(route.actions),
                       created_at)


def check_config_routes(routing: RoutingConfig, path: str = "routing") -> None:
    """ConfigError (``routing.routes[N]: ...`` with the part and column at fault) unless every route of the config
    file compiles with the parser the daemon uses, so ``mtad check-config``, start and reload agree."""
    for i, r in enumerate(routing.routes):
        try:
            compile_route(Route(r.id, r.priority, r.description, r.expression, tuple(r.actions)),
                          allow_backtracking=routing.allow_backtracking_regex)
        except RouteSyntaxError as exc:
            raise ConfigError(f"{path}.routes[{i}]", str(exc)) from None


def is_url(destination: str) -> bool:
    return destination.lower().startswith(("http://", "https://"))


class Routing:
    """The ``InboundRouter`` of ingress."""

    def __init__(self, routes: Iterable[Route], *, srs_key: bytes, use_srs: bool = True,
                 allow_backtracking: bool = False):
        self.srs_key = srs_key
        self.use_srs = use_srs
        self.allow_backtracking = allow_backtracking
        self.config_routes: list[Route] = list(routes)
        self.api_routes: list[Route] = []
        self.table = RouteTable(self.config_routes, allow_backtracking=allow_backtracking)
        self._reloading = asyncio.Lock()
        self._api_loaded: list[Route] | None = None  # what the last reload_api loaded (before skipping bad ones)

    def build(self, config_routes: Iterable[Route], api_routes: Iterable[Route]) -> RouteTable:
        """A table of the config file's routes then the API's (raises RouteSyntaxError/ConfigError)."""
        return RouteTable([*config_routes, *api_routes], allow_backtracking=self.allow_backtracking)

    def replace(self, routes: Iterable[Route]) -> None:
        """Swap in new config-file routes (reload); the API's routes stay."""
        routes = list(routes)
        self.table = self.build(routes, self.api_routes)
        self.config_routes = routes

    def replace_api(self, routes: Iterable[Route]) -> None:
        """Swap in the API's routes (changes take effect without a restart); config routes stay."""
        routes = list(routes)
        self.table = self.build(self.config_routes, routes)
        self.api_routes = routes

    async def replace_async(self, routes: Iterable[Route]) -> None:
        """``replace`` built in a thread (a reload must not stall sessions); API routes current at the swap."""
        routes = list(routes)
        while True:
            api_routes = self.api_routes
            table = await asyncio.to_thread(self.build, routes, api_routes)
            if self.api_routes is api_routes:
                break
        self.table = table
        self.config_routes = routes

    async def replace_api_async(self, routes: Iterable[Route]) -> None:
        """``replace_api`` for callers on the event loop: the table is built in a thread (10,000 routes
        take seconds), then swapped in on the loop. Callers serialise their changes (the API's lock); a
        config reload that lands meanwhile is honoured by building again with its routes."""
        routes = list(routes)
        while True:
            config_routes = self.config_routes
            table = await asyncio.to_thread(self.build, config_routes, routes)
            if self.config_routes is config_routes:
                break
        self.table = table
        self.api_routes = routes

    async def reload_api(self, load: Callable[[], Awaitable[Iterable[Route]]], *, skip_bad: bool = False) -> None:
        """Load the API's routes (``await load()``, from the store) and swap them in unless they are what the last
        reload loaded. One reload at a time, each loading inside its turn, so the last to run has the newest
        routes: the API's own changes and those of other nodes (``store.changes``) end in the same table.
        Raises ``RouteSyntaxError``/``ConfigError`` if they do not compile; with ``skip_bad`` a route that does not
        (the config changed since it was made) is left out instead, with an error logged."""
        async with self._reloading:
            routes = list(await load())
            if routes == self._api_loaded:
                return
            if skip_bad:
                try:
                    await self.replace_api_async(routes)
                except (RouteSyntaxError, ConfigError):
                    await self.replace_api_async(await asyncio.to_thread(self._compiling, routes))
            else:
                await self.replace_api_async(routes)
            self._api_loaded = routes

    def _compiling(self, routes: list[Route]) -> list[Route]:
        good = []
        for route in routes:
            try:
                self.build([], [route])
                good.append(route)
            except (RouteSyntaxError, ConfigError) as exc:
                log.error("route %s (created through the API) is skipped: %s", route.id, exc)
        return good

    def would_handle(self, recipient: str) -> bool:
        if srs.reverse(recipient, self.srs_key) is not None:
            return True
        return self.table.would_handle(recipient)

    def forwards_for(self, recipient: str, fields: list[headers_mod.HeaderField], sender: str) -> list[ForwardRow]:
        original = srs.reverse(recipient, self.srs_key)
        if original is not None:  # a bounce of one of our forwards: back to whoever sent the original
            return [ForwardRow(recipient, "", "address", original, sender="")]
        # Decoded only if a route has match_header (RouteTable takes a callable): most tables have none.
        pairs = lambda: [(f.name, headers_mod.decode(f.value)) for f in fields]  # noqa: E731
        rows: list[ForwardRow] = []
        domain = recipient.rpartition("@")[2]
        for match in self.table.evaluate(recipient, pairs):
            for problem in match.problems:
                log.warning("route %s: %s", match.route.id, problem)
            for action in match.actions:
                if action.kind == "forward":
                    for dest in action.destinations:
                        if is_url(dest):
                            rows.append(ForwardRow(recipient, match.route.id, "http", dest))
                        else:
                            envelope_sender = srs.forward_address(sender, domain, self.srs_key, time.time()) \
                                if self.use_srs else sender
                            rows.append(ForwardRow(recipient, match.route.id, "address", dest, envelope_sender))
                elif action.kind == "store":
                    rows.append(ForwardRow(recipient, match.route.id, "store", action.notify or ""))
        return rows
