"""Routes in the config file, as an operator meets them: ``mtad check-config`` and ``mtad run`` refuse a route
that does not parse, naming the route and the column, with exit code 2 and no traceback (a regex that needs
backtracking while ``allow_backtracking_regex`` is off, a capture in a URL's host, a reference to no group, an
invalid or oversized regex); and ``mtad routes test --recipient ... --header ...`` shows what would happen."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.routes_support import route


def write_config(tmp_path: Path, routes: list[dict], **routing) -> Path:
    path = tmp_path / "mtad.yaml"
    path.write_text(yaml.safe_dump({
        "hostname": "mtad.test", "state_dir": str(tmp_path / "state"), "receiving_domains": ["inbound.test"],
        "listeners": [{"address": "127.0.0.1:0", "role": "mx", "tls": "none", "name": "mx"}],
        "routing": {"routes": routes, **routing}, "log": {"level": "warning"},
    }))
    return path


def mtad(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mtad", *args], capture_output=True, text=True, timeout=30)


GOOD = route("match_recipient('ok@inbound.test')", "stop()")
BAD = [  # (route, what stderr must say); every column counted from 1 in that route's expression or action
    (route('match_recipient("x@inbound.test") and foo()'), "routes[1]: expression: unknown filter 'foo' at column 39"),
    (route('match_recipient("x@inbound.test") and match_recipient("y'),
     "routes[1]: expression: unterminated string at column 55"),
    (route(r'match_recipient("^(a+)+\1$")', "stop()"),
     "routes[1]: expression: regex needs backtracking (invalid escape sequence: \\1); refused unless backtracking "
     "regexes are allowed at column 17"),
    (route('match_recipient("(abc@inbound.test")', "stop()"),
     "routes[1]: expression: invalid regex: missing ), unterminated subpattern at column 18"),
    (route('match_recipient("(.*)@inbound.test")', r'forward("http://\1.example.com/in")'),
     "routes[1]: action 1: a capture may only go into a URL's path or query, not its scheme or host at column 9"),
    (route('match_recipient("(.*)@inbound.test")', "stop()", r'forward("http://app.example.com/\2")'),
     "routes[1]: action 2: \\2 refers to no group of the route's first match_recipient at column 9"),
    (route('match_recipient("' + "a" * 4001 + '")', "stop()"),
     "routes[1]: expression: regex longer than 4000 characters at column 17"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=["unknown-filter", "unterminated-string", "backreference",
                                                   "invalid-regex", "capture-in-host", "no-such-group", "too-long"])
def test_check_config_names_the_route_and_the_column(tmp_path, bad, message):
    result = mtad("check-config", str(write_config(tmp_path, [GOOD, bad])))
    assert result.returncode == 2, result
    assert result.stderr.strip() == f"mtad: configuration error: routing.{message}"


def test_start_up_fails_with_exit_code_2_and_the_column(tmp_path):
    config = write_config(tmp_path, [GOOD, BAD[0][0]])
    result = mtad("run", "--config", str(config))
    assert result.returncode == 2, result
    assert "routing.routes[1]: expression: unknown filter 'foo' at column 39" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_the_same_regex_needing_backtracking_is_taken_when_allowed(tmp_path):
    result = mtad("check-config", str(write_config(tmp_path, [GOOD, BAD[2][0]], allow_backtracking_regex=True)))
    assert result.returncode == 0, result.stderr


@pytest.fixture
def config(tmp_path) -> Path:
    return write_config(tmp_path, [
        route("match_recipient('sales@inbound.test')", "forward('https://crm.example.com/inbound')", "stop()",
              id="sales"),
        route("match_header('subject', '.*urgent.*') and match_recipient('(?P<team>[a-z]+)-web@inbound.test')",
              r"forward('oncall@example.com, https://pager.example.com/\g<team>/mime')", priority=1, id="urgent"),
        route("match_recipient('(a+)+$')", "store()", priority=2, id="hostile"),
    ])


def test_routes_test_shows_the_rcpt_decision_and_each_matching_routes_actions(config):
    result = mtad("routes", "test", "--config", str(config), "--recipient", "Support-web@INBOUND.test",
                  "--header", "X-Other: 1", "--header", "Subject: very URGENT")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "recipient Support-web@inbound.test: would be accepted at RCPT time",
        "route urgent (priority 1) match_header('subject', '.*urgent.*') and "
        "match_recipient('(?P<team>[a-z]+)-web@inbound.test')",
        "  forward -> oncall@example.com",
        "  forward -> https://pager.example.com/Support/mime",  # the capture, as the MX listener would take it
    ]
    calm = mtad("routes", "test", "--config", str(config), "--recipient", "support-web@inbound.test",
                "--header", "Subject: calm")
    assert calm.returncode == 1
    assert calm.stdout.splitlines() == ["recipient support-web@inbound.test: would be accepted at RCPT time",
                                        "no route matches: the message would be accepted and not forwarded"]
    nobody = mtad("routes", "test", "--config", str(config), "--recipient", "nobody@inbound.test")
    assert nobody.returncode == 1
    assert nobody.stdout.splitlines() == ["recipient nobody@inbound.test: would be refused (550 5.1.1) at RCPT time",
                                          "no route matches"]


def test_routes_test_answers_a_hostile_recipient_promptly(config):
    started = time.monotonic()
    result = mtad("routes", "test", "--config", str(config), "--recipient", "a" * 5000 + "!@inbound.test")
    assert time.monotonic() - started < 10  # Python's start-up included; the match itself is RE2's microseconds
    assert result.returncode == 1 and "refused (550 5.1.1)" in result.stdout
