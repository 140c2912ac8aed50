"""Fixtures for the end-to-end suite: module-scoped daemons, so tests that don't interfere share one."""

from __future__ import annotations

import pytest

from tests.support.daemon import Mtad, base_config

# Small enough that abuse tests finish fast, large enough that ordinary sessions never hit them.
FAST_LIMITS = {"auth_failure_delay": "20ms"}


# Every recipient of the receiving domain is kept (mtad refuses recipients no route handles).
CATCH_ALL = {"expression": "catch_all()", "actions": ["store()"], "description": "ingress tests"}


def ingress_only(cfg: dict) -> dict:
    """Ingress tests look at what was accepted: no outbound delivery may change the stored rows, and
    mail for the receiving domain is kept whatever the recipient."""
    cfg["delivery"] = {"enabled": False}
    cfg.setdefault("routing", {}).setdefault("routes", [CATCH_ALL])
    return cfg


@pytest.fixture(scope="module")
def daemon_factory(tmp_path_factory: pytest.TempPathFactory, certs, daemons_store):
    """``make(limits={...}, **top_level_keys)`` starts an mtad shared by the module's tests.

    At teardown the daemon must stop cleanly (exit 0) and its log must hold no traceback: no test
    input may cause an internal error.
    """
    started: list[Mtad] = []

    def make(*, limits: dict | None = None, **top: object) -> Mtad:
        tmp = tmp_path_factory.mktemp("mtad")
        cfg = base_config(tmp, certs)
        cfg["limits"] = {**FAST_LIMITS, **(limits or {})}
        ingress_only(cfg).update(top)
        daemon = Mtad(tmp, cfg).start()
        started.append(daemon)
        return daemon

    yield make
    problems = []
    for daemon in started:
        code = daemon.stop()
        if code != 0:
            problems.append(f"mtad exited with {code}")
        if "Traceback" in daemon.log():
            problems.append(f"traceback in the daemon log:\n{daemon.log()[-4000:]}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def ingress_config(mtad_config: dict) -> dict:
    """``mtad_config`` for a per-test daemon (``mtad_factory``): no outbound delivery, fast AUTH tarpit."""
    mtad_config["limits"] = dict(FAST_LIMITS)
    return ingress_only(mtad_config)


# --- outbound delivery suite (tests/e2e/test_outbound_*.py): loopback MX servers, DNS and a delivering mtad ---
from tests.e2e.outbound_support import loopback_dns, outbound_mtad, sender_mailbox  # noqa: E402,F401
from tests.support.sink import mx_farm  # noqa: E402,F401

# --- the API suite's receiver of route POSTs and store notifications ---
from tests.support.receiver import receiver  # noqa: E402,F401

# --- inbound routes suite (tests/e2e/test_routes_*.py): the loopback application receiving route POSTs ---
from tests.e2e.routes_support import app  # noqa: E402,F401


@pytest.fixture(scope="module")
def delivering_env(daemon_factory, mx_farm, request):
    """(daemon, sink): a module's mtad delivering the module's ``DEST`` domain to a sink MX, through a DNS
    server on loopback."""
    from tests.e2e.apihelpers import delivering
    from tests.support.dns_server import DnsServer
    dns = DnsServer(ttl=300).start()
    sink = mx_farm.add("mx.sink.test")
    daemon = daemon_factory(**delivering(dns, sink, [request.module.DEST]))
    yield daemon, sink
    dns.stop()
