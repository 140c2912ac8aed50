"""Spam filtering end to end (issue 15 item 3): mail sent with smtplib to mtad's MX listener, scored by a real
SpamAssassin ``spamd`` (tests/support/spamd.py, local rules only), routed to an HTTP receiver on loopback.

- ``tag``: the GTUBE test string is flagged ``X-Mailgun-Sflag: Yes`` with its score, an ordinary message ``No``,
  in the route POST and in the stored copy; headers of those names the sender wrote are replaced;
- ``block``: GTUBE is refused ``550 5.7.1`` at end of DATA, nothing stored or routed; ham goes through;
- ``disabled`` domains and authenticated submission are not scanned;
- the domains API sets a domain's ``spam_action`` (and mtad's threshold) with ``PUT /v3/domains/{name}``, and a
  reload (SIGHUP) the config file's;
- spamd stopped mid-test: ``on_error: accept`` keeps the message untagged, ``tempfail`` answers ``451 4.7.1``;
  started again, scanning resumes;
- a spamd that never answers: every reply comes within the timeout (waiting for a slot counts), never a hang;
- a message over ``max_size`` is accepted untagged without asking spamd.
"""

from __future__ import annotations

import concurrent.futures
import json
import signal
import time

import pytest

from tests.e2e.helpers import message_count, send, stored, submission
from tests.e2e.routes_support import accepted, assert_clean_exit, inbound, route, routing_config
from tests.support.api import api_sync
from tests.support.daemon import Mtad, base_config
from tests.support.receiver import Post, Receiver
from tests.support.spamd import GTUBE, SilentServer, spamd  # noqa: F401 (fixture)
from tests.support.wait import wait_until

DOMAINS = ["inbound.test", "tagged.test", "blocked.test", "strict.test"]


def spam_config(tmp, certs, app: Receiver, spamd_address: str, **spamd_keys) -> dict:
    cfg = routing_config(base_config(tmp, certs), [route("catch_all()", f'forward("{app.url("all")}")')])
    cfg["receiving_domains"] = DOMAINS
    cfg["delivery"]["enabled"] = False
    cfg["spam"] = {"spamd": {"address": spamd_address, **spamd_keys},
                   "domains": {"tagged.test": {"action": "tag"},
                               "blocked.test": {"action": "block"},
                               "strict.test": {"action": "tag", "on_error": "tempfail"}}}
    return cfg


@pytest.fixture(scope="module")
def app(daemons_store):
    a = Receiver(multipart_only=True).start()
    yield a
    a.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, certs, app, daemons_store, spamd):
    tmp = tmp_path_factory.mktemp("spam")
    d = Mtad(tmp, spam_config(tmp, certs, app, f"127.0.0.1:{spamd.port}", timeout="20s", max_size="40KB")).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


_n = [0]


def rcpt(domain: str) -> str:
    """A fresh recipient, so each message's route POST is found by its recipient."""
    _n[0] += 1
    return f"user{_n[0]}-{time.time_ns()}@{domain}"


def message(to: str, body: str, extra: str = "") -> bytes:
    return (f"From: Alice <alice@sender.test>\r\nTo: <{to}>\r\nSubject: Lunch tomorrow\r\n"
            f"Date: Mon, 03 Jun 2024 10:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@sender.test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n{extra}\r\n{body}").encode()


def spam(to: str, extra: str = "") -> bytes:
    return message(to, f"This is the GTUBE, the Generic Test for Unsolicited Bulk Email.\r\n\r\n{GTUBE}\r\n", extra)


def ham(to: str, extra: str = "") -> bytes:
    return message(to, "Hi Bob,\r\n\r\nshall we meet for lunch tomorrow at noon, at the usual place?\r\n\r\n"
                       "Alice\r\n", extra)


def post_for(app: Receiver, recipient: str) -> Post:
    posts = wait_until(lambda: app.for_recipient(recipient), 15, f"the route POST for {recipient}")
    assert len(posts) == 1, posts
    return posts[0]


def flags(post: Post) -> tuple[list[str], list[str]]:
    """The X-Mailgun-Sflag and X-Mailgun-Sscore values of a route POST (each header is a field of its own)."""
    return post.all("X-Mailgun-Sflag"), post.all("X-Mailgun-Sscore")


# --- tag --------------------------------------------------------------------------------------------------------

