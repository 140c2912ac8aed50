"""SMTP commands pipelined (RFC 2920) on a connection aiosmtplib opened, greeted, encrypted and authenticated.

aiosmtplib waits for each reply before the next command (four round trips per message: MAIL, RCPT, DATA, the
text). Once aiosmtplib has opened a session, ``Pipeline`` takes the transport over (``set_protocol``) and carries
every transaction of ``delivery.Session``: when the server advertises PIPELINING, MAIL, every RCPT and DATA go
in one write, then the text after 354 (two round trips and two writes per message); otherwise one command per
reply, on the same channel.

Contract:
- ``Pipeline(transport)`` becomes the transport's protocol: from then on aiosmtplib's client must not send on it.
- ``write(data)`` sends bytes; ``read(timeout)`` returns the next reply ``(code, text)`` in order (multi-line
  texts joined with "\\n", as aiosmtplib does); replies that arrived together are all kept.
- A lost connection, EOF or malformed reply raises ``aiosmtplib.SMTPServerDisconnected`` /
  ``SMTPResponseException`` (code -1) from ``read``; a timeout raises ``SMTPReadTimeoutError``. The classifier
  already knows these.
- ``command_line(verb, address, params)`` builds ``MAIL FROM:<a> P..`` / ``RCPT TO:<a>``, refusing addresses that
  could inject commands (aiosmtplib's own check); ``text(body)`` is the DATA text with its terminator.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from aiosmtplib import SMTPReadTimeoutError, SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.email import quote_address
from aiosmtplib.protocol import LINE_ENDINGS_REGEX, MAX_LINE_LENGTH, MAX_RESPONSE_LENGTH, PERIOD_REGEX

_CRLF = b"\r\n"
# A dot-atom mailbox at a plain domain (nearly every address): sent as is, without aiosmtplib's parseaddr.
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9.-]+")


class Pipeline(asyncio.Protocol):
    def __init__(self, transport: asyncio.Transport):
        self.transport = transport
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()
        self._replies: deque[tuple[int, str]] = deque()
        self._waiter: asyncio.Future | None = None
        self._error: Exception | None = None
        transport.set_protocol(self)

    # --- asyncio.Protocol --------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            self._parse()
        except SMTPResponseException as exc:
            self._fail(exc)
            self.transport.close()
            return
        if self._replies:
            self._wake()

    def eof_received(self) -> bool:
        self._fail(SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        error = SMTPServerDisconnected("Connection lost")
        error.__cause__ = exc
        self._fail(error)

    # --- use -----------------------------------------------------------------------------------------
    @property
    def usable(self) -> bool:
        return self._error is None and not self.transport.is_closing()

    def write(self, *chunks: bytes) -> None:
        if not self.usable:
            raise self._error or SMTPServerDisconnected("Connection lost")
        if len(chunks) == 1:
            self.transport.write(chunks[0])
        else:
            self.transport.writelines(chunks)

    async def read(self, timeout: float | None) -> tuple[int, str]:
        if not self._replies:
            if self._error is not None:
                raise self._error
            await self._wait(timeout)
            if not self._replies:
                raise self._error or SMTPServerDisconnected("Connection lost")
        return self._replies.popleft()

    async def _wait(self, timeout: float | None) -> None:
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(timeout, self._timed_out, waiter) if timeout else None
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        self.transport.close()

    # --- internals ---------------------------------------------------------------------------------
    def _parse(self) -> None:
        buf = self._buffer
        start = 0
        lines: list[bytes] = []
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end + 1])
            if len(line) > MAX_LINE_LENGTH:
                raise SMTPResponseException(-1, "Response too long")
            try:
                code = int(line[:3])
            except ValueError:
                raise SMTPResponseException(-1, f"Malformed SMTP response line: {line!r}") from None
            start = end + 1
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                self._replies.append((code, b"\n".join(lines).decode("utf-8", "surrogateescape")))
                del buf[:start]
                start = 0
                lines = []
        if len(buf) > MAX_RESPONSE_LENGTH:
            raise SMTPResponseException(-1, "Response too long")

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _timed_out(self, waiter: asyncio.Future) -> None:
        if not waiter.done():
            waiter.set_exception(SMTPReadTimeoutError("Timed out waiting for server response"))


def command_line(verb: bytes, address: str, params: list[str], encoding: str) -> bytes:
    """``MAIL FROM:<a> P...`` or ``RCPT TO:<a>`` with CRLF; ``ValueError`` for an address unsafe on a command line."""
    if _PLAIN_ADDRESS.fullmatch(address):
        line = verb + b"<" + address.encode("ascii") + b">"
    else:
        line = verb + quote_address(address).encode(encoding)
    if params:
        line += b" " + " ".join(params).encode("ascii")
    return line + _CRLF


def text(body: bytes) -> list[bytes]:
    """The DATA text: line endings made CRLF, leading dots doubled, then the terminating dot (chunks to write)."""
    crlf = body.count(_CRLF)
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:  # stored mail is CRLF already: rarely taken
        body = LINE_ENDINGS_REGEX.sub(_CRLF, body)
    if body.startswith(b".") or b"\n." in body:
        body = PERIOD_REGEX.sub(b"..", body)
    if body and not body.endswith(_CRLF):
        return [body, b"\r\n.\r\n"]
    return [body, b".\r\n"]
