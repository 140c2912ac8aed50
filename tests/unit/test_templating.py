"""Handlebars rendering of stored templates (mtad.mail.templating): the syntax and escaping of Handlebars, missing
variables empty, and bounds that hold against hostile templates and variables."""

import time

import pytest

from mtad.mail.templating import RenderLimits, TemplateError, check, compile_source, render, render_source


def test_handlebars_escapes_double_braces_and_not_triple():
    out = render_source("{{name}} | {{{name}}} | [{{missing}}] [{{a.b.c}}]", {"name": "Fish & <b>Chips</b>"})
    assert out == "Fish &amp; &lt;b&gt;Chips&lt;/b&gt; | Fish & <b>Chips</b> | [] []"
    assert render_source("{{name}}", {"name": "A & B"}, escape=False) == "A & B"  # header values


def test_blocks_helpers_and_values_as_handlebars_js():
    src = ("{{#if vip}}VIP {{/if}}{{#each items}}{{@index}}:{{title}}{{#unless @last}}, {{/unless}}{{/each}}"
           "{{#with user}} {{first}}{{/with}} {{lookup prices 'eur'}} {{n}} {{flag}}")
    out = render_source(src, {"vip": True, "items": [{"title": "a"}, {"title": "b"}], "user": {"first": "Zoë"},
                              "prices": {"eur": 3}, "n": 1.0, "flag": False})
    assert out == "VIP 0:a, 1:b Zoë 3 1 false"


@pytest.mark.parametrize("source, problem", [
    ("{{#each items}}x", "not a valid Handlebars template"),
    ("{{/if}}", "not a valid Handlebars template"),
    ("{{> header}}", "partial"),
    ("{{#*inline 'p'}}{{> p}}{{> p}}{{/inline}}{{> p}}", "partial"),
    ("{{#if a}}" * 40 + "{{/if}}" * 40, "deeper than 32"),
    ("x" * 100_001, "over the limit of 100000"),
    ("{{a}}" * 2001, "2001 tags"),
])
def test_bad_templates_are_refused_with_the_reason(source, problem):
    with pytest.raises(TemplateError, match=problem):
        check(source)


def test_a_missing_helper_is_a_render_error_not_a_crash():
    with pytest.raises(TemplateError, match="Missing helper"):
        render_source("{{shout name}}", {"name": "x"})
    with pytest.raises(TemplateError, match="log"):  # the engine's stdout logger is removed
        render_source("{{log name}}", {"name": "x"})


def test_nested_loops_over_the_variables_are_bounded_in_output_and_time():
    src = "{{#each a}}{{#each ../a}}{{#each ../../a}}{{#each ../../../a}}x{{/each}}{{/each}}{{/each}}{{/each}}"
    started = time.monotonic()
    with pytest.raises(TemplateError, match="limit of output"):
        render_source(src, {"a": list(range(1000))})  # 10^12 iterations unbounded
    assert time.monotonic() - started < 5


def test_a_big_value_printed_many_times_is_bounded():
    with pytest.raises(TemplateError, match="limit of output"):
        render_source("{{{a}}}" * 1000, {"a": "x" * 60_000})  # 60 MB unbounded


def test_a_long_loop_body_counts_per_iteration():
    src = "{{#each a}}" + "y" * 50_000 + "{{/each}}"
    with pytest.raises(TemplateError, match="limit of output"):
        render_source(src, {"a": list(range(1000))})
    assert len(render_source(src, {"a": list(range(10))})) == 500_000


def test_the_time_limit_stops_a_slow_render():
    limits = RenderLimits(max_output=10**12, max_seconds=0.2)
    started = time.monotonic()
    with pytest.raises(TemplateError, match="too long"):
        render_source("{{#each a}}{{#each ../a}}{{/each}}{{/each}}", {"a": list(range(5000))}, limits=limits)
    assert time.monotonic() - started < 2


def test_deep_subexpressions_end_in_a_template_error():
    with pytest.raises(TemplateError):
        render_source("{{x " + "(a " * 1500 + "b" + ")" * 1500 + "}}", {})


def test_a_compiled_template_renders_many_times():
    compiled = compile_source("Hi {{name}}")
    assert [render(compiled, {"name": n}) for n in ("a", "b")] == ["Hi a", "Hi b"]
