"""Mailbox-provider shaping as data: which policy a destination gets, and which automation rule a reply triggers.

A ``ProviderPolicy`` holds the limits for one provider: concurrent connections across the whole provider (so
gmail.com and every Google-hosted domain share one budget), message rate, deliveries per connection, TLS policy
and timeouts. ``for_destination`` picks the policy for a destination domain; ``match_automation`` picks the rule
(suspend, or throttle for a while) that a remote reply triggers. Both are pure; the scheduler owns the counters
(``mtad.throttle``) and never reads YAML.

The YAML shape (the shipped file is ``mtad/config/providers.yaml``, in the package) mirrors ``ShapingConfig``::

    default:            # a ProviderPolicy without name or match keys: the limits for every other destination
      max_connections: 10
    providers:          # a mapping: provider name -> policy; unset keys inherit from `default`
      google:
        match_mx_suffix: [google.com, googlemail.com]
        max_connections: 5
    automation:         # a mapping: rule name -> AutomationRule
      yahoo-tss04: {providers: [yahoo], regex: '\\[TSS04\\]', action: suspend, duration: 2h}

Mappings rather than lists, so that every error names its place (``providers.google.max_message_rate: ...``) and
a name cannot be given twice by accident. ``build`` is strict: unknown keys and bad values raise ``ConfigError``.

Suffixes match whole labels: ``google.com`` matches ``google.com`` and ``aspmx.l.google.com``, not
``notgoogle.com``; a leading dot (KumoMTA's spelling, ``.google.com``) is accepted and means the same.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mtad.base.errors import ConfigError
from mtad.base.rates import Duration, Rate
from mtad.config.load import parse_yaml

TLS_POLICIES = ("opportunistic", "required", "disabled")
ACTIONS = ("suspend", "throttle")


@dataclass(frozen=True)
class ProviderPolicy:
    """Limits for one provider. Defaults follow KumoMTA's shipped ``default`` shaping (see providers.yaml)."""

    name: str = "default"
    match_mx_suffix: tuple[str, ...] = ()  # every MX host of the domain must match one (KumoMTA MXSuffix)
    match_domain_suffix: tuple[str, ...] = ()  # matched before MX, so known domains need no lookup
    max_connections: int = 10  # concurrent connections across the whole provider
    max_message_rate: Rate | None = Rate(100, 1)  # None: unlimited
    max_deliveries_per_connection: int = 100
    tls: str = "opportunistic"  # one of TLS_POLICIES
    connect_timeout: Duration = Duration(30)
    command_timeout: Duration = Duration(300)
    data_timeout: Duration = Duration(60)
    idle_timeout: Duration = Duration(2)  # an emptied connection waits this long for more mail to its site

    def __post_init__(self) -> None:
        for attr in ("match_mx_suffix", "match_domain_suffix"):
            object.__setattr__(self, attr, tuple(s.strip(".").lower() for s in getattr(self, attr)))


@dataclass(frozen=True)
class AutomationRule:
    """React to a remote reply matching ``regex``: suspend the provider, or lower its limits, for ``duration``."""

    name: str = ""
    providers: tuple[str, ...] = ()  # provider names; empty: every destination
    regex: str = ""  # re.search over the whole reply text, case-sensitive
    action: str = "suspend"  # one of ACTIONS
    duration: Duration = Duration(3600)
    max_connections: int | None = None  # throttle: the lowered limits
    max_message_rate: Rate | None = None
    threshold: Rate | None = None  # fire only after this many matches per period (KumoMTA trigger); None: at once


@dataclass(frozen=True)
class ShapingConfig:
    default: ProviderPolicy = ProviderPolicy()
    providers: tuple[ProviderPolicy, ...] = ()
    automation: tuple[AutomationRule, ...] = ()


def for_destination(domain: str, mx_hosts: list[str], shaping: ShapingConfig) -> ProviderPolicy:
    """The policy for mail to ``domain`` whose MX hosts are ``mx_hosts`` (may be empty before the MX lookup).

    Domain suffixes are tried first, then MX suffixes (every host must match). The longest matching suffix wins;
    on a tie, the provider listed first. An unknown destination gets the default limits under its own domain
    name, so every unknown domain has its own connection and rate budget rather than sharing one.
    """
    domain = domain.strip(".").lower()
    best = _best_match([domain], shaping.providers, "match_domain_suffix")
    if best is None and mx_hosts:
        best = _best_match([h.strip(".").lower() for h in mx_hosts], shaping.providers, "match_mx_suffix")
    return best or replace(shaping.default, name=domain)


def match_automation(reply_text: str, provider_name: str, rules: tuple[AutomationRule, ...] | list[AutomationRule]
                     ) -> AutomationRule | None:
    """The first rule for ``provider_name`` (or for every provider) whose regex is found in ``reply_text``."""
    for rule in rules:
        if (not rule.providers or provider_name in rule.providers) and re.search(rule.regex, reply_text):
            return rule
    return None


