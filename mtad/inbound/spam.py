"""Spam filtering of inbound mail (issue 15 item 3): SpamAssassin's ``spamd`` and each receiving domain's policy.

Ingress asks ``SpamFilter.check`` at end of DATA for every message received unauthenticated (the MX path; never
authenticated submission), before it is committed, and does what the ``SpamVerdict`` says: refuse it with
``verdict.refuse`` (nothing is stored), or store ``verdict.apply(content, fields)``.

Policy, per receiving domain (``SpamPolicy``; the config file's ``spam.domains`` for its domains, the store's
``spam_action``/``spam_threshold``/``spam_on_error`` for domains created through the API, ``spam.threshold`` and
``spam.on_error`` where a domain sets none):
- ``disabled``: not scanned, left as received;
- ``tag``: scanned; ``X-Mailgun-Sflag: Yes|No`` (Yes at a score of ``threshold`` or more) and
  ``X-Mailgun-Sscore: <score>`` are added at the top of the message (so they are in the stored copy, the route
  POST and ``match_header``), and any such headers the sender wrote are removed first;
- ``block``: scanned; a score of ``threshold`` or more is refused ``550 5.7.1``; other mail is kept, with any
  ``X-Mailgun-S*`` headers the sender wrote removed.
A message has one reply at end of DATA: when its recipients are in several domains it is refused if any of them
blocks it, tagged if any of them tags (the flag at the lowest tagging threshold), and 451 on a spamd error if any
of them says ``tempfail``.

When spamd gives no score (down, refusing, slower than ``spam.spamd.timeout`` — waiting for one of the
``max_concurrent`` slots included — or no ``spam.spamd`` at all) the domain's ``on_error`` applies: ``accept``
keeps the message untagged (logged), ``tempfail`` answers ``451 4.7.1`` so the sender retries. Nothing waits
longer than the timeout and nothing accepted is lost. A message over ``spam.spamd.max_size`` is not sent to spamd:
accepted untagged, logged.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Iterable

from mtad.config.schema import SpamConfig
from mtad.mail import headers
from mtad.net.spamd import SpamdClient, SpamdError, SpamScore
from mtad.store.accounts import DomainRecord

log = logging.getLogger("mtad.spam")

SFLAG = "X-Mailgun-Sflag"
SSCORE = "X-Mailgun-Sscore"
_OURS = {SFLAG.lower(), SSCORE.lower()}
ACTIONS = ("disabled", "tag", "block")
ON_ERROR = ("accept", "tempfail")
REFUSED = "550 5.7.1 Message refused: it looks like spam"
UNAVAILABLE = "451 4.7.1 Spam filter unavailable, try again later"


@dataclass(frozen=True)
class SpamPolicy:
    action: str  # disabled | tag | block
    threshold: float
    on_error: str  # accept | tempfail


@dataclass(frozen=True)
class Policies:
    """The spam policy of every receiving domain that filters (a domain not in it: ``disabled``)."""

    domains: dict[str, SpamPolicy]

    @classmethod
    def build(cls, cfg: SpamConfig, api_domains: Iterable[DomainRecord] = ()) -> "Policies":
        """The config file's ``spam.domains`` and the API's domains (the file wins on a clash, as everywhere)."""
        domains: dict[str, SpamPolicy] = {}
        for d in api_domains:
            if d.receiving and d.spam_action in ("tag", "block"):
                domains[d.name.lower()] = SpamPolicy(
                    d.spam_action, cfg.threshold if d.spam_threshold is None else d.spam_threshold,
                    d.spam_on_error if d.spam_on_error in ON_ERROR else cfg.on_error)
        for name, d in cfg.domains.items():
            domains.pop(name.lower(), None)
            if d.action != "disabled":
                domains[name.lower()] = SpamPolicy(d.action, cfg.threshold if d.threshold is None else d.threshold,
                                                   d.on_error or cfg.on_error)
        return cls(domains)

    def of(self, recipients: Iterable[str]) -> tuple[SpamPolicy, ...]:
        """The distinct policies of the recipients' domains that filter (empty: nothing to scan)."""
        found = {self.domains.get(r.rpartition("@")[2].lower()) for r in recipients}
        found.discard(None)
        return tuple(found)  # type: ignore[arg-type]


@dataclass(frozen=True)
class SpamVerdict:
    """What end of DATA does: ``refuse`` (an SMTP reply; nothing is stored), else store ``apply(content)``."""

    refuse: str | None = None
    add: bytes = b""  # header lines to add at the top
    strip: bool = False  # remove X-Mailgun-Sflag/Sscore headers the sender wrote

    def apply(self, content: bytes, fields: list[headers.HeaderField]) -> tuple[bytes, list[headers.HeaderField]]:
        """The message to store and its header fields (spans in the new content)."""
        if not self.strip and not self.add:
            return content, fields
        forged = [f for f in fields if f.name.lower() in _OURS] if self.strip else []
        if not forged and not self.add:
            return content, fields
        content = self.add + headers.remove(content, forged)
        new, _ = headers.parse_block(content, len(fields) + 2, len(content))
        return content, new


