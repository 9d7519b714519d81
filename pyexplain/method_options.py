"""Checking a method's options before it runs: each value against the type its keyword declares
(``steps: int``, ``lr: float``, ``layer: str | None``, ...), then against a range.

Counts (iterations, steps, samples, ...) are integers from 1 to a stated maximum, so that a typo such
as ``steps=1e9`` is refused at once instead of running for days; numbers must be finite, learning
rates and widths positive. Integral floats (``steps=100.0``) are taken as integers.
"""
from __future__ import annotations

import inspect
import math
import os
from typing import Any

from torch import Tensor

from .errors import PyExplainError
from .registry import MethodInfo

#: Largest accepted count of each kind (anything larger is a typo or would not finish).
MAX_COUNT = 100_000
#: Integrated Gradients' Gauss–Legendre nodes come from an n×n eigenproblem: n is kept small.
MAX_STEPS = 4096
COUNTS = {"iterations": MAX_COUNT, "steps": MAX_STEPS, "samples": MAX_COUNT, "masks": MAX_COUNT, "cells": 1024,
          "mask_size": 4096, "step": 4096, "window": 4096, "stride": 4096, "internal_batch_size": MAX_COUNT}
NON_NEGATIVE_COUNTS = {"patience": MAX_COUNT}
POSITIVE = ("lr", "learning_rate", "epsilon", "eps", "gamma", "smooth_sigma", "max_sigma", "temperature")
NON_NEGATIVE = ("noise_level", "tol", "init_std")

_DESCRIPTIONS = {"int": "an integer", "float": "a finite number", "bool": "True or False", "str": "a string",
                 "None": "None", "Tensor": "a tensor", "os.PathLike": "a path", "dict": "a dict"}


def _kinds(annotation: Any) -> list[str]:
    """``"int | tuple[int, int]"`` → ``["int", "tuple[int, int]"]`` (the top-level union members)."""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    kinds, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char == "["
        depth -= char == "]"
        if char == "|" and depth == 0:
            kinds.append(text[start:i].strip())
            start = i + 1
    kinds.append(text[start:].strip())
    return kinds


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _as_float(value: Any) -> float | int | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return value
    return None


_MISSING = object()


def _convert(kind: str, value: Any) -> Any:
    """``value`` as ``kind``, or :data:`_MISSING` if it is not one."""
    if kind == "None":
        return None if value is None else _MISSING
    if kind == "bool":
        return value if isinstance(value, bool) else _MISSING
    if kind == "int":
        number = _as_int(value)
        return _MISSING if number is None else number
    if kind == "float":
        number = _as_float(value)
        return _MISSING if number is None else number
    if kind == "str":  # a bare integer is a name too (``-O layer=3``: the module named "3")
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value if isinstance(value, str) else _MISSING
    if kind == "Tensor":
        return value if isinstance(value, Tensor) else _MISSING
    if kind == "os.PathLike":
        return value if isinstance(value, os.PathLike) else _MISSING
    if kind.startswith("dict"):
        return value if isinstance(value, dict) else _MISSING
    if kind.startswith("tuple["):
        element = kind[len("tuple["):].split(",")[0].strip()
        if not isinstance(value, (tuple, list)) or not value:
            return _MISSING
        items = [_convert(element, item) for item in value]
        return _MISSING if any(item is _MISSING for item in items) else tuple(items)
    return value  # a kind this check does not know: the method checks it


def _describe(kinds: list[str]) -> str:
    words = []
    for kind in kinds:
        if kind.startswith("tuple["):
            element = kind[len("tuple["):].split(",")[0].strip()
            words.append(f"a tuple of {'integers' if element == 'int' else 'finite numbers'}")
        else:
            words.append(_DESCRIPTIONS.get(kind.split("[")[0], kind))
    return " or ".join(words)


def _check_range(method: str, name: str, value: Any) -> None:
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            continue
        if name in COUNTS and not 1 <= number <= COUNTS[name]:
            raise PyExplainError(f"{method} option {name} must be an integer, at least 1 and at most "
                                 f"{COUNTS[name]:,}, got {number!r}")
        if name in NON_NEGATIVE_COUNTS and not 0 <= number <= NON_NEGATIVE_COUNTS[name]:
            raise PyExplainError(f"{method} option {name} must be an integer, at least 0 and at most "
                                 f"{NON_NEGATIVE_COUNTS[name]:,}, got {number!r}")
        if name in POSITIVE and not number > 0:
            raise PyExplainError(f"{method} option {name} must be a positive number, got {number!r}")
        if name in NON_NEGATIVE and not number >= 0:
            raise PyExplainError(f"{method} option {name} must be zero or positive, got {number!r}")


def check_options(info: MethodInfo, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``info``'s keyword declarations and ranges; returns them with
    integral floats given for integers converted. Raises :class:`PyExplainError` naming the option,
    what it must be, and the value given."""
    unknown = sorted(set(options) - set(info.defaults))
    if unknown:
        valid = ", ".join(sorted(info.defaults)) or "none"
        raise PyExplainError(f"method {info.name!r} has no option {unknown[0]!r}; its options: {valid}")
    parameters = inspect.signature(info.fn).parameters
    checked = {}
    for name, value in options.items():
        annotation = parameters[name].annotation
        kinds = [] if annotation is inspect.Parameter.empty else _kinds(annotation)
        converted = value
        if kinds:
            candidates = [_convert(kind, value) for kind in kinds]
            converted = next((c for c in candidates if c is not _MISSING), _MISSING)
            if converted is _MISSING:
                shown = value if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
                raise PyExplainError(f"{info.name} option {name} must be {_describe(kinds)}, got {shown!r}")
        _check_range(info.name, name, converted)
        checked[name] = converted
    return checked
