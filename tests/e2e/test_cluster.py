"""Three mtad nodes on one PostgreSQL (issue 12 item 2): one database, three ``mtad run`` processes with their own
``node_id`` and loopback ports, one sink MX (tests/support/sink.py), the loopback DNS and one HTTP receiver for
route forwards and webhooks.

What a user of a cluster checks: mail submitted to any node is delivered exactly once, every delivery, route
forward and webhook POST is made by one node; a change made through one node's API (route, suppression, domain and
credential, webhook) takes effect on the others within a second; the events API, analytics logs and stats of any
node answer for the whole cluster; a node killed with SIGKILL mid-load leaves its claimed rows to the others once
its lease (``store.claim_lease``: 3 s here) ran out, and every acknowledged message is delivered. The measured
figures (propagation latency, duplicates at the kill) are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from tests.e2e.helpers import queue_id, send, submission
from tests.e2e.outbound_support import make_message, mtad_cli, write_ca
from tests.support.api import api_sync
from tests.support.daemon import PASSWORD, Mtad, base_config
from tests.support.dns_server import DnsServer
from tests.support.receiver import Receiver
from tests.support.sink import Mx, MxFarm, point
from tests.support.wait import wait_until

NODES = ("node-a", "node-b", "node-c")
SENDER = "postmaster@example.com"
LEASE = 3.0  # store.claim_lease of the nodes: the smallest allowed, so a dead node's rows come back fast
SHAPING = {"default": {"max_connections": 10, "max_message_rate": None, "max_deliveries_per_connection": 100,
                       "connect_timeout": "5s", "command_timeout": "10s", "data_timeout": "10s"},
           # the kill test's domain: connection slots enough that those of the killed node (held in the store
           # until their own lease, 30 s, runs out) never starve the others; its subject is the rows' leases
           "providers": {"kill": {"match_domain_suffix": ["kill.cluster.test"], "max_connections": 200,
                                  "data_timeout": "60s"}}}  # DATA held at the sink does not time out
INFLIGHT = 40  # delivery.max_inflight: what a node claims ahead
FIGURES: dict[str, Any] = {}


class Cluster:
    def __init__(self, nodes: list[Mtad], sink: Mx, receiver: Receiver, dns: DnsServer, farm: MxFarm):
        self.nodes = nodes
        self.a, self.b, self.c = nodes
        self.sink = sink
        self.receiver = receiver
        self.dns = dns
        self.farm = farm

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        return self.a.query(sql, params)  # one database: any node's view is the cluster's


@pytest.fixture(scope="module")
def store_backend() -> str:
    return "postgresql"  # the module's daemons share one database, made below (not one each)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, certs: Any, postgres: Any, loopback_dns: DnsServer,
            mx_farm: MxFarm) -> Iterator[Cluster]:
    _, dsn = postgres.create_database()
    sink = point(loopback_dns, mx_farm.add("mx.cluster.test"), "cluster.test", "kill.cluster.test")
    receiver = Receiver().start()
    nodes: list[Mtad] = []
    try:
        for node_id in NODES:
            tmp = tmp_path_factory.mktemp(node_id)
            shaping = tmp / "shaping.yaml"
            shaping.write_text(yaml.safe_dump(SHAPING))
            cfg = base_config(tmp, certs)
            cfg["node_id"] = node_id
            cfg["store"] = {"backend": "postgresql", "dsn": dsn, "claim_lease": f"{LEASE:g}s"}
            cfg["limits"] = {"auth_failure_delay": "10ms", "max_auth_failures_per_client": 0,
                             "max_auth_failures_per_account": 0}
            cfg["delivery"] = {"dns_nameservers": ["127.0.0.1"], "dns_port": loopback_dns.port, "dns_timeout": "2s",
                               "port": mx_farm.port, "tls_ca_file": str(write_ca(certs, tmp)),
                               "retry": {"schedule": ["1s"]}, "poll_interval": "0.2s",
                               "shaping_file": str(shaping),
                               "max_inflight": INFLIGHT}  # the load is shared
            cfg["routing"] = {"allowed_networks": ["127.0.0.0/8"], "retry_schedule": ["1s"], "timeout": "5s",
                              "routes": [{"expression": 'match_recipient("fw-.*@inbound.test")',
                                          "actions": [f'forward("{receiver.url("forward")}")', "stop()"]}]}
            cfg["webhooks"] = {"domains": {"example.com": {"delivered": {"urls": [receiver.url("hook/delivered")]}}}}
            nodes.append(Mtad(tmp, cfg).start())
        yield Cluster(nodes, sink, receiver, loopback_dns, mx_farm)
    finally:
        problems = []
        for node in nodes:
            code = node.stop()
            if code not in (0, -9):
                problems.append(f"{node.cfg['node_id']} exited with {code}")
            if "Traceback" in node.log():
                problems.append(f"traceback in {node.cfg['node_id']}'s log:\n{node.log()[-4000:]}")
        receiver.close()
        if FIGURES:
            print("\ncluster figures:", json.dumps(FIGURES, indent=1))
        assert not problems, "\n".join(problems)


# --- helpers ------------------------------------------------------------------------------------------------

class Session:
    """One authenticated submission session to a node, for many messages."""

    def __init__(self, node: Mtad, certs: Any, login: str = SENDER, password: str = PASSWORD):
        self.smtp = submission(node, certs.client_context(), login, password)

    def send(self, recipient: str, sender: str = SENDER) -> tuple[str, str]:
        message_id, data = make_message([recipient])
        code, text = send(self.smtp, sender, [recipient], data)
        assert code == 250, text
        return queue_id(text), message_id

    def close(self) -> None:
        try:
            self.smtp.quit()
        except smtplib.SMTPException:
            pass


def send_one(node: Mtad, certs: Any, recipient: str) -> tuple[str, str]:
    s = Session(node, certs)
    try:
        return s.send(recipient)
    finally:
        s.close()


def mx_accepts(node: Mtad, recipient: str) -> bool:
    """Does ``node``'s MX listener take ``recipient`` (RCPT 250)?"""
    with smtplib.SMTP("127.0.0.1", node.mx, local_hostname="probe.test", timeout=5) as s:
        s.ehlo()
        s.mail("someone@sender.test")
        code, _ = s.rcpt(recipient)
        return code == 250


