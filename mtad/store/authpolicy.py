"""Per receiving domain authentication policies set through the API (``PUT /v3/domains/{name}/authentication``).

A row of ``domain_auth_policies`` is one API domain's policy (``config.schema.AuthPolicyConfig``: what is done on
DMARC ``p=reject``/``p=quarantine`` failure, SPF fail, no authentication); a domain without a row follows the
config file's ``authentication.policy``. Deleting the domain deletes its row (``accounts.delete_domain``).
``AuthPolicyMethods`` are the typed store methods (``AuthPolicyStore`` the contract); the functions of a
connection are the SQL, the same on both backends.
"""

from __future__ import annotations

import sqlite3
from typing import Protocol

from mtad.config.schema import AuthPolicyConfig
from mtad.store.changes import changed

_FIELDS = ("dmarc_reject", "dmarc_quarantine", "spf_fail", "no_auth")


def load(conn: sqlite3.Connection) -> dict[str, AuthPolicyConfig]:
    return {r[0]: AuthPolicyConfig(*r[1:]) for r in conn.execute(
        f"SELECT domain, {', '.join(_FIELDS)} FROM domain_auth_policies")}


def put(conn: sqlite3.Connection, domain: str, policy: AuthPolicyConfig, now: float) -> None:
    values = tuple(getattr(policy, f) for f in _FIELDS)
    conn.execute(
        f"INSERT INTO domain_auth_policies (domain, {', '.join(_FIELDS)}, updated_at) VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (domain) DO UPDATE SET dmarc_reject = excluded.dmarc_reject,"
        " dmarc_quarantine = excluded.dmarc_quarantine, spf_fail = excluded.spf_fail, no_auth = excluded.no_auth,"
        " updated_at = excluded.updated_at", (domain, *values, now))
    changed(conn, "accounts")


def delete(conn: sqlite3.Connection, domain: str) -> bool:
    return conn.execute("DELETE FROM domain_auth_policies WHERE domain = ?", (domain,)).rowcount > 0


class AuthPolicyStore(Protocol):
    """API domains' authentication policies. ``set_auth_policy`` commits before it returns and tells every node
    (``on_change("accounts")``)."""

    async def load_auth_policies(self) -> dict[str, AuthPolicyConfig]:
        """Every stored policy, by domain."""
        ...

    async def set_auth_policy(self, domain: str, policy: AuthPolicyConfig, now: float) -> None:
        """Create or replace ``domain``'s policy."""
        ...


class AuthPolicyMethods:
    """``AuthPolicyStore`` over either engine (a mixin of both stores)."""

    async def load_auth_policies(self) -> dict[str, AuthPolicyConfig]:
        return await self.read(load)

    async def set_auth_policy(self, domain: str, policy: AuthPolicyConfig, now: float) -> None:
        await self.write(lambda c: put(c, domain, policy, now))
        self._changed("accounts")
