"""SPF (RFC 7208) evaluated on mtad's asynchronous resolver: ``check_host(dns, ip, sender, helo)``.

Why not pyspf: its DNS goes through a module-global, blocking lookup function (pydns or dnspython called
directly), so using mtad's resolver (its timeouts, its cache, one query shared by concurrent callers) would mean a
thread per check and a monkey-patched global; its last release is of 2020. The evaluation itself is small and
is written here against RFC 7208, section by section.

Contract:
- ``dns`` is anything with ``async records(name, rdtype) -> tuple[str, ...]`` (``mtad.net.resolver.Resolver``):
  ``()`` for NXDOMAIN/no records, ``TempFailure`` for a failed lookup.
- The result is one of ``pass fail softfail neutral none temperror permerror`` (§2.6) with the domain checked
  and a short reason for the ``Authentication-Results`` comment. It never raises for any input.
- Limits (§4.6.4): at most 10 mechanisms and modifiers that query DNS (``include a mx ptr exists redirect``),
  at most 2 void lookups, at most 10 MX hosts and 10 PTR names looked at; past them, ``permerror``.
- ``exp=`` is not fetched (mtad writes no explanation in a reply); macros of §7 are expanded, ``%{p}`` as
  ``unknown`` (the validated name is costly and discouraged, §7.3).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol
from urllib.parse import quote

from mtad.base.errors import TempFailure

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")
MAX_DNS_TERMS = 10
MAX_VOID = 2
_QUALIFIERS = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = ("all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists")
_DOMAIN_LABEL = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_MACRO = re.compile(r"%(?:\{([slodiphcrtvSLODIPHCRTV])(\d*)(r?)([.\-+,/_=]*)\}|(%)|(_)|(-))")
_MODIFIER = re.compile(r"^([A-Za-z][A-Za-z0-9_.-]*)=(.*)$")


class Dns(Protocol):
    async def records(self, name: str, rdtype: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class SpfResult:
    result: str  # one of RESULTS
    domain: str  # the domain whose policy was checked ("" when there was none to check)
    identity: str  # "mailfrom" or "helo"
    reason: str = ""


class _PermError(Exception):
    pass


class _TempError(Exception):
    pass


class _State:
    """One evaluation's counters (§4.6.4), shared by includes and redirects."""

    def __init__(self, dns: Dns, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, sender: str, helo: str):
        self.dns = dns
        self.ip = ip
        self.sender = sender
        self.helo = helo
        self.terms = 0
        self.void = 0

    def count_term(self) -> None:
        self.terms += 1
        if self.terms > MAX_DNS_TERMS:
            raise _PermError(f"more than {MAX_DNS_TERMS} DNS-querying terms")

    async def lookup(self, name: str, rdtype: str, count_void: bool = True) -> tuple[str, ...]:
        try:
            found = await self.dns.records(name, rdtype)
        except TempFailure as exc:
            raise _TempError(str(exc)) from None
        if not found and count_void:
            self.void += 1
            if self.void > MAX_VOID:
                raise _PermError(f"more than {MAX_VOID} void lookups")
        return found


async def check_host(dns: Dns, ip: str, sender: str, helo: str) -> SpfResult:
    """The SPF result for the client ``ip`` sending as ``sender`` (MAIL FROM; ``""`` for the null sender, then
    the HELO identity ``postmaster@helo`` is checked, §2.4)."""
    identity = "mailfrom"
    if not sender or "@" not in sender:
        identity = "helo"
        sender = f"postmaster@{helo}" if helo else ""
    local, _, domain = sender.rpartition("@")
    domain = domain.rstrip(".").lower()
    address = _client_address(ip)
    if address is None:
        return SpfResult("none", domain, identity, "no client address")
    if not _valid_domain(domain):
        return SpfResult("none", domain, identity, "no valid domain to check")
    state = _State(dns, address, f"{local or 'postmaster'}@{domain}", helo)
    try:
        result = await _check(state, domain)
    except _TempError as exc:
        return SpfResult("temperror", domain, identity, str(exc))
    except _PermError as exc:
        return SpfResult("permerror", domain, identity, str(exc))
    except Exception as exc:  # noqa: BLE001 - never a crash for hostile records: a permanent error
        return SpfResult("permerror", domain, identity, f"{exc.__class__.__name__}")
    return SpfResult(result[0], domain, identity, result[1])


@lru_cache(maxsize=4096)
def _client_address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address (an IPv4-mapped IPv6 one as IPv4); None for no address. Remembered: clients repeat."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address


def _valid_domain(domain: str) -> bool:
    """§4.3: a fully qualified name of labels of at most 63 characters, 253 in all."""
    labels = domain.split(".")
    return 0 < len(domain) <= 253 and len(labels) >= 2 and all(_DOMAIN_LABEL.match(label) for label in labels)


