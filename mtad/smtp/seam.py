"""The seam between mtad's SMTP engine and aiosmtpd: the one class that knows aiosmtpd's internals.

mtad uses aiosmtpd (pinned in pyproject.toml) for what asyncio has no public API for: STARTTLS, i.e.
switching a live connection to TLS, discarding the plaintext a client pipelined before the handshake and
starting a new session (RFC 3207 4.1-4.2). Everything else of aiosmtpd's ``SMTP`` class is replaced or
bypassed, for speed or for behaviour; ``AiosmtpdSeam`` lists which and why. ``mtad.smtp.server`` builds the
protocol on top of this class and touches no aiosmtpd internals itself.

tests/unit/test_aiosmtpd_seam.py fails if a new aiosmtpd changes what this class relies on: the methods
kept, the attributes they read, the hooks they call and the signatures of the methods overridden, checked
against aiosmtpd's code and by running a STARTTLS dialogue; bench/smtp_connect_bench.py measures why
``SMTP.__init__`` is bypassed.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from aiosmtpd.smtp import SMTP, Envelope, Session, TLSSetupException

logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every line at INFO

__all__ = ["AiosmtpdSeam", "Envelope", "Session", "TLSSetupException", "INHERITED", "STATE"]

# aiosmtpd methods mtad runs as they are (see AiosmtpdSeam's docstring).
INHERITED = ("connection_made", "connection_lost", "smtp_STARTTLS", "_cb_client_connected", "_set_rset_state",
             "_set_post_data_state", "__del__")
# The instance attributes those methods read that no method sets before them: what SMTP.__init__ would set
# and ``_init_aiosmtpd_state`` sets instead, with the values SMTP.__init__ gives them.
STATE = ("loop", "tls_context", "session", "envelope", "transport", "_timeout_handle", "_tls_handshake_okay",
         "_tls_protocol", "_original_transport", "_handler_coroutine", "_handle_hooks")


class AiosmtpdSeam(SMTP):
    """aiosmtpd's ``SMTP`` protocol, minus what mtad replaces. Subclasses implement ``_handle_client``.

    Kept, run as aiosmtpd wrote them (``INHERITED``):

    * ``connection_made`` — on connect: a new session and envelope, the timer, the ``_handle_client`` task; after
      STARTTLS: the reader and writer moved onto the TLS transport, plaintext pipelined before the
      handshake discarded, a new session (RFC 3207 4.2), ``session.ssl`` set.
    * ``connection_lost`` — cancels the timer and the command loop; after STARTTLS closes the original
      transport too.
    * ``smtp_STARTTLS`` — the handshake: ``220``, the ``sslproto.SSLProtocol`` inserted under this protocol,
      waits for the handshake (``TLSSetupException`` on failure). Called by mtad's ``smtp_STARTTLS`` after
      its own checks.
    * ``_cb_client_connected`` (sets ``_reader``/``_writer``), ``_set_rset_state``/``_set_post_data_state``
      (new envelope through ``_create_envelope``), ``__del__``.

    Replaced or bypassed:

    * ``__init__`` — bypassed: ``SMTP.__init__`` builds tables of auth mechanisms, handler hooks and
      ``smtp_*`` methods by introspection (``inspect.getmembers`` of the handler and of the protocol object)
      on every connection: ~0.4 ms of CPU per connection, more than the rest of a connect-greet-QUIT
      session (bench/smtp_connect_bench.py). ``_init_aiosmtpd_state`` sets the ``STATE`` the kept methods
      read instead; ``_handle_hooks`` is empty (mtad has no aiosmtpd handler).
    * ``_handle_client`` — the command loop, replaced in mtad.smtp.server: mtad's limits (line length,
      error budget, session lifetime), ``451`` on internal errors instead of aiosmtpd's
      ``500 Error: (OSError) ...``, its own command table, no per-command ``getattr``/logging. aiosmtpd's
      ``smtp_*`` commands (``smtp_DATA`` reads line by line; mtad reads DATA in bulk, ~3x faster at
      100 KB: mtad.smtp.dataread), ``auth_*``, ``challenge_auth`` and ``handle_exception`` are not used.
    * ``push`` — writes a reply without awaiting ``drain()`` each time (only once the write buffer passes
      64 KiB): one reply per command of a pipelined batch costs no extra task switch.
    * ``eof_received`` — aiosmtpd cancels the session at EOF, losing the replies to commands pipelined
      before the client's FIN (``.<CRLF>QUIT`` then FIN loses the 250 of a committed message); here the
      reader gets EOF and the command loop ends at ``IncompleteReadError``.
    * ``_reset_timeout`` / ``_timeout_cb`` — one lazily re-armed timer instead of a new ``TimerHandle``
      per command; on expiry ``421 4.4.2`` before closing (aiosmtpd just closes).
    * ``_create_session`` / ``_create_envelope`` — left to subclasses: mtad's session and transaction types.
    """

    def _init_aiosmtpd_state(self, loop: asyncio.AbstractEventLoop, *, line_limit: int, timeout: float,
                             tls_context: ssl.SSLContext | None) -> None:
        """What ``SMTP.__init__`` sets that the kept methods read (``STATE``), and the stream reader."""
        asyncio.StreamReaderProtocol.__init__(
            self, asyncio.StreamReader(loop=loop, limit=line_limit), client_connected_cb=self._cb_client_connected,
            loop=loop)
        self.loop = loop
        self.tls_context = tls_context
        self.session = None
        self.envelope = None
        self.transport = None
        self._timeout_handle: asyncio.TimerHandle | None = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self._handler_coroutine = None
        self._handle_hooks: dict = {}
        self._timeout_duration = timeout
        self._deadline = 0.0
        self._armed_at = 0.0

    def eof_received(self) -> bool | None:
        # A TLS transport cannot stay half-open: returning False closes it.
        self._reader.feed_eof()
        return not self.tls_active

    @property
    def tls_active(self) -> bool:
        return self._tls_protocol is not None

    async def push(self, status: str | bytes) -> None:
        """Write a reply; wait for the socket only when its buffer is full (no drain per reply)."""
        data = (status.encode("utf-8") if isinstance(status, str) else status) + b"\r\n"
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > 65536:
            await self._writer.drain()

    # Timers: one lazily re-armed handle per session; it fires, sees a later deadline, and re-arms itself.
    def _reset_timeout(self, duration: float | None = None) -> None:
        deadline = self.loop.time() + (duration or self._timeout_duration)
        self._deadline = deadline
        if self._timeout_handle is None or self._armed_at > deadline:
            if self._timeout_handle is not None:
                self._timeout_handle.cancel()
            self._armed_at = deadline
            self._timeout_handle = self.loop.call_at(deadline, self._check_timeout)

    def _check_timeout(self) -> None:
        now = self.loop.time()
        if now < self._deadline:
            self._armed_at = self._deadline
            self._timeout_handle = self.loop.call_at(self._deadline, self._check_timeout)
            return
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        raise NotImplementedError

    async def _handle_client(self) -> None:
        raise NotImplementedError
