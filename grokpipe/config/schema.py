"""Typed, validated params: build frozen dataclasses from plain YAML mappings.

Every error names the full dotted key and the reason, so a researcher who mistypes one value in
`params.yaml` sees exactly which one, before any stage writes an output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A bad value in params.yaml; `str()` is one line: `<dotted key>: <reason>`."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")

    def __reduce__(self):  # raised in a worker process, it reaches the parent whole
        return (type(self), (self.key, self.reason))


def check(condition: bool, key: str, reason: str) -> None:
    """Raise ConfigError(key, reason) unless condition holds."""
    if not condition:
        raise ConfigError(key, reason)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to type `tp`, or raise ConfigError naming `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
    elif tp is float:
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is not None:
            if not math.isfinite(number):
                raise ConfigError(key, f"expected a finite number, got {value!r}")
            return number
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        args = get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(
                    coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))
                )
            raise ConfigError(key, f"expected a list of {len(args)} values, got {value!r}")
    elif origin is list:
        (arg,) = get_args(tp)
        if isinstance(value, (list, tuple)):
            return [coerce(v, arg, f"{key}[{i}]") for i, v in enumerate(value)]
    elif origin is dict:
        karg, varg = get_args(tp)
        if isinstance(value, dict):
            return {coerce(k, karg, key): coerce(v, varg, f"{key}.{k}") for k, v in value.items()}
    else:
        raise TypeError(f"unsupported annotation {tp!r} for {key}")
    raise ConfigError(key, f"expected {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: Any, key: str) -> Any:
    """Build dataclass `cls` from a mapping; unknown keys and bad types raise ConfigError.

    After construction, `cls.validate(self, key)` (when defined) checks ranges and relations.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{key}.{unknown[0]}" if key else str(unknown[0]),
            f"unknown key (expected one of: {', '.join(sorted(fields))})",
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name in data:
            kwargs[name] = coerce(data[name], hints[name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "required key is missing")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        validate(key)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-YAML form of a config dataclass (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def deep_merge(base: dict, override: dict) -> dict:
    """Recursive merge: mappings merge key by key, anything else in `override` replaces."""
    out = dict(base)
    for k, v in (override or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def set_dotted(tree: dict, dotted: str, value: Any) -> dict:
    """Copy of `tree` with `a.b.c` set to value (intermediate mappings created)."""
    head, _, rest = dotted.partition(".")
    out = dict(tree)
    if rest:
        sub = out.get(head)
        out[head] = set_dotted(sub if isinstance(sub, dict) else {}, rest, value)
    else:
        out[head] = value
    return out
