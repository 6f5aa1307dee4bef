"""Argument checks shared by every public entry point.

Each check returns the value converted to its canonical Python type, or raises a
``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, wrong range) whose
message names the function, the argument, what it got and what is allowed::

    ValueError: cosine(): total must be a positive integer, got 0
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Any

#: the largest step count a schedule takes: float64, in which schedules are evaluated,
#: counts steps exactly up to it
MAX_STEPS = 2**53


def shown(value: Any) -> str:
    """``repr(value)``, cut short where it is long (an integer of 400 digits; one of more
    than 4300, which Python refuses to write out, by its size)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and \
            int(value).bit_length() > 256:
        return f"an integer of about {int(int(value).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    if len(text) <= 80:
        return text
    return f"{text[:60]}... ({len(text)} characters)"


def _fail(fn: str, name: str, allowed: str, value: Any, exc: type[Exception] = ValueError):
    raise exc(f"{fn}: {name} must be {allowed}, got {shown(value)}")


def batch_pair(fn: str, batch: Any) -> tuple[Any, Any]:
    """A batch as ``(inputs, targets)``, for entry points that take ``loss_fn`` and an
    optional ``step_fn``; any other structure names ``step_fn`` as the way out."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        kind = type(batch).__name__ + (f" of length {len(batch)}"
                                       if isinstance(batch, (tuple, list)) else "")
        raise TypeError(f"{fn}: without step_fn each batch must be an (inputs, targets) "
                        f"pair, got a {kind}; pass step_fn=lambda model, batch: loss for "
                        "other batch structures")
    return batch[0], batch[1]


def real(fn: str, name: str, value: Any) -> float:
    """A finite real number (bools and strings are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy/torch 0-d
            return real(fn, name, value.item())
        _fail(fn, name, "a real number", value, TypeError)
    try:
        v = float(value)
    except OverflowError:  # an integer (or Fraction) beyond float64's range
        _fail(fn, name, "a finite number", value)
    if not math.isfinite(v):
        _fail(fn, name, "a finite number", value)
    return v


def positive(fn: str, name: str, value: Any) -> float:
    v = real(fn, name, value)
    if v <= 0:
        _fail(fn, name, "a positive number (> 0)", value)
    return v


def nonnegative(fn: str, name: str, value: Any) -> float:
    v = real(fn, name, value)
    if v < 0:
        _fail(fn, name, "a non-negative number (>= 0)", value)
    return v


def in_range(
    fn: str,
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    v = real(fn, name, value)
    below = v <= low if low_open else v < low
    above = v >= high if high_open else v > high
    if below or above:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        _fail(fn, name, f"in {interval}", value)
    return v


def integer(fn: str, name: str, value: Any, *, minimum: int | None = None) -> int:
    if isinstance(value, bool):
        _fail(fn, name, "an integer", value, TypeError)
    if isinstance(value, numbers.Integral):
        v = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        v = int(value)
    elif hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return integer(fn, name, value.item(), minimum=minimum)
    elif isinstance(value, numbers.Real):
        _fail(fn, name, "an integer", value)
    else:
        _fail(fn, name, "an integer", value, TypeError)
    if minimum is not None and v < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(
            minimum, f"an integer >= {minimum}"
        )
        _fail(fn, name, what, value)
    return v


def positive_int(fn: str, name: str, value: Any) -> int:
    return integer(fn, name, value, minimum=1)


def steps(fn: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """A step count of a schedule: an integer from ``minimum`` to ``MAX_STEPS`` (2**53)."""
    v = integer(fn, name, value, minimum=minimum)
    if v > MAX_STEPS:
        _fail(fn, name, "at most 2**53 (steps are counted in float64)", value)
    return v


def nonnegative_int(fn: str, name: str, value: Any) -> int:
    return integer(fn, name, value, minimum=0)


def choice(fn: str, name: str, value: Any, options: Iterable[str]) -> str:
    options = tuple(options)
    if not isinstance(value, str) or value not in options:
        allowed = "one of " + ", ".join(repr(o) for o in options)
        _fail(fn, name, allowed, value, ValueError if isinstance(value, str) else TypeError)
    return value


def sequence(fn: str, name: str, value: Any, *, min_len: int = 0) -> list[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, Iterable)):
        _fail(fn, name, "a list", value, TypeError)
    items = list(value)
    if len(items) < min_len:
        _fail(fn, name, f"a list of at least {min_len} item(s)", value)
    return items


def increasing_ints(fn: str, name: str, value: Any, *, minimum: int = 0, strict: bool = True):
    items = [integer(fn, f"{name}[{i}]", v, minimum=minimum) for i, v in enumerate(
        sequence(fn, name, value))]
    for a, b in zip(items, items[1:]):
        if b < a or (strict and b == a):
            order = "strictly increasing" if strict else "non-decreasing"
            _fail(fn, name, f"{order}", value)
    return items


def boolean(fn: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        _fail(fn, name, "True or False", value, TypeError)
    return value


def optional_callable(fn: str, name: str, value: Any) -> Any:
    """None, or something callable (a hook)."""
    if value is not None and not callable(value):
        _fail(fn, name, "a function or None", value, TypeError)
    return value


def path(fn: str, name: str, value: Any) -> Any:
    """A file-system path: text or an ``os.PathLike``."""
    import os
    if not isinstance(value, (str, os.PathLike)):
        _fail(fn, name, "a path (text or os.PathLike)", value, TypeError)
    return value


def functions(fn: str, name: str, value: Any) -> list[Any]:
    """A list or tuple of callables."""
    items = sequence(fn, name, value)
    for i, f in enumerate(items):
        if not callable(f):
            _fail(fn, f"{name}[{i}]", "a function", f, TypeError)
    return items


def text(fn: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        _fail(fn, name, "text (str)", value, TypeError)
    return value


def module(fn: str, name: str, value: Any) -> Any:
    """A ``torch.nn.Module``."""
    import torch
    if not isinstance(value, torch.nn.Module):
        _fail(fn, name, "a torch.nn.Module", value, TypeError)
    return value


def iterable(fn: str, name: str, value: Any) -> Any:
    """Something to iterate over (a DataLoader, a list...), not text."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        _fail(fn, name, "an iterable (a DataLoader, a list of batches...)", value, TypeError)
    return value
