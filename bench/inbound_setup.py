"""What the inbound benches share (inbound_bench.py, auth_bench.py, spam_bench.py): an mtad of a source tree
started with an MX listener on 127.0.0.1, its store emptied between runs, smtp-source sending to it, and the
CPU its process tree spent (the main process and its worker children apart).

- ``mx_config(work, port, **more)``: the common configuration (one MX listener ``tls: none``, ``example.net``
  a receiving domain, no delivery, no API, log level warning, 1000 connections per IP: all load comes from
  127.0.0.1); ``more`` adds or replaces top-level keys.
- ``Daemon(label, src, work, config)``: ``python -m mtad run`` (or ``launch``) from ``src``, so that its mtad/
  comes first on sys.path; ``ready()`` waits for the port and opens the store; ``cpu()`` is
  ``(main seconds, children seconds)``; ``stop()``.
- ``Store``: the SQLite file, emptied between runs with plain SQL (any revision's layout alike).
- ``base_source(work, base_rev, base_src)``: the folder of the base tree for ``--base-rev``/``--base-src``.
- ``smtp_source(...)``: Postfix's load generator, a new connection per message, waited for.
"""
from __future__ import annotations

import asyncio
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from run_ingress import TCK, proc_table, tree  # noqa: E402

TABLES = ("forwards", "deliveries", "webhook_deliveries", "events", "event_variables", "stats", "stats_daily",
          "stats_dims", "messages")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"the server did not open port {port}")


class Store:
    def __init__(self, path: Path):
        self.conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        self.conn.execute("PRAGMA busy_timeout=60000")

    def count(self, sql: str) -> int:
        return self.conn.execute(sql).fetchone()[0]

    def empty(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")
        for table in TABLES:
            try:
                self.conn.execute(f"DELETE FROM {table}")
            except sqlite3.OperationalError:
                pass
        self.conn.execute("COMMIT")
        self.conn.execute("PRAGMA wal_checkpoint(RESTART)")


def export_rev(rev: str, into: Path) -> str:
    """``git archive REV mtad`` of this repository into ``into`` (a folder holding mtad/); its path."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "mtad"], capture_output=True)
    if archive.returncode != 0:
        sys.exit(f"cannot export mtad at {rev}: {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return str(into)


def base_source(work: Path, base_rev: str | None, base_src: str | None) -> str | None:
    """The base tree's folder: ``base_rev`` exported under ``work``, or ``base_src`` checked; None without."""
    if base_rev:
        base_src = export_rev(base_rev, work / "base-src")
    if not base_src:
        return None
    src = str(Path(base_src).resolve())
    if not (Path(src) / "mtad" / "__init__.py").is_file():
        sys.exit(f"--base-src {src}: no mtad/ package there")
    return src


def mx_config(work: Path, port: int, **more) -> dict:
    cfg = {
        "hostname": "bench.localdomain",
        "state_dir": str(work / "state"),
        "listeners": [{"address": f"127.0.0.1:{port}", "role": "mx", "tls": "none", "name": "mx"}],
        "receiving_domains": ["example.net"],
        "limits": {"max_connections_per_ip": 1000},  # all load comes from 127.0.0.1
        "delivery": {"enabled": False},
        "api": {"enabled": False},
        "log": {"level": "warning"},
    }
    cfg.update(more)
    return cfg


class Daemon:
    """One mtad under test: the package in ``src`` run from there, its own MX port and state folder in
    ``work``; ``config(port)`` makes its configuration; ``check``: ``mtad check-config`` it first (exits with
    the refusal)."""

    def __init__(self, label: str, src: str, work: Path, config, launch: tuple[str, ...] = ("-m", "mtad"),
                 check: bool = False):
        import yaml
        self.label, self.src, self.work = label, src, work
        work.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        path = work / "mtad.yaml"
        path.write_text(yaml.safe_dump(config(self.port)))
        if check:
            checked = subprocess.run([sys.executable, "-m", "mtad", "check-config", str(path)], capture_output=True,
                                     text=True, cwd=src)
            if checked.returncode != 0:
                sys.exit(f"mtad in {src} refuses the bench config: {checked.stderr.strip()}")
        self.log = open(work / "mtad.log", "ab")
        self.proc = subprocess.Popen([sys.executable, *launch, "run", "--config", str(path)], cwd=src,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.store: Store | None = None

    def ready(self) -> None:
        wait_port(self.port, self.proc)
        self.store = Store(self.work / "state" / "mtad.sqlite3")

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the main process and of the rest of its tree (worker children)."""
        table = proc_table()
        pids = tree(self.proc.pid, table)
        main = table.get(self.proc.pid, {"cpu": 0})["cpu"]
        return main / TCK, sum(table[p]["cpu"] for p in pids if p != self.proc.pid) / TCK

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def smtp_source(program: str, port: int, sessions: int, n: int, rcpt: str, *, size: int | None = None,
                      message: Path | None = None, sender: str = "sender@example.com",
                      helo: str = "client.localdomain", timeout: float = 600) -> None:
    """``n`` messages to ``rcpt`` over ``sessions`` sessions: ``size`` bytes of smtp-source's own text, or the
    file ``message`` (``-F``, LF line ends: it sends each line with CRLF)."""
    what = ["-F", str(message)] if message is not None else ["-l", str(size or 1024)]
    proc = await asyncio.create_subprocess_exec(
        program, "-s", str(sessions), "-m", str(n), *what, "-f", sender, "-t", rcpt, "-M", helo,
        f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    if proc.returncode != 0:
        sys.exit(f"smtp-source failed ({proc.returncode}): {err.decode()[-500:]}")
