"""Stored templates (Mailgun's ``/v3/{domain}/templates``): a template per (domain, name) and its versions.

Tables ``templates`` (domain, name, id, description, created_by, created_at) and ``template_versions`` (domain,
template, tag, id, content, engine, comment, headers as a JSON object, active, created_at), the versions deleted
with their template. Names are stored lower-cased (Mailgun down-cases them); tags as given. At most one version of
a template is active: a write that makes one active makes the others inactive in the same statement list, and the
first version of a template becomes active whatever was asked. What is checked here, inside the write that
changes it (so two racing requests cannot both pass): the name or tag being new, and the counts (``max_templates``
per domain, ``max_versions`` per template). The content is stored as given: the API checks it compiles before.

``TemplateStore`` is the contract, ``TemplateMethods`` its implementation over either engine.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Literal, Protocol

Page = Literal["first", "last", "next", "previous", "prev"]
Outcome = Literal["ok", "exists", "missing", "full"]  # done; name/tag taken; no such template/version; at a limit


@dataclass(frozen=True)
class TemplateVersion:
    """One version of a template; ``content`` is "" where a listing leaves it out."""

    tag: str
    id: str
    engine: str
    comment: str
    headers: tuple[tuple[str, str], ...]  # From, Subject, Reply-To (Mailgun's three), in the order given
    active: bool
    created_at: float
    content: str = ""


@dataclass(frozen=True)
class Template:
    """A template's metadata, with one version where the read asked for it (else None)."""

    domain: str
    name: str
    id: str
    description: str
    created_by: str
    created_at: float
    version: TemplateVersion | None = None


def new_id() -> str:
    """A Mailgun-like id (its templates and versions have UUIDs): 32 hex digits, the first 8 the creation second."""
    return f"{int(time.time()):08x}{os.urandom(12).hex()}"


_T_COLS = "domain, name, id, description, created_by, created_at"
_V_COLS = "tag, id, engine, comment, headers, active, created_at"


def _template(row: tuple, version: TemplateVersion | None = None) -> Template:
    return Template(row[0], row[1], row[2], row[3], row[4], row[5], version)


def _version(row: tuple, content: str = "") -> TemplateVersion:
    headers = tuple((str(k), str(v)) for k, v in json.loads(row[4] or "{}").items())
    return TemplateVersion(row[0], row[1], row[2], row[3], headers, bool(row[5]), row[6], content)


def _headers_json(headers: tuple[tuple[str, str], ...]) -> str:
    return json.dumps(dict(headers))


def _get(conn: sqlite3.Connection, domain: str, name: str) -> Template | None:
    row = conn.execute(f"SELECT {_T_COLS} FROM templates WHERE domain = ? AND name = ?", (domain, name)).fetchone()
    return None if row is None else _template(tuple(row))


def _insert_version(conn: sqlite3.Connection, domain: str, name: str, v: TemplateVersion) -> None:
    if v.active:
        conn.execute("UPDATE template_versions SET active = 0 WHERE domain = ? AND template = ?", (domain, name))
    conn.execute(
        "INSERT INTO template_versions (domain, template, tag, id, content, engine, comment, headers, active,"
        " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (domain, name, v.tag, v.id, v.content, v.engine, v.comment, _headers_json(v.headers), int(v.active),
         v.created_at))


def add(conn: sqlite3.Connection, t: Template, max_templates: int) -> Outcome:
    if _get(conn, t.domain, t.name) is not None:
        return "exists"
    count = conn.execute("SELECT count(*) FROM templates WHERE domain = ?", (t.domain,)).fetchone()[0]
    if count >= max_templates:
        return "full"
    conn.execute(f"INSERT INTO templates ({_T_COLS}) VALUES (?, ?, ?, ?, ?, ?)",
                 (t.domain, t.name, t.id, t.description, t.created_by, t.created_at))
    if t.version is not None:
        _insert_version(conn, t.domain, t.name, _active(t.version))
    return "ok"


def _active(v: TemplateVersion) -> TemplateVersion:
    return v if v.active else TemplateVersion(v.tag, v.id, v.engine, v.comment, v.headers, True, v.created_at,
                                              v.content)


def describe(conn: sqlite3.Connection, domain: str, name: str, description: str) -> Template | None:
    if conn.execute("UPDATE templates SET description = ? WHERE domain = ? AND name = ?",
                    (description, domain, name)).rowcount == 0:
        return None
    return _get(conn, domain, name)


def remove(conn: sqlite3.Connection, domain: str, name: str) -> bool:
    conn.execute("DELETE FROM template_versions WHERE domain = ? AND template = ?", (domain, name))
    return conn.execute("DELETE FROM templates WHERE domain = ? AND name = ?", (domain, name)).rowcount > 0


def remove_all(conn: sqlite3.Connection, domain: str) -> int:
    conn.execute("DELETE FROM template_versions WHERE domain = ?", (domain,))
    return conn.execute("DELETE FROM templates WHERE domain = ?", (domain,)).rowcount


