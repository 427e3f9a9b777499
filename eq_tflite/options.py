"""Typed options: one frozen dataclass per method or chain spec, one field per option.

A field made with :func:`option` carries its default, its help text and its
validation. Its key is ``<prefix>_<field>`` (``eq_steps``), or the field's own
``key``; that key is the CLI flag (``--eq_steps``, defined from the spec by
``eq_tflite.convert``) and the API's ``method_options`` key, so each default is
written once, here in the dataclass. :func:`parse` reads a mapping of keys,
converts each value to the field's type (strings from the CLI included),
validates it (and the instance's ``validate()``, for rules across fields), and refuses a key with the spec's prefix that names no field
(a typo would otherwise be ignored silently).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Callable, Mapping, TypeVar

from eq_tflite.errors import EqTfliteError

T = TypeVar("T")


def option(default: Any, help: str, *, choices: tuple | None = None,
           check: Callable[[Any], bool] | None = None, rule: str = "", key: str | None = None
           ) -> Any:
    """A dataclass field that is one option (see module doc).

    ``choices``: the allowed values; ``check`` a predicate and ``rule`` how it
    reads in the error ("must be >= 1"); ``key``: the key when it is not
    ``<prefix>_<name>`` (a key shared by several specs, such as ``seed``).
    """
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": choices, "check": check, "rule": rule, "key": key})


def keys(cls: type, prefix: str) -> dict[str, dataclasses.Field]:
    """{key: field} of an options dataclass."""
    return {f.metadata.get("key") or f"{prefix}_{f.name}": f for f in dataclasses.fields(cls)}


def kind(cls: type, f: dataclasses.Field) -> Any:
    """The field's type (``int``, ``float``, ``str``, ``bool`` or ``tuple``)."""
    hint = typing.get_type_hints(cls)[f.name]
    return typing.get_origin(hint) or hint


def parse(cls: type[T], prefix: str, values: Mapping[str, Any]) -> T:
    """An instance of ``cls`` from ``values`` (missing keys take the defaults; see module doc)."""
    fields = keys(cls, prefix)
    unknown = sorted(k for k in values if k.startswith(prefix + "_") and k not in fields)
    if unknown:
        raise EqTfliteError(f"unknown option {unknown[0]}; the {prefix}_ options are "
                            f"{', '.join(k for k in fields if k.startswith(prefix + '_'))}")
    given = {}
    for key, f in fields.items():
        if key not in values or values[key] is None:
            continue
        value = _convert(values[key], kind(cls, f), key)
        choices, check = f.metadata["choices"], f.metadata["check"]
        if choices is not None and value not in choices:
            raise EqTfliteError(f"{key} must be one of {', '.join(map(str, choices))}, "
                                f"got {values[key]!r}")
        if check is not None and not check(value):
            raise EqTfliteError(f"{key} {f.metadata['rule']}, got {values[key]!r}")
        given[f.name] = value
    out = cls(**given)
    if hasattr(out, "validate"):  # rules across fields
        out.validate()
    return out


def help_text(f: dataclasses.Field, owner: str) -> str:
    """The flag help of one option: owner, help, default."""
    default = f.default
    if isinstance(default, tuple):
        default = ",".join(f"{v:g}" for v in default)
    elif isinstance(default, bool):
        default = str(default).lower()
    return f"{owner}: {f.metadata['help']} (default {default})."


def _convert(value: Any, to: Any, key: str) -> Any:
    try:
        if to is bool:
            return _boolean(value)
        if to is tuple:
            return _floats(value)
        if to is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        out = to(value)
        if to is float and not math.isfinite(out):
            raise ValueError(value)
        return out
    except (TypeError, ValueError):
        what = {bool: "true or false", tuple: "comma-separated numbers", int: "an integer",
                float: "a finite number"}.get(to, to.__name__)
        raise EqTfliteError(f"{key} must be {what}, got {value!r}") from None


def _floats(value: Any) -> tuple[float, ...]:
    """A tuple of floats from a number, a sequence or a comma-separated string."""
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)):
        value = [value]
    return tuple(float(v) for v in value)


def _boolean(value: Any) -> bool:
    """A bool from a bool or a string (true/false, 1/0, yes/no)."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(value)
        return value.lower() in ("true", "1", "yes")
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise ValueError(value)
