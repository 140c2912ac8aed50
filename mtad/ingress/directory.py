"""Who may send and what mtad receives: SMTP users, sending domains, receiving domains.

Built from the configuration, merged with the domains and credentials created through the API;
replaced as a whole on reload, so readers always see a consistent snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from mtad.config.schema import Config


@dataclass(frozen=True)
class User:
    login: str  # local@domain
    password_hash: str
    domain: str
    send_as: frozenset[str]


@dataclass(frozen=True)
class Directory:
    users: dict[str, User]
    sending_domains: frozenset[str]
    receiving_domains: frozenset[str]

    @classmethod
    def from_config(cls, cfg: Config) -> "Directory":
        users = {}
        for login, (user, domain) in cfg.users().items():
            send_as = frozenset(d.lower() for d in user.send_as) or frozenset({domain})
            users[login.lower()] = User(login.lower(), user.password_hash.reveal(), domain, send_as)
        return cls(users, frozenset(cfg.sending_domains), frozenset(d.lower() for d in cfg.receiving_domains))

    def merged(self, domains: Iterable[tuple[str, bool]], users: Iterable[tuple[str, str, str]]) -> "Directory":
        """This directory plus domains ``(name, receiving)`` and users ``(login, password_hash, domain)``
        created through the API; the config file's entries win on a clash."""
        domains = list(domains)
        merged_users = dict(self.users)
        for login, password_hash, domain in users:
            merged_users.setdefault(login.lower(), User(login.lower(), password_hash, domain, frozenset({domain})))
        return Directory(merged_users, self.sending_domains | {d for d, _ in domains},
                         self.receiving_domains | {d for d, receiving in domains if receiving})

    def user(self, login: str) -> User | None:
        return self.users.get(login.lower())

    def may_send_as(self, login: str, sender: str) -> bool:
        """A user may use an envelope sender of its allowed domains (and the null sender, for DSNs)."""
        user = self.user(login)
        if user is None:
            return False
        if sender == "":
            return True
        return sender.rpartition("@")[2].lower() in user.send_as

    def receives(self, domain: str) -> bool:
        return domain.lower() in self.receiving_domains
