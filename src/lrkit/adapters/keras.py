"""``s.keras()``: an lrkit schedule as a Keras 3 ``LearningRateSchedule``.

The schedule's formula runs on ``keras.ops``, so it works on every Keras backend and
inside compiled train steps; ``get_config`` holds the lrkit config, so models and
optimizers that use it survive ``keras.saving``.

In float32 (keras' default floatx) the step is exact below 2**24 (16.7M) and so are the
step-wise schedules (step, staircase decays, cyclic, restarts: ``Ops.floor_div``); beyond,
float32 cannot hold the step itself and values follow the rounded step.
"""
from __future__ import annotations

import importlib.util
import os
from typing import Any

if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("tensorflow") is None:
    os.environ["KERAS_BACKEND"] = "torch"  # keras' default backend is not installed

import keras  # noqa: E402

from lrkit.schedules._ops import Ops  # noqa: E402
from lrkit.schedules.registry import ScheduleLike as Schedule  # noqa: E402
from lrkit.schedules.registry import from_config  # noqa: E402


class _KerasOps(Ops):
    def __init__(self) -> None:
        super().__init__(keras.ops, keras.config.floatx())

    def asfloat(self, n: Any) -> Any:
        if isinstance(n, int):  # a Python int from 2**31 would overflow int32
            n = float(n)
        return keras.ops.cast(n, self.float_dtype)


@keras.saving.register_keras_serializable(package="lrkit", name="Schedule")
class KerasSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A Keras learning-rate schedule computing an lrkit ``Schedule``."""

    def __init__(self, schedule: Schedule | dict[str, Any]) -> None:
        super().__init__()
        self.schedule = schedule if isinstance(schedule, Schedule) else from_config(schedule)

    def __call__(self, step: Any) -> Any:
        o = _KerasOps()
        return self.schedule.evaluate(o.asfloat(step), o)

    def get_config(self) -> dict[str, Any]:
        return {"schedule": self.schedule.to_config()}

    def __repr__(self) -> str:
        return f"KerasSchedule({self.schedule})"


def to_keras(schedule: Schedule) -> KerasSchedule:
    return KerasSchedule(schedule)