def webhook_posts(receiver: Receiver, path: str) -> list[dict]:
    return [p.json()["event-data"] for p in receiver.to(path)]


def first_success(probe, timeout: float, interval: float = 0.01) -> float:
    """Seconds until ``probe()`` first returns True (polled), from now."""
    started = time.monotonic()
    while not probe():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(interval)
    return time.monotonic() - started


# --- the tests (in order: the first warms every node's caches) -----------------------------------------------

def test_mail_submitted_to_each_node_is_delivered_forwarded_and_posted_exactly_once(cluster, certs):
    sent: list[tuple[str, str]] = []
    for node in cluster.nodes:
        s = Session(node, certs)
        try:
            sent += [s.send(f"once{i}@cluster.test") for i in range(10)]
        finally:
            s.close()
        with smtplib.SMTP("127.0.0.1", node.mx, local_hostname="client.test", timeout=10) as mx:
            for i in range(5):
                _, data = make_message([f"fw-{node.cfg['node_id']}-{i}@inbound.test"])
                mx.sendmail("someone@sender.test", [f"fw-{node.cfg['node_id']}-{i}@inbound.test"], data)
    ids = [message_id for _, message_id in sent]
    wait_until(lambda: set(ids) <= set(cluster.sink.message_ids()), 30, "every message at the sink")
    wait_until(lambda: len(cluster.receiver.to("forward")) >= 15, 30, "15 route forwards")
    wait_until(lambda: len(cluster.receiver.to("hook/delivered")) >= 30, 30, "30 delivered webhooks")
    time.sleep(1.0)  # anything done twice would arrive now

    received = Counter(m for m in cluster.sink.message_ids() if m in ids)
    assert all(n == 1 for n in received.values()) and len(received) == 30, received
    forwards = Counter(p.get("recipient") for p in cluster.receiver.to("forward"))
    assert len(forwards) == 15 and set(forwards.values()) == {1}, forwards
    hooks = Counter(e["id"] for e in webhook_posts(cluster.receiver, "hook/delivered"))
    assert len(hooks) >= 30 and set(hooks.values()) == {1}, hooks
    # each row was settled once: one delivered event per message, and the nodes shared the work
    queue_ids = [q for q, _ in sent]
    marks = ",".join("?" * len(queue_ids))
    delivered = cluster.query(f"SELECT queue_id, count(*) FROM events WHERE event = 'delivered' AND queue_id IN"
                              f" ({marks}) GROUP BY queue_id", tuple(queue_ids))
    assert sorted(n for _, n in delivered) == [1] * 30


