"""A test PostgreSQL server dies with the process that started it (tests/support/postgres.py).

``pg_ctl start`` detaches the postmaster: a pytest killed with ``SIGKILL`` (a CI timeout, an impatient operator)
would leave its server running, with its temporary folder, for good. Two guards, standard library only:

* ``watch``: a tiny process started next to each server, in a session of its own (a signal to pytest's process
  group does not reach it). It holds a pidfd of the owner (the pytest process or xdist worker that started the
  server) and sleeps until that process is gone; then it stops the server (``pg_ctl stop -m immediate``: the
  data is thrown away anyway) and removes the folder. It exits by itself when the folder goes (a normal stop).
* ``reap``: tests/run.sh runs it before the suite, for servers whose watchdog was killed too (``kill -9`` of
  every process): each ``mtad-pg-*`` folder in the temporary directory names its owner in ``owner`` (pid and
  start time); a server whose owner is gone is stopped the same way. Servers of live owners (other test runs on
  the same machine) and folders without an ``owner`` file are left alone.

    python tests/support/pg_watchdog.py watch FOLDER BIN_DIR
    python tests/support/pg_watchdog.py reap [TMPDIR]
"""

from __future__ import annotations

import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFIX = "mtad-pg-"  # PostgresServer's folders: tempfile.mkdtemp(prefix=PREFIX)
OWNER = "owner"  # in the folder: "PID START_TIME BIN_DIR" of the process the server belongs to


def start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (/proc/PID/stat field 22); None if it is gone.
    With the pid it names one process: a pid reused later has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()[19]


def write_owner(folder: Path, pid: int, bin_dir: Path) -> None:
    (folder / OWNER).write_text(f"{pid} {start_time(pid)} {bin_dir}\n")


def owner_alive(folder: Path) -> bool:
    """False when the owner named in ``folder/owner`` is gone (its pid free, or taken by another process)."""
    try:
        pid, started, _ = (folder / OWNER).read_text().split(maxsplit=2)
    except (OSError, ValueError):
        return True  # not ours to judge
    return start_time(int(pid)) == started


def stop_cluster(folder: Path, bin_dir: Path) -> None:
    """``pg_ctl stop -m immediate`` (as the data folder's owner when run as root: PostgreSQL refuses root), then
    the folder removed."""
    data = folder / "data"
    if (data / "postmaster.pid").exists():
        cmd = [str(bin_dir / "pg_ctl"), "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(data)]
        owner = data.stat().st_uid
        if os.geteuid() == 0 and owner != 0:
            cmd = ["runuser", "-u", pwd.getpwuid(owner).pw_name, "--", *cmd]
        subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60, check=False)
    shutil.rmtree(folder, ignore_errors=True)


def watch(folder: Path, bin_dir: Path, owner: int, poll: float = 1.0) -> None:
    """Sleep until ``owner`` exits (or the folder is removed by a normal stop); then stop the server."""
    started = (folder / OWNER).read_text().split()[1] if (folder / OWNER).exists() else None
    try:
        fd = os.pidfd_open(owner)
    except (OSError, AttributeError):
        fd = None  # gone already (ESRCH), or no pidfd: poll /proc instead
    try:
        while folder.exists():
            if start_time(owner) != started:
                break
            if fd is not None:
                if select.select([fd], [], [], poll)[0]:
                    break  # readable: the owner exited
            else:
                time.sleep(poll / 4)
        else:
            return  # stopped normally
    finally:
        if fd is not None:
            os.close(fd)
    stop_cluster(folder, bin_dir)


def reap(tmp: Path) -> list[Path]:
    """Stop the servers under ``tmp`` whose owner is gone; the folders removed."""
    reaped = []
    for folder in sorted(tmp.glob(PREFIX + "*")):
        if not (folder / OWNER).exists() or owner_alive(folder):
            continue
        bin_dir = Path((folder / OWNER).read_text().split(maxsplit=2)[2].strip())
        stop_cluster(folder, bin_dir)
        reaped.append(folder)
    return reaped


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "watch":
        folder = Path(argv[1])
        owner = int((folder / OWNER).read_text().split()[0])
        watch(folder, Path(argv[2]), owner)
        return 0
    if argv and argv[0] == "reap":
        for folder in reap(Path(argv[1] if len(argv) > 1 else tempfile.gettempdir())):
            print(f"pg_watchdog: stopped the PostgreSQL server of a test run that is gone ({folder})")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
