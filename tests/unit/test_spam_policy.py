"""mtad.inbound.spam's policy as data: each receiving domain's policy from the config file and the API's domains,
the one verdict of a message to several domains, and the headers a verdict writes (spamd itself: the e2e tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtad.base.errors import ConfigError
from mtad.config.schema import parse
from mtad.inbound.spam import REFUSED, UNAVAILABLE, Policies, SpamPolicy, decide, on_error
from mtad.mail import headers
from mtad.store.accounts import DomainRecord


def config(**spam):
    return parse({"receiving_domains": ["file.test", "Both.test"], "spam": spam}, Path("."))


def test_policies_come_from_the_file_and_the_api_with_the_files_defaults():
    cfg = config(threshold=4.0, on_error="tempfail",
                 domains={"file.test": {"action": "block", "threshold": 8}, "both.test": {"action": "disabled"}})
    api = [DomainRecord("api.test", 1.0, True, "tag", False, "mx", "PEM"),
           DomainRecord("own.test", 1.0, True, "block", False, "mx", "PEM", 2.5, "accept"),
           DomainRecord("off.test", 1.0, True, "disabled", False, "mx", "PEM"),
           DomainRecord("sending-only.test", 1.0, False, "tag", False, "mx", "PEM"),
           DomainRecord("both.test", 1.0, True, "tag", False, "mx", "PEM")]
    assert Policies.build(cfg.spam, api).domains == {
        "file.test": SpamPolicy("block", 8.0, "tempfail"),
        "api.test": SpamPolicy("tag", 4.0, "tempfail"),
        "own.test": SpamPolicy("block", 2.5, "accept"),
        # both.test: the file's "disabled" wins over the API's record
    }


def test_a_spam_domain_of_the_file_must_be_a_receiving_domain():
    with pytest.raises(ConfigError, match="spam.domains.typo.test"):
        config(domains={"typo.test": {"action": "tag"}})
    assert config(spamd={"socket": "/run/spamd.sock"}).spam.spamd.socket == "/run/spamd.sock"
    assert config().spam.spamd is None and config().spam.threshold == 5.0


TAG, TAG3 = SpamPolicy("tag", 5.0, "accept"), SpamPolicy("tag", 3.0, "accept")
BLOCK, BLOCK9 = SpamPolicy("block", 5.0, "accept"), SpamPolicy("block", 9.0, "tempfail")


def test_one_verdict_for_a_message_to_several_domains():
    assert decide((TAG,), 5.0).add == b"X-Mailgun-Sflag: Yes\r\nX-Mailgun-Sscore: 5.0\r\n"
    assert decide((TAG,), -0.04).add == b"X-Mailgun-Sflag: No\r\nX-Mailgun-Sscore: 0.0\r\n"  # never -0.0
    assert decide((TAG, TAG3), 4.0).add.startswith(b"X-Mailgun-Sflag: Yes")  # the lowest tagging threshold
    assert decide((BLOCK,), 5.0).refuse == REFUSED
    assert decide((BLOCK,), 4.9).refuse is None and decide((BLOCK,), 4.9).add == b""
    assert decide((BLOCK9, TAG), 7.0).add.startswith(b"X-Mailgun-Sflag: Yes")  # below 9: tagged, not refused
    assert decide((BLOCK9, TAG), 9.5).refuse == REFUSED
    assert on_error((TAG, BLOCK)).refuse is None
    assert on_error((TAG, BLOCK9)).refuse == UNAVAILABLE


def test_a_verdict_replaces_the_senders_own_flag_headers():
    content = b"X-Mailgun-SFLAG: No\r\nSubject: hi\r\nX-Mailgun-Sscore:\r\n -3\r\n\r\nbody\r\n"
    fields, _ = headers.parse_block(content, 100, 10_000)
    new, new_fields = decide((TAG,), 7.25).apply(content, fields)
    assert new == b"X-Mailgun-Sflag: Yes\r\nX-Mailgun-Sscore: 7.2\r\nSubject: hi\r\n\r\nbody\r\n"
    assert [(f.name, f.value) for f in new_fields] == [("X-Mailgun-Sflag", "Yes"), ("X-Mailgun-Sscore", "7.2"),
                                                       ("Subject", "hi")]
    assert on_error((TAG,)).apply(content, fields)[0] == b"Subject: hi\r\n\r\nbody\r\n"
