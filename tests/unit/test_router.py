"""Route expressions: parsing (every form in Mailgun's manual), matching contract, captures, bounds."""

from __future__ import annotations

import re
import time
from urllib.parse import urlsplit

import pytest

from mtad.base.errors import RouteSyntaxError
from mtad.inbound.router import (
    Action, Filter, Route, RouteTable, compile_route, parse_action, parse_expression,
)


def route(id: str, expression: str, *actions: str, priority: int = 0) -> Route:
    return Route(id, priority, "", expression, actions)


def matched(table: RouteTable, recipient: str, headers=()) -> list[str]:
    return [m.route.id for m in table.evaluate(recipient, headers)]


def destinations(table: RouteTable, recipient: str) -> list[str]:
    return [d for m in table.evaluate(recipient) for a in m.actions for d in a.destinations]


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize("expression, expected", [
    ('match_recipient("foo@bar.com")', (Filter("recipient", "foo@bar.com"),)),
    ('match_recipient(".*@bar.com")', (Filter("recipient", ".*@bar.com"),)),
    ('match_recipient("(.*)@bar.com")', (Filter("recipient", "(.*)@bar.com"),)),
    ('match_recipient("(?P<user>.*?)@(?P<domain>.*)")', (Filter("recipient", "(?P<user>.*?)@(?P<domain>.*)"),)),
    ('match_header("Subject", ".*support")', (Filter("header", ".*support", "Subject"),)),
    ("catch_all()", (Filter("catch_all"),)),
    ("catchall()", (Filter("catch_all"),)),
    ("match_recipient('.*@samples.mailgun.org')", (Filter("recipient", ".*@samples.mailgun.org"),)),
    ("match_recipient(r'.*@samples.mailgun.org')", (Filter("recipient", ".*@samples.mailgun.org"),)),
    ('match_recipient(".*@samples.mailgun.org")', (Filter("recipient", ".*@samples.mailgun.org"),)),
])
def test_parses_every_filter_form_of_the_manual(expression, expected):
    assert parse_expression(expression) == expected


@pytest.mark.parametrize("text, expected", [
    ('forward("mailbox@myapp.com")', Action("forward", ("mailbox@myapp.com",))),
    ('forward("http://myapp.com/messages")', Action("forward", ("http://myapp.com/messages",))),
    ('forward("http://myapp.com/messages, mailbox@myapp.com")',
     Action("forward", ("http://myapp.com/messages", "mailbox@myapp.com"))),
    ("forward('http://myhost.com/messages/')", Action("forward", ("http://myhost.com/messages/",))),
    ("forward(r'http://myhost.com/messages/')", Action("forward", ("http://myhost.com/messages/",))),
    ('forward("http://myhost.com/messages/")', Action("forward", ("http://myhost.com/messages/",))),
    ('forward("http://myhost.com/post/?mailbox=\\1")', Action("forward", ("http://myhost.com/post/?mailbox=\\1",))),
    ('forward("http://mycallback.com/domains/\\g<domain>/users/\\g<user>")',
     Action("forward", ("http://mycallback.com/domains/\\g<domain>/users/\\g<user>",))),
    ("stop()", Action("stop")),
    ("store()", Action("store")),
    ('store(notify="http://myhost.com/stored")', Action("store", notify="http://myhost.com/stored")),
])
def test_parses_every_action_form_of_the_manual(text, expected):
    assert parse_action(text) == expected


def test_capture_references_in_destinations_survive_parsing():
    compiled = compile_route(route("r", 'match_recipient("(.*)@bar.com")',
                                   'forward("http://myhost.com/post/?mailbox=\\1")'))
    assert compiled.actions[0].destinations == ("http://myhost.com/post/?mailbox=\\1",)


