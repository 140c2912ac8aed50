"""An automation rule that fires on one node acts on every node of the cluster: two ``mtad run`` nodes on one
PostgreSQL database, a provider answering ``421 ... [TSS04]`` (a rule suspends it for a few seconds); the node that
got the reply suspends the provider, and the other node, told through the store, holds its own mail for that
provider back until the suspension ends instead of connecting (issue 12, provider shaping across the cluster).
"""

from __future__ import annotations

import pytest

from tests.e2e.outbound_support import DEFAULT_SHAPING, Submitter, deliveries, outcomes, wait_final
from tests.support.daemon import Mtad
from tests.support.wait import wait_until

SUSPEND = 5.0  # seconds, the rule's duration
SHAPING = {
    **DEFAULT_SHAPING,
    "providers": {"auto": {"match_mx_suffix": [".auto.cl.test"]}},
    "automation": {
        "auto-tss04": {"providers": ["auto"], "regex": r"\[TSS04\]", "action": "suspend", "duration": f"{SUSPEND:g}s"},
    },
}
FIRED = "automation rule 'auto-tss04' fired"


@pytest.fixture(scope="module")
def pair(outbound_mtad, postgres) -> list[Mtad]:
    """Two nodes (node-a, node-b) on one fresh PostgreSQL database."""
    _, dsn = postgres.create_database()
    nodes = []
    for name in ("node-a", "node-b"):
        daemon = outbound_mtad(shaping=SHAPING, start=False)
        daemon.cfg["store"] = {"backend": "postgresql", "dsn": dsn}
        daemon.cfg["node_id"] = name
        nodes.append(daemon.start())
    return nodes


def test_a_provider_suspended_by_one_node_is_suspended_on_every_node(pair, certs, loopback_dns, mx_farm):
    mx = mx_farm.add("mx.auto.cl.test")
    loopback_dns.add_a(mx.name, mx.ip)
    loopback_dns.add_mx("auto.cl.test", [(10, mx.name)])
    mx.data_replies.append("421 4.7.0 [TSS04] Messages from 127.0.0.1 temporarily deferred due to unexpected"
                           " volume or user complaints")
    submitter = Submitter(pair[0], certs)
    try:
        alpha = submitter.send(["alpha@auto.cl.test"])
    finally:
        submitter.close()
    fired = wait_until(lambda: outcomes(pair[0], alpha.queue_id), 10, "the first attempt")[0]
    assert (fired["severity"], fired["delivery-status"]["code"]) == ("temporary", 421)
    suspended_at = fired["timestamp"]
    # whichever node claimed alpha got the reply and fired the rule; the other one must now hold back too
    firing = wait_until(lambda: next((n for n in pair if FIRED in n.log()), None), 5, "the rule fired on a node")
    other = next(n for n in pair if n is not firing)
    assert FIRED not in other.log()  # it did not see the reply itself
    assert firing.stop() == 0  # from now on only the other node delivers

    submitter = Submitter(other, certs)
    try:
        bravo = submitter.send(["bravo@auto.cl.test"])  # queued while the provider is suspended
    finally:
        submitter.close()

    def held_back():
        row = deliveries(other, bravo.queue_id)[0]
        return row if row["last_reply"] == "provider auto suspended" else None
    row = wait_until(held_back, 5, "bravo held back on the other node by the suspension")
    assert row["attempts"] == 0 and row["state"] == "queued"  # given back, not counted as an attempt
    assert row["next_attempt_at"] >= suspended_at + SUSPEND - 0.5

    final = wait_final(other, bravo, SUSPEND + 15)
    assert final["bravo@auto.cl.test"]["delivery-status"]["attempt-no"] == 1
    # Nothing reached the provider while it was suspended: alpha's connection, then the others after it ended.
    later = [opened for _, opened in mx.connections[1:]]
    assert later and min(later) >= suspended_at + SUSPEND - 0.3, (suspended_at, mx.connections)
