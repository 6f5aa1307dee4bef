"""``s.optax()``: an lrkit schedule as an optax schedule (a jit-compatible callable)."""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from lrkit.schedules._ops import Ops
from lrkit.schedules.registry import ScheduleLike as Schedule


class OptaxSchedule:
    """``fn(count) -> lr`` on jax arrays, traceable under ``jax.jit``."""

    def __init__(self, schedule: Schedule) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"OptaxSchedule(): schedule must be an lrkit Schedule, got "
                            f"{type(schedule).__name__}")
        self.schedule = schedule

    def __call__(self, count: Any) -> Any:
        dtype = jnp.result_type(float)  # float32, or float64 with jax_enable_x64
        o = Ops(jnp, dtype)
        if isinstance(count, int):  # a Python int from 2**31 would overflow int32
            count = float(count)
        return self.schedule.evaluate(jnp.asarray(count).astype(dtype), o)

    def __repr__(self) -> str:
        return f"OptaxSchedule({self.schedule})"


def to_optax(schedule: Schedule) -> OptaxSchedule:
    return OptaxSchedule(schedule)
