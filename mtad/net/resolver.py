"""MX and address lookups for outbound delivery, with dnspython's asyncio resolver.

``resolve_mx(domain)`` answers where mail for ``domain`` goes, as RFC 5321 §5.1 says:
- MX records, sorted by preference; hosts of equal preference in random order, so load spreads among them;
- no MX records (NODATA) -> the domain itself is the one host (``implicit=True``);
- NXDOMAIN, or a null MX (RFC 7505: the only MX has exchange ``.``) -> ``PermFailure``;
- SERVFAIL, timeouts, unreachable nameservers or any other DNS error -> ``TempFailure`` (unknown is temporary).

``resolve_addresses(host)`` answers the A then AAAA addresses of one MX host; an IP literal is returned as is.

``records(name, rdtype)`` answers the records of one name and type as text, for the inbound authentication checks
(SPF, DKIM keys, DMARC: ``mtad.inbound.verdicts``): TXT as the record's strings joined, A/AAAA as addresses,
MX and PTR as host names; NXDOMAIN or no records of that type -> ``()``; any other failure -> ``TempFailure``.
Its answers are also kept as text for their TTL (a "none" for ``NEGATIVE_TTL``): the same few domains come back
with every message. A failed lookup (SERVFAIL, timeout, no nameserver reachable) is kept too, for ``FAILURE_TTL``,
as RFC 9520 asks of resolvers: while a domain's nameservers (or mtad's own) are failing, every message checking
that domain gets the ``TempFailure`` at once instead of a query of its own (one query per name a few seconds).

Positive and negative answers are cached in memory for their TTL by dnspython's bounded LRU cache, and MX answers
also as ready host lists (a queue for one domain costs one lookup, not one per message); the caches can be lost at
any time. Concurrent lookups of one name and type share one query (a thousand queued messages to a new domain make
one MX query, not a thousand). Nameservers default to the system's (``/etc/resolv.conf``); tests and split-horizon
setups pass their own, with a port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.exception

from mtad.base.errors import PermFailure, TempFailure

if TYPE_CHECKING:
    import dns.asyncresolver
    import dns.name
    import dns.resolver


NEGATIVE_TTL = 60.0  # seconds a "no such record" answer of ``records`` is kept
FAILURE_TTL = 5.0  # seconds a failed lookup of ``records`` is kept (RFC 9520: at least 1 s, at most 5 minutes)


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
        if nameservers is not None and not nameservers:
            raise ValueError("nameservers: give at least one address, or None for the system resolver")
        self._settings = (nameservers, port, timeout, cache_size)
        self._resolver: dns.asyncresolver.Resolver | None = None  # made at the first lookup (``_load``)
        self._pending: dict[tuple[dns.name.Name, str], asyncio.Future[dns.resolver.Answer]] = {}
        self._mx: dict[str, tuple[float, tuple[MxHost, ...]]] = {}  # domain -> (expires, hosts by preference)
        self._mx_size = cache_size
        self._records: dict[tuple[str, str], tuple[float, tuple[str, ...]]] = {}  # (name, type) -> (expires, text)
        self._failed: dict[tuple[str, str], tuple[float, str]] = {}  # (name, type) -> (expires, why), FAILURE_TTL
        if nameservers is None:  # the system configuration is read at start, as ever (unreadable: the start stops)
            self._load()

    def _load(self) -> None:
        """dnspython's resolver, made at the first lookup when the nameservers are given (``delivery.dns_nameservers``,
        as the tests do): a daemon that looks nothing up never imports it (~75 ms of CPU). Also binds ``dns.name``
        and ``dns.resolver``, which the lookups below use. Once made, a call returns at once."""
        if self._resolver is not None:
            return
        import dns.asyncresolver
        import dns.name
        import dns.resolver
        nameservers, port, timeout, cache_size = self._settings
        resolver = dns.asyncresolver.Resolver(configure=nameservers is None)
        if nameservers is not None:
            resolver.nameservers = list(nameservers)
        resolver.port = port
        resolver.lifetime = timeout  # the whole lookup, retries included
        resolver.timeout = min(resolver.timeout, timeout)  # one try
        resolver.cache = dns.resolver.LRUCache(cache_size)
        self._resolver = resolver

    async def _resolve(self, name: dns.name.Name, rdtype: str) -> dns.resolver.Answer:
        """dnspython's lookup, shared by every caller asking for the same name and type meanwhile."""
        key = (name, rdtype)
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._resolver.resolve(name, rdtype, search=False))
            self._pending[key] = pending

            def done(f: asyncio.Future) -> None:
                del self._pending[key]
                if not f.cancelled():
                    f.exception()  # retrieved, even if every caller was cancelled meanwhile
            pending.add_done_callback(done)
        return await asyncio.shield(pending)  # a caller cancelled does not cancel the others' lookup

    async def resolve_mx(self, domain: str) -> MxResult:
        """Where mail for ``domain`` goes. Raises ``PermFailure`` or ``TempFailure`` as the module doc says."""
        cached = self._mx.get(domain)
        if cached is not None and cached[0] > time.time():
            return _in_order(list(cached[1]))
        self._load()
        name = _name(domain)
        try:
            answer = await self._resolve(name, "MX")
        except dns.resolver.NXDOMAIN:
            raise PermFailure(f"{domain}: domain does not exist (NXDOMAIN)", "5.1.2") from None
        except dns.resolver.NoAnswer:
            return MxResult((MxHost(0, name.to_text(omit_final_dot=True).lower()),), implicit=True)
        except dns.exception.DNSException as exc:
            raise TempFailure(f"{domain}: MX lookup failed: {_describe(exc)}") from exc
        # RFC 7505 §3: '.' means "no mail here"; a '.' published beside real hosts is ignored.
        hosts = [MxHost(r.preference, r.exchange.to_text(omit_final_dot=True).lower()) for r in answer
                 if r.exchange != dns.name.root]
        if not hosts:
            raise PermFailure(f"{domain}: domain does not accept mail (null MX, RFC 7505)", "5.1.2")
        self._remember_mx(domain, answer.expiration, hosts)
        return _in_order(hosts)

    def _remember_mx(self, domain: str, expiration: float, hosts: list[MxHost]) -> None:
        """Keep an MX answer until its TTL runs out: a queue for one domain looks it up once, not per message."""
        if len(self._mx) >= self._mx_size:
            now = time.time()
            self._mx = {d: entry for d, entry in self._mx.items() if entry[0] > now}
            if len(self._mx) >= self._mx_size:
                self._mx.clear()
        self._mx[domain] = (expiration, tuple(hosts))

    async def resolve_addresses(self, host: str) -> list[str]:
        """The IPv4 then IPv6 addresses of ``host``; ``[]`` when it has none or does not exist.

        Raises ``TempFailure`` only when no address was found and a lookup failed temporarily.
        """
        try:
            return [str(ipaddress.ip_address(host.strip("[]")))]
        except ValueError:
            pass
        self._load()
        name = _name(host)
        results = await asyncio.gather(*(self._resolve(name, rdtype)
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


    async def records(self, name: str, rdtype: str) -> tuple[str, ...]:
        """The ``rdtype`` records of ``name`` as text (module doc); ``()`` for NXDOMAIN, none of that type, or a
        name that cannot exist. Only a failed lookup (timeout, SERVFAIL, no nameserver) raises ``TempFailure`` (kept
        ``FAILURE_TTL``: the same lookup fails at once meanwhile, without a query)."""
        key = (name.lower(), rdtype)
        cached = self._records.get(key)
        now = time.time()
        if cached is not None and cached[0] > now:
            return cached[1]
        failed = self._failed.get(key)
        if failed is not None:
            if failed[0] > now:
                raise TempFailure(failed[1])
            del self._failed[key]
        self._load()
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException:
            return ()
        try:
            answer = await self._resolve(qname, rdtype)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            self._remember_records(key, now + NEGATIVE_TTL, ())
            return ()
        except dns.exception.DNSException as exc:
            why = f"{name}: {rdtype} lookup failed: {_describe(exc)}"
            if len(self._failed) >= self._mx_size:
                self._failed.clear()
            self._failed[key] = (time.time() + FAILURE_TTL, why)
            raise TempFailure(why) from exc
        if rdtype == "TXT":
            found = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in answer)
        elif rdtype in ("A", "AAAA"):
            found = tuple(r.address for r in answer)
        elif rdtype == "MX":
            found = tuple(r.exchange.to_text(omit_final_dot=True).lower() for r in answer)
        else:
            found = tuple(r.to_text().rstrip(".").lower() for r in answer)  # PTR and the rest: the target name
        self._remember_records(key, answer.expiration, found)
        return found

    def known(self, name: str, rdtype: str) -> bool:
        """Whether ``records(name, rdtype)`` would answer (or fail) from the cache now, without a query."""
        key = (name.lower(), rdtype)
        cached = self._records.get(key) or self._failed.get(key)
        return cached is not None and cached[0] > time.time()

    def _remember_records(self, key: tuple[str, str], expires: float, found: tuple[str, ...]) -> None:
        """Keep an answer of ``records`` as text until its TTL runs out (negative ones ``NEGATIVE_TTL``): a busy MX
        checks the same few domains again and again, and dnspython's own cache costs more per hit."""
        if len(self._records) >= self._mx_size:
            now = time.time()
            self._records = {k: entry for k, entry in self._records.items() if entry[0] > now}
            if len(self._records) >= self._mx_size:
                self._records.clear()
        self._records[key] = (expires, found)


def _in_order(hosts: list[MxHost]) -> MxResult:
    """The hosts by preference; equal preferences in a new random order each time, so load spreads among them."""
    random.shuffle(hosts)
    hosts.sort(key=lambda h: h.preference)  # stable: the shuffle decides among equals
    return MxResult(tuple(hosts))


def _name(domain: str) -> dns.name.Name:
    """``domain`` as an absolute DNS name; a name that cannot exist is a permanent failure."""
    try:
        return dns.name.from_text(domain)
    except dns.exception.DNSException as exc:
        raise PermFailure(f"{domain!r}: not a valid domain name ({exc})", "5.1.2") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, dns.exception.Timeout):
        return "timed out"
    if isinstance(exc, dns.resolver.NoNameservers):
        return "no nameserver answered (SERVFAIL or refused)"
    return str(exc) or type(exc).__name__
