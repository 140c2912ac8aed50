"""DMARC (RFC 7489): the policy record of the RFC5322.From domain, identifier alignment, and the verdict.

``author_domain(fields)`` picks the domain DMARC protects (exactly one From with one address, §6.6.1);
``fetch_policy(dns, domain)`` finds the record at ``_dmarc.<domain>``, else at the organizational domain's
(§6.6.3), the organizational domain coming from the Public Suffix List as shipped by the maintained
``publicsuffixlist`` package (its bundled copy: nothing is downloaded at run time);
``evaluate(policy, from_domain, spf, dkim_passes)`` is pure: ``pass`` when an SPF pass or a DKIM pass is aligned
(relaxed: the same organizational domain; strict: the same name), else ``fail`` with the policy to apply
(``p``, or ``sp`` for a subdomain when the record is the organizational domain's; ``pct`` sampled, §6.6.4:
a message outside the percentage gets the next weaker policy).

Results: ``pass fail none temperror permerror`` (RFC 8601 §2.7.1). Never raises for any input.
"""

from __future__ import annotations

import email.utils
import random
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol, Sequence

from mtad.base.errors import TempFailure

_POLICIES = ("none", "quarantine", "reject")


class Dns(Protocol):
    async def records(self, name: str, rdtype: str) -> tuple[str, ...]: ...


@lru_cache(maxsize=1)
def _psl():
    from publicsuffixlist import PublicSuffixList  # loaded once, on the first message that needs it
    return PublicSuffixList()


@lru_cache(maxsize=10_000)
def organizational_domain(domain: str) -> str:
    """The registered domain under its public suffix (``mail.example.co.uk`` -> ``example.co.uk``); the name
    itself when it is a public suffix or unknown to the list's rules."""
    try:
        return _psl().privatesuffix(domain) or domain
    except Exception:  # noqa: BLE001 - a name the list cannot take: itself
        return domain


@dataclass(frozen=True)
class DmarcPolicy:
    """A parsed ``v=DMARC1`` record (``found_at``: the name it was found at)."""

    p: str
    sp: str
    adkim: str  # "r" | "s"
    aspf: str
    pct: int
    found_at: str
    org: bool  # found at the organizational domain, not at the From domain


@dataclass(frozen=True)
class DmarcResult:
    result: str  # pass | fail | none | temperror | permerror
    from_domain: str
    policy: str = "none"  # the policy the domain asks for this message: none | quarantine | reject
    reason: str = ""


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_FROM = re.compile(  # ``local@domain`` or ``Display Name <local@domain>``: atoms only, no quotes or comments
    rf"[ \t]*(?:(?:{_ATOM}[ \t]+)*(?:{_ATOM})?[ \t]*<)?({_ATOM}(?:\.{_ATOM})*)@((?:{_ATOM}\.)*{_ATOM})(>?)[ \t]*")


def author_domain(from_values: Sequence[str]) -> str | None:
    """The From domain DMARC applies to; None when there is not exactly one From field with one address.
    The usual plain forms are read by a pattern (``email.utils.getaddresses`` costs ~100 µs); every other
    one, and any where the pattern's answer might differ, by ``getaddresses``."""
    if len(from_values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(from_values[0])
    if simple is not None and bool(simple.group(3)) == ("<" in from_values[0]):
        return simple.group(2).rstrip(".").lower() or None
    addresses = [a for _, a in email.utils.getaddresses([from_values[0]]) if a]
    if len(addresses) != 1 or "@" not in addresses[0]:
        return None
    domain = addresses[0].rpartition("@")[2].strip().rstrip(".>").lower()
    return domain or None


@lru_cache(maxsize=1024)
def parse_record(text: str, found_at: str, org: bool) -> DmarcPolicy | None:
    """§6.3: tag=value pairs; ``v=DMARC1`` first; a record without a valid ``p`` is unusable (None), except
    that §6.6.3 lets a record with ``rua`` and no valid ``p`` count as ``p=none``."""
    tags: dict[str, str] = {}
    for i, part in enumerate(text.split(";")):
        name, sep, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if not sep:
            if name:
                return None  # not a tag list
            continue
        tags.setdefault(name, value)
        if i == 0 and (name != "v" or value != "DMARC1"):
            return None
    p = tags.get("p", "").lower()
    if p not in _POLICIES:
        if "rua" not in tags:
            return None
        p = "none"
    sp = tags.get("sp", "").lower()
    if sp not in _POLICIES:
        sp = p
    adkim = "s" if tags.get("adkim", "r").lower() == "s" else "r"
    aspf = "s" if tags.get("aspf", "r").lower() == "s" else "r"
    try:
        pct = max(0, min(100, int(tags.get("pct", "100"))))
    except ValueError:
        pct = 100
    return DmarcPolicy(p, sp, adkim, aspf, pct, found_at, org)


async def _records_at(dns: Dns, name: str) -> list[str]:
    return [t for t in await dns.records(f"_dmarc.{name}", "TXT") if t.strip().lower().startswith("v=dmarc1")]


async def fetch_policy(dns: Dns, domain: str) -> DmarcPolicy | None:
    """The policy for ``domain``; None when neither it nor its organizational domain publishes exactly one usable
    record. Raises ``TempFailure`` when a lookup failed."""
    found = await _records_at(dns, domain)
    if len(found) == 1:
        policy = parse_record(found[0], domain, False)
        if policy is not None:
            return policy
    org = organizational_domain(domain)
    if org == domain:
        return None
    found = await _records_at(dns, org)
    if len(found) != 1:
        return None
    return parse_record(found[0], org, True)


def aligned(identifier: str, from_domain: str, mode: str) -> bool:
    identifier = identifier.lower().rstrip(".")
    if mode == "s":
        return identifier == from_domain
    return organizational_domain(identifier) == organizational_domain(from_domain)


def evaluate(policy: DmarcPolicy | None, from_domain: str, spf_result: str, spf_domain: str,
             dkim_pass_domains: Sequence[str], sample: float | None = None) -> DmarcResult:
    """The verdict for a From domain (pure; ``sample`` in [0, 1) for the ``pct`` draw, random when None)."""
    if policy is None:
        return DmarcResult("none", from_domain, "none", "no DMARC record")
    if spf_result == "pass" and aligned(spf_domain, from_domain, policy.aspf):
        return DmarcResult("pass", from_domain, policy.p, "aligned SPF pass")
    for d in dkim_pass_domains:
        if aligned(d, from_domain, policy.adkim):
            return DmarcResult("pass", from_domain, policy.p, f"aligned DKIM pass (d={d})")
    asked = policy.sp if policy.org and from_domain != policy.found_at else policy.p
    draw = random.random() if sample is None else sample
    if policy.pct < 100 and draw * 100 >= policy.pct:
        asked = {"reject": "quarantine", "quarantine": "none"}.get(asked, "none")  # §6.6.4
    return DmarcResult("fail", from_domain, asked, "no aligned SPF or DKIM pass")


async def check(dns: Dns, from_domain: str | None, spf_result: str, spf_domain: str,
                dkim_pass_domains: Sequence[str]) -> DmarcResult:
    """The whole DMARC check; ``permerror`` when the message has no single From domain (§6.6.1)."""
    if from_domain is None:
        return DmarcResult("permerror", "", "none", "not exactly one author address in From")
    try:
        policy = await fetch_policy(dns, from_domain)
    except TempFailure as exc:
        return DmarcResult("temperror", from_domain, "none", str(exc))
    return evaluate(policy, from_domain, spf_result, spf_domain, dkim_pass_domains)
