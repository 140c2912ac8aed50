"""Mailgun's template variables, substituted in one place for every sender of personalised copies.

The names (seed manual, "Template Variables"):

- recipient-scoped, known when a copy's recipient is known: ``%recipient%`` (the full recipient spec, as for a
  To header: ``Alex Lee <alee@example.com>``, the bare address without a name), ``%recipient_email%`` (the
  address), ``%recipient_name%`` (the name), ``%recipient_fname%`` / ``%recipient_lname%`` (first word / rest of
  the recipient's name: a mailing-list member's ``name`` or the display name the copy is addressed to),
  ``%recipient.KEY%`` (the recipient's variables: ``recipient-variables`` of a batch send or a list member's
  ``vars``);
- system, filled by the stage that knows them: ``%unsubscribe_url%``, ``%tag_unsubscribe_url%``,
  ``%mailing_list_unsubscribe_url%``, ``%unsubscribe_email%`` (engagement tracking, mailing lists).

``substitute(text, ctx, final=...)`` replaces the recipient-scoped names always (a missing key becomes the
empty string, as Mailgun does) and the system names present in ``ctx.system``; the others are left for a later
stage unless ``final`` (the last stage before sending), which empties them. Text that merely contains ``%``
(``50% off``) is never touched: only the names above are variables. Values that are JSON objects or arrays
are written as JSON. Pure functions.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

SYSTEM_NAMES = ("unsubscribe_url", "tag_unsubscribe_url", "mailing_list_unsubscribe_url", "unsubscribe_email")

_VARIABLE = re.compile(r"%(recipient(?:\.[^%\s]+|_fname|_lname|_email|_name)?|" + "|".join(SYSTEM_NAMES) + r")%")
_RECIPIENT_VARIABLE = re.compile(r"%recipient(?:\.[^%\s]+|_fname|_lname|_email|_name)?%")
_SPECIALS = re.compile(r'[()<>\[\]:;@\\,."]')


@dataclass(frozen=True)
class RecipientContext:
    """What one copy's variables are made of."""

    address: str
    name: str = ""
    variables: Mapping[str, Any] = field(default_factory=dict)
    system: Mapping[str, str] = field(default_factory=dict)


def has_variables(text: str) -> bool:
    """Whether ``text`` names any variable (a cheap test before per-recipient work)."""
    return "%" in text and _VARIABLE.search(text) is not None


def has_recipient_variables(text: str) -> bool:
    """Whether ``text`` names a recipient-scoped variable (one a copy per recipient must fill)."""
    return "%recipient" in text and _RECIPIENT_VARIABLE.search(text) is not None


def recipient_spec(address: str, name: str = "") -> str:
    """``Name <address>`` (the name quoted when it holds specials), the bare address without a name."""
    if not name:
        return address
    if _SPECIALS.search(name):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{address}>"


def value_text(value: Any) -> str:
    """How a variable's value is written: strings as they are, objects and arrays as JSON, others as str()."""
    if isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def value(name: str, ctx: RecipientContext, *, final: bool = False) -> str | None:
    """The value of the variable ``name`` (``recipient.city``, no ``%``) for ``ctx``; None: left as written (a
    system name ``ctx`` does not fill, unless ``final``)."""
    if name == "recipient":
        return recipient_spec(ctx.address, ctx.name)
    if name == "recipient_email":
        return ctx.address
    if name == "recipient_name":
        return ctx.name
    if name.startswith("recipient."):
        return value_text(ctx.variables.get(name[len("recipient."):], ""))
    if name == "recipient_fname":
        return first_name(ctx.name)
    if name == "recipient_lname":
        return last_name(ctx.name)
    if name in ctx.system:
        return ctx.system[name]
    return "" if final else None


def first_name(name: str) -> str:
    """``%recipient_fname%``: the first word of a name."""
    words = name.split()
    return words[0] if words else ""


def last_name(name: str) -> str:
    """``%recipient_lname%``: the words of a name after the first."""
    words = name.split()
    return " ".join(words[1:]) if len(words) > 1 else ""


def substitute(text: str, ctx: RecipientContext, *, final: bool = False) -> str:
    """``text`` with the variables of ``ctx`` written in (see the module's contract)."""
    if "%" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        found = value(m.group(1), ctx, final=final)
        return m.group(0) if found is None else found
    return _VARIABLE.sub(one, text)


def split(text: str) -> tuple[str, ...]:
    """``text`` cut at its variables, once for many recipients: literal text and variables alternate, starting and
    ending with literal text (``"Hi %recipient_fname%!"`` -> ``("Hi ", "%recipient_fname%", "!")``); one piece
    when it names none. ``join(split(text), values(...))`` is ``substitute(text, ...)``."""
    if "%" not in text:
        return (text,)
    pieces: list[str] = []
    last = 0
    for m in _VARIABLE.finditer(text):
        pieces.append(text[last:m.start()])
        pieces.append(m.group(0))
        last = m.end()
    pieces.append(text[last:])
    return tuple(pieces)


def values(tokens: Iterable[str], ctx: RecipientContext, *, final: bool = False) -> dict[str, str]:
    """Each variable of ``tokens`` (as ``split`` gives them: ``%recipient.city%``) -> its text for ``ctx`` (itself
    when left as written)."""
    out = {}
    for token in tokens:
        found = value(token[1:-1], ctx, final=final)
        out[token] = token if found is None else found
    return out


def join(pieces: tuple[str, ...], filled: Mapping[str, str]) -> str:
    """``split``'s pieces with each variable replaced by its value in ``filled`` (as ``values`` gives them)."""
    if len(pieces) == 1:
        return pieces[0]
    out = list(pieces)
    for i in range(1, len(out), 2):
        out[i] = filled.get(out[i], out[i])
    return "".join(out)


Filler = Callable[[str, str, Mapping[str, Any], Mapping[str, str]], "dict[str, str]"]


def filler(tokens: Iterable[str], *, final: bool = False) -> Filler:
    """``fill(address, name, variables, system)`` = ``values(tokens, RecipientContext(address, name, variables,
    system), final=final)``, each token's kind found once: for the copies of one message (a list's members by the
    hundred thousand)."""
    getters: list[tuple[str, Callable[[str, str, Mapping[str, Any], Mapping[str, str]], str]]] = []
    for token in dict.fromkeys(tokens):
        getters.append((token, _getter(token, final)))

    def fill(address: str, name: str, variables: Mapping[str, Any], system: Mapping[str, str]) -> dict[str, str]:
        return {token: get(address, name, variables, system) for token, get in getters}
    return fill


def _getter(token: str, final: bool) -> Callable[[str, str, Mapping[str, Any], Mapping[str, str]], str]:
    """What ``value`` does for ``token``'s name, chosen once (``values``: the token itself when left)."""
    name = token[1:-1]
    if name == "recipient":
        return lambda a, n, v, s: recipient_spec(a, n)
    if name == "recipient_email":
        return lambda a, n, v, s: a
    if name == "recipient_name":
        return lambda a, n, v, s: n
    if name.startswith("recipient."):
        key = name[len("recipient."):]
        return lambda a, n, v, s: value_text(v.get(key, ""))
    if name == "recipient_fname":
        return lambda a, n, v, s: first_name(n)
    if name == "recipient_lname":
        return lambda a, n, v, s: last_name(n)
    left = "" if final else token
    return lambda a, n, v, s: s.get(name, left)