@pytest.mark.parametrize("literal, value", [
    (r'"a\"b"', 'a"b'),
    (r"'it\'s'", "it's"),
    (r'"a\\.b"', r"a\.b"),        # an escaped backslash is one backslash
    (r'"a\.b"', r"a\.b"),         # any other backslash is kept, so regex escapes need no doubling
    (r"r'a\'b'", r"a\'b"),        # raw: the backslash stays and the quote does not end the string
    (r'R"a\d"', r"a\d"),
    ("'say \"hi\"'", 'say "hi"'),
])
def test_string_quotes_and_escapes(literal, value):
    assert parse_expression(f"match_header('X-Test', {literal})")[0].pattern == value


def test_and_joins_filters_in_any_case():
    filters = parse_expression('match_recipient("a@b.com") AND match_header("X-A", "1") and catch_all()')
    assert [f.kind for f in filters] == ["recipient", "header", "catch_all"]
    assert len(parse_expression('match_recipient("a@b.com") And match_header("X-A", "1")')) == 2


@pytest.mark.parametrize("expression, column, problem", [
    ('match_recipient(".*@x"', 23, "expected ',' or ')'"),
    ('match_recipient(".*@x") or catch_all()', 25, "expected 'and'"),
    ('match_recipient(".*@x") and', 28, "expected a function name"),
    ('match_sender(".*@x")', 1, "unknown filter"),
    ('match_recipient(".*@x)', 17, "unterminated string"),
    ("match_recipient(.*@x)", 17, "unexpected character '.'"),
    ("match_recipient(x)", 18, "expected '='"),
    ('match_recipient(x="a")', 17, "takes no argument 'x'"),
    ('match_recipient("a", "b")', 1, "takes 1 argument"),
    ('catch_all("x")', 1, "takes 0 arguments"),
    ("", 1, "expected a function name"),
    ('match_recipient("a") ; stop()', 22, "unexpected character"),
    ('match_recipient("ab(cd")', 20, "invalid regex"),
    ('match_recipient("ab[")', 20, "invalid regex"),
    ('match_header("Bad Name", "x")', 14, "invalid header name"),
])
def test_syntax_errors_name_the_column(expression, column, problem):
    with pytest.raises(RouteSyntaxError) as e:
        parse_expression(expression)
    assert e.value.position == column
    assert problem in e.value.problem
    assert f"column {column}" in str(e.value)


@pytest.mark.parametrize("text, problem", [
    ('forward("ftp://host/x")', "not an http(s) URL"),
    ('forward("nobody")', "neither an http(s) URL nor an address"),
    ('forward("http://a.example/, ")', "empty forward destination"),
    ('forward()', "takes 1 argument"),
    ('store(when="now")', "no argument 'when'"),
    ('store(notify="http://a.example/", notify="http://b.example/")', "given twice"),
    ('store(notify="mailto:x@y")', "notify must be an http(s) URL"),
    ('redirect("http://x.example")', "unknown action"),
])
def test_bad_actions_are_refused(text, problem):
    with pytest.raises(RouteSyntaxError, match=re.escape(problem)):
        parse_action(text)


def test_compile_route_says_which_part_is_at_fault():
    with pytest.raises(RouteSyntaxError, match="action 2: unknown action") as e:
        compile_route(route("r", "catch_all()", 'forward("a@b.example")', "halt()"))
    assert e.value.text == "halt()"
    with pytest.raises(RouteSyntaxError, match="expression: expected"):
        compile_route(route("r", "catch_all(", "stop()"))


def test_regexes_and_destinations_over_4000_characters_are_refused():
    parse_expression(f'match_recipient("{"a" * 4000}")')
    with pytest.raises(RouteSyntaxError, match="longer than 4000") as e:
        parse_expression(f'match_recipient("{"a" * 4001}")')
    assert e.value.position == 17
    parse_action(f'forward("http://x.example/{"p" * 3980}")')
    with pytest.raises(RouteSyntaxError, match="longer than 4000"):
        parse_action(f'forward("http://x.example/{"p" * 4000}")')


