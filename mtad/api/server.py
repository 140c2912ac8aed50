"""The API's HTTP server: aiohttp's, with requests it cannot parse answered in the API's error shape.

aiohttp answers a request it cannot parse (a request line over 8,190 bytes, a header too long, a
malformed request line) before any handler or middleware runs: in plain text that echoes the start of
the request, with an ERROR traceback in the log. Here such a request gets ``{"message": ...}`` with
414 (the request line is too long), 431 (a header is too long) or 400, its connection is closed, and
the log has one line naming the client and the parse error, escaped. Everything else is aiohttp's.

``FRONT``: an application may name a front handler (``front(fallback) -> handler``) that sees each request before
the application does: the tracking endpoints (``api.tracking``) answer their paths there without the router,
middlewares and signals (a click's answer costs a fifth less CPU), and hand every other request to ``fallback``,
the application's own handling.

``LEAN``: an application may also name a ``api.lean.LeanHandler`` (the tracking endpoints' opens and clicks): its
listener then serves each connection with ``api.lean.LeanProtocol``, which answers the requests that handler
takes without aiohttp's request machinery and hands the connection to aiohttp's protocol for anything else.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from mtad.api import printable
from mtad.api.lean import LeanConnections, LeanHandler, LeanProtocol

log = logging.getLogger("mtad.api")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
FRONT: web.AppKey[Callable[[Handler], Handler]] = web.AppKey("mtad_front")
LEAN: web.AppKey[LeanHandler] = web.AppKey("mtad_lean")


def parse_error_answer(exc: HttpProcessingError) -> tuple[int, str]:
    """(status, message) for a request aiohttp could not parse. LineTooLong carries the start of the line at
    fault: the request line starts with the target (``/`` or a scheme), a header line does not."""
    if isinstance(exc, LineTooLong):
        line = exc.args[0] if exc.args else b""
        head = line[:8] if isinstance(line, (bytes, bytearray)) else str(line)[:8].encode("latin-1", "replace")
        if head.startswith(b"/") or b":/" in head or head.startswith(b"*"):
            return 414, "Request-URI Too Long: the request line is longer than the server accepts"
        return 431, "Request Header Fields Too Large: a header line is longer than the server accepts"
    return 400, f"Bad Request: the HTTP request could not be parsed ({exc.__class__.__name__})"


class _Handler(RequestHandler):
    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError) or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        status, text = parse_error_answer(exc)
        log.info("refused an unparsable HTTP request from %s: %s %s", request.remote, exc.__class__.__name__,
                 printable(str(exc.message), 120))
        resp = web.json_response({"message": text}, status=status)
        resp.force_close()
        return resp


class _Server(web.Server):
    lean: LeanHandler | None = None
    lean_connections: LeanConnections | None = None

    def __call__(self) -> asyncio.Protocol:
        if self.lean is not None and self.lean_connections is not None:
            return LeanProtocol(self.lean, self._aiohttp_protocol, self.lean_connections)
        return self._aiohttp_protocol()

    def _aiohttp_protocol(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self.lean_connections is not None:
            await self.lean_connections.close(timeout if timeout is not None else 10.0)
        await super().shutdown(timeout)


class ApiRunner(web.AppRunner):
    """``web.AppRunner`` whose connections answer unparsable requests in the API's shape, through the
    application's ``FRONT`` handler when it names one."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, its connections made by _Handler
        front = self._app.get(FRONT)
        if front is not None:
            server.request_handler = front(server.request_handler)
        lean = self._app.get(LEAN)
        if lean is not None:
            server.lean, server.lean_connections = lean, LeanConnections()
        return server
