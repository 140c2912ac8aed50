"""Mailgun route expressions: parsed (never evaluated), compiled once, matched per recipient.

Syntax (Mailgun's): an expression is one or more filters joined by ``and`` (any case)::

    match_recipient("regex")  match_header("Header-Name", "regex")  catch_all()

and each action is its own string: ``forward("dest[, dest...]")``, ``stop()``, ``store()`` or
``store(notify="URL")``. Strings take single or double quotes; inside them ``\\\\`` and ``\\"``/``\\'``
are escapes and every other backslash is kept as written, so regex escapes and capture references
(``\\1``, ``\\g<name>``) survive without doubling. ``r'...'`` raw strings are accepted as in
Mailgun's API responses. A syntax error raises :class:`RouteSyntaxError` with the 1-based column.
Regexes use Python's syntax and are checked with Python's ``re``; regexes and destinations over
4,000 characters, and regexes nesting groups more than 100 deep, are refused.

Matching contract (``RouteTable.evaluate``): routes run in (priority, creation order); the actions
of every matching route are returned until a matching route has ``stop()``; ``catch_all()`` matches
only when no earlier route matched. ``match_recipient`` matches from the recipient's start
(``re.match``), ``match_header`` searches every value of the header (``re.search``); both ignore
case. Groups captured by the route's first ``match_recipient`` fill ``\\1``/``\\g<name>`` in
forward destinations: URL-encoded into a URL's path or query (never its scheme or host), or
verbatim into an address's local part; an expansion that would change the origin or produce an
invalid address is dropped and reported in ``RouteMatch.problems``.

Speed and safety: every regex runs on RE2 (linear time, so a hostile recipient cannot make a
pattern backtrack). All ``match_recipient`` patterns of a table sit in two ``re2.Set`` indexes that
answer in one pass which of them match; only the routes they name (and routes without a recipient
pattern) are walked, in order, and a route's own RE2 regex runs again only to extract the captures
its destinations use. A recipient containing a newline (impossible in SMTP) matches no route.
Patterns RE2 cannot run (backreferences, lookaround) are refused unless ``allow_backtracking`` is
set; then they run on the ``regex`` module with a timeout drawn from one time budget per
evaluation, so a recipient costs at most ``backtrack_budget`` seconds of backtracking in all. A
fallback match that runs out of time counts as no match and is logged.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, NamedTuple, Union
from urllib.parse import quote

import re2

from mtad.base.errors import ConfigError, RouteSyntaxError

log = logging.getLogger("mtad.router")

MAX_PATTERN = 4000
MAX_DESTINATION = 4000
MAX_GROUP_NESTING = 100  # groups inside groups; Python's regex parser recurses per level (RecursionError at ~500)

HeaderPairs = Iterable[tuple[str, str]]
Headers = Union[HeaderPairs, Callable[[], HeaderPairs]]


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class Route:
    """A route as stored and exposed by the API: the raw expression and action texts."""

    id: str
    priority: int
    description: str
    expression: str
    actions: tuple[str, ...]


@dataclass(frozen=True)
class Action:
    """One parsed action. ``destinations`` only for forward, ``notify`` only for store."""

    kind: Literal["forward", "stop", "store"]
    destinations: tuple[str, ...] = ()
    notify: str | None = None


@dataclass(frozen=True)
class Filter:
    """One parsed filter; ``header`` only for match_header, ``pattern`` not for catch_all."""

    kind: Literal["recipient", "header", "catch_all"]
    pattern: str = ""
    header: str = ""
    matcher: _Matcher | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class RouteMatch:
    """A matching route with its actions, captures substituted; ``problems`` names dropped destinations."""

    route: Route
    actions: tuple[Action, ...]
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Destination:
    """A forward destination split into literal text and the group numbers it refers to."""

    text: str
    parts: tuple[str | int, ...]  # even indices literal text, odd indices group numbers
    origin: str  # "scheme://host" of a URL, "@domain" of an address


@dataclass(frozen=True)
class CompiledRoute:
    """A route with its filters parsed and regexes compiled, ready for a RouteTable."""

    route: Route
    filters: tuple[Filter, ...]
    actions: tuple[Action, ...]
    stops: bool
    uses_captures: bool
    _destinations: tuple[tuple[_Destination, ...], ...] = field(compare=False, repr=False)


# ---------------------------------------------------------------- tokenizer and parser


@dataclass(frozen=True)
class _Token:
    kind: Literal["name", "string", "(", ")", ",", "=", "end"]
    value: str
    col: int
    cols: tuple[int, ...] = ()  # for strings: the source column of each character of value


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "(),=":
            tokens.append(_Token(c, c, i + 1))  # type: ignore[arg-type]
            i += 1
        elif c in "'\"" or (c in "rR" and text[i + 1:i + 2] in ("'", '"')):
            token, i = _read_string(text, i)
            tokens.append(token)
        elif m := _NAME.match(text, i):
            tokens.append(_Token("name", m.group(), i + 1))
            i = m.end()
        else:
            raise RouteSyntaxError(f"unexpected character {c!r}", i + 1, text)
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


def _read_string(text: str, start: int) -> tuple[_Token, int]:
    raw = text[start] in "rR"
    i = start + 1 if raw else start
    quote_char = text[i]
    i += 1
    chars: list[str] = []
    cols: list[int] = []
    while i < len(text):
        c = text[i]
        if c == quote_char:
            return _Token("string", "".join(chars), start + 1, tuple(cols)), i + 1
        if c == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            if not raw and nxt in ("\\", quote_char):
                chars.append(nxt)
                cols.append(i + 1)
            else:  # kept as written: regex escapes and \1 / \g<name> must reach the regex engine
                chars += [c, nxt]
                cols += [i + 1, i + 2]
            i += 2
            continue
        chars.append(c)
        cols.append(i + 1)
        i += 1
    raise RouteSyntaxError("unterminated string", start + 1, text)


@dataclass(frozen=True)
class _Call:
    name: str
    col: int
    args: tuple[_Token, ...]
    kwargs: tuple[tuple[_Token, _Token], ...]  # (name, value)


class _Parser:
    """Recursive descent over the token list: ``call ('and' call)*`` or a single ``call``."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = _tokenize(text)
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def expect(self, kind: str, what: str) -> _Token:
        token = self.peek()
        if token.kind != kind:
            found = "end of text" if token.kind == "end" else repr(token.value)
            raise RouteSyntaxError(f"expected {what}, found {found}", token.col, self.text)
        self.pos += 1
        return token

    def expression(self) -> list[_Call]:
        calls = [self.call()]
        while self.peek().kind == "name" and self.peek().value.lower() == "and":
            self.pos += 1
            calls.append(self.call())
        self.expect("end", "'and' or end of expression")
        return calls

    def single(self) -> _Call:
        call = self.call()
        self.expect("end", "end of action")
        return call

    def call(self) -> _Call:
        name = self.expect("name", "a function name")
        self.expect("(", "'('")
        args: list[_Token] = []
        kwargs: list[tuple[_Token, _Token]] = []
        while self.peek().kind != ")":
            if args or kwargs:
                self.expect(",", "',' or ')'")
            if self.peek().kind == "name":
                key = self.expect("name", "an argument")
                if any(key.value == k.value for k, _ in kwargs):
                    raise RouteSyntaxError(f"argument {key.value!r} given twice", key.col, self.text)
                self.expect("=", "'='")
                kwargs.append((key, self.expect("string", "a quoted string")))
            else:
                if kwargs:
                    raise RouteSyntaxError("positional argument after keyword argument", self.peek().col, self.text)
                args.append(self.expect("string", "a quoted string or ')'"))
        self.expect(")", "')'")
        return _Call(name.value, name.col, tuple(args), tuple(kwargs))


