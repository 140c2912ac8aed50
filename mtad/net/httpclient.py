"""Outgoing HTTP for route forwards and webhooks, safe against server-side request forgery.

URLs come from routes and webhooks, so they are untrusted: only http and https; the host's
addresses are resolved by the connector and each one is checked at connect time (so a DNS answer
cannot rebind to an internal address): loopback, private, link-local, multicast and reserved
addresses are refused unless they are in ``allowed_networks``. Every request has a total timeout.

``url_refusal`` applies the same policy when a route or webhook is made, to the hosts that name an
address by themselves: IP literals in every spelling the system resolver takes for a number
(``2130706434``, ``127.2``, ``0x7f.1``, a trailing dot) and ``localhost``; other names are checked at
connect time only (their addresses may change).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from mtad.net.fasthttp import ConnectFailed, FastPoster
from mtad.net.urls import check_url


class ForbiddenAddress(OSError):
    pass


def _public(addr: ipaddress._BaseAddress) -> bool:
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified)


_NUMERIC_HOST = re.compile(r"[0-9A-Fa-fXx.]+")


def ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address ``host`` names by itself, as the system resolver reads it, or None for a name: an IP
    literal, or an IPv4 address in one of inet_aton's forms (``2130706434``, ``127.2``, ``0x7f.0.0.1``,
    ``0177.0.0.1``); trailing dots are ignored (``169.254.169.254.``)."""
    h = host.strip().strip("[]").rstrip(".")
    try:
        return ipaddress.ip_address(h)
    except ValueError:
        pass
    if not _NUMERIC_HOST.fullmatch(h):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(h))
    except OSError:
        return None


def address_permitted(addr: ipaddress._BaseAddress, allowed: list[ipaddress._BaseNetwork]) -> bool:
    """The SSRF policy: public addresses, and others only inside an allowed network."""
    return _public(addr) or any(addr.version == net.version and addr in net for net in allowed)


class GuardedResolver(AbstractResolver):
    """Resolves names and drops addresses mtad may not reach."""

    def __init__(self, allowed_networks: tuple[str, ...]):
        self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        self._inner = ThreadedResolver()
        self._verdicts: dict[str, bool] = {}  # ipaddress's range checks cost ~20 µs; asked for every POST

    def permitted(self, host: str) -> bool:
        """Whether mtad may connect to this IP address (ValueError if it is not one)."""
        verdict = self._verdicts.get(host)
        if verdict is None:
            addr = ip_literal(host)
            if addr is None:
                raise ValueError(f"not an IP address: {host!r}")
            verdict = address_permitted(addr, self.allowed)
            if len(self._verdicts) >= 10_000:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept = [r for r in results if self.permitted(r["host"])]
        if not kept:
            raise ForbiddenAddress(f"{host}: address not allowed (see routing.allowed_networks)")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def url_refusal(url: str, allowed_networks: tuple[str, ...]) -> str | None:
    """None if a route or webhook may be made with ``url``, else why not: ``check_url``'s rules, and a host
    that names an address by itself (``ip_literal``, or ``localhost``) must pass the connect-time policy."""
    problem = check_url(url)
    if problem:
        return problem
    host = urlsplit(url).hostname or ""
    name = host.rstrip(".").lower()
    addr = ipaddress.ip_address("127.0.0.1") if name == "localhost" or name.endswith(".localhost") \
        else ip_literal(host)
    if addr is not None and not address_permitted(addr, [ipaddress.ip_network(n, strict=False)
                                                        for n in allowed_networks]):
        return f"{host}: address {addr} not allowed (see routing.allowed_networks)"
    return None


@dataclass(frozen=True)
class HttpResult:
    status: int | None  # None: no response (timeout, refused, forbidden address)
    error: str = ""
    body: str = ""


class HttpClient:
    """One aiohttp session for all forwards and webhooks."""

    def __init__(self, allowed_networks: tuple[str, ...], timeout: float, user_agent: str = "mtad",
                 fast_post: bool = True):
        self.fast_post = fast_post  # False: aiohttp for every request (bench/forward_client_bench.py compares)
        self.resolver = GuardedResolver(allowed_networks)
        self.timeout = timeout
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._fast = FastPoster()  # plain http to an allowed IP address, bytes body: the forwards' common case

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=self.resolver, limit=200, limit_per_host=20,
                                             use_dns_cache=False)
            self._session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.user_agent},
                                                  timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def post(self, url: str, *, data: Any = None, json: Any = None,
                   headers: dict[str, str] | None = None) -> HttpResult:
        problem = check_url(url)
        if problem:
            return HttpResult(None, problem)
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            if not self.resolver.permitted(host):  # an IP literal never reaches the resolver
                return HttpResult(None, f"{host}: address not allowed (see routing.allowed_networks)")
        except ValueError:
            pass  # a name: checked by the resolver at connect time
        else:
            if self.fast_post and parts.scheme == "http" and isinstance(data, bytes) and json is None and "@" not in parts.netloc:
                return await self._post_fast(parts, host, data, headers or {})
        try:
            async with self.session().post(url, data=data, json=json, headers=headers,
                                           allow_redirects=False) as response:
                body = await response.content.read(2000)
                return HttpResult(response.status, "", body.decode("utf-8", "replace"))
        except ForbiddenAddress as exc:
            return HttpResult(None, str(exc))
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenAddress):  # aiohttp wraps what the resolver raised
                return HttpResult(None, str(exc.os_error))
            return HttpResult(None, f"{exc.__class__.__name__}: {exc}")
        except TimeoutError:
            return HttpResult(None, f"timed out after {self.timeout:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return HttpResult(None, f"{exc.__class__.__name__}: {exc}")

    async def _post_fast(self, parts, host: str, data: bytes, headers: dict[str, str]) -> HttpResult:
        try:
            port = parts.port or 80
        except ValueError as exc:
            return HttpResult(None, f"invalid URL: {exc}")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        sent = {"User-Agent": self.user_agent, "Accept": "*/*", **headers}
        try:
            status, body = await self._fast.post(host, port, target, parts.netloc, data, sent, self.timeout)
        except TimeoutError:
            return HttpResult(None, f"timed out after {self.timeout:g}s")
        except ConnectFailed as exc:
            return HttpResult(None, f"ClientConnectorError: {exc}")
        except OSError as exc:
            return HttpResult(None, f"{exc.__class__.__name__}: {exc}")
        return HttpResult(status, "", body.decode("utf-8", "replace"))

    async def close(self) -> None:
        self._fast.close()
        if self._session is not None:
            await self._session.close()
