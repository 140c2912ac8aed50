"""``Verifier``: the authentication checks of one inbound message, and what they mean for it.

``await verifier.check(content, fields, client_ip=, helo=, sender=, domains=)`` -> ``Checked``:
- the message with forged verdict headers removed and, when checks are enabled, the
  ``Authentication-Results`` and verdict headers added at its top (``results``);
- ``verdicts``: the summary kept with the message for events (None when disabled);
- ``reply``: a ``550 5.7.1`` when a recipient domain's policy rejects the message, else None;
- ``fields``: the header fields of ``content`` (what ``headers.parse_block`` gives), made from the fields given
  and the lines added when that is sure to give the same, else None (the caller parses the block again).

How it runs: at most ``max_concurrent`` messages are checked at once (others wait). For one message the SPF
evaluation, the DKIM/ARC key lookups and the DMARC record lookup run concurrently on mtad's resolver (in turn when
their first records are all in the resolver's cache: then nothing waits, and tasks would only cost CPU); then the
DKIM/ARC verification (CPU) runs in the worker pool (``dkimjob``); then DMARC is evaluated. Past ``timeout``
seconds the checks not finished are ``temperror``. A ``temperror`` never rejects: only a definite failure does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from mtad.base.errors import TempFailure
from mtad.config.schema import AuthenticationConfig, AuthPolicyConfig
from mtad.inbound.verdicts import dkimjob, dmarc, results, spf
from mtad.mail import headers

log = logging.getLogger("mtad.verdicts")


@dataclass(frozen=True)
class Checked:
    content: bytes
    verdicts: Mapping[str, str] | None = None
    reply: str | None = None
    fields: list[headers.HeaderField] | None = None


@dataclass
class Counters:
    checked: int = 0
    rejected: int = 0
    quarantined: int = 0
    timeouts: int = 0
    seconds: float = 0.0  # wall time spent in checks, all messages


class Verifier:
    """The checks, configured by ``authentication`` (reload: ``configure``); ``dns`` is mtad's resolver."""

    def __init__(self, config: AuthenticationConfig, hostname: str, dns: spf.Dns):
        self.dns = dns
        self.pool = dkimjob.verifier(config.workers)
        self.counters = Counters()
        self.stored_policies: Mapping[str, AuthPolicyConfig] = {}  # set through the API (the store)
        self.configure(config, hostname)

    def configure(self, config: AuthenticationConfig, hostname: str) -> None:
        self.config = config
        self.authserv_id = config.authserv_id or hostname
        self._slots = asyncio.Semaphore(config.max_concurrent)

    def policy(self, domain: str) -> AuthPolicyConfig:
        """A receiving domain's policy: the config file's entry, else the API's, else the default."""
        domain = domain.lower()
        return self.config.domains.get(domain) or self.stored_policies.get(domain) or self.config.policy

    async def close(self) -> None:
        await self.pool.close()

    async def check(self, content: bytes, fields: list[headers.HeaderField], *, client_ip: str, helo: str,
                    sender: str, domains: Iterable[str]) -> Checked:
        from_values, signed, suspects = _fields_of_interest(fields)
        forged = results.forged(suspects, self.authserv_id)
        cleaned = headers.remove(content, forged)
        if not self.config.enabled:
            return Checked(cleaned)
        started = time.monotonic()
        async with self._slots:
            try:
                async with asyncio.timeout(self.config.timeout.seconds):  # no task of its own, as wait_for makes
                    verdicts = await self._verdicts(content, from_values, signed, client_ip, helo, sender)
            except asyncio.TimeoutError:
                self.counters.timeouts += 1
                verdicts = _all_temperror(sender, helo, "checks timed out")
            except Exception:  # noqa: BLE001 - never a lost message for a checker's bug: all temperror, logged
                log.exception("authentication checks failed")
                verdicts = _all_temperror(sender, helo, "internal error")
        decision = results.decide(verdicts, [self.policy(d) for d in set(domains)])
        self.counters.checked += 1
        self.counters.seconds += time.monotonic() - started
        if decision.action == "reject":
            self.counters.rejected += 1
        elif decision.action == "quarantine":
            self.counters.quarantined += 1
        if log.isEnabledFor(logging.DEBUG):  # its arguments cost a few µs per message to make
            log.debug("verdicts spf=%s dkim=%s dmarc=%s arc=%s action=%s client=%s", verdicts.spf.result,
                      verdicts.dkim_result, verdicts.dmarc.result, verdicts.arc, decision.action, client_ip)
        lines = results.encoded(results.header_fields(self.authserv_id, verdicts, decision))
        block = b"".join(line for line, _ in lines)
        return Checked(block + cleaned, results.summary(verdicts, decision), decision.reply or None,
                       None if forged else _fields_after(lines, content, fields))

    async def _verdicts(self, content: bytes, from_values: list[str], signed: list[tuple[str, str]],
                        client_ip: str, helo: str, sender: str) -> results.Verdicts:
        from_domain = dmarc.author_domain(from_values)
        names = dkimjob.key_names(signed, self.config.max_signatures)
        spf_domain = (sender.rpartition("@")[2] if "@" in sender else helo).lower().rstrip(".")
        known = getattr(self.dns, "known", None)
        if known is not None and all(known(n, "TXT") for n in (spf_domain, f"_dmarc.{from_domain}", *names)):
            # every first lookup is in the resolver's cache: in turn, without the tasks concurrency costs
            spf_result = await spf.check_host(self.dns, client_ip, sender, helo)
            keys = {n: await self._key(n) for n in names}
            policy = await self._dmarc_policy(from_domain)
            outcome = dkimjob.DkimOutcome((), "none")
            if names:
                outcome = await self.pool.run((content, keys, self.config.max_signatures))
        else:
            policy_task = asyncio.ensure_future(self._dmarc_policy(from_domain))
            try:
                spf_result, keys = await asyncio.gather(spf.check_host(self.dns, client_ip, sender, helo),
                                                        self._keys(names))
                outcome = dkimjob.DkimOutcome((), "none")
                if names:
                    outcome = await self.pool.run((content, keys, self.config.max_signatures))
                policy = await policy_task
            finally:
                policy_task.cancel()
        dkim_domains = [s.domain for s in outcome.signatures if s.result == "pass"]
        if from_domain is None:
            verdict = dmarc.DmarcResult("permerror", "", "none", "not exactly one author address in From")
        elif isinstance(policy, TempFailure):
            verdict = dmarc.DmarcResult("temperror", from_domain, "none", "DMARC record lookup failed")
        else:
            verdict = dmarc.evaluate(policy, from_domain, spf_result.result, spf_result.domain, dkim_domains)
        return results.Verdicts(spf_result, outcome.signatures, verdict, outcome.arc, outcome.arc_reason)

    async def _dmarc_policy(self, from_domain: str | None) -> dmarc.DmarcPolicy | TempFailure | None:
        if from_domain is None:
            return None
        try:
            return await dmarc.fetch_policy(self.dns, from_domain)
        except TempFailure as exc:
            return exc

    async def _key(self, name: str) -> str | None:
        """The DKIM key record at ``name`` (the one with ``p=`` among others sharing the name); ``TEMP``."""
        try:
            texts = await self.dns.records(name, "TXT")
        except TempFailure:
            return dkimjob.TEMP
        for text in texts:
            if "p=" in text:
                return text
        return texts[0] if texts else None

    async def _keys(self, names: list[str]) -> dict[str, str | None]:
        found = await asyncio.gather(*(self._key(n) for n in names))
        return dict(zip(names, found))