def _check_arity(call: _Call, text: str, nargs: int, kwargs: tuple[str, ...] = ()) -> None:
    for key, _ in call.kwargs:
        if key.value not in kwargs:
            raise RouteSyntaxError(f"{call.name}() takes no argument {key.value!r}", key.col, text)
    if len(call.args) != nargs:
        plural = "s" if nargs != 1 else ""
        raise RouteSyntaxError(f"{call.name}() takes {nargs} argument{plural}, got {len(call.args)}", call.col, text)


# ---------------------------------------------------------------- regexes

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.case_sensitive = False
_RE2_OPTIONS.log_errors = False


class _Matcher:
    """One case-insensitive regex: RE2, or the ``regex`` module under a time budget."""

    def __init__(self, pattern: str, compiled: object, backtracking: bool, python: re.Pattern[str]):
        self.pattern = pattern
        self.compiled = compiled
        self.backtracking = backtracking
        self.groups = python.groups  # Python's numbering, which RE2 and regex share
        self.groupindex = python.groupindex

    def match(self, text: str, budget: _Budget) -> tuple[str | None, ...] | None:
        """The groups of a match from the text's start, or None."""
        m = budget.run(self, "match", text)
        return None if m is None else m.groups()

    def search(self, text: str, budget: _Budget) -> bool:
        return budget.run(self, "search", text) is not None