def test_regex_needing_backtracking_is_refused_unless_allowed():
    with pytest.raises(RouteSyntaxError, match="needs backtracking") as e:
        parse_expression('match_recipient("(a)\\1@x.example")')
    assert e.value.position == 17
    (f,) = parse_expression('match_recipient("(a)\\1@x.example")', allow_backtracking=True)
    assert f.matcher.backtracking


# ---------------------------------------------------------------- matching


def test_priority_waterfall_runs_every_match_until_stop():
    table = RouteTable([
        route("late", 'match_recipient(".*@bar.com")', 'forward("http://late.example/")', priority=20),
        route("stopper", 'match_recipient("foo@bar.com")', 'forward("http://s.example/")', "stop()", priority=10),
        route("first", 'match_recipient(".*")', 'forward("http://f.example/")', priority=0),
    ])
    assert matched(table, "foo@bar.com") == ["first", "stopper"]
    assert matched(table, "other@bar.com") == ["first", "late"]


def test_equal_priorities_run_in_creation_order():
    table = RouteTable([route(str(i), 'match_recipient(".*")', "stop()" if i == 3 else 'forward("a@b.example")')
                        for i in range(5)])
    assert matched(table, "x@y.example") == ["0", "1", "2", "3"]


def test_catch_all_matches_only_when_no_earlier_route_matched():
    table = RouteTable([
        route("support", 'match_recipient("support@bar.com")', 'forward("http://s.example/")', priority=1),
        route("catch", "catch_all()", 'forward("http://c.example/")', priority=5),
        route("audit", 'match_recipient(".*")', 'forward("http://a.example/")', priority=9),
    ])
    assert matched(table, "support@bar.com") == ["support", "audit"]
    assert matched(table, "nobody@bar.com") == ["catch", "audit"]


def test_match_recipient_matches_from_the_start_ignoring_case():
    table = RouteTable([route("r", 'match_recipient("Foo@Bar\\.com")', 'forward("a@b.example")')])
    assert matched(table, "FOO@bar.COM") == ["r"]
    assert matched(table, "xfoo@bar.com") == []
    assert matched(table, "foo@bar.com.other") == ["r"]  # re.match: anchored at the start only


def test_match_header_matches_any_value_ignoring_case():
    table = RouteTable([route("r", 'match_header("x-tag", "SUPPORT")', 'forward("a@b.example")')])
    headers = [("X-Tag", "billing"), ("Subject", "hi"), ("X-TAG", "Urgent support needed")]
    assert matched(table, "a@b.example", headers) == ["r"]
    assert matched(table, "a@b.example", [("X-Tag", "billing")]) == []
    assert matched(table, "a@b.example", []) == []


def test_and_requires_every_filter():
    table = RouteTable([route("r", 'match_recipient(".*@bar.com") and match_header("Subject", "^\\[ticket\\]")',
                              'forward("a@b.example")')])
    assert matched(table, "x@bar.com", [("Subject", "[ticket] 42")]) == ["r"]
    assert matched(table, "x@bar.com", [("Subject", "re: [ticket] 42")]) == []
    assert matched(table, "x@baz.com", [("Subject", "[ticket] 42")]) == []
    two = RouteTable([route("r", 'match_recipient(".*@bar.com") and match_recipient("sales")', "stop()")])
    assert matched(two, "sales@bar.com") == ["r"]
    assert matched(two, "info@bar.com") == [] and matched(two, "sales@baz.com") == []


def test_headers_given_as_a_callable_are_read_once_and_only_when_needed():
    calls = []

    def headers():
        calls.append(1)
        return [("Subject", "support please")]

    table = RouteTable([route("h1", 'match_header("Subject", "support")', 'forward("a@b.example")'),
                        route("h2", 'match_header("Subject", "please")', 'forward("a@b.example")')])
    assert matched(table, "x@y.example", headers) == ["h1", "h2"]
    assert len(calls) == 1
    recipient_only = RouteTable([route("r", 'match_recipient(".*")', 'forward("a@b.example")')])
    assert matched(recipient_only, "x@y.example", headers) == ["r"]
    assert len(calls) == 1


