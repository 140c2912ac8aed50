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