class _Budget:
    """Seconds of backtracking left to one evaluation; RE2 regexes never draw on it."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def run(self, matcher: _Matcher, how: str, text: str):  # returns a match object or None
        method = getattr(matcher.compiled, how)
        if not matcher.backtracking:
            return method(text)
        remaining = self.deadline - time.monotonic()
        if remaining > 0:
            try:
                return method(text, timeout=remaining)
            except TimeoutError:
                pass
        log.warning("route regex %r ran out of its time budget on a %d-character input; treated as no match",
                    matcher.pattern, len(text))
        return None


def _compile_regex(token: _Token, text: str, allow_backtracking: bool) -> _Matcher:
    """Checks the pattern with Python's ``re`` (its syntax is the contract) and compiles it for RE2."""
    pattern = token.value
    if len(pattern) > MAX_PATTERN:
        raise RouteSyntaxError(f"regex longer than {MAX_PATTERN} characters", token.col, text)
    deepest = _group_nesting(pattern)
    if deepest is not None:
        col = token.cols[deepest] if deepest < len(token.cols) else token.col
        raise RouteSyntaxError(f"regex groups nested more than {MAX_GROUP_NESTING} deep", col, text)
    try:
        py = re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        col = token.cols[e.pos] if e.pos is not None and e.pos < len(token.cols) else token.col
        raise RouteSyntaxError(f"invalid regex: {e.msg}", col, text) from None
    try:
        return _Matcher(pattern, re2.compile(pattern, _RE2_OPTIONS), False, py)
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
    if not allow_backtracking:
        raise RouteSyntaxError(f"regex needs backtracking ({reason}); refused unless backtracking regexes "
                               "are allowed", token.col, text)
    import regex  # here, not at the top: only routes allowed to backtrack need it (~15 ms of CPU to import)
    return _Matcher(pattern, regex.compile(pattern, regex.IGNORECASE), True, py)


def _group_nesting(pattern: str) -> int | None:
    """The index of the first ``(`` nested deeper than ``MAX_GROUP_NESTING``, or None. Escapes and character
    classes are skipped; a ``]`` that Python would take literally ends the class here, which can only
    count more groups, never fewer."""
    depth = 0
    in_class = False
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
        elif c == "(":
            depth += 1
            if depth > MAX_GROUP_NESTING:
                return i
        elif c == ")":
            depth = max(depth - 1, 0)
        i += 1
    return None


# A leading ".*" (bare or alone in a group) with no alternation after it: for prefiltering,
# "^.*R" can become an unanchored search for R, which keeps RE2's DFA states small.
_DOT_STAR = re.compile(r"\^?(?:\.\*\??|\((?:\?P<\w+>|\?:)?\.\*\??\))(?![*+?{])")
_LITERAL_FIRST = re.compile(r"\^?(?:\((?:\?:|\?P<\w+>)?)?(?:[A-Za-z0-9@_%!#$&'=~-]|\\[^A-Za-z0-9])(?![*?{])")


class _PrefilterSet:
    """One ``re2.Set`` searching for many patterns at once; ``match`` names their owners."""

    def __init__(self, options: re2.Options):
        self.set = re2.Set.SearchSet(options)
        self.owners: list[int] = []

    def add(self, entry: str, owner: int) -> None:
        self.set.Add(entry)
        self.owners.append(owner)

    def compile(self) -> None:
        try:
            self.set.Compile()
        except re2.error:
            raise ConfigError("routes", f"{len(self.owners)} match_recipient patterns do not fit RE2's "
                              "memory budget; raise max_mem") from None

    def match(self, text: str) -> list[int]:
        return [self.owners[i] for i in self.set.Match(text) or ()]