def test_several_destinations_in_one_forward_and_several_forwards():
    table = RouteTable([route("r", "catch_all()", 'forward("http://a.example/in, copy@b.example")',
                              "forward('http://c.example/')")])
    assert destinations(table, "x@y.example") == ["http://a.example/in", "copy@b.example", "http://c.example/"]


def test_index_agrees_with_python_re_match():
    """The RE2 prefilter rewrites some patterns; the answers must stay those of re.match."""
    patterns = [".*@bar\\.com", "(.*)@bar\\.com", "(?P<u>.*?)@bar", ".*", "[^@]+@baz\\.org", "\\w+@bar\\.com$",
                "a.*|.*@baz\\.org", ".*x|y@bar\\.com", "(sales|info)@bar\\.com", "foo\\+.*@bar\\.com", ".+@bar\\.com",
                "(?:.*)z@", "^admin@", ".*?@BAR\\.COM$"]
    table = RouteTable([route(str(i), f'match_recipient(r"{p}")', 'forward("a@b.example")')
                        for i, p in enumerate(patterns)])
    recipients = ["a@bar.com", "sales@bar.com", "info@bar.com.au", "foo+x@bar.com", "x@baz.org", "y@bar.com",
                  "admin@q.example", "z@bar.com", "xz@baz.org", "@bar.com", "", "bob@bar.community", "A@Bar.Com"]
    for rcpt in recipients:
        expected = [str(i) for i, p in enumerate(patterns) if re.match(p, rcpt, re.IGNORECASE)]
        assert matched(table, rcpt) == expected, rcpt


# ---------------------------------------------------------------- captures


def test_numbered_and_named_captures_fill_the_url_encoded():
    table = RouteTable([
        route("n", 'match_recipient("(.*)@bar.com")', 'forward("http://myhost.com/post/?mailbox=\\1")'),
        route("g", 'match_recipient("(?P<user>.*?)@(?P<domain>.*)")',
              'forward("http://mycallback.com/domains/\\g<domain>/users/\\g<user>")'),
    ])
    assert destinations(table, "john.doe+x y@bar.com") == [
        "http://myhost.com/post/?mailbox=john.doe%2Bx%20y",
        "http://mycallback.com/domains/bar.com/users/john.doe%2Bx%20y",
    ]


@pytest.mark.parametrize("local", ["x@evil.com/", "//evil.com/", "a?b#c@evil.com:80/", "%2F%2Fevil"])
def test_a_capture_cannot_change_the_url_scheme_or_host(local):
    table = RouteTable([route("r", 'match_recipient("(.*)@bar\\.com$")', 'forward("http://app.example/in/\\1")')])
    (dest,) = destinations(table, f"{local}@bar.com")
    parts = urlsplit(dest)
    assert (parts.scheme, parts.netloc) == ("http", "app.example")
    assert parts.path.startswith("/in/") and "/" not in parts.path[len("/in/"):]


@pytest.mark.parametrize("destination", ["http://\\1.example.com/", "http://host\\1/x", "\\1://x.example/",
                                         "someone@\\1"])
def test_captures_outside_path_query_or_local_part_are_refused(destination):
    with pytest.raises(RouteSyntaxError, match="capture may only go"):
        compile_route(route("r", 'match_recipient("(.*)@bar.com")', f'forward("{destination}")'))


def test_a_reference_to_a_missing_group_is_refused():
    with pytest.raises(RouteSyntaxError, match="refers to no group"):
        compile_route(route("r", 'match_recipient("(.*)@bar.com")', 'forward("http://a.example/\\2")'))
    with pytest.raises(RouteSyntaxError, match="refers to no group"):
        compile_route(route("r", 'match_recipient("(?P<u>.*)@bar.com")', 'forward("http://a.example/\\g<v>")'))
    with pytest.raises(RouteSyntaxError, match="refers to no group"):
        compile_route(route("r", "catch_all()", 'forward("http://a.example/\\1")'))


