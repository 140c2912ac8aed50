"""Schemathesis (a property-based API fuzzer) over docs/openapi.yaml, against a running daemon.

Two runs: every documented operation gets generated requests, valid and invalid (Schemathesis' coverage
cases: boundaries, wrong types, missing fields, undeclared methods; then Hypothesis-generated ones), and a
stateful run chains operations through the links Schemathesis infers (a route created, then read, changed
and deleted; a suppression added, then listed and removed; ...). Every answer must be no 5xx, carry a
status the document declares for the operation, with the declared content type, headers and schema; a 405
must name the allowed methods.

Bounded and reproducible: per operation its coverage cases (~40 on average, deterministic) and a few generated
ones, a short stateful run, ``derandomize`` (the same requests every run: ~8,300), one private daemon that the
run may fill and empty at will.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, response_headers_conformance, response_schema_conformance, status_code_conformance,
    unsupported_method)

from mtad.api import hash_key
from tests.support.api import AUTH
from tests.support.daemon import API_KEY, free_port

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, unsupported_method]
# Generated requests per operation, on top of its coverage cases. Derandomized, they are a fixed sample, not a search
# that goes further each run; each costs ~3 times a coverage case to draw (~15 ms), the most expensive requests here.
EXAMPLES = 5
STATEFUL_RUNS, STATEFUL_STEPS = 15, 6

schema = schemathesis.openapi.from_path(SPEC_PATH)
OPERATIONS = [result.ok().label for result in schema.get_all_operations()]  # parsed only: no case built yet


def _settings(**kwargs) -> settings:
    return settings(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck),
                    **kwargs)


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    # the generated requests include bad credentials: no lockout of the fuzzer's address (429)
    return daemon_factory(api={"address": f"127.0.0.1:{free_port()}", "keys": [{"key_hash": hash_key(API_KEY)}],
                               "max_auth_failures": 1_000_000})


@pytest.fixture(scope="module")
def http():
    with requests.Session() as session:  # kept-alive connections: the run is bounded by requests, not connects
        session.trust_env = False  # loopback: no proxy, .netrc or CA bundle to look up in the environment per request
        yield session


@pytest.fixture
def fuzzed_schema(request):
    # Schemathesis' lazy runner reads and rewrites the item's ``_nodeid``, which pytest >= 9.2 no longer has (its id
    # is ``_id``, see tests/support/xdist_plan.py): give it one (only the runner's own reports use it)
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid
    return schema


@_settings(max_examples=EXAMPLES, phases=[Phase.explicit, Phase.generate, Phase.shrink])
def _answers_within_contract(case, daemon, http):
    case.call_and_validate(base_url=daemon.api_url, headers=AUTH, session=http, checks=CHECKS, timeout=30)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_every_operation_answers_within_its_documented_contract(operation, request, fuzzed_schema):
    # One item per operation, its cases (~40 coverage cases, then the generated ones) built when it runs
    # (``from_fixture``, Schemathesis' lazy loader), by the worker that runs it: ``schema.parametrize()`` builds every
    # operation's cases at collection, in every xdist worker, half of them for operations the other worker runs.
    lazy = schemathesis.pytest.from_fixture("fuzzed_schema").include(name=operation)
    lazy.parametrize()(_answers_within_contract)(request=request)


def test_chained_operations_stay_within_the_documented_contract(daemon, http):
    class Workflow(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": daemon.api_url, "headers": AUTH, "session": http, "timeout": 30}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            case.validate_response(response, checks=CHECKS, headers=AUTH)

    Workflow.run(settings=_settings(max_examples=STATEFUL_RUNS, stateful_step_count=STATEFUL_STEPS,
                                    phases=[Phase.generate]))
