"""A pool's child process: requests in on stdin, answers out on stdout, one job function, until stdin closes.

Started by ``pool`` as ``python -c ... <target>``; imports ``target`` ("package.module:function") and calls
``function(payload, memo)`` for each request frame, where ``memo`` is a dict the function may keep state in
for later batches (keys sent once, say). The function returns a list with one plain-data answer per item; if
it raises, the batch is answered ``(False, text)`` and the parent does that batch itself.

Exits when stdin reaches EOF (the parent closed it, or died: SIGKILL-safe) or stdout breaks. SIGINT and SIGTERM
are ignored: the parent decides when its children end (a Ctrl-C or a service stop reaches the whole group).
Nothing but frames reaches the answer pipe: stdout is moved to stderr, so a stray print lands in the log.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from mtad.workers import wire


def _answer(job, payload, memo: dict) -> bytes:
    try:
        return wire.frame((True, job(payload, memo)))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which does the batch itself
        return wire.frame((False, f"{exc.__class__.__name__}: {exc}"))


def serve(job, rfile, out_fd: int) -> None:
    memo: dict = {}
    while True:
        try:
            payload = wire.read(rfile)
        except EOFError:
            return
        view = memoryview(_answer(job, payload, memo))
        while view:
            view = view[os.write(out_fd, view):]


def main(target: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    module, _, name = target.partition(":")
    job = getattr(importlib.import_module(module), name)
    try:
        serve(job, sys.stdin.buffer, out_fd)
    except (BrokenPipeError, KeyboardInterrupt):
        pass
