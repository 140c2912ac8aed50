"""Provider shaping holds across the cluster: three ``mtad run`` nodes on one PostgreSQL database deliver to one
provider whose shaping allows 3 connections and 20 messages a second, and the provider's MX sees no more than
that from all of them together (issue 12: "max_connections: 5 for a provider means at most 5 connections from
all nodes together, and max_message_rate is a cluster rate").

Each node gets a third of the messages by SMTP submission and delivers what it claims; short connections
(``max_deliveries_per_connection: 5``) make the nodes contend for the provider's connection slots all along.
On one node each would open 3 connections and send 20 a second: 9 and 60 for the three.
"""

from __future__ import annotations

import re
import threading
import time

import pytest

from tests.e2e.outbound_support import DEFAULT_SHAPING, Submitter
from tests.support.daemon import Mtad
from tests.support.sink import Gauge, point
from tests.support.wait import wait_until

CONNECTIONS, RATE, BURST = 3, 20.0, 20  # the provider's limits; the bucket holds one second's worth
PER_NODE = 67
SHAPING = {
    **DEFAULT_SHAPING,
    "providers": {
        "clustered": {"match_mx_suffix": [".cluster.shp.test"], "max_connections": CONNECTIONS,
                      "max_message_rate": f"{int(RATE)}/s", "max_deliveries_per_connection": 5,
                      "idle_timeout": "300ms"},
    },
}


@pytest.fixture(scope="module")
def cluster(outbound_mtad, postgres) -> list[Mtad]:
    """Three nodes (node-a, node-b, node-c) on one fresh PostgreSQL database."""
    _, dsn = postgres.create_database()
    nodes = []
    for name in ("node-a", "node-b", "node-c"):
        daemon = outbound_mtad(shaping=SHAPING, delivery={"max_inflight": 40}, start=False)
        daemon.cfg["store"] = {"backend": "postgresql", "dsn": dsn}
        daemon.cfg["node_id"] = name
        nodes.append(daemon.start())
    return nodes


def submit_all(node: Mtad, certs, domain: str, count: int, sent: list) -> None:
    submitter = Submitter(node, certs)
    try:
        for i in range(count):
            sent.append(submitter.send([f"{node.cfg['node_id']}-{i}@{domain}"]))
    finally:
        submitter.close()


def test_connections_and_message_rate_of_a_provider_hold_for_all_nodes_together(cluster, certs, loopback_dns,
                                                                                mx_farm):
    provider = Gauge()  # concurrent connections to the provider, from any node
    mx = point(loopback_dns, mx_farm.add("mx1.cluster.shp.test", groups=(provider,)), "dest.cluster.shp.test")
    mx.data_delay = 0.05  # each message keeps its connection busy a little

    sent: list = []
    threads = [threading.Thread(target=submit_all, args=(node, certs, "dest.cluster.shp.test", PER_NODE, sent))
               for node in cluster]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(sent) == PER_NODE * len(cluster)
    wait_until(lambda: len(mx.messages) >= len(sent), 45, "every message delivered")
    time.sleep(0.5)  # nothing more arrives: each message exactly once
    assert sorted(m.message_id for m in mx.messages) == sorted(s.message_id for s in sent)

    # Connections: never more than the provider's limit from all nodes together, and all of it used.
    assert provider.peak == CONNECTIONS, provider
    assert provider.total >= len(sent) / 5  # at most 5 messages per connection: many slot changes

    # Rate: the token bucket's bound over every window (any k messages span at least (k - burst) / rate
    # seconds, less a little for the time between the send and the arrival) ...
    arrivals = sorted(m.at for m in mx.messages)
    slack = 0.25
    for i in range(len(arrivals)):
        for j in range(i + BURST, len(arrivals)):
            assert arrivals[j] - arrivals[i] >= (j - i + 1 - BURST) / RATE - slack, (i, j)
    per_second = [sum(1 for a in arrivals if t <= a < t + 1) for t in arrivals]
    assert max(per_second) <= RATE + BURST
    # ... and over the whole run: the setting, not three times it, nor a stall
    span = arrivals[-1] - arrivals[0]
    overall = len(arrivals) / span
    assert 0.5 * RATE <= overall <= 1.2 * RATE, (overall, span)

    # Every node delivered part of it, and each says what shaping through the database cost it.
    for node in cluster:
        assert node.stop() == 0
    delivered = {node.cfg["node_id"]: node.log().count("status=delivered") for node in cluster}
    assert sum(delivered.values()) == len(sent) and all(delivered.values()), delivered
    costs = {}
    for node in cluster:
        found = re.search(r"shared shaping: (.*)", node.log())
        assert found, node.log()[-2000:]
        costs[node.cfg["node_id"]] = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", found.group(1)))
    calls = sum(c["slot_takes"] + c["slot_releases"] + c["slot_renewals"] + c["rate_takes"] for c in costs.values())
    print(f"\n{len(sent)} messages in {span:.1f} s ({overall:.1f}/s), peak {provider.peak} connections "
          f"of {provider.total}; per node {delivered}; shaping calls {costs}; "
          f"{calls / len(sent):.2f} shaping statements per message")
    assert sum(c["rate_spent"] for c in costs.values()) >= len(sent)
