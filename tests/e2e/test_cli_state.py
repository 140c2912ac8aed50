"""Operator commands and the state folder: only ``mtad run`` makes one; the queue commands say clearly when there
is none, read a daemon's store without writing to it, and end quietly when their reader goes away (``| head``).
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import queue_id, send

CLI = [sys.executable, "-m", "mtad"]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("args", [
    ["queue", "list"], ["queue", "list", "--json"], ["queue", "show", "1A2B3C"], ["queue", "flush"],
    ["queue", "retry", "1A2B3C"], ["queue", "pause", "--domain", "x.test"],
    ["webhooks", "redeliver", "--since", "2h"],
], ids=" ".join)
def test_queue_commands_where_no_state_exists_write_nothing(tmp_path, args):
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 1, result
    assert f"no mtad state at {tmp_path / 'mtad-state'}" in result.stderr, result.stderr
    assert "--state-dir" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "no state folder, no demo password"


def test_routes_test_without_state_uses_the_demo_route_and_writes_nothing(tmp_path):
    result = run_cli("routes", "test", "--recipient", "hello@inbound.mtad.test", cwd=tmp_path)
    assert result.returncode == 0, result
    assert "would be accepted" in result.stdout and "store" in result.stdout
    assert list(tmp_path.iterdir()) == []


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's digest, except SQLite's lock files: a read-only connection maps the shared-memory index and
    may leave an empty write-ahead log (neither holds data)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.endswith("-shm")
            and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


@pytest.fixture(scope="module")
def server(daemon_factory):
    return daemon_factory()


def test_queue_list_and_show_read_a_stopped_daemons_state_without_writing(server, tmp_path_factory):
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        code, reply = send(s, "someone@example.net", ["kept@inbound.test"],
                           b"Subject: kept\r\n\r\n" + b"line of text\r\n" * 20)
    assert code == 250
    qid = queue_id(reply)
    state = Path(server.cfg["state_dir"])
    server.stop()  # a stopped daemon: nothing else writes
    try:
        before = _snapshot(state)
        elsewhere = tmp_path_factory.mktemp("cwd")
        listed = run_cli("queue", "list", "--state-dir", str(state), cwd=elsewhere)
        assert listed.returncode == 0 and listed.stdout.rstrip().endswith("pending"), listed
        shown = run_cli("queue", "show", qid, "--config", str(server.config_path), cwd=elsewhere)
        assert shown.returncode == 0 and qid in shown.stdout and "Subject: kept" in shown.stdout, shown
        assert _snapshot(state) == before, "read-only commands changed the state folder"
        assert list(elsewhere.iterdir()) == []
    finally:
        server.start()  # the module's teardown stops it again


def test_queue_show_into_a_closed_pipe_ends_without_a_traceback(server):
    with smtplib.SMTP("127.0.0.1", server.mx, local_hostname="client.test", timeout=10) as s:
        code, reply = send(s, "someone@example.net", ["piped@inbound.test"], b"Subject: piped\r\n\r\nHello.\r\n")
    assert code == 250
    # `mtad queue show ID | head -0`: the reader is gone before mtad writes its first byte
    proc = subprocess.Popen([*CLI, "queue", "show", queue_id(reply), "--config", str(server.config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err  # as a shell reports a writer stopped by a closed pipe
    assert "Traceback" not in err and "BrokenPipe" not in err, err
