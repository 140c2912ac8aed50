"""MX and address lookups for outbound delivery, with dnspython's asyncio resolver.

``resolve_mx(domain)`` answers where mail for ``domain`` goes, as RFC 5321 §5.1 says:
- MX records, sorted by preference; hosts of equal preference in random order, so load spreads among them;
- no MX records (NODATA) -> the domain itself is the one host (``implicit=True``);
- NXDOMAIN, or a null MX (RFC 7505: the only MX has exchange ``.``) -> ``PermFailure``;
- SERVFAIL, timeouts, unreachable nameservers or any other DNS error -> ``TempFailure`` (unknown is temporary).

``resolve_addresses(host)`` answers the A then AAAA addresses of one MX host; an IP literal is returned as is.

Positive and negative answers are cached in memory for their TTL by dnspython's bounded LRU cache; the cache can
be lost at any time. Nameservers default to the system's (``/etc/resolv.conf``); tests and split-horizon setups
pass their own, with a port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from mtad.errors import PermFailure, TempFailure


@dataclass(frozen=True)
class MxHost:
    preference: int
    host: str  # lower case, no final dot


@dataclass(frozen=True)
class MxResult:
    hosts: tuple[MxHost, ...]  # in the order to try them
    implicit: bool = False  # True when the domain has no MX and is its own mail host


class Resolver:
    """MX and A/AAAA lookups for delivery. ``nameservers=None`` uses the system resolver configuration."""

    def __init__(self, nameservers: list[str] | None = None, port: int = 53, timeout: float = 5.0,
                 cache_size: int = 10_000):
        resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            if not nameservers:
                raise ValueError("nameservers: give at least one address, or None for the system resolver")
            resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.lifetime = timeout  # the whole lookup, retries included
        resolver.timeout = min(resolver.timeout, timeout)  # one try
        resolver.cache = dns.resolver.LRUCache(cache_size)
        self._resolver = resolver

    async def resolve_mx(self, domain: str) -> MxResult:
        """Where mail for ``domain`` goes. Raises ``PermFailure`` or ``TempFailure`` as the module doc says."""
        name = _name(domain)
        try:
            answer = await self._resolver.resolve(name, "MX", search=False)
        except dns.resolver.NXDOMAIN:
            raise PermFailure(f"{domain}: domain does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            return MxResult((MxHost(0, name.to_text(omit_final_dot=True).lower()),), implicit=True)
        except dns.exception.DNSException as exc:
            raise TempFailure(f"{domain}: MX lookup failed: {_describe(exc)}") from exc
        records = [(r.preference, r.exchange) for r in answer]
        # RFC 7505 §3: '.' means "no mail here"; a '.' published beside real hosts is ignored.
        hosts = [(pref, exchange) for pref, exchange in records if exchange != dns.name.root]
        if not hosts:
            raise PermFailure(f"{domain}: domain does not accept mail (null MX, RFC 7505)")
        random.shuffle(hosts)  # then a stable sort: equal preferences stay in random order
        hosts.sort(key=lambda h: h[0])
        return MxResult(tuple(MxHost(pref, ex.to_text(omit_final_dot=True).lower()) for pref, ex in hosts))

    async def resolve_addresses(self, host: str) -> list[str]:
        """The IPv4 then IPv6 addresses of ``host``; ``[]`` when it has none or does not exist.

        Raises ``TempFailure`` only when no address was found and a lookup failed temporarily.
        """
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        name = _name(host)
        results = await asyncio.gather(*(self._resolver.resolve(name, rdtype, search=False)
                                         for rdtype in ("A", "AAAA")), return_exceptions=True)
        addresses: list[str] = []
        failure: BaseException | None = None
        for result in results:
            if isinstance(result, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
                continue
            if isinstance(result, BaseException):
                failure = result
                continue
            addresses.extend(r.address for r in result)
        if failure is not None and not addresses:
            if not isinstance(failure, dns.exception.DNSException):
                raise failure
            raise TempFailure(f"{host}: address lookup failed: {_describe(failure)}") from failure
        return addresses


def _name(domain: str) -> dns.name.Name:
    """``domain`` as an absolute DNS name; a name that cannot exist is a permanent failure."""
    try:
        return dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise PermFailure(f"{domain!r}: not a valid domain name ({exc})") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no nameserver answered (SERVFAIL or refused)"
    return str(exc) or type(exc).__name__
