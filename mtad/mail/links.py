"""Finding the links of a message's text parts, for click tracking: where each one is and which URL it names.

``html_links(text)`` runs Python's HTML tokenizer (``html.parser``, tolerant of malformed HTML: it never raises on
bad markup) over an HTML part and reports, for every ``<a href>`` and ``<area href>`` start tag, the span of the
attribute's raw value in ``text`` and the URL it means (character references decoded, as a browser reads it).
``text_links(text)`` finds URLs in a plain-text part with a conservative pattern. Only ``http`` and ``https``
URLs are reported: ``javascript:``, ``data:``, ``mailto:``, ``tel:``, anchors (``#top``), relative and empty
links are never links to track. A tag carrying ``data-no-track`` (any value; mtad's marker, the documented way
to keep one link as it is) is skipped.

``collect(parts)`` is a message's link list: every distinct URL of its HTML and text parts in MIME order, the
first ``MAX_LINKS``. It depends on the message's bytes only, so it is the same whenever it is computed; a click
token names an index into it (``mtad.mail.tracktoken``), never a URL.

``rewrite(text, spans, url_for)`` writes a new value into each span and keeps every other character as it was.
Pure functions; results for a text are cached (``analyse``), so rendering one message for many recipients parses
each part once.
"""

from __future__ import annotations

import html
import html.parser
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Iterable

MAX_LINKS = 10_000  # links of one message that are tracked; later ones stay as they are
_ATTR = re.compile(r"""((?<=['"\s/])[^\s/>][^\s/=>]*)(\s*=+\s*('[^']*'|"[^"]*"|(?!['"])[^>\s]*))?(?:\s|/(?!>))*""")
_TEXT_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]\x00-\x1f\x7f]+""", re.IGNORECASE)
_TRAILING = ".,;:!?'\")]}"
_SCHEME = re.compile(r"^https?://[^\s/?#]", re.IGNORECASE)
_NO_TRACK = "data-no-track"


@dataclass(frozen=True)
class Link:
    """One link in a part: ``text[start:end]`` is what to replace (the raw attribute value, without its quotes;
    or the URL in plain text), ``url`` the URL it means."""

    start: int
    end: int
    url: str


def trackable(url: str) -> bool:
    """An absolute http or https URL with a host: the only links mtad rewrites."""
    return bool(_SCHEME.match(url))


class _Finder(html.parser.HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.links: list[Link] = []
        self._line_starts = [0]
        pos = text.find("\n")
        while pos >= 0:
            self._line_starts.append(pos + 1)
            pos = text.find("\n", pos + 1)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ("a", "area"):
            return
        names = {name for name, _ in attrs}
        if "href" not in names or _NO_TRACK in names:
            return
        raw = self.get_starttag_text() or ""
        line, col = self.getpos()
        tag_start = self._line_starts[line - 1] + col
        name_end = 1 + len(tag)  # after "<a"
        for m in _ATTR.finditer(raw, name_end):
            if m.group(1).lower() != "href" or m.group(3) is None:
                continue
            value = m.group(3)
            start = tag_start + m.start(3)
            end = start + len(value)
            if value[:1] in ("'", '"'):
                start, end, value = start + 1, end - 1, value[1:-1]
            url = html.unescape(value).strip()
            if trackable(url):
                self.links.append(Link(start, end, url))
            return  # the first href counts, as in a browser

    handle_startendtag = handle_starttag


def html_links(text: str) -> tuple[Link, ...]:
    """The trackable links of an HTML text (see the module doc), in document order."""
    if "href" not in text and "HREF" not in text and "Href" not in text:
        return ()
    finder = _Finder(text)
    try:
        finder.feed(text)
        finder.close()
    except (AssertionError, ValueError, IndexError):  # the tokenizer's own errors on hostile input: what was found
        pass
    return tuple(finder.links)


def text_links(text: str) -> tuple[Link, ...]:
    """The http(s) URLs of a plain-text part, trailing punctuation left out (``see https://x.org/a.``)."""
    if "http" not in text and "HTTP" not in text:
        return ()
    found = []
    for m in _TEXT_URL.finditer(text):
        url = m.group(0)
        while url and url[-1] in _TRAILING:
            if url[-1] == ")" and url.count("(") > url.count(")") - 1:
                break  # https://en.wikipedia.org/wiki/Foo_(bar)
            url = url[:-1]
        if trackable(url):
            found.append(Link(m.start(), m.start() + len(url), url))
    return tuple(found)


_cache: OrderedDict[tuple[str, str], tuple[Link, ...]] = OrderedDict()
_CACHE_SIZE = 64


def analyse(subtype: str, text: str) -> tuple[Link, ...]:
    """``html_links`` or ``text_links`` of a part (``subtype`` html or plain), remembered for the last few texts:
    a message rendered for each of its recipients is parsed once."""
    key = (subtype, text)
    found = _cache.get(key)
    if found is not None:
        _cache.move_to_end(key)
        return found
    found = html_links(text) if subtype == "html" else text_links(text)
    _cache[key] = found
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return found


def collect(parts: Iterable[tuple[str, str]]) -> list[str]:
    """The link list of a message from its (subtype, text) parts in MIME order: distinct URLs, first seen first,
    at most ``MAX_LINKS``."""
    seen: dict[str, None] = {}
    for subtype, text in parts:
        for link in analyse(subtype, text):
            if len(seen) >= MAX_LINKS:
                return list(seen)
            seen.setdefault(link.url, None)
    return list(seen)


def rewrite(text: str, links: Iterable[Link], value_for: Callable[[Link], str | None]) -> str:
    """``text`` with each link's span replaced by ``value_for(link)`` (None: kept)."""
    out: list[str] = []
    last = 0
    for link in links:
        value = value_for(link)
        if value is None:
            continue
        out.append(text[last:link.start])
        out.append(value)
        last = link.end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)
