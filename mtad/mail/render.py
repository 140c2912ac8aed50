"""Per-recipient rendering of a stored message at delivery time: tracking links, open pixel, unsubscribe footer,
system variables and the List-Unsubscribe headers (RFC 2369, RFC 8058).

``render(body, spec)`` returns the copy of ``body`` that ``spec.recipient`` gets. In each inline text part
(``mimeedit.edit_text_parts``: structure, charsets and transfer encodings kept):

1. links are rewritten to ``{base_url}/c/{token}`` (HTML parts when ``clicks`` is ``yes`` or ``htmlonly``, text
   parts when ``yes``); the token names the link's index in the message's link list (``links.collect``, the same
   for every recipient and every retry) and the recipient (``tracktoken``);
2. with ``unsubscribe`` on, the domain's footer is added (HTML before ``</body>``, text at the end);
3. the system variables are filled (``%unsubscribe_url%`` ``{base_url}/u/{token}``, ``%tag_unsubscribe_url%``,
   ``%unsubscribe_email%``: ``spec.unsubscribe_email``, an ``unsubscribe+TOKEN@`` address, ``mail.unsubaddr``) and, this being the last stage, every variable left is emptied (``variables``,
   ``final=True``); ``%mailing_list_unsubscribe_url%`` was filled at list expansion;
4. with ``opens`` on, a 1x1 image ``{base_url}/o/{token}`` goes before ``</body>`` of each HTML part.

Links are rewritten before the footer and the variables go in, so mtad's own unsubscribe URLs are never turned
into click redirects. When unsubscribe tracking is on, or the message names an unsubscribe variable, and it has
no ``List-Unsubscribe`` of its own, ``List-Unsubscribe: <{base_url}/u/{token}>, <mailto:{unsubscribe_email}>``
(RFC 2369; the ``mailto:`` when the spec has an address) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
are added at the top of the header (DKIM then signs them: ``dkim`` lists both).

``needs_render(body)`` is the cheap test the scheduler makes once per delivery: does the message name a system
variable (checked on the raw bytes, quoted-printable soft breaks removed)? Messages that need neither tracking
nor variables are never parsed. ``RenderSpec`` crosses to the worker processes as a plain tuple (``wire``).
Pure functions.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from dataclasses import dataclass, fields

from mtad.mail import links as links_mod
from mtad.mail import mimeedit, tracktoken
from mtad.mail import variables as variables_mod
from mtad.mail.headers import parse_block

CLICK_MODES = ("yes", "htmlonly", "no")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_MARKERS = (b"%unsubscribe_url%", b"%tag_unsubscribe_url%", b"%unsubscribe_email%",
            b"%mailing_list_unsubscribe_url%")


@dataclass(frozen=True)
class RenderSpec:
    """How to render one recipient's copy (see the module doc). ``tracking_key``/``unsubscribe_key``: the
    32-byte purpose keys of click/open and unsubscribe tokens."""

    queue_id: str
    recipient: str
    base_url: str
    clicks: str = "no"  # yes | htmlonly | no
    opens: bool = False
    unsubscribe: bool = False
    html_footer: str = ""
    text_footer: str = ""
    tracking_key: bytes = b""
    unsubscribe_key: bytes = b""
    unsubscribe_email: str = ""

    def wire(self) -> tuple:
        """The spec as plain data for a worker process."""
        return tuple(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_wire(cls, data: tuple) -> "RenderSpec":
        return cls(*data)


def needs_render(body: bytes) -> bool:
    """Whether the message names a system variable (``%unsubscribe_url%``...): then each recipient gets a copy of
    their own even without tracking. A byte search, soft line breaks of quoted-printable taken out first."""
    if b"%" not in body:
        return False
    if any(m in body for m in _MARKERS):
        return True
    if b"=\r\n" in body:
        joined = body.replace(b"=\r\n", b"")
        return any(m in joined for m in _MARKERS)
    return False


_lists: OrderedDict[bytes, dict[str, int]] = OrderedDict()


def link_index(body: bytes) -> dict[str, int]:
    """URL -> its index in the message's link list (``links.collect`` over every inline text part), remembered
    for the last few bodies."""
    found = _lists.get(body)
    if found is not None:
        _lists.move_to_end(body)
        return found
    parts: list[tuple[str, str]] = []

    def keep(subtype: str, text: str) -> None:
        parts.append((subtype, text))
    mimeedit.edit_text_parts(body, keep)
    found = {url: i for i, url in enumerate(links_mod.collect(parts))}
    _lists[body] = found
    if len(_lists) > 8:
        _lists.popitem(last=False)
    return found


def link_list(body: bytes) -> list[str]:
    """The message's link list: what a click token's index names."""
    return list(link_index(body))


def _insert_before_body_end(text: str, addition: str) -> str:
    ends = list(_BODY_END.finditer(text))
    if not ends:
        return text + addition
    at = ends[-1].start()
    return text[:at] + addition + text[at:]


def render(body: bytes, spec: RenderSpec) -> bytes:
    """``spec.recipient``'s copy of ``body`` (see the module doc)."""
    base = spec.base_url.rstrip("/")
    tracking = tracktoken.Sealer(spec.tracking_key) if spec.clicks != "no" or spec.opens else None
    unsub = tracktoken.Sealer(spec.unsubscribe_key) if spec.unsubscribe_key else None
    rcpt = spec.recipient
    index = link_index(body) if spec.clicks != "no" else {}
    click_urls: dict[int, str] = {}
    used_unsubscribe = [False]

    def click_url(i: int) -> str:
        url = click_urls.get(i)
        if url is None:
            assert tracking is not None
            url = click_urls[i] = f"{base}/c/{tracking.seal(tracktoken.Token(tracktoken.CLICK, spec.queue_id, rcpt, i))}"
        return url

    unsubscribe_url = tag_unsubscribe_url = ""
    if unsub is not None:
        unsubscribe_url = f"{base}/u/{unsub.seal(tracktoken.Token(tracktoken.UNSUBSCRIBE, spec.queue_id, rcpt))}"
        tag_unsubscribe_url = \
            f"{base}/u/{unsub.seal(tracktoken.Token(tracktoken.TAG_UNSUBSCRIBE, spec.queue_id, rcpt))}"
    ctx = variables_mod.RecipientContext(rcpt, system={
        "unsubscribe_url": unsubscribe_url, "tag_unsubscribe_url": tag_unsubscribe_url,
        "unsubscribe_email": spec.unsubscribe_email})

    def edit(subtype: str, text: str) -> str:
        is_html = subtype == "html"
        if spec.clicks == "yes" or (spec.clicks == "htmlonly" and is_html):
            found = links_mod.analyse(subtype, text)
            if found:
                def value(link: links_mod.Link) -> str | None:
                    i = index.get(link.url)
                    if i is None:
                        return None
                    url = click_url(i)
                    return html.escape(url, quote=True) if is_html else url
                text = links_mod.rewrite(text, found, value)
        if spec.unsubscribe:
            if is_html and spec.html_footer:
                text = _insert_before_body_end(text, spec.html_footer)
            elif not is_html and spec.text_footer:
                text = text + ("" if text.endswith("\n") else "\r\n") + spec.text_footer
        if "%" in text:
            if "%unsubscribe_url%" in text or "%tag_unsubscribe_url%" in text or "%unsubscribe_email%" in text:
                used_unsubscribe[0] = True
            text = variables_mod.substitute(text, ctx, final=True)
        if is_html and spec.opens and tracking is not None:
            pixel = f"{base}/o/{tracking.seal(tracktoken.Token(tracktoken.OPEN, spec.queue_id, rcpt))}"
            text = _insert_before_body_end(
                text, f'<img src="{html.escape(pixel, quote=True)}" width="1" height="1" alt="" '
                      'style="display:block;border:0;width:1px;height:1px" />')
        return text
    out = mimeedit.edit_text_parts(body, edit)
    if unsub is not None and (spec.unsubscribe or used_unsubscribe[0]) and not _has_header(out, "list-unsubscribe"):
        value = f"<{unsubscribe_url}>"
        if spec.unsubscribe_email:
            value += f", <mailto:{spec.unsubscribe_email}>"
        out = (f"List-Unsubscribe: {value}\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
               .encode("ascii") + out)
    return out


def _has_header(body: bytes, name: str) -> bool:
    try:
        fields_, _ = parse_block(body, 10_000, 1 << 20)
    except ValueError:
        return False
    return any(f.name.lower() == name for f in fields_)