def test_a_route_created_on_one_node_routes_mail_arriving_at_another_within_a_second(cluster):
    a, c = cluster.a, cluster.c
    recipient = f"rt-{uuid.uuid4().hex[:8]}@inbound.test"
    assert not mx_accepts(c, recipient)  # no route takes it yet
    api_sync(a, "POST", "/v3/routes", data={"expression": 'match_recipient("rt-.*@inbound.test")',
                                             "action": [f'forward("{cluster.receiver.url("routed")}")', "stop()"]})
    latency = first_success(lambda: mx_accepts(c, recipient), 1.0)
    FIGURES["route: created on A -> RCPT taken on C (s)"] = round(latency, 3)
    with smtplib.SMTP("127.0.0.1", c.mx, local_hostname="client.test", timeout=10) as mx:
        _, data = make_message([recipient])
        mx.sendmail("someone@sender.test", [recipient], data)
    wait_until(lambda: cluster.receiver.to("routed"), 15, "the routed POST")
    time.sleep(0.5)
    assert [p.get("recipient") for p in cluster.receiver.to("routed")] == [recipient]


def test_a_suppression_added_on_one_node_blocks_a_send_on_another(cluster, certs):
    address = f"sup-{uuid.uuid4().hex[:8]}@cluster.test"
    api_sync(cluster.b, "POST", "/v3/example.com/bounces", data={"address": address, "code": "550",
                                                                  "error": "no such user"})
    added = time.monotonic()
    qid, message_id = send_one(cluster.a, certs, address)  # at once: within a second of the change
    FIGURES["suppression: added on B -> send accepted on A (s)"] = round(time.monotonic() - added, 3)

    def failed():
        return cluster.query("SELECT data FROM events WHERE queue_id = ? AND event = 'failed'", (qid,))
    [(data,)] = wait_until(failed, 15, "the suppressed recipient's failure")
    assert json.loads(data)["reason"] == "suppress-bounce"
    assert cluster.sink.by_message_id(message_id) == []


def test_a_domain_and_credential_created_on_one_node_authenticate_on_another_within_a_second(cluster, certs):
    domain = f"d{uuid.uuid4().hex[:8]}.test"
    login, password = f"app@{domain}", "cluster-pass-1"

    def auth_on_c() -> bool:
        try:
            submission(cluster.c, certs.client_context(), login, password).quit()
            return True
        except smtplib.SMTPAuthenticationError:
            return False
    assert not auth_on_c()
    api_sync(cluster.a, "POST", "/v3/domains", data={"name": domain})
    api_sync(cluster.a, "POST", f"/v3/domains/{domain}/credentials", data={"login": "app", "password": password})
    latency = first_success(auth_on_c, 1.0)
    FIGURES["credential: created on A -> AUTH on C (s)"] = round(latency, 3)
    listed = api_sync(cluster.b, "GET", f"/v3/domains/{domain}/credentials")  # B's API knows it too
    assert [item["login"] for item in listed["items"]] == [login]
    # and mail from the new domain, submitted on C, goes out
    s = Session(cluster.c, certs, login, password)
    try:
        _, message_id = s.send("fresh@cluster.test", sender=login)
    finally:
        s.close()
    wait_until(lambda: cluster.sink.by_message_id(message_id), 15, "the new domain's message")


