"""Stored templates on the send paths: the version a message names, read from the store for compose.

``stored_template(store, domain, name, tag, field)`` returns the version to render (``tag``, or the template's
active version when ``tag`` is None) as ``compose.StoredTemplate``, or raises ``ComposeError`` naming ``field`` and
the template: it does not exist, has no such version, or has no active version. The API answers that 400, SMTP a
5xx (``Ingress.accept``); a message naming a template is never sent without it. ``html_to_text`` is the text part
``t:text=yes`` asks for (``inbound.form.quotes.html_to_text``, the rendering inbound mail's ``stripped-text`` uses).
"""

from __future__ import annotations

from mtad.mail.compose import ComposeError, StoredTemplate
from mtad.store.templates import TemplateStore

__all__ = ["html_to_text", "stored_template"]


def html_to_text(html: str) -> str:
    """``inbound.form.quotes.html_to_text``, imported at the first message that asks for it: its patterns cost ~15 ms
    of CPU to compile, which a start would otherwise pay."""
    from mtad.inbound.form.quotes import html_to_text as convert
    return convert(html)


async def stored_template(store: TemplateStore, domain: str, name: str, tag: str | None,
                          field: str = "template") -> StoredTemplate:
    found = await store.get_template(domain, name, tag=tag, active=tag is None)
    if found is None:
        raise ComposeError(field, f"names template {name!r}, which does not exist in domain {domain}")
    if found.version is None:
        if tag is not None:
            raise ComposeError(field, f"names template {name!r} version {tag!r}, which does not exist")
        raise ComposeError(field, f"names template {name!r}, which has no active version")
    v = found.version
    return StoredTemplate(found.name, v.tag, v.content, v.headers)
