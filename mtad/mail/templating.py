"""Handlebars rendering of stored templates, bounded for hostile templates and variables.

The engine is ``dotpromptz-handlebars`` (PyPI; Google's Genkit team, Apache-2.0): a pure-Python interpreter of
Handlebars with Handlebars.js 4.7 as its reference (conformance-tested against it), no dependencies, and no code
generation: a template is parsed to a tree and walked, never turned into Python source (pybars3/pybars4, the older
ports, compile templates to Python and ``exec`` them, and neither has had a release since 2021). Mailgun's default
(and only documented) engine is Handlebars: ``{{x}}`` is HTML-escaped as Handlebars does, ``{{{x}}}`` is raw,
``if``/``unless``/``each``/``with``/``lookup`` are the helpers; a missing variable renders as the empty string.

``compile_source(source)`` checks a template (a ``TemplateError`` saying what is wrong, for the API's 400 when a
version is stored and when a message names it); ``render(compiled, variables)`` renders it. Bounds, so that a
template cannot make mtad run long or grow large (``RenderLimits``; the defaults are Mailgun's where it has one):
- the source: at most ``max_source`` characters (Mailgun: 100 KB per template), ``max_tags`` tags (the engine's
  parse time grows with their square: 2,000 take ~0.1 s, 14,000 ~4 s) and ``max_depth`` nested blocks;
- no partials, inline partials or decorators (``{{> x}}``, ``{{#*inline}}``): Mailgun registers none, and an
  inline partial calling itself twice is exponential;
- the work: the variables are wrapped so that every iteration of ``each`` (or of a list section) and every
  string printed is charged against ``max_output`` characters: a printed value its length, an iteration the size
  of the largest block of the template (what one pass of a body can write besides the values it prints). A
  render that would pass it, or run past ``max_seconds``, stops with a ``TemplateError``. So output and time grow
  at most linearly with ``max_output``, whatever the nesting of loops over the variables;
- Python's recursion limit (deep subexpressions) ends in a ``TemplateError`` too.
The engine's ``log`` helper (which prints to stdout) is removed. Pure functions: no I/O.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from dotpromptz_handlebars import Handlebars

# The engine (``dotpromptz_handlebars``, ~10 ms of CPU to import) is imported by the first template compiled, not at
# every start; ``render`` runs only what ``compile_source`` made, so it is loaded there.

ENGINE = "handlebars"


class TemplateError(ValueError):
    """The template cannot be compiled or rendered; the text says why (for a 400 or a 5xx SMTP reply)."""


@dataclass(frozen=True)
class RenderLimits:
    max_source: int = 100_000  # characters of a template (Mailgun: 100 KB)
    max_depth: int = 32  # nested blocks
    max_tags: int = 2_000  # {{...}} tags (the engine's parse time grows faster than linearly with them)
    max_output: int = 10_000_000  # characters charged per render (see the module's contract)
    max_seconds: float = 2.0  # wall-clock per render


DEFAULT_LIMITS = RenderLimits()

# {{> partial}}, {{#> partial}}, {{#*inline ...}}, {{* decorator}} (with whitespace control ~)
_PARTIAL = re.compile(r"\{\{~?\s*(?:#\s*)?[>*]")
_BLOCK_TAG = re.compile(r"\{\{~?\s*([#/^])\s*[*>]?\s*([^\s}~]*)")
_MIN_ITERATION = 64  # characters charged per iteration at least (the cost of a pass over an empty body)


@dataclass(frozen=True)
class Compiled:
    """A checked template: its render function and what one loop iteration is charged."""

    render: Callable[..., str]
    iteration_cost: int
    limits: RenderLimits


def _engine(escape: bool, depth: int) -> Handlebars:
    from dotpromptz_handlebars import Handlebars
    hb = Handlebars(escape_html=escape, max_depth=depth)
    hb.unregister_helper("log")
    return hb


def _largest_block(source: str) -> int:
    """The longest span of source from a block's opening tag to its closing tag (the whole source when the
    tags do not pair up, which the engine then refuses anyway)."""
    stack: list[int] = []
    largest = 0
    for m in _BLOCK_TAG.finditer(source):
        if m.group(1) in "#^":
            stack.append(m.start())
        elif stack:
            largest = max(largest, m.end() - stack.pop())
        else:
            return len(source)
    return len(source) if stack else largest


def compile_source(source: str, *, escape: bool = True, limits: RenderLimits = DEFAULT_LIMITS) -> Compiled:
    """Check and parse a template; ``escape``: HTML-escape ``{{x}}`` (bodies) or not (header values)."""
    if len(source) > limits.max_source:
        raise TemplateError(f"is {len(source)} characters, over the limit of {limits.max_source}")
    tags = source.count("{{")
    if tags > limits.max_tags:
        raise TemplateError(f"has {tags} tags, over the limit of {limits.max_tags}")
    if _PARTIAL.search(source):
        raise TemplateError("uses a partial, an inline partial or a decorator ({{> ...}}, {{#*inline}}), which"
                            " stored templates cannot use")
    from dotpromptz_handlebars import TemplateRecursionError
    try:
        render = _engine(escape, limits.max_depth).compile(source)
    except TemplateRecursionError:
        raise TemplateError(f"nests blocks deeper than {limits.max_depth}") from None
    except RecursionError:
        raise TemplateError("nests expressions too deeply") from None
    except ValueError as exc:
        raise TemplateError(f"is not a valid Handlebars template: {exc}") from None
    return Compiled(render, max(_MIN_ITERATION, _largest_block(source)), limits)


def check(source: str, limits: RenderLimits = DEFAULT_LIMITS) -> None:
    """Raise ``TemplateError`` if ``source`` cannot be stored as a template (see ``compile_source``)."""
    compile_source(source, limits=limits)


# --- the bounded render ------------------------------------------------------------------------------------------

class _Budget:
    __slots__ = ("left", "deadline", "iteration")

    def __init__(self, limits: RenderLimits, iteration: int):
        self.left = limits.max_output
        self.deadline = time.monotonic() + limits.max_seconds
        self.iteration = iteration

    def charge(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise TemplateError("would render more than the limit of output; is a loop or a value too big?")
        if time.monotonic() > self.deadline:
            raise TemplateError("took too long to render")


class _Str(str):
    """A string variable: printing it charges its length."""

    budget: _Budget

    def __str__(self) -> str:
        self.budget.charge(len(self))
        return str.__str__(self)


class _List(list):
    """A list variable: each item iterated charges one iteration."""

    budget: _Budget

    def __iter__(self):  # type: ignore[override]
        budget = self.budget
        for item in list.__iter__(self):
            budget.charge(budget.iteration)
            yield item


class _Dict(dict):
    """An object variable: each entry iterated (``each`` over an object) charges one iteration."""

    budget: _Budget

    def items(self):  # type: ignore[override]
        budget = self.budget
        for pair in dict.items(self):
            budget.charge(budget.iteration)
            yield pair


def _wrap(value: Any, budget: _Budget) -> Any:
    if isinstance(value, str):
        s = _Str(value)
        s.budget = budget
        return s
    if isinstance(value, dict):
        d = _Dict((_wrap(str(k), budget), _wrap(v, budget)) for k, v in value.items())
        d.budget = budget
        return d
    if isinstance(value, (list, tuple)):
        lst = _List(_wrap(v, budget) for v in value)
        lst.budget = budget
        return lst
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _wrap(str(value), budget)  # JSON has nothing else; anything else is printed as text


def render(compiled: Compiled, variables: dict[str, Any]) -> str:
    """The template rendered with ``variables`` (JSON values); ``TemplateError`` past the limits or on a render
    error (a helper that does not exist, a bad argument)."""
    from dotpromptz_handlebars import TemplateRecursionError  # loaded by compile_source: ~1 µs
    budget = _Budget(compiled.limits, compiled.iteration_cost)
    try:
        out = compiled.render(_wrap(variables, budget))
    except TemplateError:
        raise
    except TemplateRecursionError:
        raise TemplateError(f"nests deeper than {compiled.limits.max_depth}") from None
    except RecursionError:
        raise TemplateError("nests expressions too deeply") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise TemplateError(f"could not be rendered: {exc}") from None
    if len(out) > compiled.limits.max_output:  # escaping grows what was charged by up to 6 times
        raise TemplateError("would render more than the limit of output; is a loop or a value too big?")
    return str(out)


def render_source(source: str, variables: dict[str, Any], *, escape: bool = True,
                  limits: RenderLimits = DEFAULT_LIMITS) -> str:
    """``compile_source`` then ``render``."""
    return render(compile_source(source, escape=escape, limits=limits), variables)
