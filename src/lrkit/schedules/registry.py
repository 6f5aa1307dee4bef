"""The names of lrkit's schedule classes and how a schedule is rebuilt from its config.

``REGISTRY`` (name -> class) is filled by every ``Schedule`` subclass as it is defined;
``from_config`` rebuilds a schedule from ``s.to_config()``; ``ScheduleLike`` is what the
Scheduler and the adapters need of a schedule; ``StepCache`` serves the Scheduler's
values. Nothing here imports a schedule class, so
the Scheduler, the adapters and the text parser sit on this module, below the classes
(whose ``s.torch()``, ``s.keras()``, ``s.optax()`` and ``s.plot()`` call down into them).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from lrkit.errors import SpecError

REGISTRY: dict[str, type] = {}


@runtime_checkable
class ScheduleLike(Protocol):
    """A schedule as its users see it: ``s(step)``, ``s.evaluate(n, ops)`` on any array
    library, and ``s.to_config()`` (which ``from_config`` inverts)."""

    def __call__(self, step: Any) -> Any: ...

    def evaluate(self, n: Any, o: Any) -> Any: ...

    def to_config(self) -> dict[str, Any]: ...


def from_config(config: Any) -> Any:
    """Rebuild a schedule from ``s.to_config()``; raises ``SpecError`` on anything else
    (also on a config nested too deeply to rebuild, or one that contains itself)."""
    try:
        return _from_config(config, "config")
    except RecursionError:
        raise SpecError("config: nested too deeply to rebuild (or it contains itself)") \
            from None


def _value_from_config(v: Any, path: str) -> Any:
    if isinstance(v, dict):
        return _from_config(v, path)
    if isinstance(v, list):
        return [_value_from_config(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return v


def _from_config(config: Any, path: str) -> Any:
    if not isinstance(config, dict):
        raise SpecError(f"{path}: a schedule config must be a dict, got {type(config).__name__}")
    name = config.get("name")
    if not isinstance(name, str) or name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise SpecError(f"{path}: unknown schedule name {name!r}; known: {known}")
    cls = REGISTRY[name]
    args = {}
    for key, value in config.items():
        if key == "name":
            continue
        if not isinstance(key, str):
            raise SpecError(f"{path}: argument names must be strings, got {key!r}")
        args[key] = _value_from_config(value, f"{path}.{key}")
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{path}: {exc}") from None


class StepCache:
    """``s(n)`` for a step count that advances by one: the values of a block of upcoming
    steps come from one vectorised evaluation and are served from a list.

    A training loop asks for ``s(n)``, ``s(n + 1)``, ... one at a time (``lrkit.Scheduler``
    does, every step); through ``Schedule.__call__`` each costs a numpy evaluation of the
    whole formula on a 0-dim array (tens of microseconds for a warmup + cosine). Here the
    block doubles from 16 to 1024 steps as the steps keep coming in order, so a step costs
    a list lookup and 1/1024 of a vectorised evaluation. The values are those of
    ``s(np.arange(...))``, which are the scalar path's bit for bit (tested over every
    schedule kind: tests/test_scheduler_speed.py). A step outside the block (a resume, a
    jump back) starts a new block there.
    """

    __slots__ = ("schedule", "lo", "values", "block")
    MIN_BLOCK, MAX_BLOCK = 16, 1024

    def __init__(self, schedule: ScheduleLike) -> None:
        self.schedule = schedule
        self.lo, self.values, self.block = 0, [], self.MIN_BLOCK

    def __call__(self, n: int) -> float:
        i = n - self.lo
        if 0 <= i < len(self.values):
            return self.values[i]
        in_order = i == len(self.values) and self.values
        self.block = min(2 * self.block, self.MAX_BLOCK) if in_order else self.MIN_BLOCK
        self.lo = n
        self.values = self.schedule(np.arange(n, n + self.block, dtype=np.int64)).tolist()
        return self.values[0]