def _paged(which: Page, pivot: str | None, column: str) -> tuple[str, list[str], str]:
    if which == "next" and pivot is not None:
        return f" AND {column} > ?", [pivot], "ASC"
    if which in ("previous", "prev") and pivot is not None:
        return f" AND {column} < ?", [pivot], "DESC"
    return "", [], "DESC" if which == "last" else "ASC"


def page(conn: sqlite3.Connection, domain: str, limit: int, which: Page, pivot: str | None) -> list[Template]:
    where, params, order = _paged(which, pivot, "name")
    rows = conn.execute(f"SELECT {_T_COLS} FROM templates WHERE domain = ?{where} ORDER BY name {order} LIMIT ?",
                        (domain, *params, limit)).fetchall()
    found = [_template(tuple(r)) for r in rows]
    return found[::-1] if order == "DESC" else found


def get(conn: sqlite3.Connection, domain: str, name: str, tag: str | None, active: bool) -> Template | None:
    t = _get(conn, domain, name)
    if t is None or (tag is None and not active):
        return t
    where, param = ("tag = ?", tag) if tag is not None else ("active = ?", 1)
    row = conn.execute(f"SELECT {_V_COLS}, content FROM template_versions WHERE domain = ? AND template = ?"
                       f" AND {where}", (domain, name, param)).fetchone()
    return t if row is None else _template((t.domain, t.name, t.id, t.description, t.created_by, t.created_at),
                                           _version(tuple(row), row[7]))


def versions(conn: sqlite3.Connection, domain: str, name: str, limit: int, which: Page,
             pivot: str | None) -> tuple[Template, list[TemplateVersion]] | None:
    t = _get(conn, domain, name)
    if t is None:
        return None
    where, params, order = _paged(which, pivot, "tag")
    rows = conn.execute(f"SELECT {_V_COLS} FROM template_versions WHERE domain = ? AND template = ?{where}"
                        f" ORDER BY tag {order} LIMIT ?", (domain, name, *params, limit)).fetchall()
    found = [_version(tuple(r)) for r in rows]
    return t, (found[::-1] if order == "DESC" else found)


def add_version(conn: sqlite3.Connection, domain: str, name: str, v: TemplateVersion, max_versions: int) -> Outcome:
    if _get(conn, domain, name) is None:
        return "missing"
    if conn.execute("SELECT 1 FROM template_versions WHERE domain = ? AND template = ? AND tag = ?",
                    (domain, name, v.tag)).fetchone() is not None:
        return "exists"
    count = conn.execute("SELECT count(*) FROM template_versions WHERE domain = ? AND template = ?",
                         (domain, name)).fetchone()[0]
    if count >= max_versions:
        return "full"
    _insert_version(conn, domain, name, _active(v) if count == 0 else v)
    return "ok"


def change_version(conn: sqlite3.Connection, domain: str, name: str, tag: str, content: str | None,
                   comment: str | None, headers: tuple[tuple[str, str], ...] | None, active: bool) -> Outcome:
    if conn.execute("SELECT 1 FROM template_versions WHERE domain = ? AND template = ? AND tag = ?",
                    (domain, name, tag)).fetchone() is None:
        return "missing"
    if active:
        conn.execute("UPDATE template_versions SET active = 0 WHERE domain = ? AND template = ?", (domain, name))
        conn.execute("UPDATE template_versions SET active = 1 WHERE domain = ? AND template = ? AND tag = ?",
                     (domain, name, tag))
    for column, value in (("content", content), ("comment", comment),
                          ("headers", None if headers is None else _headers_json(headers))):
        if value is not None:
            conn.execute(f"UPDATE template_versions SET {column} = ? WHERE domain = ? AND template = ? AND tag = ?",
                         (value, domain, name, tag))
    return "ok"


def remove_version(conn: sqlite3.Connection, domain: str, name: str, tag: str) -> bool:
    return conn.execute("DELETE FROM template_versions WHERE domain = ? AND template = ? AND tag = ?",
                        (domain, name, tag)).rowcount > 0


def copy_version(conn: sqlite3.Connection, domain: str, name: str, tag: str, new_tag: str, comment: str | None,
                 now: float, max_versions: int) -> tuple[Outcome, TemplateVersion | None]:
    row = conn.execute(f"SELECT {_V_COLS}, content FROM template_versions WHERE domain = ? AND template = ?"
                       " AND tag = ?", (domain, name, tag)).fetchone()
    if row is None:
        return "missing", None
    source = _version(tuple(row), row[7])
    copy = TemplateVersion(new_tag, new_id(), source.engine, source.comment if comment is None else comment,
                           source.headers, False, now, source.content)
    outcome = add_version(conn, domain, name, copy, max_versions)
    return outcome, (copy if outcome == "ok" else None)


