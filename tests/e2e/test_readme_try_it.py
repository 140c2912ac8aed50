"""README.md's "Try it" section, run as written: its shell blocks are read from the README (so the doc cannot
drift from what works), ``mtad run`` with no config in an empty folder, then the swaks and curl commands of
the second terminal and the POST receiver of the third, each outcome checked as a reader would check it.

The embedded default listens on fixed ports (2525, 2587, 2465, 2580) and the README's receiver on 8025; when
another program holds one of them the test is skipped, saying which.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import tools

README = Path(__file__).resolve().parents[2] / "README.md"
PORTS = (2525, 2587, 2465, 2580, 8025)
MARK = "@@@ README block"
QUEUED = r"\n<[-~]  250 2\.0\.0 Ok: queued as [0-9A-F]+\n"  # swaks: <- a reply in plain text, <~ under TLS


def try_it_blocks() -> dict[str, list[str]]:
    """The ``sh`` blocks of the Try it section, grouped by their first line (``# terminal N``), in order."""
    text = README.read_text()
    section = text.split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    blocks: dict[str, list[str]] = {}
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        first, _, rest = block.partition("\n")
        assert re.fullmatch(r"# terminal \d", first), f"a Try it block must start with '# terminal N': {block!r}"
        blocks.setdefault(first[2:], []).append(rest)
    return blocks


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}\n{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen in {timeout}s\n{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.1)


def background(script: str, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """A README block as a terminal runs it, in its own process group (stopped as a whole at the end)."""
    with open(log, "wb") as out:
        return subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    return proc.returncode


def test_readme_try_it_commands_work_as_written(tmp_path):
    blocks = try_it_blocks()
    assert sorted(blocks) == ["terminal 1", "terminal 2", "terminal 3"], blocks.keys()
    [start], [receiver_block], second = blocks["terminal 1"], blocks["terminal 3"], blocks["terminal 2"]
    assert "mtad run" in start and "--config" not in start
    tools.swaks(tls=True)
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    busy = [p for p in PORTS if port_in_use(p)]
    if busy:
        pytest.skip(f"ports the README uses are taken by another program: {busy}")

    shims = tmp_path / "bin"  # `mtad` as the README types it: this checkout's mtad
    shims.mkdir()
    (shims / "mtad").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mtad "$@"\n')
    (shims / "mtad").chmod(0o755)
    env = dict(os.environ, PATH=f"{shims}:{os.environ['PATH']}", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(README.parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    home = tmp_path / "home"
    home.mkdir()

    mtad_log, receiver_log = tmp_path / "terminal1.log", tmp_path / "terminal3.log"
    mtad = background(start, home, env, mtad_log)
    receiver = None
    try:
        ports = home / "mtad-try" / "mtad-state" / "ports"
        wait_for(ports.exists, 30, "mtad run listening", mtad, mtad_log)
        assert "SMTP password:" in mtad_log.read_text()  # the demo credentials are printed at start
        receiver = background(receiver_block, home, env, receiver_log)
        wait_for(lambda: port_in_use(8025), 15, "the README's receiver listening", receiver, receiver_log)

        # the second terminal: one shell, blocks in order, at a person's pace (the store action runs every 0.5 s)
        script = "set -eo pipefail\n" + "".join(f"printf '\\n{MARK} {i}\\n'\n{block}\nsleep 1.5\n"
                                                for i, block in enumerate(second))
        result = subprocess.run(["bash", "-c", script], cwd=home, env=env, capture_output=True, text=True,
                                timeout=180)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        outputs = [part.split("\n", 1)[1] if "\n" in part else "" for part in result.stdout.split(MARK)[1:]]
        assert len(outputs) == len(second) == 7, result.stdout

        credentials, submitted, api_send, sent_events, received, stored_read, route_and_mail = outputs
        assert credentials.strip() == ""
        assert re.search(QUEUED, submitted), submitted
        answer = json.loads(api_send)
        assert answer["message"] == "Queued. Thank you." and answer["id"].endswith("@demo.mtad.test>"), answer

        events = json.loads(sent_events)["items"]
        seen = {(e["event"], e["message"]["headers"]["subject"]) for e in events}
        assert seen >= {("accepted", "Hello from swaks"), ("stored", "Hello from swaks"),
                        ("accepted", "Hello from curl"), ("stored", "Hello from curl")}, seen

        assert re.search(QUEUED, received), received
        stored = json.loads(stored_read)
        assert stored["subject"] == "Hello MX" and stored["sender"] == "someone@example.net", stored
        assert stored["recipients"] == "hello@inbound.mtad.test" and "message-headers" in stored

        assert '"message": "Route has been created"' in route_and_mail, route_and_mail
        assert re.search(QUEUED, route_and_mail), route_and_mail
        wait_for(lambda: "subject = For the app" in receiver_log.read_text(), 15, "the route's POST", receiver,
                 receiver_log)
        posted = receiver_log.read_text()
        for field in ("recipient = app@inbound.mtad.test", "sender = someone@example.net", "signature = "):
            assert field in posted, posted
    finally:
        if receiver is not None:
            stop(receiver)
        code = stop(mtad)
    log = mtad_log.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "mtad: stopped" in log or "stopped" in log.splitlines()[-1], log[-2000:]
    assert code in (0, -signal.SIGTERM), code