class _RecipientIndex:
    """Which routes' RE2 ``match_recipient`` patterns all match a recipient, in one pass.

    Exact for recipients without a newline: "^.*R" is entered as an unanchored search for R,
    which differs only in that "." does not match a newline (SMTP recipients have none).
    Patterns starting with an unbounded loop ("[^@]+@...") get their own Set: mixed with
    literal-first patterns, every such loop stays alive in every DFA state, and each new state
    then costs thousands of threads. Routes with no RE2 recipient pattern are always candidates.
    """

    def __init__(self, routes: Sequence[CompiledRoute], max_mem: int):
        options = re2.Options()
        options.case_sensitive = False
        options.log_errors = False
        options.max_mem = max_mem
        literal, loops = _PrefilterSet(options), _PrefilterSet(options)
        self.needed: dict[int, int] = {}
        self.always: list[int] = []
        for index, compiled in enumerate(routes):
            patterns = [f.pattern for f in compiled.filters
                        if f.kind == "recipient" and not f.matcher.backtracking]
            if not patterns:
                self.always.append(index)
            for pattern in patterns:
                self.needed[index] = self.needed.get(index, 0) + 1
                dot_star = _DOT_STAR.match(pattern)
                if dot_star and "|" not in pattern[dot_star.end():]:
                    literal.add(f"(?:{pattern[dot_star.end():]})", index)
                else:
                    (literal if _LITERAL_FIRST.match(pattern) else loops).add(f"^(?:{pattern})", index)
        self.sets = [s for s in (literal, loops) if s.owners]
        for s in self.sets:
            s.compile()

    def candidates(self, recipient: str) -> list[int]:
        """Route indices whose RE2 recipient patterns all match, ascending (the table is sorted, so this is priority order)."""
        hits: dict[int, int] = {}
        for s in self.sets:
            for route in s.match(recipient):
                hits[route] = hits.get(route, 0) + 1
        # Both runs are sorted, so timsort merges them in linear time.
        return sorted([r for r, n in hits.items() if n == self.needed[r]] + self.always)


# ---------------------------------------------------------------- compilation

_REFERENCE = re.compile(r"\\(?:(\d{1,2})|g<(\w+)>)")
_URL_ORIGIN = re.compile(r"(?i)https?://[^/?#\s]+")  # ends where the path, query or fragment starts
_ADDRESS_LOCAL = re.compile(r"[^\s@<>()\[\]\\,;:\"]+")


def parse_expression(text: str, *, allow_backtracking: bool = False) -> tuple[Filter, ...]:
    """Parses and compiles a route expression; raises RouteSyntaxError naming the column."""
    filters = []
    for call in _Parser(text).expression():
        name = call.name.lower()
        if name == "match_recipient":
            _check_arity(call, text, 1)
            matcher = _compile_regex(call.args[0], text, allow_backtracking)
            filters.append(Filter("recipient", call.args[0].value, matcher=matcher))
        elif name == "match_header":
            _check_arity(call, text, 2)
            header = call.args[0].value.strip()
            if not header or any(c.isspace() or c == ":" for c in header):
                raise RouteSyntaxError("invalid header name", call.args[0].col, text)
            matcher = _compile_regex(call.args[1], text, allow_backtracking)
            filters.append(Filter("header", call.args[1].value, header, matcher))
        elif name in ("catch_all", "catchall"):
            _check_arity(call, text, 0)
            filters.append(Filter("catch_all"))
        else:
            raise RouteSyntaxError(f"unknown filter {call.name!r}", call.col, text)
    return tuple(filters)


def parse_action(text: str) -> Action:
    """Parses one action string alone: capture references are kept as written, their groups unchecked."""
    return _parse_action(text, None)[0]


class _Groups(NamedTuple):
    """The groups a route's first match_recipient captures, for checking references."""

    groups: int
    groupindex: Mapping[str, int]


def _parse_action(text: str, groups: _Groups | None) -> tuple[Action, tuple[_Destination, ...]]:
    call = _Parser(text).single()
    name = call.name.lower()
    if name == "stop":
        _check_arity(call, text, 0)
        return Action("stop"), ()
    if name == "store":
        _check_arity(call, text, 0, ("notify",))
        notify = next((value for key, value in call.kwargs), None)  # arity check allowed only notify=
        if notify is not None and not _URL_ORIGIN.match(notify.value):
            raise RouteSyntaxError("notify must be an http(s) URL", notify.col, text)
        return Action("store", notify=notify.value if notify else None), ()
    if name == "forward":
        _check_arity(call, text, 1)
        token = call.args[0]
        destinations = tuple(_destination(piece, token, text, groups) for piece in token.value.split(","))
        return Action("forward", tuple(d.text for d in destinations)), destinations
    raise RouteSyntaxError(f"unknown action {call.name!r}", call.col, text)


