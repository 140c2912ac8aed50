"""A client of SpamAssassin's ``spamd``: one ``CHECK`` per message, over its protocol (SPAMC/1.5), by aiospamc.

``SpamdClient(host, port, socket_path, timeout).scan(content)`` returns spamd's ``SpamScore`` (score, its own
threshold, its spam flag) or raises ``SpamdError`` saying why there is none: refused or reset connection, no
answer within ``timeout`` seconds (connect to last byte), an error status, an answer without a ``Spam`` header.
It never raises anything else for a failed scan, and never waits longer than ``timeout``.
Why aiospamc: an asyncio client of the spamd protocol (no spamc process per message), maintained (1.2.0, 2025),
with TCP and Unix socket transports and typed answers. Mechanism only: what a score means for a domain is
``mtad.inbound.spam``'s.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path



@dataclass(frozen=True)
class SpamScore:
    score: float
    threshold: float  # spamd's required_score (a domain's own threshold is what mtad acts on)
    spam: bool  # spamd's verdict at its own threshold


class SpamdError(Exception):
    """No score: spamd unreachable, too slow, or its answer unusable (the message says which)."""


class SpamdClient:
    """One spamd; its aiospamc ``Client`` is built once and serves every scan (a new connection each, as spamd
    wants). Not aiospamc's one-call ``check()``: that builds a default SSL context (loading the system's CA
    certificates, ~70 ms of CPU on the event loop) twice per call even for plain TCP (bench/README.md)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 783, socket_path: str = "", timeout: float = 10.0):
        import aiospamc  # here, not at the top: a daemon without spamd never loads it (nor its loguru)
        from aiospamc.client import Client
        from aiospamc.connections import TcpConnectionManager, UnixConnectionManager
        self.host, self.port, self.socket_path, self.timeout = host, port, socket_path, timeout
        limit = aiospamc.Timeout(total=timeout)  # the outer asyncio.timeout of each call is the one that counts
        manager = (UnixConnectionManager(Path(socket_path), limit) if socket_path
                   else TcpConnectionManager(host, port, None, limit))
        self._client = Client(manager)

    @property
    def where(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"

    async def _request(self, verb: str, body: bytes, timeout: float):
        from aiospamc.requests import Request
        async with asyncio.timeout(timeout):
            return await self._client.request(Request(verb, body=body))

    async def scan(self, content: bytes, timeout: float | None = None) -> SpamScore:
        """spamd's score of ``content``; ``SpamdError`` if none within ``timeout`` (default: the client's)."""
        timeout = self.timeout if timeout is None else timeout
        try:
            response = await self._request("CHECK", content, timeout)
        except TimeoutError:
            raise SpamdError(f"spamd at {self.where} did not answer within {timeout:.1f}s") from None
        except Exception as exc:  # noqa: BLE001 - aiospamc's errors and OSErrors alike: no score
            raise SpamdError(f"spamd at {self.where}: {_describe(exc)}") from None
        spam = response.headers.spam if response is not None else None
        if spam is None:
            raise SpamdError(f"spamd at {self.where} answered without a Spam header")
        return SpamScore(float(spam.score), float(spam.threshold), bool(spam.value))

    async def ping(self) -> bool:
        """True when spamd answers PING within the timeout."""
        try:
            await self._request("PING", b"", self.timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure is "not answering"
            return False


def _describe(exc: BaseException) -> str:
    """A one-line reason: the exception's text, else its cause's (aiospamc wraps OSErrors), else its class."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and str(e):
            return f"{type(e).__name__}: {e}"
    return type(exc).__name__
