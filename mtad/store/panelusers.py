"""Users of the web control panel (``mtad/ui``), kept in the store's ``panel_users`` table.

A user is a login and a password hash made by ``mtad.base.passwords.hash_password`` (scrypt, as the SMTP
credentials'); the password itself is never stored. Logins are lower-cased, 1 to 64 characters. ``mtad ui-user
add/passwd/remove`` manage them; the panel only reads them to check a sign-in. ``PanelUserStore`` is the
contract, ``PanelUserMethods`` its implementation on either engine (plain SQL both run).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class PanelUser:
    login: str  # lower case
    password_hash: str  # $scrypt$...
    created_at: float


def _get(conn: sqlite3.Connection, login: str) -> PanelUser | None:
    row = conn.execute("SELECT login, password_hash, created_at FROM panel_users WHERE login = ?",
                       (login,)).fetchone()
    return PanelUser(row[0], row[1], row[2]) if row else None


def _list(conn: sqlite3.Connection) -> tuple[PanelUser, ...]:
    return tuple(PanelUser(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT login, password_hash, created_at FROM panel_users ORDER BY login"))


def _add(conn: sqlite3.Connection, user: PanelUser) -> bool:
    return conn.execute("INSERT INTO panel_users (login, password_hash, created_at) VALUES (?, ?, ?)"
                        " ON CONFLICT (login) DO NOTHING",
                        (user.login, user.password_hash, user.created_at)).rowcount > 0


def _set_password(conn: sqlite3.Connection, login: str, password_hash: str) -> bool:
    return conn.execute("UPDATE panel_users SET password_hash = ? WHERE login = ?",
                        (password_hash, login)).rowcount > 0


def _delete(conn: sqlite3.Connection, login: str) -> bool:
    return conn.execute("DELETE FROM panel_users WHERE login = ?", (login,)).rowcount > 0


class PanelUserStore(Protocol):
    """The panel's users. Each change commits before it returns; a sign-in reads the user afresh, so a changed
    password or a removed user applies to the next sign-in on every node (sessions already open stay until they
    expire or sign out)."""

    async def panel_user(self, login: str) -> PanelUser | None:
        """The user of that (lower-case) login, or None."""
        ...

    async def panel_users(self) -> tuple[PanelUser, ...]:
        """Every user, by login."""
        ...

    async def add_panel_user(self, user: PanelUser) -> bool:
        """False (nothing written) if the login exists."""
        ...

    async def set_panel_password(self, login: str, password_hash: str) -> bool:
        """False if there is no such login."""
        ...

    async def delete_panel_user(self, login: str) -> bool:
        """False if there was no such login."""
        ...


class PanelUserMethods:
    """``PanelUserStore`` over either engine (a mixin of ``SqliteStore`` and ``PostgresStore``)."""

    async def panel_user(self, login: str) -> PanelUser | None:
        return await self.read(lambda c: _get(c, login))

    async def panel_users(self) -> tuple[PanelUser, ...]:
        return await self.read(_list)

    async def add_panel_user(self, user: PanelUser) -> bool:
        return await self.write(lambda c: _add(c, user))

    async def set_panel_password(self, login: str, password_hash: str) -> bool:
        return await self.write(lambda c: _set_password(c, login, password_hash))

    async def delete_panel_user(self, login: str) -> bool:
        return await self.write(lambda c: _delete(c, login))
