"""Domains and SMTP credentials created through the API, kept in the store.

``Accounts`` is an immutable snapshot of the ``domains`` and ``credentials`` tables, loaded at start
and after every API change; app.py merges it with the config file into the ``Directory`` (config
entries win on a clash and stay read-only through the API) and into the scheduler's DKIM keys.
Each API domain has one DKIM key, generated at creation and kept in the store as PEM. The functions
of a connection are the SQL; ``AccountMethods`` are the typed store methods (``AccountStore`` the contract).
Nothing here does network I/O.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from mtad.mail import dkim
from mtad.store.changes import changed


@dataclass(frozen=True)
class DomainRecord:
    name: str
    created_at: float
    receiving: bool
    spam_action: str
    wildcard: bool
    dkim_selector: str
    dkim_key: str  # PEM private key
    spam_threshold: float | None = None  # None: the config's spam.threshold
    spam_on_error: str | None = None  # accept | tempfail; None: the config's spam.on_error

    def signing_key(self) -> dkim.DkimKey:
        return dkim.load_key(self.name, self.dkim_selector, self.dkim_key.encode())


@dataclass(frozen=True)
class Credential:
    login: str  # local@domain, lower case
    domain: str
    password_hash: str
    created_at: float


@dataclass(frozen=True)
class Accounts:
    domains: dict[str, DomainRecord] = field(default_factory=dict)
    credentials: dict[str, Credential] = field(default_factory=dict)

    def dkim_keys(self) -> dict[str, list[dkim.DkimKey]]:
        keys: dict[str, list[dkim.DkimKey]] = {}
        for d in self.domains.values():
            keys[d.name] = [d.signing_key()]
        return keys

    def directory_parts(self) -> tuple[list[tuple[str, bool]], list[tuple[str, str, str]]]:
        """``([(domain, receiving)], [(login, password_hash, domain)])`` for ``Directory.merged``."""
        return ([(d.name, d.receiving) for d in self.domains.values()],
                [(c.login, c.password_hash, c.domain) for c in self.credentials.values()])


def load(conn: sqlite3.Connection) -> Accounts:
    domains = {r[0]: DomainRecord(r[0], r[1], bool(r[2]), r[3], bool(r[4]), r[5], r[6], r[7], r[8])
               for r in conn.execute("SELECT name, created_at, receiving, spam_action, wildcard, dkim_selector, dkim_key,"
                                     " spam_threshold, spam_on_error FROM domains")}
    creds = {r[0]: Credential(*r) for r in conn.execute(
        "SELECT login, domain, password_hash, created_at FROM credentials")}
    return Accounts(domains, creds)


def add_domain(conn: sqlite3.Connection, d: DomainRecord) -> bool:
    """False when the domain exists already."""
    return _changed(conn, conn.execute(
        "INSERT INTO domains (name, created_at, receiving, spam_action, wildcard, dkim_selector, dkim_key,"
        " spam_threshold, spam_on_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO NOTHING",
        (d.name, d.created_at, int(d.receiving), d.spam_action, int(d.wildcard), d.dkim_selector,
         d.dkim_key, d.spam_threshold, d.spam_on_error)).rowcount > 0)


def update_domain(conn: sqlite3.Connection, d: DomainRecord) -> bool:
    """Set the settings ``PUT /v3/domains/{name}`` changes (spam policy, wildcard); False when there is no such
    domain. Its name, creation time, receiving flag and DKIM key stay."""
    return _changed(conn, conn.execute(
        "UPDATE domains SET spam_action = ?, wildcard = ?, spam_threshold = ?, spam_on_error = ? WHERE name = ?",
        (d.spam_action, int(d.wildcard), d.spam_threshold, d.spam_on_error, d.name)).rowcount > 0)


def _changed(conn: sqlite3.Connection, done: bool) -> bool:
    """``done``, after telling the other nodes (``store.changes``) when it is True."""
    if done:
        changed(conn, "accounts")
    return done


def delete_domain(conn: sqlite3.Connection, name: str) -> bool:
    conn.execute("DELETE FROM credentials WHERE domain = ?", (name,))
    conn.execute("DELETE FROM domain_auth_policies WHERE domain = ?", (name,))  # store.authpolicy
    return _changed(conn, conn.execute("DELETE FROM domains WHERE name = ?", (name,)).rowcount > 0)


def add_credential(conn: sqlite3.Connection, c: Credential) -> bool:
    """False when the login exists already."""
    return _changed(conn, conn.execute(
        "INSERT INTO credentials (login, domain, password_hash, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (login) DO NOTHING", (c.login, c.domain, c.password_hash, c.created_at)).rowcount > 0)


def set_password(conn: sqlite3.Connection, login: str, password_hash: str) -> bool:
    return _changed(conn, conn.execute("UPDATE credentials SET password_hash = ? WHERE login = ?",
                                       (password_hash, login)).rowcount > 0)


def delete_credential(conn: sqlite3.Connection, login: str) -> bool:
    return _changed(conn, conn.execute("DELETE FROM credentials WHERE login = ?", (login,)).rowcount > 0)


def delete_credentials(conn: sqlite3.Connection, logins: Sequence[str]) -> int:
    return sum(1 for login in logins if delete_credential(conn, login))


def set_dkim_key(conn: sqlite3.Connection, name: str, selector: str, pem: str) -> bool:
    return _changed(conn, conn.execute("UPDATE domains SET dkim_selector = ?, dkim_key = ? WHERE name = ?",
                                       (selector, pem, name)).rowcount > 0)


def add_domain_with(conn: sqlite3.Connection, d: DomainRecord, credential: Credential | None) -> bool:
    if not add_domain(conn, d):
        return False
    if credential is not None:
        add_credential(conn, credential)
    return True


class AccountStore(Protocol):
    """Domains (with their DKIM key) and SMTP credentials created through the API. Each method commits before it
    returns; callers reload the snapshot (``load_accounts``) to apply a change, and every node's
    ``on_change("accounts")`` callbacks run (``store.changes``)."""

    async def load_accounts(self) -> Accounts:
        """A consistent snapshot of every API domain and credential."""
        ...

    async def add_domain(self, record: DomainRecord, credential: Credential | None = None) -> bool:
        """Create a domain, and its first credential when given, in one transaction; False (nothing written) if
        a domain of that name exists."""
        ...

    async def update_domain(self, record: DomainRecord) -> bool:
        """Set the domain's ``spam_action``, ``wildcard``, ``spam_threshold`` and ``spam_on_error`` to the record's
        (the other fields are kept); False (nothing written) if there is no domain of that name."""
        ...

    async def delete_domain(self, name: str) -> bool:
        """Delete a domain and every credential of it, together; False if there was no such domain."""
        ...

    async def add_credential(self, credential: Credential) -> bool:
        """False (nothing written) if the login exists."""
        ...

    async def set_password(self, login: str, password_hash: str) -> bool:
        """False if there is no such login."""
        ...

    async def delete_credentials(self, logins: Sequence[str]) -> int:
        """Delete these logins in one transaction; the number that existed."""
        ...

    async def set_dkim_key(self, name: str, selector: str, pem: str) -> bool:
        """Replace an API domain's DKIM key (a rotation: the new selector and PEM private key); False if there is
        no such domain."""
        ...


class AccountMethods:
    """``AccountStore`` over the SQLite engine (a mixin of ``SqliteStore``)."""

    async def load_accounts(self) -> Accounts:
        return await self.read(load)

    async def _account_change(self, fn):
        result = await self.write(fn)
        self._changed("accounts")
        return result

    async def add_domain(self, record: DomainRecord, credential: Credential | None = None) -> bool:
        return await self._account_change(lambda c: add_domain_with(c, record, credential))

    async def update_domain(self, record: DomainRecord) -> bool:
        return await self._account_change(lambda c: update_domain(c, record))

    async def delete_domain(self, name: str) -> bool:
        return await self._account_change(lambda c: delete_domain(c, name))

    async def add_credential(self, credential: Credential) -> bool:
        return await self._account_change(lambda c: add_credential(c, credential))

    async def set_password(self, login: str, password_hash: str) -> bool:
        return await self._account_change(lambda c: set_password(c, login, password_hash))

    async def delete_credentials(self, logins: Sequence[str]) -> int:
        logins = tuple(logins)
        return await self._account_change(lambda c: delete_credentials(c, logins))

    async def set_dkim_key(self, name: str, selector: str, pem: str) -> bool:
        return await self._account_change(lambda c: set_dkim_key(c, name, selector, pem))
