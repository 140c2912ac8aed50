"""The store boundary, checked on the source: no module outside ``mtad/store`` holds SQL text or reaches into the
engine with ``store.write(fn)`` / ``store.read(fn)``; everything else calls the store's typed methods
(``mtad.store.protocol.StoreProtocol``). ``lint-imports`` checks the imports (no ``sqlite3`` outside the store);
this checks what an import rule cannot see: SQL in string constants and the engine's functions-of-a-connection."""

from __future__ import annotations

import ast
import re
from pathlib import Path

MTAD = Path(__file__).resolve().parents[2] / "mtad"
STORE = MTAD / "store"

SQL = re.compile(r"SELECT .* FROM|INSERT (OR [A-Z]+ )?INTO|UPDATE [a-z_]+ SET|DELETE FROM|CREATE (TABLE|INDEX)",
                 re.DOTALL)
ENGINE_CALLS = ("write", "read")


def _strings(tree: ast.AST):
    """(line, text) of every string constant; an f-string as one text, ``_`` for each placeholder (so that
    ``f"UPDATE {table} SET"`` reads as a statement too)."""
    inside_fstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    parts.append(value.value)
                    inside_fstrings.add(id(value))
                else:
                    parts.append("_")
            yield node.lineno, "".join(parts)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_fstrings:
            yield node.lineno, node.value


def _names_a_store(node: ast.AST) -> bool:
    """``store``, ``self.store``, ``ctx.store``, ``self._store``, ``event_store`` ...: the last name has 'store'."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "store" in name.lower()


def problems(source: str, where: str) -> list[str]:
    tree = ast.parse(source)
    found = [f"{where}:{line}: SQL in a string: {text.strip()[:80]!r}"
             for line, text in _strings(tree) if SQL.search(text)]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ENGINE_CALLS
                and _names_a_store(node.func.value)):
            found.append(f"{where}:{node.lineno}: {ast.unparse(node.func)}(...) outside mtad/store: use a typed"
                         " method of the store")
    return found


def test_no_sql_and_no_engine_calls_outside_the_store():
    modules = [p for p in sorted(MTAD.rglob("*.py")) if STORE not in p.parents]
    assert len(modules) > 50  # the walk found the package
    found = [problem for path in modules
             for problem in problems(path.read_text(encoding="utf-8"), str(path.relative_to(MTAD.parent)))]
    assert found == []


def test_the_check_sees_what_it_forbids():
    bad = '''
async def f(store, self, conn):
    conn.execute("SELECT id FROM messages WHERE x = ?")
    conn.execute(f"UPDATE {table} SET state = 'done'")
    conn.execute(f"SELECT {cols} FROM {table}")
    conn.execute("INSERT OR REPLACE INTO kv (key) VALUES (?)")
    conn.execute("DELETE FROM suppressions" " WHERE domain = ?")
    await store.write(lambda c: c)
    await self.store.read(lambda c: c)
'''
    assert len(problems(bad, "bad.py")) == 7
    fine = '''
async def f(store, body, writer):
    await store.enqueue([], 1.0)
    data = await body.read()
    writer.write(b"Delete from the list: SELECTED items")
    text = "update your settings"
'''
    assert problems(fine, "fine.py") == []


def test_no_two_store_mixins_define_the_same_method():
    """The store is one class made of the METHODS mixins: a name two of them define would silently take one and
    hide the other (its callers would reach the wrong table)."""
    from mtad.store.methods import METHODS
    owners: dict[str, list[str]] = {}
    for mixin in METHODS:
        for name in vars(mixin):
            if not name.startswith("__"):
                owners.setdefault(name, []).append(mixin.__name__)
    assert {n: o for n, o in owners.items() if len(o) > 1} == {}
