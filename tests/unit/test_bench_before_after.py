"""The bench's before/after comparison (bench/README.md, "Before and after a change"): the summary reads a
slowdown against the run-to-run spread, mtad modules are found in the flat layout of an older tree (not in
the editable install's work tree), and one config serves both trees."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
FLAT_REV = "bebe064"  # the last revision before the packages


def record(label, rate, size=1024, sessions=20):
    return {"label": label, "size": size, "sessions": sessions, "msgs": 1000, "msgs_per_s": rate,
            "server_cpu_s": 1000 / rate * 0.9, "server_cpu_pct": 90.0, "server_peak_rss_mb": 50.0,
            "server_peak_pss_mb": 40.0, "server_procs_at_peak": 1, "client_cpu_s": 0.2, "other_cpu_pct": 5.0,
            "rc": 0, "timed_out": False, "stored": 1000}


def summarize(tmp_path, rows):
    path = tmp_path / "ingress.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return subprocess.run([sys.executable, str(BENCH / "summarize_ingress.py"), str(path)], capture_output=True,
                          text=True, check=True).stdout


def test_ingress_summary_flags_a_cell_slower_than_the_base_by_more_than_the_spread(tmp_path):
    rows = []
    for mtad, base in ((900, 1000), (910, 1010), (905, 990)):  # ~10% slower, spread ~2%
        rows += [record("mtad", mtad), record("base-mtad", base)]
    for mtad, base in ((1000, 1000), (950, 1010), (1040, 990)):  # equal within a ~9% spread
        rows += [record("mtad", mtad, sessions=100), record("base-mtad", base, sessions=100)]
    out = summarize(tmp_path, rows)
    table = out.split("### Before/after")[1]
    line20 = next(line for line in table.splitlines() if line.startswith("| 1 KB | 20 |"))
    line100 = next(line for line in table.splitlines() if line.startswith("| 1 KB | 100 |"))
    assert "0.91x" in line20 and "SLOWER by more than the spread" in line20
    assert "within the spread" in line100
    assert "BEFORE/AFTER: mtad slower than base-mtad by more than the spread in: 1 KB/20" in out
    assert "| mtad | base-mtad |" in out.split("### Peak memory")[0]  # the throughput table's columns


def test_ingress_summary_without_a_base_has_no_base_columns(tmp_path):
    out = summarize(tmp_path, [record("mtad", 900), record("sink", 3000)])
    assert "base-mtad" not in out and "Before/after" not in out


@pytest.fixture(scope="module")
def flat_tree(tmp_path_factory):
    if subprocess.run(["git", "-C", str(REPO), "rev-parse", "-q", "--verify", f"{FLAT_REV}^{{commit}}"],
                      capture_output=True).returncode != 0:
        pytest.skip(f"revision {FLAT_REV} is not in this checkout")
    folder = tmp_path_factory.mktemp("flat")
    archive = subprocess.run(["git", "-C", str(REPO), "archive", FLAT_REV, "mtad"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def find(src, names):
    code = ("import sys, json; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from mtad_layout import mtad_module\n"
            "print(json.dumps([mtad_module(n).__file__ for n in sys.argv[3:]]))")
    out = subprocess.run([sys.executable, "-c", code, str(src), str(BENCH), *names], capture_output=True,
                         text=True, check=True, cwd="/")
    return json.loads(out.stdout)


def test_mtad_module_finds_the_flat_modules_of_the_tree_measured(flat_tree):
    files = find(flat_tree, ["mtad.base.passwords", "mtad.mail.compose", "mtad.config.schema"])
    assert files == [str(flat_tree / "mtad" / f) for f in ("passwords.py", "compose.py", "config.py")]


def test_mtad_module_finds_the_packages_of_the_work_tree():
    assert find(REPO, ["mtad.base.passwords"]) == [str(REPO / "mtad" / "base" / "passwords.py")]


def test_one_bench_config_for_both_trees_with_the_api_moved(flat_tree, tmp_path):
    out = tmp_path / "mtad.yaml"
    subprocess.run([sys.executable, str(BENCH / "mtad_config.py"), str(out), str(tmp_path / "state"), "2528",
                    "--api-port", "2581", "--src", str(flat_tree), "--src", str(REPO)], check=True,
                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    text = out.read_text()
    assert '127.0.0.1:2528' in text and 'api: {address: "127.0.0.1:2581"}' in text and "catch_all()" in text