async def _record(state: _State, domain: str) -> str | None:
    """§4.4-4.5: the one ``v=spf1`` record of ``domain``; None when there is none; ``_PermError`` for several."""
    try:
        texts = await state.dns.records(domain, "TXT")
    except TempFailure as exc:
        raise _TempError(str(exc)) from None
    found = [t for t in texts if t.lower() == "v=spf1" or t.lower().startswith("v=spf1 ")]
    if len(found) > 1:
        raise _PermError(f"{domain} publishes {len(found)} SPF records")
    return found[0] if found else None


async def _check(state: _State, domain: str, depth: int = 0) -> tuple[str, str]:
    if depth > MAX_DNS_TERMS:
        raise _PermError("include/redirect loop")
    record = await _record(state, domain)
    if record is None:
        return "none", f"{domain} publishes no SPF record"
    directives, redirect = _parse(record)
    for qualifier, name, argument in directives:
        if await _matches(state, domain, name, argument, depth):
            return _QUALIFIERS[qualifier], f"matched {name}{argument} of {domain}"
    if redirect is not None:
        state.count_term()
        target = _expand(state, domain, redirect)
        result, reason = await _check(state, target, depth + 1)
        if result == "none":
            raise _PermError(f"redirect to {target}, which publishes no SPF record")
        return result, reason
    return "neutral", f"no mechanism of {domain} matched"


@lru_cache(maxsize=1024)
def _parse(record: str) -> tuple[tuple[tuple[str, str, str], ...], str | None]:
    """A record's directives ``(qualifier, mechanism, argument)`` and its ``redirect=`` (None without one), or
    ``_PermError``. Remembered per record text (the text comes from the resolver, within its TTL)."""
    directives: list[tuple[str, str, str]] = []
    redirect = None
    for term in record.split()[1:]:
        modifier = _MODIFIER.match(term)
        if modifier and modifier.group(1).lower() not in _MECHANISMS:
            name = modifier.group(1).lower()
            if name == "redirect":
                if redirect is not None:
                    raise _PermError("two redirect= modifiers")
                redirect = modifier.group(2)
            elif name == "exp":
                pass
            continue  # unknown modifiers are ignored (§6)
        qualifier = "+"
        if term[0] in _QUALIFIERS:
            qualifier, term = term[0], term[1:]
        name, sep, argument = _split_mechanism(term)
        if name not in _MECHANISMS:
            raise _PermError(f"unknown mechanism {term[:40]!r}")
        directives.append((qualifier, name, sep + argument))
    return tuple(directives), redirect


def _split_mechanism(term: str) -> tuple[str, str, str]:
    """``a:example.com/24`` -> ("a", ":", "example.com/24"); ``a/24`` -> ("a", "/", "24")."""
    match = re.match(r"^([A-Za-z0-9]+)([:/]?)(.*)$", term)
    if not match:
        raise _PermError(f"malformed term {term[:40]!r}")
    name, sep, rest = match.groups()
    if not sep and rest:
        raise _PermError(f"malformed term {term[:40]!r}")
    return name.lower(), sep, rest


def _cidr(argument: str, default_domain: str, state: _State, current: str) -> tuple[str, int, int]:
    """``:domain/24//64`` -> (expanded domain, 24, 64); lengths default to 32 and 128 (§5.6)."""
    spec, v4, v6 = argument, 32, 128
    m = re.match(r"^(.*?)(?:/(\d{1,2}))?(?://(\d{1,3}))?$", argument)
    if m:
        spec = m.group(1)
        if m.group(2) is not None:
            v4 = int(m.group(2))
        if m.group(3) is not None:
            v6 = int(m.group(3))
    if v4 > 32 or v6 > 128:
        raise _PermError(f"bad prefix length in {argument[:40]!r}")
    if spec.startswith(":"):
        target = _expand(state, current, spec[1:])
    elif spec == "":
        target = default_domain
    else:
        raise _PermError(f"malformed argument {argument[:40]!r}")
    return target, v4, v6


def _in_network(state: _State, address: str, v4: int, v6: int) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if ip.version != state.ip.version:
        return False
    return state.ip in ipaddress.ip_network(f"{ip}/{v4 if ip.version == 4 else v6}", strict=False)


@lru_cache(maxsize=4096)
def _network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``ip4:``/``ip6:``'s network (``ValueError`` when it is none), remembered: records repeat."""
    return ipaddress.ip_network(text, strict=False)


