"""A real SpamAssassin ``spamd`` for the tests, started as an operator runs one, on a free loopback port.

``Spamd`` runs Debian's ``spamd`` (packages ``spamassassin`` and ``spamd``; tests/run.sh installs them) in the
foreground with a private folder: its site configuration (the system's ``.pre`` plugin lists, when there are any,
and a ``local.cf`` turning off Bayes, auto-learning and DNS), its helper home (``-H``), no per-user configuration
(``-x``), local tests only (``-L``: no DNS blocklists, no Razor/Pyzor; the shipped rules, never ``sa-update``),
connections from 127.0.0.1 only. Under root it runs as the unprivileged system user ``mtadtest`` (the one
tests/support/postgres.py uses). ``start()`` returns once it answers ``PING`` (its own protocol, spoken here by hand:
the client under test is not used to check the server); ``stop()`` ends it (SIGTERM, then SIGKILL); ``start()``
again listens on the same port.

Fixture ``spamd`` (session): the running server, or a skip naming the missing package when there is no ``spamd``.
``SilentServer``: a port that accepts and never answers, for timeouts.
Under pytest-xdist each worker has its own.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.daemon import free_port

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"  # SpamAssassin's test string
LOCAL_CF = """# tests/support/spamd.py: local rules only, nothing learnt, no network
required_score 5.0
use_bayes 0
bayes_auto_learn 0
skip_rbl_checks 1
dns_available no
"""
# Without a .pre file loading the Check plugin spamd cannot scan at all.
MINIMAL_PRE = "loadplugin Mail::SpamAssassin::Plugin::Check\n"


def find_spamd() -> str | None:
    return shutil.which("spamd") or next((p for p in ("/usr/sbin/spamd", "/usr/bin/spamd") if os.access(p, os.X_OK)),
                                         None)


def ping(port: int, timeout: float = 2.0) -> bool:
    """True when spamd on ``port`` answers ``PING`` with ``PONG`` (SPAMC/1.5, by hand)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"PING SPAMC/1.5\r\n\r\n")
            s.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := s.recv(4096):
                answer += chunk
    except OSError:
        return False
    return answer.startswith(b"SPAMD/") and b"PONG" in answer


class Spamd:
    """See the module doc."""

    def __init__(self, binary: str, children: int = 4) -> None:
        self.binary = binary
        self.children = children
        self.port = free_port()
        self.folder = Path(tempfile.mkdtemp(prefix="mtad-spamd-"))
        self.proc: subprocess.Popen | None = None
        self._user: tuple[int, int] | None = None
        site, home = self.folder / "site", self.folder / "home"
        site.mkdir()
        home.mkdir()
        pre_files = glob.glob("/etc/spamassassin/*.pre")
        for pre in pre_files:
            shutil.copy(pre, site)
        if not pre_files:
            (site / "init.pre").write_text(MINIMAL_PRE)
        (site / "local.cf").write_text(LOCAL_CF)
        if os.geteuid() == 0:
            from tests.support.postgres import _ensure_test_user
            user = _ensure_test_user()
            self._user = (user.pw_uid, user.pw_gid)
            for path in (self.folder, site, home, *site.iterdir()):
                os.chown(path, *self._user)
        self.folder.chmod(0o755)

    @property
    def log_path(self) -> Path:
        return self.folder / "spamd.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 60.0) -> "Spamd":
        cmd = [self.binary, "--local", "--nouser-config", f"--siteconfigpath={self.folder / 'site'}",
               f"--helper-home-dir={self.folder / 'home'}", f"--listen=127.0.0.1:{self.port}",
               "--allowed-ips=127.0.0.1", f"--max-children={self.children}",
               f"--min-children={min(2, self.children)}", "--min-spare=1",
               "--syslog=stderr"]
        env = dict(os.environ, HOME=str(self.folder / "home"), LC_ALL="C")
        log = open(self.log_path, "ab")
        extra = {"user": self._user[0], "group": self._user[1], "extra_groups": []} if self._user else {}
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                     cwd=self.folder, start_new_session=True, **extra)
        log.close()
        deadline = time.monotonic() + timeout
        while not ping(self.port):
            if self.proc.poll() is not None:
                raise RuntimeError(f"spamd exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"spamd did not answer PING within {timeout}s:\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        """End spamd and its children (its own process group); the port is closed when this returns."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        try:  # children left behind by a parent that died first
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class SilentServer:
    """A TCP server on loopback that accepts connections, reads nothing and never answers: a spamd that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True, name="silent-spamd")
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.held.append(conn)

    @property
    def accepted(self) -> int:
        return len(self.held)

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.fixture(scope="session")
def spamd() -> Iterator[Spamd]:
    binary = find_spamd()
    if binary is None:
        pytest.skip("SpamAssassin's spamd is not installed (Debian packages spamassassin and spamd; tests/run.sh "
                    "installs them)")
    server = Spamd(binary).start()
    yield server
    server.close()