def _destination(piece: str, token: _Token, text: str, groups: _Groups | None) -> _Destination:
    dest = piece.strip()
    col = token.col
    if not dest:
        raise RouteSyntaxError("empty forward destination", col, text)
    if len(dest) > MAX_DESTINATION:
        raise RouteSyntaxError(f"destination longer than {MAX_DESTINATION} characters", col, text)
    is_url = "://" in dest
    origin = _URL_ORIGIN.match(dest)
    local, at, domain = dest.rpartition("@")
    parts: list[str | int] = []
    last = 0
    for m in _REFERENCE.finditer(dest):
        name = m.group(1) or m.group(2)
        ref = int(name) if name.isdigit() else groups.groupindex.get(name, 0) if groups else 0
        if groups is not None and not 0 < ref <= groups.groups:
            raise RouteSyntaxError(f"{m.group()} refers to no group of the route's first match_recipient", col, text)
        if is_url and (origin is None or m.start() < origin.end()):
            raise RouteSyntaxError("a capture may only go into a URL's path or query, not its scheme or host", col, text)
        if not is_url and m.start() >= len(local):
            raise RouteSyntaxError("a capture may only go into an address's local part", col, text)
        parts += [dest[last:m.start()], ref]
        last = m.end()
    parts.append(dest[last:])
    if is_url and not origin:
        raise RouteSyntaxError(f"forward destination {dest!r} is not an http(s) URL with a host", col, text)
    if not is_url and (not local or not _ADDRESS_LOCAL.fullmatch(domain) or any(c.isspace() for c in dest)):
        raise RouteSyntaxError(f"forward destination {dest!r} is neither an http(s) URL nor an address", col, text)
    return _Destination(dest, tuple(parts), origin.group() if origin else at + domain)


def compile_route(route: Route, *, allow_backtracking: bool = False) -> CompiledRoute:
    """Parses and compiles a route. RouteSyntaxError's problem says which part is at fault."""
    try:
        filters = parse_expression(route.expression, allow_backtracking=allow_backtracking)
    except RouteSyntaxError as e:
        raise RouteSyntaxError(f"expression: {e.problem}", e.position, e.text) from None
    first = next((f.matcher for f in filters if f.kind == "recipient"), None)
    groups = _Groups(first.groups, first.groupindex) if first else _Groups(0, {})
    actions: list[Action] = []
    destinations: list[tuple[_Destination, ...]] = []
    for n, text in enumerate(route.actions, 1):
        try:
            action, dests = _parse_action(text, groups)
        except RouteSyntaxError as e:
            raise RouteSyntaxError(f"action {n}: {e.problem}", e.position, e.text) from None
        actions.append(action)
        destinations.append(dests)
    # Cheap filters first; headers may have to be parsed on demand.
    order = {"catch_all": 0, "recipient": 1, "header": 2}
    filters = tuple(sorted(filters, key=lambda f: order[f.kind]))
    return CompiledRoute(route, filters, tuple(actions), any(a.kind == "stop" for a in actions),
                         any(len(d.parts) > 1 for dests in destinations for d in dests), tuple(destinations))


# ---------------------------------------------------------------- expansion


def _expand(dest: _Destination, groups: tuple[str | None, ...]) -> str | None:
    """Fills capture references; None when the result would leave the template's origin or domain."""
    if len(dest.parts) == 1:
        return dest.text
    is_address = dest.origin.startswith("@")
    out = []
    for i, part in enumerate(dest.parts):
        if i % 2 == 0:
            out.append(part)
            continue
        value = groups[part - 1] or ""
        out.append(value if is_address else quote(value, safe=""))
    result = "".join(out)  # type: ignore[arg-type]
    if not is_address:
        origin = _URL_ORIGIN.match(result)
        return result if origin and origin.group() == dest.origin else None
    local, at, domain = result.rpartition("@")
    ok = at + domain == dest.origin and _ADDRESS_LOCAL.fullmatch(local) and local.isprintable()
    return result if ok else None


