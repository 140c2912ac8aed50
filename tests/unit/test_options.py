import calendar

import pytest

from mtad.mail import options
from mtad.base.errors import OptionError


def test_every_header_option_parses():
    opts = options.from_headers([
        ("X-Mailgun-Tag", "a"), ("X-Mailgun-Tag", "b"), ("X-Mailgun-Campaign-Id", "c1"),
        ("X-Mailgun-Dkim", "no"), ("X-Mailgun-Deliver-By", "Fri, 14 Oct 2033 23:10:10 -0000"),
        ("X-Mailgun-Deliver-Within", "1h30m"), ("X-Mailgun-Drop-Message", "yes"), ("X-Mailgun-Track", "no"),
        ("X-Mailgun-Track-Clicks", "htmlonly"), ("X-Mailgun-Track-Opens", "yes"),
        ("X-Mailgun-Variables", '{"a": 1}'), ("X-Mailgun-Variables", '{"b": "x"}'),
        ("X-Mailgun-Require-TLS", "yes"), ("X-Mailgun-Skip-Verification", "true"), ("X-Mailgun-Foo", "bar"),
        ("Subject", "ignored")])
    assert opts.tags == ("a", "b") and opts.campaigns == ("c1",)
    assert opts.dkim is False and opts.test_mode and opts.tracking is False
    assert opts.tracking_clicks == "htmlonly" and opts.tracking_opens is True
    assert opts.deliver_by == calendar.timegm((2033, 10, 14, 23, 10, 10)) and opts.deliver_within == 5400
    assert opts.variables == {"a": 1, "b": "x"}
    assert opts.require_tls and opts.skip_verification
    assert opts.unknown == (("X-Mailgun-Foo", "bar"),)


def test_epoch_deliver_by():
    assert options.from_headers([("X-Mailgun-Deliver-By", "1700000000")]).deliver_by == 1700000000.0


@pytest.mark.parametrize("name, value, problem", [
    ("X-Mailgun-Variables", "[1, 2]", "JSON object"),
    ("X-Mailgun-Variables", "{nope", "not valid JSON"),
    ("X-Mailgun-Deliver-By", "next tuesday", "RFC 2822"),
    ("X-Mailgun-Dkim", "maybe", "yes or no"),
    ("X-Mailgun-Deliver-Within", "soon", "duration"),
])
def test_malformed_values_name_the_header(name, value, problem):
    with pytest.raises(OptionError) as err:
        options.from_headers([(name, value)])
    assert err.value.option == name and problem in err.value.problem


def test_more_than_three_tags_refused():
    with pytest.raises(OptionError, match="at most 3"):
        options.from_headers([("X-Mailgun-Tag", t) for t in "abcd"])


def test_api_fields_share_the_parser():
    opts = options.parse([("o:tag", "tag", "x"), ("o:testmode", "testmode", "yes")], [("v:id", "42")])
    assert opts.tags == ("x",) and opts.test_mode and opts.variables == {"id": "42"}


def test_variables_total_at_most_4kb_counted_in_utf8_bytes_across_sources():
    limit = options.MAX_VARIABLES_SIZE
    assert limit == 4096
    ok = options.parse([], [("v:a", "x" * (limit - 3))])  # "v:a" + value: exactly 4,096 bytes
    assert ok.variables == {"a": "x" * (limit - 3)}
    with pytest.raises(OptionError) as err:
        options.parse([], [("v:a", "x" * (limit - 2))])
    assert err.value.option == "v:a"
    with pytest.raises(OptionError) as err:  # é is two bytes
        options.parse([], [("v:a", "é" * (limit // 2))])
    with pytest.raises(OptionError) as err:
        options.parse([("X-Mailgun-Variables", "variables", '{"a": "%s"}' % ("x" * 3000))], [("v:b", "y" * 1100)])
    assert err.value.option == "v:b"
    with pytest.raises(OptionError) as err:
        options.from_headers([("X-Mailgun-Variables", '{"a": "%s"}' % ("x" * 2100))] * 2)
    assert err.value.option == "X-Mailgun-Variables" and "4096 bytes" in err.value.problem
