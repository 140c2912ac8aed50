"""The shape every forward and webhook URL must have (pure: no I/O, no HTTP library), so the config schema can
check URLs without importing the HTTP client. The connect-time policy is ``httpclient``'s."""

from __future__ import annotations

from urllib.parse import urlsplit


def check_url(url: str) -> str | None:
    """None if ``url`` is an acceptable forward/webhook URL, else the problem."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"invalid URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "only http and https URLs are allowed"
    if not parts.hostname:
        return "URL has no host"
    if parts.username or parts.password:
        return None  # basic auth in the URL is allowed (Mailgun's docs show it)
    return None
