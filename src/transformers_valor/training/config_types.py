"""Type and range checks of the training config's values, read from the dataclasses' own annotations.

A YAML value of the wrong type must stop the run when the file is loaded, naming the key, the value and what was
expected (`training.max_steps: expected an integer or null, got 'ten' (str)`), not deep inside the first step.
The schema stays the dataclasses of `config.py`; [`check_fields`] reads their annotations (`int`, `float`, `str`,
`bool`, `Literal[...]`, `X | None`, `list[X]`, `dict[K, V]`, `tuple[...]`, `Any`, nested dataclasses). It is strict
where YAML is loose: `2.5` is not an integer, `1` is not `true`, a string is not a list; an integer is accepted
as a float (and converted). [`require`] states the range rules the dataclasses check in `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

_NONE = type(None)
_SCALARS: dict[type, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


class ConfigValueError(ValueError):
    """A config value has the wrong type or is out of range; the message names the key and the value."""


def describe(annotation: Any) -> str:
    """What `annotation` accepts, in words (`"an integer or null"`, `"a list of strings"`, ...)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return "any value"
    if annotation is _NONE:
        return "null"
    if annotation in _SCALARS:
        return _SCALARS[annotation]
    if origin is Literal:
        return f"one of {list(args)}"
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in sorted(args, key=lambda a: a is _NONE))
    if origin is list:
        return f"a list of {_plural(describe(args[0]))}" if args else "a list"
    if origin is tuple:
        return f"a list of {len(args)} values ({', '.join(describe(a) for a in args)})"
    if origin is dict:
        return (
            f"a mapping of {_plural(describe(args[0]))} to {_plural(describe(args[1]))}"
            if args
            else "a mapping"
        )
    if dataclasses.is_dataclass(annotation):
        return f"a mapping of {annotation.__name__} settings"
    raise TypeError(f"Unsupported config annotation {annotation!r}.")


def _plural(words: str) -> str:
    for singular, plural in (("an integer", "integers"), ("a number", "numbers"), ("a string", "strings")):
        words = words.replace(singular, plural)
    return words


def _matches(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Whether `value` fits `annotation`, and the value to keep (an int given for a float becomes a float)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is Any:
        return True, value
    if annotation is _NONE:
        return value is None, value
    if annotation is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if annotation in _SCALARS:
        return type(value) is annotation, value
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args), value
    if origin in (Union, types.UnionType):
        for option in args:
            ok, kept = _matches(value, option)
            if ok:
                return True, kept
        return False, value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)) or (
            origin is tuple and Ellipsis not in args and len(args) != len(value)
        ):
            return False, value
        items = [args[0]] * len(value) if origin is list or Ellipsis in args else list(args)
        checked = [_matches(v, a) for v, a in zip(value, items)] if args else [(True, v) for v in value]
        return all(ok for ok, _ in checked), type(value)(kept for _, kept in checked)
    if origin is dict:
        if not isinstance(value, dict):
            return False, value
        key_type, value_type = args or (Any, Any)
        checked = {k: _matches(v, value_type) for k, v in value.items()}
        ok = all(_matches(k, key_type)[0] for k in value) and all(ok for ok, _ in checked.values())
        return ok, {k: kept for k, (_, kept) in checked.items()}
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, annotation), value
    raise TypeError(f"Unsupported config annotation {annotation!r}.")


def check_value(value: Any, annotation: Any, key: str) -> Any:
    """`value` if it fits `annotation` (an int given for a float converted), else a `ConfigValueError`."""
    ok, kept = _matches(value, annotation)
    if not ok:
        raise ConfigValueError(
            f"`{key}`: expected {describe(annotation)}, got {value!r} ({type(value).__name__})."
        )
    return kept


def check_fields(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Check every entry of `values` against the annotation of the field of dataclass `cls` with that name."""
    hints = typing.get_type_hints(cls)
    return {name: check_value(value, hints[name], f"{where}.{name}") for name, value in values.items()}


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """Raise a `ConfigValueError` (`` `key` must be rule, got value``) unless `ok`."""
    if not ok:
        raise ConfigValueError(f"`{key}` must be {rule}, got {value!r}.")


def require_at_least(
    section: str, values: dict[str, Any], minimum: int | float, optional: bool = False
) -> None:
    """Every entry of `values` (field name -> value of `section`) is `>= minimum` (or None when `optional`)."""
    for name, value in values.items():
        rule = f">= {minimum}" + (" (or unset)" if optional else "")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        require(
            (optional and value is None) or (number and value >= minimum),
            f"{section}.{name}",
            value,
            rule,
        )
