"""A DKIM signing worker process: batches in on stdin, DKIM-Signature header fields out on stdout.

Started by ``dkim_pool`` as ``python -c ...`` with only ``mtad.dkim`` (``cryptography``) imported, so it stays
small. It never touches the store and holds no state but the keys it was sent.

Frames both ways: a 4-byte big-endian length, then a pickle.
- request: ``(new_keys, items)``; ``new_keys`` is ``[(kid, domain, selector, pem), ...]`` (kept for later
  batches), ``items`` is ``[(message, (kid, ...)), ...]``.
- answer, one per request and in order: ``[(True, header_fields) | (False, error_text), ...]``, one per item.

Exits when stdin reaches EOF (the parent closed it, or died: SIGKILL-safe) or stdout breaks. SIGINT and SIGTERM
are ignored: the parent decides when its workers end (a Ctrl-C or a service stop reaches the whole group).
"""

from __future__ import annotations

import os
import pickle
import signal
import struct
import sys

from mtad.mail import dkim

_LEN = struct.Struct(">I")


def serve(rfile, out_fd: int) -> None:
    keys: dict[int, dkim.DkimKey] = {}
    while True:
        head = rfile.read(4)
        if len(head) < 4:
            return
        payload = rfile.read(_LEN.unpack(head)[0])
        new_keys, items = pickle.loads(payload)
        for kid, domain, selector, pem in new_keys:
            keys[kid] = dkim.load_key(domain, selector, pem)
        answers = []
        for message, kids in items:
            try:
                answers.append((True, dkim.signatures(message, [keys[k] for k in kids])))
            except Exception as exc:  # noqa: BLE001 - reported per message; the parent decides
                answers.append((False, f"{exc.__class__.__name__}: {exc}" if not isinstance(exc, ValueError)
                                else str(exc)))
        data = pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL)
        view = memoryview(_LEN.pack(len(data)) + data)
        while view:
            view = view[os.write(out_fd, view):]


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    out_fd = os.dup(1)
    os.dup2(2, 1)  # a stray print must not corrupt the answer stream
    try:
        serve(sys.stdin.buffer, out_fd)
    except (BrokenPipeError, KeyboardInterrupt):
        pass


if __name__ == "__main__":
    main()