_SIGNED = frozenset(("dkim-signature", "arc-message-signature", "arc-seal"))
_SUSPECT = frozenset(("authentication-results", *results.VERDICT_HEADERS))
_FIRST = frozenset("fFdDaAxX")  # the first letters of every name above and of From


def _fields_of_interest(fields: list[headers.HeaderField]
                        ) -> tuple[list[str], list[tuple[str, str]], list[headers.HeaderField]]:
    """One pass over the fields: the From values (DMARC), the signatures and seals as (name, value) (key
    lookups), and the fields ``results.forged`` looks at; a name's first letter turns most fields away
    (``Received``, ``To``, ``Subject``...) before it is lowered."""
    from_values: list[str] = []
    signed: list[tuple[str, str]] = []
    suspects: list[headers.HeaderField] = []
    for f in fields:
        if f.name[:1] not in _FIRST:
            continue
        lower = f.name.lower()
        if lower == "from":
            from_values.append(f.value)
        elif lower in _SIGNED:
            signed.append((f.name, f.value))
        elif lower in _SUSPECT:
            suspects.append(f)
    return from_values, signed, suspects


def _fields_after(lines: list[tuple[bytes, str]], content: bytes, fields: list[headers.HeaderField]
                  ) -> list[headers.HeaderField] | None:
    """The fields of the added ``lines`` + ``content``: the lines' own (``results.encoded``), then ``content``'s
    (``fields``) with their spans moved; no second parse of the whole header block. None when ``content``
    starts with folding white space (a line that would continue the last added field)."""
    if content[:1] in (b" ", b"\t"):
        return None
    out, shift = [], 0
    for line, value in lines:
        name = line[:line.index(b":")].decode("ascii")
        out.append(headers.HeaderField(name, value, shift, shift + len(line)))
        shift += len(line)
    return out + [headers.HeaderField(f.name, f.value, f.start + shift, f.end + shift) for f in fields]


def _all_temperror(sender: str, helo: str, reason: str) -> results.Verdicts:
    domain = (sender.rpartition("@")[2] if "@" in sender else helo).lower()
    return results.Verdicts(spf.SpfResult("temperror", domain, "mailfrom" if "@" in sender else "helo", reason),
                            (), dmarc.DmarcResult("temperror", "", "none", reason), "none")