def test_tag_marks_gtube_as_spam_and_replaces_the_senders_own_flag(daemon, app):
    to = rcpt("tagged.test")
    qid = accepted(daemon, [to], spam(to, extra="X-Mailgun-Sflag: No\r\nX-Mailgun-Sscore: -10.0\r\n"))
    sflag, sscore = flags(post_for(app, to))
    assert sflag == ["Yes"]
    assert len(sscore) == 1 and float(sscore[0]) >= 5.0  # GTUBE scores about 1000
    body = stored(daemon, qid)["body"]  # under mtad's Received line, above the sender's headers
    added = f"\r\nX-Mailgun-Sflag: Yes\r\nX-Mailgun-Sscore: {sscore[0]}\r\nFrom: Alice".encode()
    assert body.startswith(b"Received: ") and added in body
    assert body.count(b"X-Mailgun-Sflag") == 1 and b"-10.0" not in body


def test_tag_marks_an_ordinary_message_as_ham(daemon, app):
    to = rcpt("tagged.test")
    qid = accepted(daemon, [to], ham(to))
    post = post_for(app, to)
    sflag, sscore = flags(post)
    assert sflag == ["No"]
    assert len(sscore) == 1 and float(sscore[0]) < 5.0
    assert ["X-Mailgun-Sflag", "No"] in json.loads(post.get("message-headers"))
    assert b"\r\nX-Mailgun-Sflag: No\r\n" in stored(daemon, qid)["body"]


# --- block ------------------------------------------------------------------------------------------------------

def test_block_refuses_gtube_at_end_of_data_and_keeps_nothing(daemon, app):
    to = rcpt("blocked.test")
    before = message_count(daemon)
    code, text = inbound(daemon, [to], spam(to))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    # an ordinary message sent after it is routed; the refused one never is, and was not stored
    ham_to = rcpt("blocked.test")
    accepted(daemon, [ham_to], ham(ham_to, extra="X-Mailgun-Sflag: No\r\n"))
    post = post_for(app, ham_to)
    assert flags(post) == ([], [])  # block adds no headers, and removes the sender's
    assert app.for_recipient(to) == []
    assert message_count(daemon) == before + 1


def test_a_message_to_a_blocking_and_a_tagging_domain_is_refused_as_spam(daemon, app):
    tagged, blocked = rcpt("tagged.test"), rcpt("blocked.test")
    code, text = inbound(daemon, [tagged, blocked], spam(tagged))
    assert code == 550 and text.startswith("5.7.1"), (code, text)


# --- not scanned ------------------------------------------------------------------------------------------------

def test_a_domain_with_spam_filtering_disabled_gets_mail_as_sent(daemon, app):
    to = rcpt("inbound.test")
    accepted(daemon, [to], spam(to, extra="X-Mailgun-Sflag: No\r\n"))
    assert flags(post_for(app, to)) == (["No"], [])  # the sender's header, untouched: nothing was scanned


def test_authenticated_submission_is_not_scanned(daemon, app, certs):
    to = rcpt("blocked.test")
    with submission(daemon, certs.client_context()) as s:
        code, text = send(s, "postmaster@example.com", [to], spam(to))
    assert code == 250, (code, text)
    assert flags(post_for(app, to)) == ([], [])


def test_a_message_over_max_size_is_accepted_untagged_without_asking_spamd(daemon, app):
    to = rcpt("strict.test")  # on_error: tempfail, but a message not scanned on purpose is no error
    filler = ("lorem ipsum dolor sit amet " * 3 + "\r\n") * 600  # ~50 KB, over max_size 40KB
    accepted(daemon, [to], message(to, f"{GTUBE}\r\n{filler}"))
    assert flags(post_for(app, to)) == ([], [])
    assert "over spam.spamd.max_size" in daemon.log()


# --- the domains API ----------------------------------------------------------------------------------------------

def test_spam_action_set_through_the_domains_api_applies_at_once(daemon, app):
    api_sync(daemon, "POST", "/v3/domains", data={"name": "api-spam.test"})
    got = api_sync(daemon, "GET", "/v3/domains/api-spam.test")["domain"]
    assert (got["spam_action"], got["spam_threshold"], got["spam_on_error"]) == ("disabled", 5.0, "accept")
    answer = api_sync(daemon, "PUT", "/v3/domains/api-spam.test", data={"spam_action": "block"})
    assert answer["message"] == "Domain has been updated" and answer["domain"]["spam_action"] == "block"
    to = rcpt("api-spam.test")
    code, text = inbound(daemon, [to], spam(to))
    assert code == 550 and text.startswith("5.7.1"), (code, text)
    # the threshold is the domain's: at -5 an ordinary message is spam too (Mailgun's SDK calls v4)
    api_sync(daemon, "PUT", "/v4/domains/api-spam.test", data={"spam_action": "tag", "spam_threshold": "-5"})
    to = rcpt("api-spam.test")
    accepted(daemon, [to], ham(to))
    assert flags(post_for(app, to))[0] == ["Yes"]
    got = api_sync(daemon, "GET", "/v4/domains/api-spam.test")["domain"]
    assert (got["spam_action"], got["spam_threshold"]) == ("tag", -5.0)
    # the config file's domains show their policy, and are read-only here
    listed = {d["name"]: d for d in api_sync(daemon, "GET", "/v3/domains")["items"]}
    assert listed["blocked.test"]["spam_action"] == "block"
    assert listed["strict.test"]["spam_on_error"] == "tempfail"
    answer = api_sync(daemon, "PUT", "/v3/domains/tagged.test", data={"spam_action": "block"}, expect=403)
    assert "read-only" in answer["message"]


