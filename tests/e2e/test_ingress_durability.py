"""Trusting a 250: durability across SIGKILL, graceful SIGTERM, SIGHUP reload, and store failures.

Each test has its own daemon (they kill, stop or reconfigure it). Every test runs on both store backends
(``store_backend``: SQLite and PostgreSQL) but the disk-failure ones, which are SQLite's (PostgreSQL's outage:
test_store_postgres_outage.py).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import resource
import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiosmtplib
import pytest

from tests.e2e.helpers import LOGIN, MESSAGE, message_count, queue_id, send, stored, submission
from tests.support.daemon import PASSWORD, Mtad
from tests.support.rawsmtp import RawSMTP
from tests.support.stores import both_backends as store_backend  # noqa: F401 (fixture: every test on both)


def mtad_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *args], input=stdin, capture_output=True, text=True,
                          timeout=30)


def wait_for_log(daemon: Mtad, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} not logged:\n{daemon.log()[-2000:]}"
        time.sleep(0.05)


# --- SIGKILL -------------------------------------------------------------------------------------------------

async def test_every_message_that_got_250_survives_sigkill_and_restart(mtad_factory, ingress_config, certs):
    daemon = mtad_factory().start()
    ctx = certs.client_context()
    acked: list[str] = []

    async def client(n: int) -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.submissions, use_tls=True, tls_context=ctx,
                               timeout=5)
        try:
            await smtp.connect()
            await smtp.login(LOGIN, PASSWORD)
            for i in range(10_000):
                _, reply = await smtp.sendmail("postmaster@example.com", [f"r{n}-{i}@gmail.com"], MESSAGE)
                acked.append(queue_id(reply))
        except (aiosmtplib.SMTPException, OSError):
            return  # the daemon was killed under us

    clients = [asyncio.create_task(client(n)) for n in range(8)]
    deadline = time.monotonic() + 20
    while len(acked) < 40:  # kill it while all eight sessions are busy
        assert time.monotonic() < deadline and not all(c.done() for c in clients), "no traffic"
        await asyncio.sleep(0.005)
    await asyncio.to_thread(daemon.kill)
    await asyncio.gather(*clients)
    assert daemon.proc.returncode == -signal.SIGKILL

    daemon.start()  # same config, same store
    placeholders = ",".join("?" * len(acked))
    found = {row[0] for row in daemon.query(f"SELECT id FROM messages WHERE id IN ({placeholders})", tuple(acked))}
    assert found == set(acked), f"{len(set(acked) - found)} acknowledged messages lost"
    # Whole transactions: each acknowledged message has its delivery row and its accepted event.
    deliveries = daemon.query(f"SELECT count(*) FROM deliveries WHERE message IN ({placeholders})", tuple(acked))
    events = daemon.query(f"SELECT count(*) FROM events WHERE event = 'accepted' AND queue_id IN ({placeholders})",
                          tuple(acked))
    assert deliveries == events == [(len(acked),)]

    listing = mtad_cli("queue", "list", "--config", str(daemon.config_path), "--json")
    assert listing.returncode == 0, listing.stderr
    listed = {row["queue_id"] for row in json.loads(listing.stdout)}
    assert set(acked) <= listed
    text = mtad_cli("queue", "list", "--config", str(daemon.config_path))
    assert acked[0] in text.stdout and "gmail.com" in text.stdout

    # And the restarted daemon takes new mail.
    with submission(daemon, ctx) as s:
        code, reply = send(s, "postmaster@example.com", ["after@gmail.com"], MESSAGE)
    assert code == 250, reply


# --- SIGTERM -------------------------------------------------------------------------------------------------

def test_sigterm_lets_data_finish_answers_idle_421_and_exits_0(mtad_factory, ingress_config):
    daemon = mtad_factory().start()
    idle = RawSMTP(daemon.mx)
    idle.ehlo()
    busy = RawSMTP(daemon.mx)
    busy.ehlo()
    busy.send(b"MAIL FROM:<late@example.net>\r\nRCPT TO:<user@inbound.test>\r\nDATA\r\n")
    assert [code for code, _ in busy.replies(3)] == [250, 250, 354]
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n")
    time.sleep(0.1)

    daemon.signal(signal.SIGTERM)
    code, text = idle.reply(timeout=5)
    assert code == 421 and text.startswith("4.3.2"), text
    assert idle.closed()
    with pytest.raises(OSError):  # no new connections once stopping
        socket.create_connection(("127.0.0.1", daemon.mx), timeout=1).close()

    busy.send(b"part two\r\n.\r\n")
    code, text = busy.reply(timeout=5)
    assert code == 250, text
    assert busy.reply(timeout=5)[0] == 421  # then it is told to go away too
    assert busy.closed()
    assert daemon.proc.wait(15) == 0
    body = stored(daemon, queue_id(text))["body"]
    assert body.endswith(b"part one\r\npart two\r\n")
    assert "stopped" in daemon.log()


def test_sigterm_does_not_wait_for_idle_tls_clients(mtad_factory, ingress_config, certs):
    """A TLS client that never reads (nor answers close_notify) must not hold up a graceful stop."""
    daemon = mtad_factory().start()
    ctx = certs.client_context()
    silent = [RawSMTP(daemon.submissions, tls_context=ctx), RawSMTP(daemon.submission)]
    silent[1].ehlo()
    silent[1].starttls(ctx)
    silent[1].ehlo()
    try:
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        for c in silent:
            c.close()


# --- SIGHUP --------------------------------------------------------------------------------------------------

def test_sighup_reload_adds_a_user_without_dropping_connections(mtad_factory, ingress_config, certs):
    daemon = mtad_factory().start()
    ctx = certs.client_context()
    hashed = mtad_cli("passwd", "--stdin", stdin="newbie-pass\n")
    assert hashed.returncode == 0, hashed.stderr
    existing = submission(daemon, ctx)
    idle_mx = RawSMTP(daemon.mx)
    idle_mx.ehlo()
    try:
        with pytest.raises(smtplib.SMTPAuthenticationError):
            submission(daemon, ctx, login="newbie@example.com", password="newbie-pass")

        users = daemon.cfg["sending_domains"]["example.com"]["users"]
        users["newbie"] = {"password_hash": hashed.stdout.strip()}
        del daemon.cfg["sending_domains"]["other.org"]
        daemon.write_config()
        daemon.signal(signal.SIGHUP)
        wait_for_log(daemon, "configuration reloaded")

        with submission(daemon, ctx, login="newbie@example.com", password="newbie-pass") as s:
            code, text = send(s, "newbie@example.com", ["friend@gmail.com"], MESSAGE)
        assert code == 250, text
        assert stored(daemon, queue_id(text))["envelope"]["auth_user"] == "newbie@example.com"
        with pytest.raises(smtplib.SMTPAuthenticationError):  # the removed user is gone
            submission(daemon, ctx, login="app@other.org")

        # The connections open before the reload still work.
        code, text = send(existing, "postmaster@example.com", ["old@gmail.com"], MESSAGE)
        assert code == 250, text
        assert idle_mx.cmd("NOOP")[0] == 250
    finally:
        existing.close()
        idle_mx.close()
    assert daemon.proc.poll() is None


def test_sighup_as_soon_as_the_listeners_answer_reloads_and_never_kills(mtad_factory, ingress_config, certs):
    """The listeners come up before start-up has finished; a SIGHUP then must still mean reload (its default
    action would kill the process)."""
    daemon = mtad_factory().start()  # returns as soon as every listener accepts connections
    daemon.signal(signal.SIGHUP)
    wait_for_log(daemon, "configuration reloaded")
    assert daemon.proc.poll() is None
    with submission(daemon, certs.client_context()) as s:
        code, text = send(s, "postmaster@example.com", ["x@gmail.com"], MESSAGE)
    assert code == 250, text


def test_sighup_with_a_broken_config_keeps_the_running_one(mtad_factory, ingress_config, certs):
    daemon = mtad_factory().start()
    daemon.config_path.write_text(daemon.config_path.read_text() + "\nbogus_key: 1\n")
    daemon.signal(signal.SIGHUP)
    wait_for_log(daemon, "reload refused")
    assert "bogus_key" in daemon.log()
    assert daemon.proc.poll() is None
    with submission(daemon, certs.client_context()) as s:
        code, text = send(s, "postmaster@example.com", ["x@gmail.com"], MESSAGE)
    assert code == 250, text


# --- store failure -------------------------------------------------------------------------------------------

def _mount_tmpfs(where: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                            capture_output=True)
    return result.returncode == 0


def _fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` (already full: nothing more to do)."""
    filler = folder / "filler"
    try:
        f = open(filler, "wb")
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        return filler
    with f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def _assert_nothing_half_stored(daemon: Mtad) -> None:
    assert daemon.query("SELECT count(*) FROM deliveries WHERE message NOT IN (SELECT id FROM messages)") == [(0,)]
    assert daemon.query("SELECT count(*) FROM events WHERE queue_id NOT IN (SELECT id FROM messages)") == [(0,)]
    for qid, rcpts in daemon.query("SELECT id, recipients FROM messages"):
        n = daemon.query("SELECT count(*) FROM events WHERE event = 'accepted' AND queue_id = ?", (qid,))[0][0]
        assert n == len(json.loads(rcpts)), qid