UNCHANGED = SpamVerdict()


def decide(policies: tuple[SpamPolicy, ...], score: float) -> SpamVerdict:
    """The verdict for a scanned message of the given domains' policies (see the module doc)."""
    if any(p.action == "block" and score >= p.threshold for p in policies):
        return SpamVerdict(refuse=REFUSED)
    tagging = [p.threshold for p in policies if p.action == "tag"]
    if not tagging:
        return SpamVerdict(strip=True)
    flag = "Yes" if score >= min(tagging) else "No"
    shown = round(score, 1) + 0.0  # never "-0.0"
    return SpamVerdict(add=f"{SFLAG}: {flag}\r\n{SSCORE}: {shown:.1f}\r\n".encode(), strip=True)


def on_error(policies: tuple[SpamPolicy, ...]) -> SpamVerdict:
    """No score: 451 if any domain asks for it, else accepted untagged (forged headers removed all the same)."""
    if any(p.on_error == "tempfail" for p in policies):
        return SpamVerdict(refuse=UNAVAILABLE)
    return SpamVerdict(strip=True)


@dataclass
class Counters:
    scanned: int = 0
    spam: int = 0
    refused: int = 0
    errors: int = 0
    too_big: int = 0


class SpamFilter:
    """``check`` for ingress; ``configure`` (config reload) and ``policies`` (swapped when domains change)."""

    def __init__(self, cfg: SpamConfig, policies: Policies | None = None):
        self.policies = policies or Policies({})
        self.counters = Counters()
        self.client: SpamdClient | None = None
        self.max_size = 0
        self._slots = asyncio.Semaphore(1)
        self._limit = 0
        self.configure(cfg)

    def configure(self, cfg: SpamConfig) -> None:
        spamd = cfg.spamd
        if spamd is None:
            self.client = None
            return
        self.client = SpamdClient(spamd.host, spamd.port, spamd.socket, spamd.timeout.seconds)
        self.max_size = int(spamd.max_size)
        if spamd.max_concurrent != self._limit:  # scans holding the old slots release them there
            self._slots = asyncio.Semaphore(spamd.max_concurrent)
            self._limit = spamd.max_concurrent

    def unconfigured(self) -> list[str]:
        """Domains that ask for filtering while no ``spam.spamd`` is configured (warned at start and reload)."""
        return sorted(self.policies.domains) if self.client is None else []

    async def _scan(self, client: SpamdClient, content: bytes) -> SpamScore:
        """The score, within ``client.timeout`` all told: waiting for one of the slots counts."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + client.timeout
        slots = self._slots
        try:
            async with asyncio.timeout(client.timeout):
                await slots.acquire()
        except TimeoutError:
            raise SpamdError(f"no free slot for spamd at {client.where} within {client.timeout:g}s "
                             f"(spam.spamd.max_concurrent scans in progress)") from None
        try:
            return await client.scan(content, max(deadline - loop.time(), 0.001))
        finally:
            slots.release()

    async def check(self, recipients: Iterable[str], content: bytes, client_ip: str = "") -> SpamVerdict:
        """The verdict for a message to ``recipients``; never raises for spamd's failures, never waits longer
        than ``spam.spamd.timeout``."""
        policies = self.policies.of(recipients)
        if not policies:
            return UNCHANGED
        client = self.client
        if client is None:
            log.warning("spam: not scanned (client %s): no spam.spamd configured", client_ip)
            self.counters.errors += 1
            return on_error(policies)
        if len(content) > self.max_size:
            log.info("spam: not scanned (client %s): %d bytes, over spam.spamd.max_size (%d); accepted untagged",
                     client_ip, len(content), self.max_size)
            self.counters.too_big += 1
            return SpamVerdict(strip=True)
        try:
            result = await self._scan(client, content)
        except SpamdError as exc:
            verdict = on_error(policies)
            reason = str(exc)
            log.warning("spam: not scanned (client %s): %s; %s", client_ip, reason,
                        "answering 451" if verdict.refuse else "accepted untagged")
            self.counters.errors += 1
            return verdict
        self.counters.scanned += 1
        verdict = decide(policies, result.score)
        if verdict.refuse:
            self.counters.refused += 1
        if any(result.score >= p.threshold for p in policies):
            self.counters.spam += 1
        log.info("spam: score %.1f (client %s): %s", result.score, client_ip,
                 "refused" if verdict.refuse else "tagged" if verdict.add else "kept")
        return verdict