@pytest.mark.parametrize("data, problem", [
    ({"spam_action": "explode"}, "'spam_action'"),
    ({"spam_threshold": "lots"}, "'spam_threshold'"),
    ({"spam_threshold": "nan"}, "'spam_threshold'"),
    ({"spam_on_error": "maybe"}, "'spam_on_error'"),
])
def test_a_bad_domain_update_is_a_400_naming_the_field(daemon, data, problem):
    api_sync(daemon, "POST", "/v3/domains", data={"name": "bad-update.test"}, expect=None)
    answer = api_sync(daemon, "PUT", "/v3/domains/bad-update.test", data=data, expect=400)
    assert problem in answer["message"]
    assert api_sync(daemon, "PUT", "/v3/domains/nowhere.test", data=data, expect=404)["message"]


def reload(daemon: Mtad) -> None:
    """SIGHUP, and wait until the reload is done."""
    done = daemon.log().count("configuration reloaded")
    daemon.signal(signal.SIGHUP)
    wait_until(lambda: daemon.log().count("configuration reloaded") > done, 15, "the reload")


def test_a_reload_applies_the_files_spam_policy(daemon, app):
    daemon.cfg["spam"]["domains"]["inbound.test"] = {"action": "tag", "threshold": -5}
    daemon.write_config()
    try:
        reload(daemon)
        to = rcpt("inbound.test")
        accepted(daemon, [to], ham(to))
        assert flags(post_for(app, to))[0] == ["Yes"]  # at -5, this ordinary message is spam
    finally:
        del daemon.cfg["spam"]["domains"]["inbound.test"]
        daemon.write_config()
        reload(daemon)
    to = rcpt("inbound.test")
    accepted(daemon, [to], ham(to))
    assert flags(post_for(app, to)) == ([], [])


# --- spamd down ---------------------------------------------------------------------------------------------------

def test_spamd_stopped_mid_test_applies_each_domains_on_error_policy(daemon, app, spamd):
    to = rcpt("tagged.test")
    accepted(daemon, [to], spam(to))
    assert flags(post_for(app, to))[0] == ["Yes"]
    spamd.stop()
    try:
        # on_error accept (the default): kept, untagged
        to = rcpt("tagged.test")
        accepted(daemon, [to], spam(to))
        assert flags(post_for(app, to)) == ([], [])
        # on_error tempfail: 451 so that the sender retries; nothing stored
        before = message_count(daemon)
        to = rcpt("strict.test")
        code, text = inbound(daemon, [to], spam(to))
        assert code == 451 and text.startswith("4.7.1"), (code, text)
        assert message_count(daemon) == before
        assert "not scanned" in daemon.log()
    finally:
        spamd.start()
    to = rcpt("strict.test")  # the sender's retry, once spamd is back
    accepted(daemon, [to], spam(to))
    assert flags(post_for(app, to))[0] == ["Yes"]


# --- spamd slow ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def silent():
    server = SilentServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def slow_daemon(tmp_path_factory, certs, app, daemons_store, silent):
    tmp = tmp_path_factory.mktemp("spam-slow")
    d = Mtad(tmp, spam_config(tmp, certs, app, f"127.0.0.1:{silent.port}", timeout="1s",
                              max_concurrent=1)).start()
    yield d
    problems = assert_clean_exit(d)
    assert not problems, "\n".join(problems)


def test_a_spamd_that_never_answers_hits_the_timeout_not_a_hang(slow_daemon, app, silent):
    to = rcpt("strict.test")
    started = time.monotonic()
    code, text = inbound(slow_daemon, [to], spam(to))
    assert code == 451 and text.startswith("4.7.1"), (code, text)
    assert time.monotonic() - started < 5  # timeout 1s
    assert silent.accepted >= 1  # it was asked
    # three at once on one slot: each waits at most its own timeout, whoever holds the slot
    targets = [rcpt("tagged.test") for _ in range(3)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        replies = list(pool.map(lambda to: inbound(slow_daemon, [to], spam(to)), targets))
    assert [code for code, _ in replies] == [250, 250, 250], replies
    assert time.monotonic() - started < 6
    for to in targets:
        assert flags(post_for(app, to)) == ([], [])  # accepted untagged (on_error: accept)
    assert "did not answer within 1.0s" in slow_daemon.log()
