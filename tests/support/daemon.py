"""Start mtad as a user would: ``python -m mtad run --config FILE`` on ephemeral loopback ports.

The daemon's listeners and API are configured with port 0: mtad binds free ports itself and reports them in
``STATE/ports`` (mtad/ports.py), so no other process can take a port between its choice and its use. After the
first start the real ports are pinned into the config, so a restart listens where the test expects it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from mtad.base import ports
from mtad.api import hash_key
from mtad.base.passwords import hash_password

PASSWORD = "s3cret-pass"
API_KEY = "key-test0123456789abcdef0123456789"
_FAST_HASH = hash_password(PASSWORD, n=2**10)  # low cost: tests need speed, not brute-force resistance


def free_port() -> int:
    """A port free now, for a server the test binds itself at once (mtad's own ports: give port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mtad exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open")


def base_config(tmp: Path, certs: Any) -> dict[str, Any]:
    """A config with the three listener kinds, one sending domain with a user, one receiving domain."""
    return {
        "hostname": "mtad.test",
        "state_dir": str(tmp / "state"),
        "listeners": [
            {"address": "127.0.0.1:0", "role": "mx", "tls": "starttls", "name": "mx"},
            {"address": "127.0.0.1:0", "role": "submission", "tls": "starttls", "name": "submission"},
            {"address": "127.0.0.1:0", "role": "submission", "tls": "implicit", "name": "submissions"},
        ],
        "tls": {"cert": str(certs.cert), "key": str(certs.key)},
        "sending_domains": {
            "example.com": {"users": {"postmaster": {"password_hash": _FAST_HASH,
                                                     "send_as": ["example.com", "news.example.com"]}}},
            "other.org": {"users": {"app": {"password_hash": _FAST_HASH}}},
        },
        "receiving_domains": ["inbound.test"],
        "api": {"address": "127.0.0.1:0", "keys": [{"key_hash": hash_key(API_KEY)}]},
        # never the system resolver in tests: a dead loopback port unless a test serves DNS itself
        "delivery": {"dns_nameservers": ["127.0.0.1"], "dns_port": free_port(), "dns_timeout": "1s",
                     "poll_interval": "0.2s"},
        # inbound SPF/DKIM/DMARC checks need DNS: off unless a test serves DNS (tests/e2e/test_inbound_auth.py)
        "authentication": {"enabled": False},
        "log": {"level": "debug"},
    }


_store_for_new_daemons: list[Callable[[], dict[str, Any]]] = []


@contextlib.contextmanager
def daemon_store(make: Callable[[], dict[str, Any]]) -> Iterator[None]:
    """While in it, every ``Mtad`` made with a config without ``store`` gets ``store: make()`` (a PostgreSQL
    database of its own: tests/conftest.py's ``store_backend``); a restart keeps it."""
    _store_for_new_daemons.append(make)
    try:
        yield
    finally:
        _store_for_new_daemons.remove(make)


class Mtad:
    """A running mtad process with its config file, ports and log."""

    def __init__(self, tmp: Path, cfg: dict[str, Any]):
        self.tmp = tmp
        self.cfg = cfg
        if _store_for_new_daemons and "store" not in cfg:
            cfg["store"] = _store_for_new_daemons[-1]()
        self.config_path = tmp / "mtad.yaml"
        self.log_path = tmp / "mtad.log"
        self.proc: subprocess.Popen | None = None

    def port(self, name: str) -> int:
        for listener in self.cfg["listeners"]:
            if listener.get("name") == name:
                return int(listener["address"].rsplit(":", 1)[1])
        raise KeyError(name)

    @property
    def mx(self) -> int:
        return self.port("mx")

    @property
    def submission(self) -> int:
        return self.port("submission")

    @property
    def submissions(self) -> int:
        return self.port("submissions")

    @property
    def api_port(self) -> int:
        return int(self.cfg["api"]["address"].rsplit(":", 1)[1])

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def db_path(self) -> Path:
        return Path(self.cfg["state_dir"]) / "mtad.sqlite3"

    def write_config(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.cfg))

    def start(self, extra_env: dict[str, str] | None = None) -> "Mtad":
        self.write_config()
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config", str(self.config_path)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        self._pin_ports(self._wait_ports())
        for listener in self.cfg["listeners"]:
            wait_port(int(listener["address"].rsplit(":", 1)[1]), proc=self.proc)
        return self

    def _wait_ports(self, timeout: float = 15.0) -> dict[str, Any]:
        """The ports file this process wrote once its listeners and API accept connections."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mtad exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            found = ports.read(self.config_path.parent / self.cfg.get("state_dir", "mtad-state"))
            if found is not None and found.get("pid") == self.proc.pid:
                return found
            time.sleep(0.01)  # a start takes about a second: polled finely, a test waits no longer than it
        raise TimeoutError(f"mtad wrote no ports file in {timeout}s:\n{self.log()[-3000:]}")

    def _pin_ports(self, found: dict[str, Any]) -> None:
        """Write the real ports into the config (and its file), so properties and restarts use them."""
        for listener, bound in zip(self.cfg["listeners"], found["listeners"]):
            listener["address"] = bound["address"]
        if found.get("api") and "api" in self.cfg:
            self.cfg["api"]["address"] = found["api"]
        self.write_config()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        store = self.cfg.get("store") or {}
        if store.get("backend") == "postgresql":  # the same SQL (``?`` placeholders) on the daemon's database
            import psycopg
            from mtad.store.postgres.engine import pg_raw_sql
            with psycopg.connect(store["dsn"], autocommit=True, connect_timeout=10) as pg:
                cur = psycopg.RawCursor(pg)
                return [tuple(r) for r in cur.execute(pg_raw_sql(sql), tuple(params)).fetchall()]
        import sqlite3
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=30)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()
