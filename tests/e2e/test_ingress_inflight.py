"""``limits.max_inflight_bytes``: the message bytes all sessions hold together are bounded while DATA arrives.

Several clients send large messages at once over real sockets; each sends most of its message, all wait for
each other, then they finish one by one (so only bytes held during DATA can make the total pass the limit,
not messages being committed together). Their bytes cannot all be held at once, so some sessions must get
``452 4.3.1`` while at least one gets its 250; afterwards every reserved byte is back (a message that takes
the whole budget at its commit is accepted), whatever way the sessions ended: 250, 452, or a client gone
mid-DATA. A complete message takes three times its size at its commit (the received bytes, the cleaned copy,
the store's record: ``mtad.base.inflight.COMMIT_COPIES``).
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.e2e.helpers import assert_still_serving, message_count, queue_id, stored
from tests.support.rawsmtp import RawSMTP

LIMIT = 10_000_000
MESSAGE_SIZE = 3_000_000  # one fits with its commit's copies (9 MB), two do not
WHOLE_BUDGET = LIMIT // 3 - 100_000  # a message whose commit takes nearly the whole budget
CLIENTS = 4
LINE = b"x" * 998 + b"\r\n"


@pytest.fixture(scope="module")
def daemon(daemon_factory):
    return daemon_factory(limits={"max_inflight_bytes": LIMIT, "data_timeout": "60s"})


def body(size: int, tag: str) -> bytes:
    head = f"Subject: big {tag}\r\n\r\n".encode()
    return head + LINE * ((size - len(head)) // len(LINE))


def inflight_metrics(daemon) -> dict[str, float]:
    text = requests.get(f"{daemon.api_url}/metrics", timeout=10).text
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith("mtad_inflight_")}


def open_data(port: int) -> RawSMTP:
    c = RawSMTP(port, timeout=30)
    c.ehlo()
    c.send(b"MAIL FROM:<big@example.net>\r\nRCPT TO:<store@inbound.test>\r\nDATA\r\n")
    assert [code for code, _ in c.replies(3)] == [250, 250, 354]
    return c


def test_concurrent_large_messages_over_the_budget_get_452_and_the_budget_is_released(daemon):
    before = message_count(daemon)
    barrier = threading.Barrier(CLIENTS + 1, timeout=60)
    replies: list[tuple[int, str]] = []
    errors: list[BaseException] = []

    def client(n: int) -> None:
        try:
            data = body(MESSAGE_SIZE, str(n))
            with open_data(daemon.mx) as c:
                c.send(data[:2_500_000])  # ~2.5 MB of each is in before any is complete
                barrier.wait()
                time.sleep(0.5 + 0.5 * n)  # the ends do not overlap: only DATA in progress can count
                c.send(data[2_500_000:] + b".\r\n")
                replies.append(c.reply(timeout=60))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    barrier.wait()
    for t in threads:
        t.join(90)
    assert not errors, errors
    codes = sorted(code for code, _ in replies)
    assert len(codes) == CLIENTS and set(codes) <= {250, 452}, replies
    assert 452 in codes and 250 in codes, replies
    refused = [text for code, text in replies if code == 452]
    assert all(text.startswith("4.3.1") for text in refused), refused
    accepted = [text for code, text in replies if code == 250]
    for text in accepted:
        assert len(stored(daemon, queue_id(text))["body"]) >= MESSAGE_SIZE - len(LINE)
    assert message_count(daemon) == before + len(accepted)
    metrics = inflight_metrics(daemon)
    assert metrics["mtad_inflight_bytes"] == 0  # every path gave its bytes back
    assert metrics["mtad_inflight_refusals_total"] >= len(refused)

    # Every path gave its bytes back: one message whose commit needs nearly the whole budget now fits.
    with open_data(daemon.mx) as c:
        c.send(body(WHOLE_BUDGET, "after") + b".\r\n")
        code, text = c.reply(timeout=60)
    assert code == 250, text


def test_a_client_gone_mid_data_releases_its_bytes(daemon):
    for _ in range(3):  # each would hold ~2.5 MB for good if a lost connection kept its share
        c = open_data(daemon.mx)
        c.send(body(MESSAGE_SIZE, "cut")[:2_500_000])
        c.close()
    assert_still_serving(daemon)
    with open_data(daemon.mx) as c:
        c.send(body(WHOLE_BUDGET, "after cut") + b".\r\n")
        code, text = c.reply(timeout=60)
    assert code == 250, text


def test_an_api_send_counts_against_the_same_budget(daemon):
    """While SMTP sessions hold much of the budget, an API send that would pass it is answered 503."""
    from tests.support.daemon import API_KEY
    holders = [open_data(daemon.mx) for _ in range(2)]
    try:
        for c in holders:
            c.send(body(MESSAGE_SIZE, "holder")[:2_200_000])  # over 2.3 MB kept between them (1 MiB reads)
        # the sends are in the socket; give the daemon a moment to read them
        for _ in range(50):
            resp = requests.post(f"{daemon.api_url}/v3/example.com/messages", auth=("api", API_KEY), timeout=30,
                                 data={"from": "postmaster@example.com", "to": "someone@gmail.com",
                                       "subject": "big", "text": "y" * 2_000_000})
            if resp.status_code != 200:
                break
            threading.Event().wait(0.1)
        assert resp.status_code == 503, resp.text
        assert "Insufficient system resources" in resp.json()["message"]
    finally:
        for c in holders:
            c.close()
    for _ in range(50):  # the holders' bytes come back once the daemon sees them gone
        resp = requests.post(f"{daemon.api_url}/v3/example.com/messages", auth=("api", API_KEY), timeout=30,
                             data={"from": "postmaster@example.com", "to": "someone@gmail.com",
                                   "subject": "big", "text": "y" * 2_000_000})
        if resp.status_code == 200:
            break
        threading.Event().wait(0.1)
    assert resp.status_code == 200, resp.text



def test_a_message_whose_commit_would_pass_the_budget_gets_452_even_alone(daemon):
    """3.5 MB fits while it arrives, but with its commit's copies (3 x 3.5 MB) it would pass the 10 MB budget."""
    with open_data(daemon.mx) as c:
        c.send(body(3_500_000, "alone") + b".\r\n")
        code, text = c.reply(timeout=60)
    assert (code, text[:5]) == (452, "4.3.1"), text
    assert inflight_metrics(daemon)["mtad_inflight_bytes"] == 0
