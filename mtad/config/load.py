"""A strict YAML -> frozen dataclass builder, driven by the dataclasses' field types.

Every key is checked against the target dataclass: unknown keys and values of the wrong type raise
``ConfigError`` naming the key path (``limits.max_message_size: expected a size ...``). Supported field
types: str, int, float, bool, Rate, Duration, Size, Secret, Literal[...], Optional[X], tuple[X, ...],
dict[str, X] and nested dataclasses. A dataclass may define ``__post_build__(self, path)`` to check
relations between its fields. Mechanism only: which keys exist and their defaults live in config.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from mtad.base.errors import ConfigError
from mtad.base.rates import Duration, Rate, Size


def parse_yaml(text: str) -> Any:
    """A YAML document's data, parsed by libyaml (several times faster than the pure-Python parser: the config and
    the shaping file are read at every start); on an error, the pure-Python parser's ``yaml.YAMLError``, whose
    message names the line and column."""
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return yaml.safe_load(text)


@dataclass(frozen=True)
class Secret:
    """A secret value: given inline, or read from ``{file: PATH}`` or ``{env: NAME}``.

    ``str()`` never reveals it; ``reveal()`` does. ``source`` says where it came from (for check-config).
    ``read`` is False when the file or variable was not read (``unread_secrets``): the value is empty then.
    """

    value: str = dataclasses.field(repr=False)
    source: str = "inline"
    read: bool = True

    def reveal(self) -> str:
        return self.value

    def __str__(self) -> str:
        return "********"


class SecretError(ConfigError):
    """A secret's file or environment variable cannot be read (the rest of the file may be fine)."""


_unread = contextvars.ContextVar("mtad_unread_secrets", default=False)


@contextlib.contextmanager
def unread_secrets():
    """Within: ``{env: NAME}`` and ``{file: PATH}`` secrets are checked for form but not read
    (``mtad check-config --no-secrets``, on a machine without the deployment's secrets)."""
    token = _unread.set(True)
    try:
        yield
    finally:
        _unread.reset(token)


def _load_secret(value: Any, path: str, base_dir: Path) -> Secret:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return Secret(str(value))
    if isinstance(value, dict) and len(value) == 1:
        (kind, ref), = value.items()
        if kind == "env":
            if _unread.get():
                return Secret("", f"env:{ref}", read=False)
            if str(ref) not in os.environ:
                raise SecretError(path, f"environment variable {ref} is not set")
            return Secret(os.environ[str(ref)], f"env:{ref}")
        if kind == "file":
            file = Path(str(ref))
            file = file if file.is_absolute() else base_dir / file
            if _unread.get():
                return Secret("", f"file:{file}", read=False)
            try:
                return Secret(file.read_text().strip(), f"file:{file}")
            except OSError as exc:
                raise SecretError(path, f"cannot read secret file {file}: {exc.strerror}") from None
    raise ConfigError(path, "expected a string, {env: NAME} or {file: PATH}")


_SCALARS = {Rate: Rate.parse, Duration: Duration.parse, Size: Size.parse}


def build(cls: Any, data: Any, path: str = "", base_dir: Path = Path(".")) -> Any:
    """Build a value of type ``cls`` from plain YAML data, strictly."""
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    where = path or "(top level)"
    if cls is Any:
        return data
    if origin in (Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return build(inner[0], data, path, base_dir)
        errors = []
        for candidate in inner:
            try:
                return build(candidate, data, path, base_dir)
            except ConfigError as exc:
                errors.append(exc.problem)
        raise ConfigError(where, " or ".join(errors))
    if origin is Literal:
        if data not in args:
            raise ConfigError(where, f"expected one of {', '.join(map(repr, args))}, got {data!r}")
        return data
    if origin is tuple:
        if data is None:
            return ()
        if not isinstance(data, list):
            raise ConfigError(where, f"expected a list, got {type(data).__name__}")
        return tuple(build(args[0], item, f"{path}[{i}]", base_dir) for i, item in enumerate(data))
    if origin is dict:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ConfigError(where, f"expected a mapping, got {type(data).__name__}")
        return {str(k): build(args[1], v, f"{path}.{k}" if path else str(k), base_dir) for k, v in data.items()}
    if cls is Secret:
        return _load_secret(data, where, base_dir)
    if cls in _SCALARS:
        try:
            return _SCALARS[cls](data)
        except ValueError as exc:
            raise ConfigError(where, str(exc)) from None
    if cls is bool:
        if not isinstance(data, bool):
            raise ConfigError(where, f"expected true or false, got {data!r}")
        return data
    if cls is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise ConfigError(where, f"expected an integer, got {data!r}")
        return data
    if cls is float:
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            raise ConfigError(where, f"expected a number, got {data!r}")
        return float(data)
    if cls is str:
        if isinstance(data, bool) or data is None or isinstance(data, (list, dict)):
            raise ConfigError(where, f"expected a string, got {data!r}")
        return str(data)
    if dataclasses.is_dataclass(cls):
        return _build_dataclass(cls, data, path, base_dir)
    raise TypeError(f"unsupported config type {cls!r} at {where}")  # a bug in config.py, not in the file


def _build_dataclass(cls: Any, data: Any, path: str, base_dir: Path) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path or "(top level)", f"expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    keys = {f.metadata.get("key", name): name for name, f in fields.items()}
    kwargs = {}
    for key, value in data.items():
        name = keys.get(str(key))
        sub = f"{path}.{key}" if path else str(key)
        if name is None:
            known = ", ".join(sorted(keys))
            raise ConfigError(sub, f"unknown key (known keys: {known})")
        kwargs[name] = build(hints[name], value, sub, base_dir)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(path or "(top level)", str(exc).split("__init__() ")[-1]) from None
    check = getattr(obj, "__post_build__", None)
    if check:
        check(path)
    return obj


def dump(obj: Any) -> Any:
    """Plain data for printing the effective configuration; secrets masked."""
    if isinstance(obj, Secret):
        if not obj.read:
            return f"(not read: {obj.source})"
        return "********" if obj.source == "inline" else f"******** ({obj.source})"
    if isinstance(obj, (Rate, Duration, Size)):
        return str(obj)
    if dataclasses.is_dataclass(obj):
        return {f.metadata.get("key", f.name): dump(getattr(obj, f.name))
                for f in dataclasses.fields(obj) if not f.metadata.get("internal")}
    if isinstance(obj, (tuple, list)):
        return [dump(v) for v in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj
