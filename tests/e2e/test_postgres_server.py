"""The test session's private PostgreSQL server (tests/support/postgres.py) is real and set up as in production:
the driver mtad uses connects to it, it commits durably, and it listens on loopback only.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tests.support.postgres import PostgresServer


def _listening_addresses(port: int) -> set[str]:
    """The local addresses with a TCP socket in LISTEN state on ``port`` (Linux /proc/net/tcp{,6})."""
    found = set()
    for name, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        path = Path(name)
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                if width == 8:  # IPv4, little-endian
                    found.add(socket.inet_ntop(socket.AF_INET, raw[::-1]))
                else:  # IPv6: four little-endian 32-bit words
                    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


def _value(conn: psycopg.Connection, sql: str):
    return conn.execute(sql).fetchone()[0]


def test_driver_connects_creates_a_table_and_reads_it_back(pg_database):
    with psycopg.connect(pg_database(), connect_timeout=10) as conn:
        conn.execute("CREATE TABLE smoke (id bigint PRIMARY KEY, body text NOT NULL)")
        conn.cursor().executemany("INSERT INTO smoke VALUES (%s, %s)", [(i, f"row {i}") for i in range(100)])
        assert _value(conn, "SELECT count(*) FROM smoke") == 100
        assert _value(conn, "SELECT body FROM smoke WHERE id = 42") == "row 42"


def test_server_commits_durably(postgres):
    with psycopg.connect(postgres.dsn(), connect_timeout=10) as conn:
        settings = {name: _value(conn, f"SHOW {name}")
                    for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_sync_method")}
    assert settings["fsync"] == "on"
    assert settings["synchronous_commit"] == "on"
    assert settings["full_page_writes"] == "on"


def test_server_listens_on_loopback_only(postgres):
    with psycopg.connect(postgres.dsn(), connect_timeout=10) as conn:
        assert _value(conn, "SHOW listen_addresses") == "127.0.0.1"
        assert _value(conn, "SHOW port") == str(postgres.port)
        socket_dir = _value(conn, "SHOW unix_socket_directories")
    assert Path(socket_dir) == postgres.folder  # the socket is in the private folder, not /var/run/postgresql
    assert _listening_addresses(postgres.port) == {"127.0.0.1"}


def test_wrong_password_is_refused(postgres):
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(postgres.dsn(password="wrong"), connect_timeout=10)


def test_server_does_not_run_as_root(postgres):
    pid = int((postgres.data / "postmaster.pid").read_text().split()[0])
    uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:")).split()[1])
    assert uid != 0


def test_a_taken_port_is_retried_on_another(postgres):
    """The port is chosen before the server binds it: when another process took it meanwhile, start again."""
    second = PostgresServer(postgres.bin_dir)
    try:
        second.start(ports=iter([postgres.port]))  # taken by the session's server
        assert second.port != postgres.port
        assert "could not bind" in second.log_path.read_text()
        assert second.psql("SELECT 1") == "1"
    finally:
        second.stop()
    assert not second.folder.exists()


# A test process that starts a server and then sleeps: it prints the postmaster's pid, the server's folder and
# its watchdog's pid, then waits to be killed.
_OWNER = """
import sys, time
sys.path.insert(0, sys.argv[1])
from tests.support.postgres import PostgresServer, find_binaries
server = PostgresServer(find_binaries()).start()
print((server.data / "postmaster.pid").read_text().split()[0], server.folder, server._watchdog.pid, flush=True)
time.sleep(600)
"""
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_owner() -> tuple[subprocess.Popen, int, Path, int]:
    proc = subprocess.Popen([sys.executable, "-c", _OWNER, str(REPO)], stdout=subprocess.PIPE, text=True)
    ready, _, _ = select.select([proc.stdout], [], [], 90)
    if not ready:
        proc.kill()
        pytest.fail("the server did not start within 90 s")
    postmaster, folder, watchdog = proc.stdout.readline().split()
    assert _alive(int(postmaster))
    return proc, int(postmaster), Path(folder), int(watchdog)


def _wait_gone(pid: int, folder: Path, seconds: float) -> float:
    started = time.monotonic()
    while (_alive(pid) or folder.exists()) and time.monotonic() - started < seconds:
        time.sleep(0.05)
    return time.monotonic() - started


def test_a_server_dies_with_the_test_process_that_started_it(postgres):
    """SIGKILL of pytest (a CI timeout) must not leave its PostgreSQL running: its watchdog stops it and
    removes its folder within seconds."""
    proc, postmaster, folder, _ = _start_owner()
    try:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        took = _wait_gone(postmaster, folder, 10)
        assert not _alive(postmaster), "the postmaster outlived the killed test process"
        assert not folder.exists(), "the server's temporary folder was left behind"
        assert took < 5
    finally:
        proc.kill()


def test_run_sh_reaps_a_server_whose_owner_and_watchdog_were_killed(postgres):
    """Both killed (kill -9 of everything): tests/run.sh's `pg_watchdog.py reap` stops the server left behind,
    and leaves alone the servers of live test runs (this session's own)."""
    proc, postmaster, folder, watchdog = _start_owner()
    try:
        os.kill(watchdog, signal.SIGKILL)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.5)
        assert _alive(postmaster) and folder.exists()  # nothing else stops it
        out = subprocess.run([sys.executable, str(REPO / "tests/support/pg_watchdog.py"), "reap", str(folder.parent)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert str(folder) in out.stdout
        _wait_gone(postmaster, folder, 10)
        assert not _alive(postmaster) and not folder.exists()
        assert postgres.folder.exists() and postgres.psql("SELECT 1") == "1"  # a live run's server stays
    finally:
        proc.kill()
        if _alive(postmaster):
            from tests.support import pg_watchdog
            pg_watchdog.stop_cluster(folder, postgres.bin_dir)
