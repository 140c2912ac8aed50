import pytest

from mtad.ingress.authguard import AuthGuard, client_key
from mtad.config.schema import LimitsConfig
from mtad.base.errors import ConfigError
from mtad.base.rates import Duration


def guard(**kw) -> AuthGuard:
    return AuthGuard(LimitsConfig(**{"max_auth_failures_per_client": 2, "max_auth_failures_per_account": 0,
                                     "auth_failure_window": Duration(60), "auth_lockout": Duration(30), **kw}))


def fail(g: AuthGuard, ip: str, login: str, now: float) -> str | None:
    locked = g.admit(ip, login, now)
    if locked is None:
        g.done(ip, login, False, now)
    return locked


def test_an_ipv6_client_is_counted_by_its_64():
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    g = guard()
    fail(g, "2001:db8:1:2::1", "a", 0)
    fail(g, "2001:db8:1:2::2", "b", 1)
    assert g.admit("2001:db8:1:2::3", "c", 2) == "client"
    assert g.admit("2001:db8:1:3::3", "c", 2) is None


def test_attempts_while_locked_do_not_prolong_the_lockout_and_counting_restarts_after():
    g = guard()
    fail(g, "192.0.2.1", "a", 0)
    fail(g, "192.0.2.1", "a", 1)  # locked until 31
    for t in range(2, 31):
        assert g.admit("192.0.2.1", "a", t) == "client"
    assert g.admit("192.0.2.1", "a", 31.5) is None
    g.done("192.0.2.1", "a", False, 31.5)
    assert g.admit("192.0.2.1", "a", 32) is None  # one failure since the lockout: below the limit
    assert g.lockouts["client"] == 1 and g.refused["client"] == 29


def test_failures_out_of_the_window_are_forgotten():
    g = guard()
    fail(g, "192.0.2.1", "a", 0)
    fail(g, "192.0.2.1", "a", 61)
    assert g.admit("192.0.2.1", "a", 62) is None


def test_attempts_being_checked_count_against_the_limit():
    g = guard()
    assert g.admit("192.0.2.1", "a", 0) is None
    assert g.admit("192.0.2.1", "b", 0) is None
    assert g.admit("192.0.2.1", "c", 0) == "client"  # two are still being checked
    g.done("192.0.2.1", "a", True, 0)
    assert g.admit("192.0.2.1", "c", 0) is None


def test_per_account_limit_spans_addresses_and_zero_turns_a_limit_off():
    g = guard(max_auth_failures_per_client=0, max_auth_failures_per_account=2)
    fail(g, "192.0.2.1", "User@Example.com", 0)
    fail(g, "192.0.2.2", "user@example.com", 0)
    assert g.admit("192.0.2.3", "user@example.com", 1) == "account"
    assert g.admit("192.0.2.3", "other@example.com", 1) is None


def test_negative_limits_are_config_errors():
    from mtad.config.schema import parse
    from pathlib import Path
    with pytest.raises(ConfigError, match="limits.max_auth_failures_per_client"):
        parse({"limits": {"max_auth_failures_per_client": -1}}, Path("."))
