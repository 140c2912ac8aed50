"""How the whole suite is spread over xdist's workers (``tests/run.sh``: ``-n <cores + 1> --dist loadfile``), as a pytest
plugin loaded by tests/conftest.py.

- One work unit per test file, as ``--dist loadfile``: a module's daemons, clusters, Postfix and browser start once.
- The API fuzzing module (``SPLIT_MODULES``) is the exception: its 175 operations are cut into two halves that
  run on different workers, each half with its own daemon (its module-scoped fixture), so it runs in the same pytest invocation
  as the rest instead of a second one.
- Work units go out longest first (``SLOW_FIRST``: measured slow modules; then the end-to-end modules, then the
  rest by number of tests), so no long module starts last while the other worker has nothing left to do.
  xdist's own order (by number of tests) sent the few-but-slow end-to-end modules (cluster, crash tests) last.

Schemathesis names its generated items ``test_x[GET /path]`` but, under pytest >= 9.2, their node ids lost the
``[GET /path]`` (pytest builds a node id from ``originalname``): every case of a module had the same id, and xdist,
which finds items by id, ran the first of them 175 times instead of each once. ``pytest_collection_modifyitems``
gives each such item its own id back (nothing changes where the id already carries the name, e.g. pytest 8).
"""

from __future__ import annotations

import zlib

import pytest

# Modules cut into halves: parametrized cases independent of each other (each half gets its own daemon).
SPLIT_MODULES = {"tests/e2e/test_api_fuzz.py": 2}

# Modules sent first, slowest first: few tests but long ones (daemon restarts, kills, clusters, PostgreSQL on both
# backends), which xdist's order (by number of tests) sent last. Measured one module at a time with
# ``pytest -p no:xdist --durations``; a module missing here still runs (after these).
SLOW_FIRST = [
    "tests/e2e/test_panel.py",               # a browser, 15 tests of several seconds each
    "tests/e2e/test_ingress_durability.py",  # daemons killed and restarted, on both backends
    "tests/e2e/test_cluster.py",             # PostgreSQL clusters of nodes, one killed mid-load
    "tests/e2e/test_lists_crash.py",         # one test: a 15,000-member expansion killed and resumed
    "tests/e2e/test_reload.py",
    "tests/e2e/test_inboxfirst_crash.py",    # one test: a campaign killed and resumed
    "tests/e2e/test_ingress_config.py",      # a daemon per test
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        originalname = getattr(item, "originalname", None)
        if not originalname or not item.name.startswith(originalname + "[") or not item.name.endswith("]"):
            continue
        if item.nodeid.endswith("::" + item.name) or item.nodeid.endswith("]"):
            continue
        item._id = item._id.with_params(item.name[len(originalname) + 1:-1])  # pytest >= 9.2's NodeId
    seen: dict[str, int] = {}
    for item in items:
        seen[item.nodeid] = seen.get(item.nodeid, 0) + 1
    twice = sorted(nodeid for nodeid, count in seen.items() if count > 1)
    if twice:  # xdist would run the first of them that many times and the others never
        raise pytest.UsageError(f"{len(twice)} test ids name more than one test, e.g. {twice[0]}")


def scope_of(nodeid: str) -> str:
    """The work unit of a test: its file, or for a module of ``SPLIT_MODULES`` one of its parts (``file#n``)."""
    module = nodeid.split("::", 1)[0]
    parts = SPLIT_MODULES.get(module)
    if not parts:
        return module
    return f"{module}#{zlib.crc32(nodeid.encode()) % parts}"


def rank(scope: str, count: int) -> tuple:
    """Sort key of a work unit of ``count`` tests: ``SLOW_FIRST`` in its order, the split modules' parts, the other
    end-to-end modules, then the rest; by number of tests (more first) within each of the last two."""
    module = scope.split("#", 1)[0]
    if module in SLOW_FIRST:
        return (0, SLOW_FIRST.index(module), scope)
    if module in SPLIT_MODULES:
        return (1, 0, scope)
    return (2 if module.startswith("tests/e2e/") else 3, -count, scope)


@pytest.hookimpl(optionalhook=True)  # xdist's hook: absent under -p no:xdist
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Planned(LoadFileScheduling):
        _ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _assign_work_unit(self, node) -> None:
            if not self._ordered:  # the first assignment: xdist has just built the work queue
                self._ordered = True
                units = sorted(self.workqueue.items(), key=lambda unit: rank(unit[0], len(unit[1])))
                self.workqueue.clear()
                self.workqueue.update(units)
            super()._assign_work_unit(node)

    return Planned(config, log)