class TemplateStore(Protocol):
    """Stored templates and their versions. Every change commits before it returns; the limits and the
    uniqueness of names and tags hold under concurrent requests (each check is in the write that changes)."""

    async def add_template(self, template: Template, max_templates: int) -> Outcome:
        """Store a new template (its ``version``, if any, becomes its first and active version): ``exists`` if
        the domain has one of that name, ``full`` at ``max_templates``."""
        ...

    async def describe_template(self, domain: str, name: str, description: str) -> Template | None:
        """Set a template's description; the template, or None if there is none of that name."""
        ...

    async def delete_template(self, domain: str, name: str) -> bool:
        """Delete a template and its versions; False if there was none."""
        ...

    async def delete_templates(self, domain: str) -> int:
        """Delete every template of a domain; how many."""
        ...

    async def template_page(self, domain: str, limit: int, which: Page, pivot: str | None = None
                            ) -> tuple[Template, ...]:
        """At most ``limit`` templates in name order: the ``first`` or ``last`` ones, or those after (``next``) or
        before (``previous``) the name ``pivot``. Without versions."""
        ...

    async def get_template(self, domain: str, name: str, tag: str | None = None, active: bool = False
                           ) -> Template | None:
        """A template, with the version ``tag`` (or its active one when ``active``) and its content; the
        template with ``version`` None when there is no such version; None when there is no such template."""
        ...

    async def template_versions(self, domain: str, name: str, limit: int, which: Page, pivot: str | None = None
                                ) -> tuple[Template, tuple[TemplateVersion, ...]] | None:
        """A template and a page of its versions in tag order (without content), or None."""
        ...

    async def add_template_version(self, domain: str, name: str, version: TemplateVersion,
                                   max_versions: int) -> Outcome:
        """Add a version (active if asked or if it is the first; then the only active one): ``missing`` without
        the template, ``exists`` if the tag is taken, ``full`` at ``max_versions``."""
        ...

    async def update_template_version(self, domain: str, name: str, tag: str, *, content: str | None = None,
                                      comment: str | None = None,
                                      headers: tuple[tuple[str, str], ...] | None = None,
                                      active: bool = False) -> Outcome:
        """Change what is given of a version; ``active`` makes it the only active one. ``missing`` without it."""
        ...

    async def delete_template_version(self, domain: str, name: str, tag: str) -> bool:
        """Delete a version (the active one too: the template then has none); False if there was none."""
        ...

    async def copy_template_version(self, domain: str, name: str, tag: str, new_tag: str, comment: str | None,
                                    now: float, max_versions: int) -> tuple[Outcome, TemplateVersion | None]:
        """A new inactive version ``new_tag`` with the content, engine and headers of ``tag`` (its comment unless
        ``comment`` is given) and the copy; outcome as ``add_template_version``, ``missing`` without the source."""
        ...


class TemplateMethods:
    """``TemplateStore`` over the store's engine (a mixin of ``SqliteStore`` and ``PostgresStore``)."""

    async def add_template(self, template: Template, max_templates: int) -> Outcome:
        return await self.write(lambda c: add(c, template, max_templates))  # type: ignore[attr-defined]

    async def describe_template(self, domain: str, name: str, description: str) -> Template | None:
        return await self.write(lambda c: describe(c, domain, name, description))  # type: ignore[attr-defined]

    async def delete_template(self, domain: str, name: str) -> bool:
        return await self.write(lambda c: remove(c, domain, name))  # type: ignore[attr-defined]

    async def delete_templates(self, domain: str) -> int:
        return await self.write(lambda c: remove_all(c, domain))  # type: ignore[attr-defined]

    async def template_page(self, domain: str, limit: int, which: Page, pivot: str | None = None
                            ) -> tuple[Template, ...]:
        return tuple(await self.read(lambda c: page(c, domain, limit, which, pivot)))  # type: ignore[attr-defined]

    async def get_template(self, domain: str, name: str, tag: str | None = None, active: bool = False
                           ) -> Template | None:
        return await self.read(lambda c: get(c, domain, name, tag, active))  # type: ignore[attr-defined]

    async def template_versions(self, domain: str, name: str, limit: int, which: Page, pivot: str | None = None
                                ) -> tuple[Template, tuple[TemplateVersion, ...]] | None:
        found = await self.read(lambda c: versions(c, domain, name, limit, which, pivot))  # type: ignore[attr-defined]
        return None if found is None else (found[0], tuple(found[1]))

    async def add_template_version(self, domain: str, name: str, version: TemplateVersion,
                                   max_versions: int) -> Outcome:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: add_version(c, domain, name, version, max_versions))

    async def update_template_version(self, domain: str, name: str, tag: str, *, content: str | None = None,
                                      comment: str | None = None,
                                      headers: tuple[tuple[str, str], ...] | None = None,
                                      active: bool = False) -> Outcome:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: change_version(c, domain, name, tag, content, comment, headers, active))

    async def delete_template_version(self, domain: str, name: str, tag: str) -> bool:
        return await self.write(lambda c: remove_version(c, domain, name, tag))  # type: ignore[attr-defined]

    async def copy_template_version(self, domain: str, name: str, tag: str, new_tag: str, comment: str | None,
                                    now: float, max_versions: int) -> tuple[Outcome, TemplateVersion | None]:
        return await self.write(  # type: ignore[attr-defined]
            lambda c: copy_version(c, domain, name, tag, new_tag, comment, now, max_versions))