def test_capture_into_an_address_local_part_and_a_bad_one_dropped_and_reported():
    table = RouteTable([route("r", 'match_recipient("(.*)@bar\\.com$")',
                              'forward("\\1@mailbox.example, http://app.example/\\1")')])
    assert destinations(table, "john@bar.com") == ["john@mailbox.example", "http://app.example/john"]
    (m,) = table.evaluate("a@evil.com@bar.com")
    assert m.actions[0].destinations == ("http://app.example/a%40evil.com",)
    assert len(m.problems) == 1 and "\\1@mailbox.example" in m.problems[0]


# ---------------------------------------------------------------- RCPT time


def test_would_handle():
    assert not RouteTable([]).would_handle("a@b.example")
    table = RouteTable([route("r", 'match_recipient("sales@bar\\.com")', 'forward("a@b.example")')])
    assert table.would_handle("SALES@bar.com")
    assert not table.would_handle("other@bar.com")
    headers_only = RouteTable([route("h", 'match_header("Subject", "x")', 'forward("a@b.example")')])
    assert headers_only.would_handle("anyone@anywhere.example")
    mixed = RouteTable([route("m", 'match_recipient("x@bar.com") and match_header("Subject", "x")', "stop()")])
    assert mixed.would_handle("x@bar.com") and not mixed.would_handle("y@bar.com")
    assert RouteTable([route("c", "catch_all()", "stop()")]).would_handle("anyone@anywhere.example")


def test_a_recipient_with_a_newline_matches_nothing():
    table = RouteTable([route("c", "catch_all()", "stop()")])
    assert table.evaluate("a@b.example\nRCPT TO:<x@y>") == []
    assert not table.would_handle("a\n@b.example")


# ---------------------------------------------------------------- hostile regexes


def test_catastrophic_regex_runs_in_linear_time():
    table = RouteTable([route("r", 'match_recipient("(a+)+$") and match_header("Subject", "(x+x+)+y")',
                              "stop()")])
    start = time.perf_counter()
    assert table.evaluate("a" * 50000 + "!", [("Subject", "x" * 50000)]) == []
    assert not table.would_handle("a" * 50000 + "!")
    assert time.perf_counter() - start < 0.05


def test_allowed_backtracking_regex_is_bounded_by_the_budget(caplog):
    table = RouteTable([route("slow", 'match_recipient("(a|aa)+(?!b)$")', "stop()"),
                        route("slow2", 'match_header("Subject", "(x|xx)+(?=y)")', "stop()"),
                        route("c", "catch_all()", "stop()")],
                       allow_backtracking=True, backtrack_budget=0.02)
    start = time.perf_counter()
    assert matched(table, "a" * 50000 + "!", [("Subject", "x" * 50000)]) == ["c"]
    # Unbounded, these take longer than the age of the universe; the slack is for a loaded machine.
    assert time.perf_counter() - start < 1.0
    assert "time budget" in caplog.text
    assert matched(table, "aaa") == ["slow"]  # and it still matches what it should


@pytest.mark.parametrize("pattern", ["(" * 1900 + "a" + ")" * 1900, "(?:" * 101 + "a" + ")" * 101,
                                     "[(]" + "(" * 101 + ")" * 101])
def test_regexes_nesting_groups_too_deep_are_syntax_errors_not_recursion(pattern):
    with pytest.raises(RouteSyntaxError, match="nested more than 100 deep"):
        parse_expression(f'match_recipient("{pattern}")')
    parse_expression('match_recipient("' + "(" * 100 + "a" + ")" * 100 + '")')
    parse_expression(r'match_recipient("[(]\(\(' + "(a)" * 200 + '")')  # escaped and classed parens don't nest
