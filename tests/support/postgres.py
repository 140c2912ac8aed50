"""A private PostgreSQL server for the test session, started as users run one: ``initdb`` + ``pg_ctl``.

``PostgresServer`` makes a cluster in a temporary folder and runs it as an unprivileged user (PostgreSQL refuses
to run as root: under root the server runs as the system user ``mtadtest``, made by tests/run.sh or here), on
a free loopback port (another on a clash), with its Unix socket in the same folder, password logins only
(SCRAM) and ``fsync``/``synchronous_commit`` on, as in production: the store tests test durability.

The binaries are Debian's (``/usr/lib/postgresql/<version>/bin``, the newest) or the ones on PATH;
tests/run.sh installs Debian's ``postgresql`` package when they are missing. Fixtures:

* ``postgres`` (session): the running server, skipped with the reason when no binaries are found.
* ``pg_database`` (per test): ``make() -> DSN`` of a fresh, empty database on it, dropped after the test.

Under pytest-xdist each worker has its own server.

A server dies with the process that started it: a watchdog (tests/support/pg_watchdog.py) stops it and removes
its folder when that process is gone, even after ``SIGKILL``; tests/run.sh reaps what a killed watchdog left.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from tests.support import pg_watchdog

TEST_USER = "mtadtest"  # the system user the server runs as when the tests run as root
SUPERUSER = "mtad"  # the database superuser the tests log in as
_TOOLS = ("initdb", "pg_ctl", "psql")


def find_binaries() -> Path | None:
    """The folder holding initdb, pg_ctl and psql: Debian's newest version, else PATH; None if absent."""
    def version(folder: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(folder).parent.name)) or (0,)
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(folder) / tool, os.X_OK) for tool in _TOOLS):
            return Path(folder)
    found = [shutil.which(tool) for tool in _TOOLS]
    if all(found):
        return Path(os.path.realpath(found[0])).parent  # /usr/local/bin/initdb may link to the real folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ensure_test_user() -> pwd.struct_passwd:
    """The unprivileged system user the server runs as under root (tests/run.sh makes it; else made here)."""
    try:
        return pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", TEST_USER],
                       check=False, capture_output=True)  # another xdist worker may have just made it
        return pwd.getpwnam(TEST_USER)


@dataclass
class PostgresServer:
    """One PostgreSQL cluster in its own temporary folder; ``start()``, ``dsn()``, ``stop()``."""

    bin_dir: Path
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=pg_watchdog.PREFIX)))
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    host: str = "127.0.0.1"
    port: int = 0
    # stop the server when the process that started it is gone (False: it outlives it, e.g. bench/pg_bench.py)
    watch: bool = True
    _user: pwd.struct_passwd | None = None
    _watchdog: subprocess.Popen | None = None

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "server.log"

    def dsn(self, database: str = "postgres", *, user: str = SUPERUSER, password: str | None = None,
            port: int | None = None) -> str:
        """A ``postgresql://`` URI for the server (the right password unless another is given)."""
        return (f"postgresql://{user}:{self.password if password is None else password}"
                f"@{self.host}:{port or self.port}/{database}")

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self._user is not None:  # PostgreSQL refuses to run as root
            cmd = ["runuser", "-u", self._user.pw_name, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=timeout,
                              env=dict(os.environ, LC_ALL="C", PGTZ="UTC"))

    def start(self, attempts: int = 5, ports: Iterator[int] | None = None) -> "PostgresServer":
        """initdb, then ``pg_ctl start -w`` on a free port, retried on another port when it was taken
        (between our check and the server's bind). ``ports``: the candidates to try first (tests)."""
        if os.geteuid() == 0:
            self._user = _ensure_test_user()
            os.chown(self.folder, self._user.pw_uid, self._user.pw_gid)
        self.folder.chmod(0o700)
        if self.watch:
            self._start_watchdog()
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        pwfile.chmod(0o600)
        # --no-sync only spares the one-off flush of initdb's files; the server itself runs with fsync on
        self._run(self.bin_dir / "initdb", "-D", self.data, "-U", SUPERUSER, f"--pwfile={pwfile}",
                  "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\n# tests/support/postgres.py\n"
                       f"listen_addresses = '{self.host}'\n"
                       f"unix_socket_directories = '{self.folder}'\n"
                       "fsync = on\nsynchronous_commit = on\nfull_page_writes = on\n"
                       "max_connections = 200\nshared_buffers = 32MB\n"
                       "log_min_messages = warning\n")
        last = ""
        for _ in range(attempts):
            self.port = next(ports, None) if ports is not None else None
            self.port = self.port or _free_port()
            result = self._run(self.bin_dir / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data,
                               "-l", self.log_path, "-o", f"-p {self.port}", check=False)
            if result.returncode == 0:
                atexit.register(self.stop)  # also when the session ends without the fixture's teardown
                return self
            last = self.log_path.read_text(errors="replace") if self.log_path.exists() else result.stderr
            if "could not bind" not in last and "in use" not in last:
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{result.stderr}\n{last[-3000:]}")

    def _start_watchdog(self) -> None:
        """Name this process the server's owner and start its watchdog, before the server exists: from now on a
        killed owner takes the server (once started) and the folder with it."""
        pg_watchdog.write_owner(self.folder, os.getpid(), self.bin_dir)
        self._watchdog = subprocess.Popen(
            [sys.executable, pg_watchdog.__file__, "watch", str(self.folder), str(self.bin_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # a signal to pytest's process group spares it

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command with psql as the superuser; its unaligned output."""
        result = subprocess.run([str(self.bin_dir / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                 "-d", self.dsn(database), "-c", sql],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_database(self) -> tuple[str, str]:
        """A fresh empty database: ``(name, dsn)``."""
        name = f"t_{uuid.uuid4().hex[:16]}"
        self.psql(f"CREATE DATABASE {name}")
        return name, self.dsn(name)

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def halt(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``: clients are disconnected), keeping its data: a database outage."""
        self._run(self.bin_dir / "pg_ctl", "stop", "-w", "-m", "fast", "-D", self.data)

    def resume(self) -> None:
        """Start a halted server again on the same port and data."""
        self._run(self.bin_dir / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data, "-l", self.log_path,
                  "-o", f"-p {self.port}")

    def stop(self) -> None:
        """``pg_ctl stop -m immediate`` and remove the folder (and end the watchdog); safe to call twice. Immediate:
        the data is removed next, so no shutdown checkpoint writes it first (``fast``: seconds at the session's end,
        tens of seconds under load, with fsync on)."""
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait(10)
            self._watchdog = None
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            self._run(self.bin_dir / "pg_ctl", "stop", "-w", "-m", "immediate", "-D", self.data, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> PostgresServer:
    """The session's PostgreSQL server (``.dsn()``, ``.psql(sql)``, ``.create_database()``)."""
    bin_dir = find_binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin or on "
                    "PATH: tests/run.sh installs Debian's postgresql package")
    server = PostgresServer(bin_dir)
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture
def pg_database(postgres: PostgresServer):
    """``make() -> DSN`` of a fresh empty database on the session's server, dropped after the test."""
    made: list[str] = []

    def make() -> str:
        name, dsn = postgres.create_database()
        made.append(name)
        return dsn
    yield make
    for name in made:
        postgres.drop_database(name)
