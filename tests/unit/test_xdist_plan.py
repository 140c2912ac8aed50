"""tests/support/xdist_plan.py: how the whole suite's work units are cut and ordered for xdist's two workers."""

from __future__ import annotations

from pathlib import Path

from tests.support import xdist_plan

ROOT = Path(__file__).resolve().parents[2]
FUZZ = "tests/e2e/test_api_fuzz.py"


def test_the_fuzzing_module_is_cut_into_two_parts_and_other_modules_stay_whole():
    ids = [f"{FUZZ}::test_every_operation_answers_within_its_documented_contract[GET /v3/{i}]" for i in range(176)]
    parts = {}
    for nodeid in ids:
        parts.setdefault(xdist_plan.scope_of(nodeid), []).append(nodeid)
    assert sorted(parts) == [f"{FUZZ}#0", f"{FUZZ}#1"]
    assert all(len(part) > 176 // 4 for part in parts.values())  # neither half nearly empty
    assert xdist_plan.scope_of("tests/e2e/test_cluster.py::test_x[postgresql]") == "tests/e2e/test_cluster.py"
    assert xdist_plan.scope_of("tests/unit/test_slots.py::test_y") == "tests/unit/test_slots.py"


def test_slow_modules_go_first_then_the_fuzzing_halves_then_end_to_end_then_the_rest():
    assert xdist_plan.SLOW_FIRST, "the order is the point"
    units = {"tests/unit/test_slots.py": 103, "tests/e2e/test_api_safety.py": 91, f"{FUZZ}#1": 90,
             f"{FUZZ}#0": 86, "tests/contract/test_store_contract.py": 14, "tests/e2e/test_stats.py": 11,
             **{module: 1 for module in reversed(xdist_plan.SLOW_FIRST)}}
    order = sorted(units, key=lambda scope: xdist_plan.rank(scope, units[scope]))
    assert order == [*xdist_plan.SLOW_FIRST, f"{FUZZ}#0", f"{FUZZ}#1", "tests/e2e/test_api_safety.py",
                     "tests/e2e/test_stats.py", "tests/unit/test_slots.py", "tests/contract/test_store_contract.py"]


def test_the_slow_first_modules_exist():
    missing = [module for module in [*xdist_plan.SLOW_FIRST, *xdist_plan.SPLIT_MODULES]
               if not (ROOT / module).is_file()]
    assert not missing, f"renamed or removed: update tests/support/xdist_plan.py: {missing}"
