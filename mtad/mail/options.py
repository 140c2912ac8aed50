"""Mailgun sending options -> ``SendOptions``: one parser for ``X-Mailgun-*`` headers and ``o:``/``v:`` fields.

Callers give ``(source_name, key, value)`` triples, where ``source_name`` is what the user wrote
(``X-Mailgun-Tag`` or ``o:tag``) and ``key`` the option. A malformed value raises ``OptionError``
naming the source, so SMTP can answer ``550 5.7.1 X-Mailgun-Variables: ...`` and the API a 400.
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
from typing import Iterable

from mtad.base.errors import OptionError
from mtad.base.types import SendOptions

MAX_TAGS = 3
MAX_CAMPAIGNS = 3
# Mailgun: "the total size of custom variables is limited to 4KB". Counted here as the UTF-8 bytes of every v:
# field's name and value and every X-Mailgun-Variables value, before parsing (a bound on what events store).
MAX_VARIABLES_SIZE = 4096

HEADER_OPTIONS = {
    "x-mailgun-tag": "tag",
    "x-mailgun-campaign-id": "campaign",
    "x-mailgun-dkim": "dkim",
    "x-mailgun-deliver-by": "deliverytime",
    "x-mailgun-deliver-within": "deliver-within",
    "x-mailgun-drop-message": "testmode",
    "x-mailgun-track": "tracking",
    "x-mailgun-track-clicks": "tracking-clicks",
    "x-mailgun-track-opens": "tracking-opens",
    "x-mailgun-variables": "variables",
    "x-mailgun-require-tls": "require-tls",
    "x-mailgun-skip-verification": "skip-verification",
}
API_OPTIONS = {f"o:{key}": key for key in set(HEADER_OPTIONS.values()) - {"variables"}}

_YES = {"yes", "true", "1", "on"}
_NO = {"no", "false", "0", "off"}
_WITHIN = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def _bool(source: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _YES:
        return True
    if v in _NO:
        return False
    raise OptionError(source, f"expected yes or no, got {value.strip()!r}")


def _time(source: str, value: str) -> float:
    v = value.strip()
    if re.fullmatch(r"\d{9,11}(\.\d+)?", v):
        return float(v)
    try:
        parsed = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        parsed = None
    if parsed is None:
        raise OptionError(source, f"expected an RFC 2822 date or a Unix time, got {v!r}")
    if parsed.tzinfo is None:  # "-0000": UTC, local zone unknown (RFC 5322 3.3)
        parsed = parsed.replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp()


def _within(source: str, value: str) -> float:
    v = value.strip().lower().replace(" ", "")
    if v.isdigit():
        seconds = float(v)
    else:
        m = _WITHIN.match(v)
        if not v or not m or not any(m.groups()):
            raise OptionError(source, f"expected a duration like 1h30m, got {value.strip()!r}")
        d, h, mi, s = (int(x or 0) for x in m.groups())
        seconds = float(d * 86400 + h * 3600 + mi * 60 + s)
    if seconds <= 0:
        raise OptionError(source, "must be longer than zero")
    return seconds


def _variables(source: str, value: str) -> dict:
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise OptionError(source, f"not valid JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(parsed, dict):
        raise OptionError(source, "expected a JSON object")
    return parsed


def parse(items: Iterable[tuple[str, str, str]], user_variables: Iterable[tuple[str, str]] = (),
          unknown: Iterable[tuple[str, str]] = ()) -> SendOptions:
    """Build SendOptions from (source, key, value) triples; ``user_variables`` are ``v:name`` pairs."""
    tags: list[str] = []
    campaigns: list[str] = []
    variables: dict = {}
    values: dict = {}
    size = 0

    def count(source: str, text: str) -> int:
        total = size + len(text.encode("utf-8", "surrogatepass"))
        if total > MAX_VARIABLES_SIZE:
            raise OptionError(source, f"custom variables (v: fields and X-Mailgun-Variables) total {total} bytes or"
                                      f" more, over the limit of {MAX_VARIABLES_SIZE} bytes (4 KB, as Mailgun)")
        return total
    for source, key, value in items:
        value = value.strip()
        if key == "tag":
            if value not in tags:
                tags.append(value)
            if len(tags) > MAX_TAGS:
                raise OptionError(source, f"at most {MAX_TAGS} tags per message")
        elif key == "campaign":
            if value not in campaigns:
                campaigns.append(value)
            if len(campaigns) > MAX_CAMPAIGNS:
                raise OptionError(source, f"at most {MAX_CAMPAIGNS} campaigns per message")
        elif key == "variables":
            size = count(source, value)
            variables.update(_variables(source, value))
        elif key == "deliverytime":
            values["deliver_by"] = _time(source, value)
        elif key == "deliver-within":
            values["deliver_within"] = _within(source, value)
        elif key == "tracking-clicks":
            v = value.lower()
            if v == "htmlonly":
                values["tracking_clicks"] = "htmlonly"
            else:
                values["tracking_clicks"] = "yes" if _bool(source, value) else "no"
        elif key in ("dkim", "testmode", "tracking", "tracking-opens", "require-tls", "skip-verification"):
            attr = {"testmode": "test_mode", "tracking-opens": "tracking_opens", "require-tls": "require_tls",
                    "skip-verification": "skip_verification"}.get(key, key)
            values[attr] = _bool(source, value)
        else:
            raise OptionError(source, "unknown option")
    for name, value in user_variables:
        size = count(name, name + value)
        name = name[2:] if name.startswith("v:") else name
        try:
            variables[name] = json.loads(value) if value[:1] in "{[" else value
        except ValueError:
            variables[name] = value
    return SendOptions(tags=tuple(tags), campaigns=tuple(campaigns), variables=variables,
                       unknown=tuple(unknown), **values)


def from_headers(headers: Iterable[tuple[str, str]]) -> SendOptions:
    """Options from a message's ``X-Mailgun-*`` headers; unknown ones are recorded in ``unknown``."""
    items, unknown = [], []
    for name, value in headers:
        lower = name.lower()
        if not lower.startswith("x-mailgun-"):
            continue
        key = HEADER_OPTIONS.get(lower)
        if key is None:
            unknown.append((name, value))
        else:
            items.append((name, key, value))
    return parse(items, unknown=unknown)