def _expand_actions(compiled: CompiledRoute, groups: tuple[str | None, ...]) -> tuple[tuple[Action, ...], tuple[str, ...]]:
    actions: list[Action] = []
    problems: list[str] = []
    for action, dests in zip(compiled.actions, compiled._destinations):
        if action.kind != "forward" or all(len(d.parts) == 1 for d in dests):
            actions.append(action)
            continue
        kept = []
        for dest in dests:
            expanded = _expand(dest, groups)
            if expanded is None:
                problems.append(f"route {compiled.route.id}: dropped {dest.text!r}: the captured text would "
                                "change its scheme, host or domain or make an invalid address")
            else:
                kept.append(expanded)
        actions.append(Action("forward", tuple(kept)))
    return tuple(actions), tuple(problems)


# ---------------------------------------------------------------- the table


class _HeaderView:
    """Header values by lower-cased name, built on first use from a list or a callable."""

    def __init__(self, headers: Headers):
        self.source = headers
        self.by_name: dict[str, list[str]] | None = None

    def values(self, name: str) -> list[str]:
        if self.by_name is None:
            pairs = self.source() if callable(self.source) else self.source
            self.by_name = {}
            for key, value in pairs:
                self.by_name.setdefault(key.lower(), []).append(value)
        return self.by_name.get(name.lower(), [])


class RouteTable:
    """Routes compiled once and sorted by (priority, creation order); see the module doc for the contract.

    ``routes`` are given in creation order. ``allow_backtracking`` admits regexes RE2 cannot run;
    ``backtrack_budget`` bounds the seconds they may take per evaluation. ``max_mem`` is RE2's
    memory budget per prefilter Set: when its DFA runs out of memory, RE2 reports no match, so it
    is generous.
    """

    def __init__(self, routes: Iterable[Route], *, allow_backtracking: bool = False,
                 backtrack_budget: float = 0.05, max_mem: int = 64 << 20):
        compiled = [compile_route(r, allow_backtracking=allow_backtracking) for r in routes]
        self.routes: tuple[CompiledRoute, ...] = tuple(sorted(compiled, key=lambda c: c.route.priority))
        self.backtrack_budget = backtrack_budget
        self._index = _RecipientIndex(self.routes, max_mem)

    def evaluate(self, recipient: str, headers: Headers = ()) -> list[RouteMatch]:
        """The routes that match one recipient, in order, ending with the first that has stop()."""
        if "\n" in recipient:
            return []
        budget = _Budget(self.backtrack_budget)
        view = _HeaderView(headers)
        matches: list[RouteMatch] = []
        for index in self._index.candidates(recipient):
            compiled = self.routes[index]
            captures = self._recipient_captures(compiled, recipient, budget, catch_all_open=not matches)
            if captures is None or not self._headers_match(compiled, view, budget):
                continue
            actions, problems = _expand_actions(compiled, captures)
            matches.append(RouteMatch(compiled.route, actions, problems))
            if compiled.stops:
                break
        return matches

    def would_handle(self, recipient: str) -> bool:
        """Whether some route could match this recipient whatever the headers (for RCPT-time 550)."""
        if "\n" in recipient:
            return False
        budget = _Budget(self.backtrack_budget)
        return any(self._recipient_captures(self.routes[i], recipient, budget, catch_all_open=True) is not None
                   for i in self._index.candidates(recipient))

    @staticmethod
    def _recipient_captures(compiled: CompiledRoute, recipient: str, budget: _Budget, *, catch_all_open: bool):
        """Groups of the first match_recipient (() if unused) when every recipient-side filter passes.

        The index has already answered exactly for RE2 patterns of a candidate, so an RE2 regex runs
        again only to extract the captures a destination uses.
        """
        captures: tuple[str | None, ...] = ()
        first = True
        for f in compiled.filters:
            if f.kind == "catch_all":
                if not catch_all_open:
                    return None
            elif f.kind == "recipient":
                if f.matcher.backtracking or (first and compiled.uses_captures):
                    found = f.matcher.match(recipient, budget)
                    if found is None:
                        return None
                    if first:
                        captures = found
                first = False
        return captures

    @staticmethod
    def _headers_match(compiled: CompiledRoute, view: _HeaderView, budget: _Budget) -> bool:
        return all(any(f.matcher.search(v, budget) for v in view.values(f.header))
                   for f in compiled.filters if f.kind == "header")