def test_a_webhook_changed_on_one_node_takes_effect_on_another(cluster, certs):
    api_sync(cluster.a, "POST", "/v3/domains/example.com/webhooks",
             data={"id": "accepted", "url": cluster.receiver.url("hook/accepted")})
    changed = time.monotonic()
    s = Session(cluster.b, certs)  # B recorded accepted events before: its cache of webhook URLs was warm
    sent: list[tuple[float, str]] = []
    try:
        while time.monotonic() - changed < 1.5:
            _, message_id = s.send("hooked@cluster.test")
            sent.append((time.monotonic() - changed, message_id))
            time.sleep(0.02)
    finally:
        s.close()

    def posted() -> set[str]:
        return {e["message"]["headers"]["message-id"] for e in webhook_posts(cluster.receiver, "hook/accepted")}
    wait_until(lambda: sent[-1][1].strip("<>") in posted(), 15, "the accepted webhook of B's last message")
    hooked = [at for at, message_id in sent if message_id.strip("<>") in posted()]
    first = min(hooked)
    FIGURES["webhook: created on A -> first event on B posted (s, at most)"] = round(first, 3)
    assert first < 1.0
    assert all(message_id.strip("<>") in posted() for at, message_id in sent if at >= first)
    api_sync(cluster.c, "DELETE", "/v3/domains/example.com/webhooks/accepted")  # and removed through C
    time.sleep(1.0)
    before = len(cluster.receiver.to("hook/accepted"))
    send_one(cluster.b, certs, "unhooked@cluster.test")
    time.sleep(1.0)
    assert len(cluster.receiver.to("hook/accepted")) == before


def test_events_logs_and_stats_of_any_node_answer_for_the_cluster(cluster, certs):
    sent = [send_one(node, certs, f"ev-{node.cfg['node_id']}@cluster.test") for node in cluster.nodes]
    for _, message_id in sent:
        wait_until(lambda m=message_id: cluster.sink.by_message_id(m), 15, "delivery")
    def kinds(node, message_id):
        items = api_sync(node, "GET", "/v3/example.com/events", params={"message-id": message_id.strip("<>")})["items"]
        return {e["event"] for e in items}
    for node in cluster.nodes:
        for qid, message_id in sent:  # every node shows every node's mail (its delivered event is recorded just
            # after the sink's 250: waited for, not assumed)
            wait_until(lambda n=node, m=message_id: {"accepted", "delivered"} <= kinds(n, m), 10,
                       f"accepted and delivered events of {qid} on {node.cfg['node_id']}")
    logs = {}
    stats = {}
    for node in cluster.nodes:
        body = {"events": ["accepted"], "include_totals": True, "pagination": {"limit": 1000},
                "filter": {"AND": [{"attribute": "domain", "comparator": "=",
                                    "values": [{"label": "example.com", "value": "example.com"}]}]}}
        logs[node.cfg["node_id"]] = api_sync(node, "POST", "/v1/analytics/logs", json=body)["pagination"]["total"]
        total = api_sync(node, "GET", "/v3/example.com/stats/total", params={"event": "accepted", "duration": "1d"})
        stats[node.cfg["node_id"]] = sum(s["accepted"]["total"] for s in total["stats"])
    accepted = cluster.query("SELECT count(*) FROM events WHERE domain = 'example.com' AND event = 'accepted'")[0][0]
    assert set(logs.values()) == {accepted} and set(stats.values()) == {accepted}, (logs, stats, accepted)


KILL_LOAD = 60  # messages submitted to each node: together more than the three nodes claim ahead, so that A and C
# are full (INFLIGHT rows each) and work is left unclaimed when B dies


