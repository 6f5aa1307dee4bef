"""``s.optax()``: an lrkit schedule as an optax schedule (a jit-compatible callable).

Without ``jax_enable_x64`` it computes in float32: the step is exact below 2**24 (16.7M)
and so are the step-wise schedules (step, staircase decays, cyclic, restarts:
``Ops.floor_div``); beyond, float32 cannot hold the step itself and values follow the
rounded step. Python and numpy integer steps are converted to float first, as jax would
wrap those from 2**31 to int32.
"""
from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

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
        # Python and numpy integers from 2**31 would wrap to int32 (jax without x64)
        if isinstance(count, (int, np.integer)) or (
                isinstance(count, np.ndarray) and np.issubdtype(count.dtype, np.integer)):
            count = np.asarray(count, dtype=np.float64)
        return self.schedule.evaluate(jnp.asarray(count).astype(dtype), o)

    def __repr__(self) -> str:
        return f"OptaxSchedule({self.schedule})"


def to_optax(schedule: Schedule) -> OptaxSchedule:
    return OptaxSchedule(schedule)