async def _matches(state: _State, current: str, name: str, argument: str, depth: int) -> bool:
    if name == "all":
        if argument:
            raise _PermError("all takes no argument")
        return True
    if name in ("ip4", "ip6"):
        if not argument.startswith(":"):
            raise _PermError(f"{name} needs an address")
        try:
            network = _network(argument[1:])
        except ValueError:
            raise _PermError(f"bad {name} network {argument[1:][:50]!r}") from None
        if network.version != (4 if name == "ip4" else 6):
            raise _PermError(f"{name} given {argument[1:][:50]!r}")
        return network.version == state.ip.version and state.ip in network
    state.count_term()
    if name == "include":
        if not argument.startswith(":") or len(argument) < 2:
            raise _PermError("include needs a domain")
        target = _expand(state, current, argument[1:])
        result, _ = await _check(state, target, depth + 1)
        if result == "pass":
            return True
        if result == "temperror":
            raise _TempError(f"include:{target} had a temporary error")
        if result in ("permerror", "none"):
            raise _PermError(f"include:{target}: {result}")
        return False
    if name == "exists":
        if not argument.startswith(":") or len(argument) < 2:
            raise _PermError("exists needs a domain")
        return bool(await state.lookup(_expand(state, current, argument[1:]), "A"))
    if name == "a":
        target, v4, v6 = _cidr(argument, current, state, current)
        addresses = await state.lookup(target, "A" if state.ip.version == 4 else "AAAA")
        return any(_in_network(state, a, v4, v6) for a in addresses)
    if name == "mx":
        target, v4, v6 = _cidr(argument, current, state, current)
        hosts = [h for h in await state.lookup(target, "MX") if h and h != "@"]
        if len(hosts) > 10:
            raise _PermError(f"{target} has more than 10 MX hosts")
        for host in hosts:
            addresses = await state.lookup(host, "A" if state.ip.version == 4 else "AAAA")
            if any(_in_network(state, a, v4, v6) for a in addresses):
                return True
        return False
    if name == "ptr":
        target = _expand(state, current, argument[1:]) if argument.startswith(":") else current
        if argument and not argument.startswith(":"):
            raise _PermError("malformed ptr")
        reverse = state.ip.reverse_pointer
        try:
            names = await state.dns.records(reverse, "PTR")
        except TempFailure:
            return False  # §5.5: a failed PTR lookup is no match, not an error
        for host in names[:10]:
            try:
                addresses = await state.dns.records(host, "A" if state.ip.version == 4 else "AAAA")
            except TempFailure:
                continue
            if str(state.ip) in addresses and (host == target or host.endswith("." + target)):
                return True
        return False
    raise _PermError(f"unknown mechanism {name}")


def _expand(state: _State, domain: str, spec: str) -> str:
    """§7: macro expansion of a domain-spec; the result, truncated from the left to 253 characters."""
    if "%" not in spec:
        out = spec
    else:
        pos = 0
        parts: list[str] = []
        for m in _MACRO.finditer(spec):
            if spec[pos:m.start()].count("%"):
                raise _PermError(f"bad macro in {spec[:60]!r}")
            parts.append(spec[pos:m.start()])
            pos = m.end()
            if m.group(5):
                parts.append("%")
            elif m.group(6):
                parts.append(" ")
            elif m.group(7):
                parts.append("%20")
            else:
                parts.append(_macro(state, domain, m.group(1), m.group(2), m.group(3), m.group(4)))
        if "%" in spec[pos:]:
            raise _PermError(f"bad macro in {spec[:60]!r}")
        parts.append(spec[pos:])
        out = "".join(parts)
    out = out.rstrip(".")
    while len(out) > 253 and "." in out:
        out = out.split(".", 1)[1]
    if not out or len(out) > 253:
        raise _PermError(f"domain-spec {spec[:60]!r} expands to nothing usable")
    return out


def _macro(state: _State, domain: str, letter: str, digits: str, reverse: str, delimiters: str) -> str:
    key = letter.lower()
    local, _, sender_domain = state.sender.rpartition("@")
    ip = state.ip
    if key == "s":
        value = state.sender
    elif key == "l":
        value = local
    elif key == "o":
        value = sender_domain
    elif key == "d":
        value = domain
    elif key == "i":
        value = str(ip) if ip.version == 4 else ".".join(ip.exploded.replace(":", ""))
    elif key == "p":
        value = "unknown"
    elif key == "v":
        value = "in-addr" if ip.version == 4 else "ip6"
    elif key == "h":
        value = state.helo
    else:  # c, r, t: only in exp= (§7.2), which mtad does not fetch
        raise _PermError(f"macro %{{{letter}}} is only for exp=")
    parts = re.split("[" + re.escape(delimiters or ".") + "]", value)
    if reverse:
        parts.reverse()
    if digits:
        count = int(digits)
        if count == 0:
            raise _PermError("macro with 0 parts")
        parts = parts[-count:]
    value = ".".join(parts)
    return quote(value, safe="") if letter.isupper() else value
