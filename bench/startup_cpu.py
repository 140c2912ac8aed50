#!/usr/bin/env python3
"""CPU time of one daemon start: ``python -m mtad run --config FILE`` until its ports file appears.

The test suite starts the real daemon hundreds of times (tests/support/daemon.py), so what one start costs
in CPU (user + system, read from ``/proc/PID/stat`` right after the ports file is written, i.e. once the
listeners and the API accept connections) is what every e2e test pays. The config is the tests' own
``base_config`` (three listeners with TLS, the API, SQLite). Each tree is started N times, alternating
with the base tree when one is given, and the medians are printed.

    python bench/startup_cpu.py                       # this tree, 5 starts
    python bench/startup_cpu.py --base-rev main       # this tree and the mtad of REV (git archive), alternating
    python bench/startup_cpu.py --base-src DIR --runs 7

Also times ``python -m mtad --help`` and ``check-config`` (wall and CPU of the child) per tree.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import trustme  # noqa: E402

from tests.support.daemon import Mtad, base_config  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")


class _Certs:
    def __init__(self, folder: Path):
        ca = trustme.CA()
        server = ca.issue_cert("mtad.test", "localhost", "127.0.0.1")
        self.cert, self.key = folder / "cert.pem", folder / "key.pem"
        server.private_key_pem.write_to_path(self.key)
        server.cert_chain_pems[0].write_to_path(self.cert)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime (fields 14 and 15)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


RSS: dict[Path, list[float]] = {}


def one_start(src: Path, certs: _Certs) -> float:
    """Seconds of CPU the daemon of tree ``src`` used until its ports file appeared (its RSS then: ``RSS``)."""
    with tempfile.TemporaryDirectory(prefix="mtad-startup-") as tmp:
        daemon = Mtad(Path(tmp), base_config(Path(tmp), certs))
        daemon.write_config()
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(src))
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        with open(daemon.log_path, "ab") as log:
            daemon.proc = subprocess.Popen([sys.executable, "-m", "mtad", "run", "--config",
                                            str(daemon.config_path)], stdout=log, stderr=subprocess.STDOUT,
                                           env=env, cwd=src)
        try:
            daemon._wait_ports()
            cpu = _cpu(daemon.proc.pid)
            RSS.setdefault(src, []).append(_rss_mb(daemon.proc.pid))
            return cpu
        finally:
            daemon.stop()


def one_cli(src: Path, args: list[str]) -> tuple[float, float]:
    """(wall, cpu) seconds of ``python -m mtad ARGS`` from tree ``src``."""
    env = dict(os.environ, PYTHONPATH=str(src))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "mtad", *args], env=env, cwd=src, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--base-rev", help="also measure mtad as committed at REV (exported with git archive)")
    ap.add_argument("--base-src", type=Path, help="also measure the tree in DIR (holding mtad/)")
    opts = ap.parse_args()
    trees: dict[str, Path] = {"this": ROOT}
    scratch = Path(tempfile.mkdtemp(prefix="mtad-startup-base-"))
    try:
        if opts.base_rev:
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", opts.base_rev, "mtad"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(scratch)], input=archive, check=True)
            trees = {"base": scratch, **trees}
        elif opts.base_src:
            trees = {"base": opts.base_src.resolve(), **trees}
        certs = _Certs(scratch)
        for src in trees.values():  # warm: bytecode caches written, files in the page cache
            one_start(src, certs)
        cpu: dict[str, list[float]] = {name: [] for name in trees}
        for i in range(opts.runs):
            for name, src in trees.items():
                cpu[name].append(one_start(src, certs))
            print(f"round {i + 1}: " + "  ".join(f"{n} {v[-1]:.2f}s" for n, v in cpu.items()), flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}")
        for name, values in cpu.items():
            print(f"{name:5} start CPU median {statistics.median(values):.2f}s  (min {min(values):.2f}, "
                  f"max {max(values):.2f}, n={len(values)}); RSS median {statistics.median(RSS[trees[name]]):.1f} MB")
        for args in (["--help"], ["check-config", str(scratch / "cfg.yaml")]):
            if args[0] == "check-config":
                d = Mtad(scratch, base_config(scratch, certs))
                d.config_path = scratch / "cfg.yaml"
                d.write_config()
            for name, src in trees.items():
                runs = [one_cli(src, args) for _ in range(3)]
                print(f"{name:5} mtad {args[0]}: wall median {statistics.median(r[0] for r in runs):.2f}s, "
                      f"CPU median {statistics.median(r[1] for r in runs):.2f}s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
