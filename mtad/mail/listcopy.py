"""A mailing-list member's copy of a message: its variables written in, the list's reply preference applied.

``personalise(body, ctx)`` (``Personaliser(body).render(ctx)`` for many recipients) substitutes ``mtad.mail.variables`` in every inline text/plain and text/html part
(``mimeedit.edit_text_parts``: structure, charsets and encodings kept) and in the top-level header fields that
name a variable (``mimeedit.edit_headers``; a value with a line break is written on one line: a member's name or
vars cannot add a header). The recipient-scoped names are always filled (a missing one is emptied, as Mailgun
does), the system names given in ``ctx.system`` too; the others (``%unsubscribe_url%`` ...) stay for the delivery
stage. ``has_any_variable(body)`` says whether a message names any variable at all (when it does not, every
member's copy is the same bytes and the expansion skips the per-member work). ``with_reply_to(body, address)``
adds ``Reply-To`` unless the message has one; ``with_list_unsubscribe(body, url, mailto)`` adds a member's
``List-Unsubscribe`` (RFC 2369, its ``mailto:`` when given) and ``List-Unsubscribe-Post`` (RFC 8058). Pure functions.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any, Mapping

from mtad.mail import headers as headers_mod
from mtad.mail import mimeedit
from mtad.mail import variables as variables_mod
from mtad.mail.variables import RecipientContext

_NOT_EDITED = {"received", "dkim-signature", "content-type", "content-transfer-encoding", "mime-version",
               "message-id", "return-path", "arc-seal", "arc-message-signature", "arc-authentication-results"}
_BREAKS = re.compile(r"[\r\n\x00]+")
_EMPTY: Mapping[str, Any] = MappingProxyType({})
_PROBE = RecipientContext("\x00probe\x00", "\x00", {}, {"mailing_list_unsubscribe_url": "\x00"})  # what a list fills


class Personaliser:
    """``personalise`` for many recipients of one body: the body's parts and fields are found once
    (``mimeedit.Prepared``) and cut at their variables once (``mimeedit.Slots``): each copy costs the values of
    its variables and a join (or, when ``Slots`` cannot promise the same bytes, its substitutions)."""

    def __init__(self, body: bytes):
        self.prepared = mimeedit.Prepared(body)
        self.names = list(dict.fromkeys(
            f.name for f in self.prepared.fields
            if f.name.lower() not in _NOT_EDITED and variables_mod.has_variables(headers_mod.decode(f.value))))
        self._slots: mimeedit.Slots | None = None
        self._fill: variables_mod.Filler | None = None

    @property
    def slots(self) -> mimeedit.Slots:
        """The body cut at its variables (made at the first ``render``: a body rendered once is not cut)."""
        if self._slots is None:
            self._slots = mimeedit.Slots(self.prepared, variables_mod.split, self.names)
        return self._slots

    def render(self, ctx: RecipientContext) -> bytes:
        fast = self.slots.render(variables_mod.values(self.slots.tokens, ctx))
        return fast if fast is not None else self.render_slowly(ctx)

    def render_for(self, address: str, name: str = "", variables: Mapping[str, Any] = _EMPTY,
                   system: Mapping[str, str] = _EMPTY) -> bytes:
        """``render(RecipientContext(address, name, variables, system))``, the slots' values filled by a function
        made once (``variables.filler``) and the context made only for the slow way."""
        if self._fill is None:
            self._fill = variables_mod.filler(self.slots.tokens)
        fast = self.slots.render(self._fill(address, name, variables, system))
        return fast if fast is not None else self.render_slowly(RecipientContext(address, name, variables, system))

    def render_slowly(self, ctx: RecipientContext) -> bytes:
        """``render`` by substitution in the decoded texts (what ``render`` falls back to; the reference)."""
        def text(subtype: str, value: str) -> str | None:
            return variables_mod.substitute(value, ctx) if variables_mod.has_variables(value) else None

        def header(name: str, value: str) -> str | None:
            if not variables_mod.has_variables(value):
                return None
            return _BREAKS.sub(" ", variables_mod.substitute(value, ctx))
        return self.prepared.render(text, header, self.names)


def personalise(body: bytes, ctx: RecipientContext) -> bytes:
    """One copy of ``body`` for ``ctx`` (``Personaliser`` for many)."""
    return Personaliser(body).render_slowly(ctx)


def has_any_variable(body: bytes) -> bool:
    """Whether ``personalise`` would change ``body`` for some recipient."""
    return personalise(body, _PROBE) != body


def with_reply_to(body: bytes, address: str) -> bytes:
    fields, _ = headers_mod.parse_block(body, 10_000, 1 << 20)
    if headers_mod.first(fields, "Reply-To") is not None:
        return body
    return f"Reply-To: {address}\r\n".encode("ascii", "replace") + body


def has_header(body: bytes, name: str) -> bool:
    try:
        fields, _ = headers_mod.parse_block(body, 10_000, 1 << 20)
    except ValueError:
        return False
    return headers_mod.first(fields, name) is not None


def with_list_unsubscribe(body: bytes, url: str, mailto: str = "") -> bytes:
    value = f"<{url}>" + (f", <mailto:{mailto}>" if mailto else "")
    return (f"List-Unsubscribe: {value}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
            .encode("ascii", "replace") + body)
