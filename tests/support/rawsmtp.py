"""A raw SMTP client over a plain socket: it sends exactly the bytes it is given.

Client libraries fix up line endings, dot-stuff and wait for replies; tests of smuggling, pipelining
and protocol abuse need the bytes on the wire to be exactly theirs. ``RawSMTP`` writes bytes and
parses replies, nothing more.
"""

from __future__ import annotations

import base64
import socket
import ssl
import time


class Closed(Exception):
    """The server closed the connection before a full reply arrived."""


class RawSMTP:
    def __init__(self, port: int, *, host: str = "127.0.0.1", timeout: float = 5.0,
                 tls_context: ssl.SSLContext | None = None, server_hostname: str = "mtad.test",
                 source: str | None = None):
        """Connect (from the local address ``source`` if given, e.g. ``127.0.0.2``); with ``tls_context``,
        TLS starts at once (implicit-TLS listener)."""
        self.timeout = timeout
        self.server_hostname = server_hostname
        self.sock: socket.socket = socket.create_connection((host, port), timeout=timeout,
                                                            source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls_context is not None:
            self.sock = tls_context.wrap_socket(self.sock, server_hostname=server_hostname)
        self.buf = b""
        self.banner = self.reply()

    # --- bytes -----------------------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, timeout: float | None = None) -> bool:
        self.sock.settimeout(self.timeout if timeout is None else timeout)
        try:
            chunk = self.sock.recv(65536)
        except ssl.SSLError:
            chunk = b""
        if not chunk:
            raise Closed(self.buf.decode(errors="replace"))
        self.buf += chunk
        return True

    def pending(self, wait: float = 0.3) -> bytes:
        """Whatever the server sends within ``wait`` seconds (b'' if nothing; never raises on close)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                self._fill(max(0.01, deadline - time.monotonic()))
            except (socket.timeout, TimeoutError):
                break
            except (Closed, OSError):
                break
        out, self.buf = self.buf, b""
        return out

    def closed(self, wait: float = 3.0) -> bool:
        """True if the server closes the connection within ``wait`` seconds (after any pending bytes)."""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                self._fill(max(0.01, deadline - time.monotonic()))
            except Closed:
                return True
            except (socket.timeout, TimeoutError):
                return False
            except OSError:
                return True
        return False

    # --- replies ---------------------------------------------------------------------------------
    def reply(self, timeout: float | None = None) -> tuple[int, str]:
        """One complete (possibly multi-line) reply: (code, text with lines joined by newlines)."""
        lines: list[bytes] = []
        while True:
            while b"\r\n" not in self.buf:
                self._fill(timeout)
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line)
            if len(line) < 4 or line[3:4] == b" ":
                break
        code = int(lines[0][:3])
        return code, "\n".join(x[4:].decode(errors="replace") for x in lines)

    def cmd(self, line: str | bytes) -> tuple[int, str]:
        self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def replies(self, n: int) -> list[tuple[int, str]]:
        return [self.reply() for _ in range(n)]

    # --- conveniences ----------------------------------------------------------------------------
    def ehlo(self, name: str = "client.test") -> tuple[int, str]:
        return self.cmd(f"EHLO {name}")

    def starttls(self, context: ssl.SSLContext) -> tuple[int, str]:
        code, text = self.cmd("STARTTLS")
        if code == 220:
            self.sock = context.wrap_socket(self.sock, server_hostname=self.server_hostname)
        return code, text

    def auth_plain(self, login: str, password: str) -> tuple[int, str]:
        blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode()
        return self.cmd(f"AUTH PLAIN {blob}")

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawSMTP":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