def test_a_node_killed_mid_load_leaves_its_rows_to_the_others(cluster, certs):
    a, b, c = cluster.nodes
    sink = cluster.sink
    sink.data_delay = 0.2  # deliveries take a while
    mtad_cli(a, "queue", "pause", "--domain", "kill.cluster.test")  # the whole load queued first
    sent: list[tuple[str, str]] = []
    lock = threading.Lock()

    def submit(node: Mtad) -> None:
        s = Session(node, certs)
        try:
            for i in range(KILL_LOAD):
                item = s.send(f"k{i}-{node.cfg['node_id']}@kill.cluster.test")
                with lock:
                    sent.append(item)
        finally:
            s.close()
    threads = [threading.Thread(target=submit, args=(node,)) for node in cluster.nodes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(sent) == 3 * KILL_LOAD
    ids = {message_id for _, message_id in sent}

    # every node's /metrics names the node and counts the cluster's queue
    for node in cluster.nodes:
        text = api_sync(node, "GET", "/metrics").decode()
        assert f'mtad_node_info{{node_id="{node.cfg["node_id"]}"}} 1.0' in text
        queued = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                     if line.startswith('mtad_queue_depth{') and 'state="queued"' in line)
        assert queued >= 3 * KILL_LOAD, (node.cfg["node_id"], queued)

    def holds(node_id: str) -> int:
        return cluster.query("SELECT count(*) FROM deliveries WHERE locked_by = ? AND state IN ('queued',"
                             " 'deferred')", (node_id,))[0][0]

    def b_holds() -> int:
        return holds("node-b")

    def in_flight() -> int:  # DATA the sink has begun and not answered
        return len([d for d in list(sink.data_attempts) if not d.reply])

    # The sink answers the first 20 DATA, then holds the others: B dies with deliveries made, others in flight
    # and rows claimed, and A and C, full (INFLIGHT claims each) and unable to end one, take nothing of B's
    # until the gate opens
    gate = threading.Event()
    sink.data_gate, sink.data_gate_pass = gate, 20
    mtad_cli(a, "queue", "resume", "--domain", "kill.cluster.test")
    started = time.monotonic()
    wait_until(lambda: len(set(sink.message_ids()) & ids) >= 10 and in_flight() >= 3 and b_holds() > 0
               and holds("node-a") == holds("node-c") == INFLIGHT, 60,
               "10 delivered, DATA in flight at the sink, A and C full, B holding rows")
    killed_at = time.time()
    b.kill()  # SIGKILL: its claims stay locked until their lease runs out
    killed = time.monotonic()
    flying = in_flight()
    delivered_at_kill = len(set(sink.message_ids()) & ids)
    held_at_kill = b_holds()  # B is dead: what it held is still locked by it
    assert held_at_kill > 0
    # the operator sees who holds what: B's rows, until its lease ran out
    with ThreadPoolExecutor(2) as pool:  # both listings at once: the others wait for them
        as_json, as_text = pool.map(lambda args: mtad_cli(c, "queue", "list", *args), [("--json",), ()])
    holders = {r["locked_by"] for r in json.loads(as_json) if r["state"] == "active"}
    assert "node-b" in holders and holders <= set(NODES), holders
    assert "[on node-b]" in as_text
    gate.set()
    gate_open = time.monotonic()

    # B's rows go to the others only once its lease ran out (renewed every third of it: at the earliest
    # two thirds of it after the kill)
    wait_until(lambda: b_holds() < held_at_kill, 60, "another node to take B's rows over")
    taken_over = time.monotonic()
    wait_until(lambda: ids <= set(sink.message_ids()), 90, "every acknowledged message at the sink")
    drained = time.monotonic()

    def pending() -> int:  # the sink holds a message before its reply (data_delay) reaches the node's record
        return cluster.query("SELECT count(*) FROM deliveries WHERE domain = 'kill.cluster.test'"
                             " AND state != 'done'")[0][0]
    wait_until(lambda: pending() == 0, 30, "every delivery recorded done")
    recorded = time.monotonic()
    counts = Counter(m for m in sink.message_ids() if m in ids)
    duplicates = sum(n - 1 for n in counts.values())
    FIGURES["kill"] = {"messages": 3 * KILL_LOAD, "delivered before the kill": delivered_at_kill,
                       "rows held by B at the kill": held_at_kill, "DATA in flight at the sink at the kill": flying,
                       "duplicates": duplicates, "seconds from resume to the kill": round(killed - started, 1),
                       "seconds from the kill to the gate's opening": round(gate_open - killed, 1),
                       "seconds from the kill to the take-over": round(taken_over - killed, 1),
                       "seconds from the kill to the last delivery": round(drained - killed, 1),
                       "seconds from the last delivery to the last outcome recorded": round(recorded - drained, 1)}
    print("\nkill:", FIGURES["kill"])
    sink.data_delay = 0.0
    sink.data_gate, sink.data_gate_pass = None, 0
    assert b_holds() == 0
    # a duplicate is a delivery B had in flight: its DATA began before the kill (the sink took the message, B
    # died before it read the 250 and recorded it), and it was among the rows B held
    assert duplicates <= min(held_at_kill, flying), FIGURES["kill"]
    for message_id, n in counts.items():
        if n > 1:
            assert min(m.at for m in sink.by_message_id(message_id)) < killed_at, message_id
    assert taken_over - killed >= LEASE * 2 / 3 - 0.1, FIGURES["kill"]  # B's rows waited for its lease
