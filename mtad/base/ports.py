"""The ports file: where a running mtad really listens, for listeners and the API given port 0.

``STATE/ports`` is written atomically (a temporary file renamed over it) once every listener and the API
accept connections, and removed at a clean stop. JSON::

    {"pid": 4242,
     "listeners": [{"name": "mx", "role": "mx", "address": "127.0.0.1:40123"}, ...],   # config order
     "api": "127.0.0.1:40127"}                                                          # null: API disabled

A reader checks ``pid`` to know the file belongs to the process it started (a killed daemon leaves its
file behind). Mechanism only: which addresses to bind is the config's business.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

FILE_NAME = "ports"


@dataclass(frozen=True)
class Bound:
    """One bound listener: its config name and role, and the address it really has."""

    name: str
    role: str
    address: str


def address_of(sock: socket.socket) -> str:
    """``HOST:PORT`` of a bound socket (IPv6 hosts in brackets), as the config writes addresses."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind_tcp(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (port 0: a free port chosen by the kernel), not yet listening.

    ``SO_REUSEADDR`` as asyncio's servers set it, so a restart can bind the port again at once.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                      flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock


def write(state_dir: Path, listeners: list[Bound], api: str | None) -> Path:
    """Write ``STATE/ports`` atomically for this process."""
    path = state_dir / FILE_NAME
    tmp = state_dir / f".{FILE_NAME}.{os.getpid()}"
    data = {"pid": os.getpid(), "listeners": [vars(b) for b in listeners], "api": api}
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def remove(state_dir: Path) -> None:
    """Remove ``STATE/ports`` if this process wrote it (at a clean stop)."""
    path = state_dir / FILE_NAME
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


def read(state_dir: Path) -> dict | None:
    """The ports file's content, or None if there is none (yet) or it is not whole."""
    try:
        data = json.loads((state_dir / FILE_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