def _best_match(names: list[str], providers: tuple[ProviderPolicy, ...], attr: str) -> ProviderPolicy | None:
    best, best_len = None, 0
    for provider in providers:
        suffixes = getattr(provider, attr)
        # A provider's score is its weakest host's longest matching suffix; 0 if some host matches none.
        score = min((max((len(s) for s in suffixes if n == s or n.endswith("." + s)), default=0) for n in names))
        if score > best_len:
            best, best_len = provider, score
    return best


# --- building from YAML -------------------------------------------------------------------------------------------

def load_shaping(path: str | Path) -> ShapingConfig:
    """Read and build a shaping file; every problem raises ``ConfigError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        data = parse_yaml(text)  # the shipped file: ~30 ms of CPU at every start in pure Python, 5 in C
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(str(path), f"cannot read shaping config: {exc}") from exc
    return build(data if data is not None else {})


def build(data: Mapping[str, Any]) -> ShapingConfig:
    """Build a ``ShapingConfig`` from parsed YAML, strictly (see the module doc for the shape)."""
    _keys(data, "", ("default", "providers", "automation"))
    default = _build(ProviderPolicy, data.get("default") or {}, "default", ProviderPolicy(),
                     skip=("name", "match_mx_suffix", "match_domain_suffix"))
    providers = []
    for name, spec in _mapping(data.get("providers") or {}, "providers").items():
        policy = _build(ProviderPolicy, spec, f"providers.{name}", replace(default, name=str(name)), skip=("name",))
        if not policy.match_mx_suffix and not policy.match_domain_suffix:
            raise ConfigError(f"providers.{name}", "needs match_mx_suffix or match_domain_suffix")
        providers.append(policy)
    known = {p.name for p in providers}
    rules = []
    for name, spec in _mapping(data.get("automation") or {}, "automation").items():
        path = f"automation.{name}"
        rule = _build(AutomationRule, spec, path, AutomationRule(name=str(name)), skip=("name",))
        unknown = [p for p in rule.providers if p not in known]
        if unknown:
            raise ConfigError(f"{path}.providers",
                              f"unknown provider {unknown[0]!r} (known: {', '.join(sorted(known))})")
        limits = rule.max_connections is not None or rule.max_message_rate is not None
        if rule.action == "throttle" and not limits:
            raise ConfigError(path, "a throttle rule needs max_connections or max_message_rate")
        if rule.action == "suspend" and limits:
            raise ConfigError(path, "a suspend rule takes no max_connections or max_message_rate")
        rules.append(rule)
    return ShapingConfig(default, tuple(providers), tuple(rules))


_T = TypeVar("_T")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """``cls``'s field types, evaluated once per class (a shaping file builds ~30 policies and rules)."""
    return typing.get_type_hints(cls)


def _build(cls: type[_T], spec: Any, path: str, base: _T, skip: tuple[str, ...]) -> _T:
    """``base`` with the keys of ``spec`` converted to ``cls``'s field types and checked."""
    hints = _hints(cls)
    allowed = [f.name for f in fields(cls) if f.name not in skip]  # type: ignore[arg-type]
    _keys(_mapping(spec, path), path, allowed)
    values = {key: _check(key, _convert(hints[key], value, f"{path}.{key}"), f"{path}.{key}")
              for key, value in spec.items()}
    return replace(base, **values)  # type: ignore[type-var]


def _convert(hint: Any, value: Any, path: str) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint in (Rate, Duration):
        try:
            return hint.parse(value)
        except ValueError as exc:
            raise ConfigError(path, str(exc)) from None
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
        return value
    if hint == tuple[str, ...]:
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip(".") for v in value):
            raise ConfigError(path, f"expected a list of names, got {value!r}")
        return tuple(value)
    raise TypeError(f"{path}: no conversion for {hint!r}")  # a field type this builder was not taught


def _check(key: str, value: Any, path: str) -> Any:
    """Value rules that the type alone does not say."""
    if key in ("max_connections", "max_deliveries_per_connection") and value is not None and value < 1:
        raise ConfigError(path, f"must be at least 1, got {value}")
    if key == "tls" and value not in TLS_POLICIES:
        raise ConfigError(path, f"expected one of {', '.join(TLS_POLICIES)}, got {value!r}")
    if key == "action" and value not in ACTIONS:
        raise ConfigError(path, f"expected one of {', '.join(ACTIONS)}, got {value!r}")
    if key == "regex":
        if not value:
            raise ConfigError(path, "must not be empty")
        try:
            re.compile(value)
        except re.error as exc:
            raise ConfigError(path, f"invalid regular expression: {exc}") from None
    return value


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def _keys(spec: Mapping[str, Any], path: str, allowed: typing.Iterable[str]) -> None:
    allowed = list(allowed)
    for key in _mapping(spec, path or "shaping"):
        if key not in allowed:
            raise ConfigError(f"{path}.{key}" if path else str(key),
                              f"unknown key (expected one of: {', '.join(allowed)})")
