"""SMTP AUTH failure limits across connections: per client address and per account (login).

The per-connection brake (``limits.max_auth_failures``) stops one connection; a guesser opens many. Like
Postfix's anvil (``smtpd_client_auth_rate_limit``), this counts across connections, in memory:

- ``admit(client_ip, login, now)`` before checking a password: the scope (``"client"`` or ``"account"``)
  that is locked, else None, and the attempt is then counted as pending until ``done``. Failures plus
  attempts still being checked count against the limit, so parallel guesses cannot overshoot it.
- ``done(client_ip, login, ok, now)`` after the check. A failure is recorded in a sliding window of
  ``auth_failure_window``; reaching ``max_auth_failures_per_client`` (or ``..._per_account``) locks that
  address (or login) for ``auth_lockout``, logged once, after which counting starts afresh. Attempts while
  locked are refused without checking the password (a correct one too) and do not prolong the lockout.

An IPv6 client is counted by its /64 (one host's usual share); a login is lower-cased. Limits of 0 turn a
scope off. The table is bounded (``MAX_KEYS``): idle entries are swept first; past it, new keys are not
tracked until room frees up. Single-threaded (the event loop's).
"""

from __future__ import annotations

import ipaddress
import logging
from collections import Counter, deque
from dataclasses import dataclass, field

from mtad.config.schema import LimitsConfig
from mtad.base.rates import Duration

log = logging.getLogger("mtad.auth")

MAX_KEYS = 100_000
SCOPES = ("client", "account")


@dataclass
class _Entry:
    failures: deque[float] = field(default_factory=deque)
    pending: int = 0
    locked_until: float = 0.0


def client_key(ip: str) -> str:
    """The address counted for ``ip``: itself for IPv4, its /64 for IPv6 (IPv4-mapped: the IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthGuard:
    def __init__(self, limits: LimitsConfig):
        self.configure(limits)
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._next_sweep = 0.0
        self.failures = 0  # wrong credentials, all scopes
        self.lockouts: Counter[str] = Counter()  # scope -> lockouts begun
        self.refused: Counter[str] = Counter()  # scope -> attempts refused while locked or at the limit

    def configure(self, limits: LimitsConfig) -> None:
        """New limits (SIGHUP); the counts so far are kept."""
        self.max = {"client": limits.max_auth_failures_per_client, "account": limits.max_auth_failures_per_account}
        self.window = limits.auth_failure_window.seconds
        self.lockout = limits.auth_lockout.seconds

    def _keys(self, client_ip: str, login: str) -> list[tuple[str, str]]:
        keys = [("client", client_key(client_ip)), ("account", login.strip().lower()[:256])]
        return [k for k in keys if self.max[k[0]] > 0]

    def _entry(self, key: tuple[str, str], create: bool) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None and create:
            if len(self._entries) >= MAX_KEYS:
                return None
            entry = self._entries[key] = _Entry()
        return entry

    def _prune(self, entry: _Entry, now: float) -> None:
        while entry.failures and entry.failures[0] <= now - self.window:
            entry.failures.popleft()

    def admit(self, client_ip: str, login: str, now: float) -> str | None:
        """The locked scope refusing this attempt, or None (the attempt is then pending until ``done``)."""
        keys = self._keys(client_ip, login)
        for key in keys:
            entry = self._entries.get(key)
            if entry is None:
                continue
            if entry.locked_until > now:
                self.refused[key[0]] += 1
                return key[0]
            self._prune(entry, now)
            if len(entry.failures) + entry.pending >= self.max[key[0]]:
                self.refused[key[0]] += 1  # attempts in flight would reach the limit: wait for them
                return key[0]
        for key in keys:
            entry = self._entry(key, create=True)
            if entry is not None:
                entry.pending += 1
        return None

    def done(self, client_ip: str, login: str, ok: bool, now: float) -> None:
        """The outcome of an admitted attempt."""
        if not ok:
            self.failures += 1
        for key in self._keys(client_ip, login):
            entry = self._entry(key, create=False)
            if entry is None:
                continue
            entry.pending = max(0, entry.pending - 1)
            if ok:
                if not entry.pending and not entry.failures and entry.locked_until <= now:
                    del self._entries[key]
                continue
            self._prune(entry, now)
            entry.failures.append(now)
            if len(entry.failures) >= self.max[key[0]]:
                entry.locked_until = now + self.lockout
                entry.failures.clear()
                self.lockouts[key[0]] += 1
                log.warning("AUTH lockout: %s %s after %d failed authentications within %s; refused for %s",
                            key[0], key[1] if key[0] == "client" else repr(key[1][:100]), self.max[key[0]],
                            Duration(self.window), Duration(self.lockout))
        if len(self._entries) >= MAX_KEYS and now >= self._next_sweep:
            self._next_sweep = now + 1.0  # a full table of live entries is not swept on every failure
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Forget entries that hold nothing: no recent failure, no attempt in flight, no lockout."""
        for key in list(self._entries):
            entry = self._entries[key]
            self._prune(entry, now)
            if not entry.failures and not entry.pending and entry.locked_until <= now:
                del self._entries[key]
