"""Text views of message bodies: ``stripped-text``, ``stripped-signature``, ``stripped-html``.

Covers the common cases that Mailgun's talon library handles, with its idea (classify each line,
then cut on the pattern the classes form) but none of its machine learning:

* plain text: everything from the first splitter on is quoted history. Splitters are
  "On <date>, <someone> wrote:" (also spread over up to three lines), "-----Original Message-----",
  an Outlook header block ("From: ..." followed within four lines by "Sent:"/"Date:"), and
  "________________________________" rules before one. Without a splitter, one block of at least two
  ``>`` lines is cut; text between two ``>`` blocks means an inline reply, which is left whole.
  A "Forwarded message" is content, not history: a message whose first marker is one is untouched.
* signature: in the last 11 lines of what remains, from the first "-- " / "--" / "__" line,
  "Sent from my ..." line, or sign-off line ("Thanks,", "Best regards", "Cheers!"...) to the end,
  provided some text stands before it.
* HTML: subtrees that mail clients use for quoted history are dropped: ``blockquote type=cite``,
  class ``gmail_quote`` / ``yahoo_quoted`` / ``moz-cite-prefix``, and Outlook's ``divRplyFwdMsg``
  with everything after it in the same parent. If nothing readable would remain, the HTML is kept.

Also ``html_to_text``, the text rendering used for ``body-plain`` when a message has only HTML.
Text bodies over 1,000 lines and HTML over 500,000 characters are not searched for quotes (talon
has similar limits: long inputs cost time and are rarely replies worth cutting). Everything here
is pure, linear in its input, and never raises on odd input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html import unescape
from typing import Literal, NamedTuple

MAX_LINES = 1000
SIGNATURE_MAX_LINES = 11
SPLITTER_MAX_LINES = 3

_ON_START = re.compile(r"^\s*(?:-+\s*)?(?:>\s*)?(On|Le|Am|Op|El|Il|Em|Den|På)\s", re.IGNORECASE)
_ON_WROTE = re.compile(r"^\s*(?:-+\s*)?(?:>\s*)?(On|Le|Am|Op|El|Il|Em|Den|På)\s.{0,200}?"
                       r"(wrote|écrit|schrieb|schreef|escribió|ha scritto|escreveu|skrev)\s*:?\s*-*\s*$",
                       re.IGNORECASE | re.DOTALL)
_ORIGINAL = re.compile(r"^\s*-{2,}\s*(Original Message|Reply Message|Ursprüngliche Nachricht|"
                       r"Message d'origine|Mensaje original)\s*-{2,}\s*$", re.IGNORECASE)
_FORWARDED = re.compile(r"^\s*-{2,}\s*(Forwarded message|Begin forwarded message)", re.IGNORECASE)
_RULE = re.compile(r"^\s*_{10,}\s*$")
_HEADER_FROM = re.compile(r"^\s*\*?(From|Von|De|Van|Fra|Från)\*?\s?:", re.IGNORECASE)
_HEADER_SENT = re.compile(r"^\s*\*?(Sent|Date|Gesendet|Datum|Envoyé|Verzonden|Skickat|Sendt)\*?\s?:", re.IGNORECASE)
# A superset of every line the classes above can mark as quoted (``>``), forwarded or a splitter: a body
# with no line matching it has no quote to cut, found by one scan instead of four regexes per line.
_CANDIDATE = re.compile(r"^\s*(?:[->_*]|(?:From|Von|De|Van|Fra|Från)[*\s:]|(?:On|Le|Am|Op|El|Il|Em|Den|På)\s)",
                        re.IGNORECASE | re.MULTILINE)
_SIGNATURE_START = re.compile(
    r"^(\s*(--|__|—)\s*$|-- $|\s*Sent from my \S.{0,40}$|\s*Sent from (Mail|Outlook) for \S.{0,30}$|"
    r"\s*(thanks|thank you|many thanks|cheers|regards|best|best regards|kind regards|warm regards|"
    r"sincerely|yours|yours truly|all the best|br)\s*[,.!]?\s*$)",
    re.IGNORECASE)


def _splitter_length(lines: list[str], i: int) -> int:
    """How many lines starting at ``i`` form a splitter (0 if none)."""
    line = lines[i]
    if _ORIGINAL.match(line):
        return 1
    header = i + 1 if _RULE.match(line) and i + 1 < len(lines) else i
    if _HEADER_FROM.match(lines[header]):
        return 1 if any(_HEADER_SENT.match(x) for x in lines[header + 1:header + 5]) else 0
    if _ON_START.match(line):
        for n in range(1, min(SPLITTER_MAX_LINES, len(lines) - i) + 1):
            if _ON_WROTE.match("\n".join(lines[i:i + n])):
                return n
    return 0


def _markers(lines: list[str]) -> str:
    """One letter per line: e(mpty), q(uoted with >), s(plitter), f(orwarded marker), t(ext)."""
    out = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            out.append("e")
        elif line.lstrip().startswith(">"):
            out.append("q")
        elif _FORWARDED.match(line):
            out.append("f")
        elif n := _splitter_length(lines, i):
            out.append("s" * n)
            i += n
            continue
        else:
            out.append("t")
        i += 1
    return "".join(out)


def _cut_quotes(lines: list[str]) -> list[str]:
    markers = _markers(lines)
    first = re.search(r"[sqf]", markers)
    if first is None or markers[first.start()] == "f":
        return lines
    splitter = markers.find("s")
    if splitter >= 0:
        return lines[:splitter]
    blocks = list(re.finditer(r"q[qe]*q|q", markers))
    if len(blocks) == 1 and blocks[0].group().count("q") >= 2:
        return lines[:blocks[0].start()] + lines[blocks[0].end():]
    return lines  # no quote, a one-line quote, or an inline reply between quote blocks


def _split_signature(lines: list[str]) -> tuple[list[str], list[str]]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    start = max(0, len(lines) - SIGNATURE_MAX_LINES)
    for i in range(start, len(lines)):
        if _SIGNATURE_START.match(lines[i]) and any(x.strip() for x in lines[:i]):
            return lines[:i], lines[i:]
    return lines, []


def strip_text(body: str) -> tuple[str, str]:
    """Returns ``(stripped_text, stripped_signature)``: the reply without quoted history, and its signature."""
    text = body.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if len(lines) > MAX_LINES:
        return body.strip(), ""
    text, signature = _split_signature(_cut_quotes(lines) if _CANDIDATE.search(text) else lines)
    return "\n".join(text).strip(), "\n".join(signature).strip()


# ---------------------------------------------------------------- HTML
#
# A small tokenizer instead of html.parser: html.parser rescans an unterminated tag on every
# step, so 100 KB of "<a <a <a ..." takes over a minute. Here every regex attempt stops at the
# next "<" or at the next quote, so hostile input costs linear time: about 1 s per 500 KB at
# worst (one token per three characters), hence MAX_HTML, past which the cheap paths are used.

MAX_HTML = 500_000

_MARKUP_START = re.compile(r"<[A-Za-z/!?]")
_TAG = re.compile(r"""<(/?)([A-Za-z][^\s/<>]*)((?:"[^"]*"|'[^']*'|[^'"<>])*)>""")
_ATTR = re.compile(r"""([^\s"'=<>/]+)(?:\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'>]+)))?""")
_RAW_TEXT = ("script", "style")
_VOID = frozenset("area base br col embed hr img input link meta param source track wbr".split())
_HIDDEN = frozenset(("script", "style", "title", "head"))
_BLOCK = frozenset("address article aside blockquote br dd div dl dt footer form h1 h2 h3 h4 h5 h6 header hr li "
                   "main nav ol p pre section table tr ul".split())
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix")


class _Token(NamedTuple):  # a tuple: hostile HTML yields millions of tokens, and this is the cheap kind
    kind: Literal["start", "end", "text", "other"]  # other: comments, declarations, processing instructions
    text: str  # exactly as written
    name: str = ""  # lower-cased tag name
    attrs: str = ""  # the attribute text of a start tag

    def attr(self, name: str) -> str:
        for m in _ATTR.finditer(self.attrs):
            if m.group(1).lower() == name:
                return next((g for g in m.groups()[1:] if g is not None), "")
        return ""


def _tokens(html: str) -> Iterator[_Token]:
    lower = html.lower()
    i, n = 0, len(html)
    while i < n:
        found = _MARKUP_START.search(html, i)
        if found is None:
            yield _Token("text", html[i:])
            return
        j = found.start()
        if j > i:
            yield _Token("text", html[i:j])
        if html.startswith("<!--", j):
            k = html.find("-->", j + 4)
            end = n if k < 0 else k + 3
            yield _Token("other", html[j:end])
        elif html.startswith(("<!", "<?"), j):
            k = html.find(">", j)
            end = n if k < 0 else k + 1
            yield _Token("other", html[j:end])
        elif m := _TAG.match(html, j):
            name = m.group(2).lower()
            end = m.end()
            if m.group(1):
                yield _Token("end", m.group(), name)
            else:
                yield _Token("start", m.group(), name, m.group(3))
                if name in _RAW_TEXT:  # their content is text even when it looks like tags
                    k = lower.find(f"</{name}", end)
                    if k < 0:
                        k = n
                    if k > end:
                        yield _Token("text", html[end:k])
                    end = k
        else:
            yield _Token("text", "<")
            end = j + 1
        i = end


def _is_quote(token: _Token) -> bool:
    classes = token.attr("class").split()
    return ((token.name == "blockquote" and token.attr("type").lower() == "cite")
            or any(c in classes for c in _QUOTE_CLASSES))


def strip_html(html: str) -> str:
    """The HTML without quoted history; the input unchanged when nothing readable would remain.

    Elements left open close with their parent, as in browsers; stray end tags are kept as written.
    HTML over MAX_HTML characters is returned unchanged.
    """
    if len(html) > MAX_HTML:
        return html
    out: list[str] = []
    open_tags: list[str] = []
    # While skipping: (resume once no more than this many elements are open,
    #                  number open when skipping began: end tags of those are still written)
    skip: tuple[int, int] | None = None
    readable = False
    for token in _tokens(html):
        if token.kind == "start":
            depth = len(open_tags)
            if skip is None and token.attr("id") == "divRplyFwdMsg":
                skip = (depth - 1, depth)  # Outlook: header block and quoted message, to the parent's end
            elif skip is None and _is_quote(token):
                skip = (depth, depth)
            if skip is None:
                out.append(token.text)
            if token.name not in _VOID and not token.attrs.rstrip().endswith("/"):
                open_tags.append(token.name)
        elif token.kind == "end" and token.name in open_tags:
            while True:
                closed = open_tags.pop()
                depth = len(open_tags)
                if skip is not None and depth <= skip[0]:
                    written = depth < skip[1]
                    skip = None
                else:
                    written = skip is None
                if closed == token.name:
                    if written:
                        out.append(token.text)
                    break
        elif skip is None:
            out.append(token.text)
            if token.kind == "text" and not _HIDDEN.intersection(open_tags[-1:]):
                readable = readable or bool(unescape(token.text).strip())
    return "".join(out) if readable else html


def html_to_text(html: str) -> str:
    """A plain-text rendering of HTML: tags dropped, block elements on their own lines, entities decoded.

    Past MAX_HTML characters, tags are just deleted by one regex pass.
    """
    if len(html) > MAX_HTML:
        return unescape(re.sub(r"<[^<>]*>", "", html)).strip()
    parts: list[str] = []
    hidden: list[str] = []  # open script/style/head/title elements, whose text is not shown
    pre = 0
    for token in _tokens(html):
        if token.kind == "start":
            if token.name in _HIDDEN:
                hidden.append(token.name)
            elif token.name in _BLOCK:
                parts.append("\n")
            elif token.name in ("td", "th"):
                parts.append(" ")
            pre += token.name == "pre"
        elif token.kind == "end":
            if token.name in hidden:
                del hidden[hidden.index(token.name):]
            elif token.name in _BLOCK:
                parts.append("\n")
            pre -= token.name == "pre" and pre > 0
        elif token.kind == "text" and not hidden:
            text = unescape(token.text).replace("\xa0", " ")
            parts.append(text if pre else re.sub(r"\s+", " ", text))
    lines = [line.strip() for line in "".join(parts).split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