def big_message(megabytes: float) -> bytes:
    return b"Subject: too big for the disk\r\n\r\n" + (b"0123456789" * 7 + b"\r\n") * int(megabytes * 14_000)


# A message that fits SQLite's page cache fails at COMMIT; a larger one fails while it is written.
@pytest.mark.parametrize("failure, megabytes", [
    ("disk-full", 1.0),
    ("file-size-limit", 1.0),
    ("file-size-limit", 4.0),
])
def test_store_failure_answers_452_and_stores_nothing(mtad_factory, ingress_config, certs, tmp_path, failure,
                                                      megabytes, store_backend):
    """Disk full: a small tmpfs holding the state folder, filled up (needs root and mount).
    File-size limit: RLIMIT_FSIZE lowered on the running daemon, so SQLite's writes fail with EFBIG
    (works without root; Python ignores SIGXFSZ)."""
    if store_backend == "postgresql":
        pytest.skip("the SQLite file's own failures; PostgreSQL's outage is test_store_postgres_outage.py")
    big = big_message(megabytes)
    state = tmp_path / "small"
    state.mkdir()
    mounted = False
    if failure == "disk-full":
        mounted = _mount_tmpfs(state, "12m")
        if not mounted:
            pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); "
                        "the file-size-limit variant covers the store failure")
    try:
        ingress_config["state_dir"] = str(state / "state")
        daemon = mtad_factory().start()
        ctx = certs.client_context()
        with submission(daemon, ctx) as s:
            code, text = send(s, "postmaster@example.com", ["before@gmail.com"], MESSAGE)
            assert code == 250, text
            before = message_count(daemon)

            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            if failure == "disk-full":
                filler = _fill(state)
            else:
                biggest = max(p.stat().st_size for p in (state / "state").iterdir() if p.is_file())
                resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (biggest + 256 * 1024, hard))

            code, text = send(s, "postmaster@example.com", ["during@gmail.com"], big)
            assert (code, text[:5]) == (452, "4.3.1"), (code, text)

            if failure == "disk-full":
                filler.unlink(missing_ok=True)
            else:
                resource.prlimit(daemon.proc.pid, resource.RLIMIT_FSIZE, (soft, hard))

            # The same session goes on, and the store works again once there is room.
            code, text = send(s, "postmaster@example.com", ["after@gmail.com"], big)
            assert code == 250, text
        assert message_count(daemon) == before + 1
        assert not daemon.query("SELECT id FROM messages WHERE recipients LIKE '%during@%'")
        assert not daemon.query("SELECT id FROM deliveries WHERE recipients LIKE '%during@%'")
        assert not daemon.query("SELECT id FROM events WHERE recipient = 'during@gmail.com'")
        _assert_nothing_half_stored(daemon)
        assert "not stored" in daemon.log()
        assert daemon.stop() == 0
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(state)], check=False)
