"""Typed, validated option records: the one validation layer of every config section and algorithm option.

A record is a frozen dataclass whose fields are declared with :func:`option` (type from the annotation,
range, choices, one line of documentation). :func:`parse` turns a raw mapping (parsed YAML plus ``--set``
overrides) into a record, checking every key, type and range, and raises
:class:`~wakesleep.errors.WakesleepError` with one line naming the field::

    @dataclass(frozen=True)
    class Options:
        sleep_samples: int = option(1000, minimum=1, doc="samples drawn from the model per sleep phase")
        ridge: float = option(1e-3, minimum=0.0, doc="ridge penalty of the read-out regression")

    parse(Options, {"sleep_samples": "many"}, "algorithm")
    # WakesleepError: algorithm.sleep_samples must be an integer, got 'many'

Supported annotations: ``int``, ``float``, ``bool``, ``str``, ``Literal[...]``, ``list[T]`` / ``tuple[T, ...]``
of those, ``dict`` (any mapping, checked by its owner), ``Any``, and ``X | None``.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from wakesleep.errors import WakesleepError

__all__ = ["option", "parse", "to_dict", "option_table", "fields_of", "with_source", "SEED_MAX"]

#: the largest seed accepted anywhere (torch generators take 64-bit seeds; offsets are added to seeds)
SEED_MAX = 2**62


def option(
    default: Any = dataclasses.MISSING,
    *,
    doc: str = "",
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    choices: tuple[Any, ...] | None = None,
) -> Any:
    """Declare a field of an option record (see the module docstring).

    Parameters
    ----------
    default
        The default value (a list is copied for every record).
    doc : str
        One line of documentation (``wakesleep`` writes it into generated option tables).
    minimum, maximum : float, optional
        Inclusive bounds of a number (of each item of a list); ``exclusive_minimum`` makes the lower one strict.
    choices : tuple, optional
        The allowed values (a ``Literal`` annotation gives them too).
    """
    meta = {
        "doc": doc,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "choices": choices,
    }
    if isinstance(default, list | dict):
        frozen = default
        return dataclasses.field(default_factory=lambda: _copy(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``name -> (field, resolved annotation)`` of the option record ``cls``."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls) if f.init}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    return str(tp)


def _check(value: Any, tp: Any, where: str, meta: Mapping[str, Any]) -> Any:
    """Return ``value`` converted to ``tp`` or raise a one-line :class:`WakesleepError` naming ``where``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _check(value, rest[0], where, meta)
        errors = []
        for a in rest:
            try:
                return _check(value, a, where, meta)
            except WakesleepError as exc:
                errors.append(exc)
        raise errors[0]
    if value is None:
        raise WakesleepError(f"{where} must be {_type_name(tp)}, got null")
    if tp is bool:
        if not isinstance(value, bool):
            raise WakesleepError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise WakesleepError(f"{where} must be an integer, got {value!r}")
        _bounds(value, where, meta)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value.strip())
            except ValueError:
                raise WakesleepError(f"{where} must be a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WakesleepError(f"{where} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise WakesleepError(f"{where} must be a finite number, got {value}")
        _bounds(value, where, meta)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise WakesleepError(f"{where} must be a string, got {value!r}")
        _choices(value, where, meta)
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if not any(value == a and type(value) is type(a) for a in allowed):
            raise WakesleepError(f"{where} must be one of {', '.join(repr(a) for a in allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise WakesleepError(f"{where} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        out = [_check(v, item, f"{where}[{i}]", meta) for i, v in enumerate(value)]
        return out if origin is list else tuple(out)
    if tp is dict or origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise WakesleepError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    raise TypeError(f"schema: unsupported annotation {tp!r} at {where}")  # a programming error, not the user's


def _bounds(value: float, where: str, meta: Mapping[str, Any]) -> None:
    lo, hi = meta.get("minimum"), meta.get("maximum")
    if lo is not None:
        if meta.get("exclusive_minimum") and not value > lo:
            what = "a positive number" if lo == 0 else f"greater than {lo:g}"
            raise WakesleepError(f"{where} must be {what}, got {value!r}")
        if value < lo:
            what = "positive" if lo == 1 and isinstance(value, int) else f">= {lo:g}"
            raise WakesleepError(f"{where} must be {what}, got {value!r}")
    if hi is not None and value > hi:
        raise WakesleepError(f"{where} must be <= {hi:g}, got {value!r}")
    _choices(value, where, meta)


def _choices(value: Any, where: str, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise WakesleepError(f"{where} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def parse(cls: type, raw: Mapping[str, Any] | None, prefix: str, *, source: str | None = None) -> Any:
    """Build the option record ``cls`` from ``raw``, validating every key (errors name ``prefix.key``).

    Parameters
    ----------
    cls : type
        A frozen dataclass whose fields were declared with :func:`option`.
    raw : mapping or None
        The values given (missing keys take their defaults).
    prefix : str
        The dotted name of the section, e.g. ``"algorithm"`` or ``"train"``.
    source : str, optional
        Where ``raw`` came from (a file), appended to error messages as ``in FILE``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise with_source(WakesleepError(f"'{prefix}' must be a mapping, got {type(raw).__name__}"), source)
    known = fields_of(cls)
    values = {}
    try:
        for key in raw:
            if key not in known:
                exc = WakesleepError(f"unknown key '{prefix}.{key}'")
                exc.hint = f"(unknown option; known: {', '.join(known) or 'none'})"  # type: ignore[attr-defined]
                raise exc
        for name, (f, tp) in known.items():
            if name in raw:
                values[name] = _check(raw[name], tp, f"{prefix}.{name}", f.metadata)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WakesleepError(f"{prefix}.{name} is required")
        record = cls(**values)
        check = getattr(record, "validate", None)
        if check is not None:
            check(prefix)
    except WakesleepError as exc:
        raise with_source(exc, source) from None
    return record


def with_source(exc: WakesleepError, source: str | None, prefix: str = "") -> WakesleepError:
    """``exc``'s message with ``prefix`` before it, `` in SOURCE`` after it and then its hint, if any."""
    msg = getattr(exc, "base", None) or str(exc)
    if prefix and not msg.startswith(prefix):
        msg = prefix + msg
    if source and f" in {source}" not in msg:
        msg = f"{msg} in {source}"
    hint = getattr(exc, "hint", None)
    out = WakesleepError(f"{msg} {hint}" if hint else msg)
    out.base, out.hint = msg, hint  # type: ignore[attr-defined]
    return out


def to_dict(record: Any) -> dict[str, Any]:
    """The record's fields as a plain dict (lists, not tuples), in declaration order."""
    out = {}
    for f in dataclasses.fields(record):
        v = getattr(record, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            v = to_dict(v)
        elif isinstance(v, tuple):
            v = list(v)
        out[f.name] = _copy(v)
    return out


def option_table(cls: type) -> list[dict[str, Any]]:
    """One row per option of ``cls``: ``name``, ``type``, ``default``, ``range``, ``doc`` (for documentation)."""
    rows = []
    for name, (f, tp) in fields_of(cls).items():
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        lo, hi = f.metadata.get("minimum"), f.metadata.get("maximum")
        rng = ""
        if lo is not None or hi is not None:
            rng = f"[{'' if lo is None else lo}, {'' if hi is None else hi}]"
        if f.metadata.get("choices"):
            rng = " | ".join(map(str, f.metadata["choices"]))
        doc = f.metadata.get("doc", "")
        rows.append({"name": name, "type": _type_name(tp), "default": default, "range": rng, "doc": doc})
    return rows
