"""Schedules built from schedules: warmup, join, products (``Product`` lives with
``Schedule``, whose ``*`` builds it), clipping."""
from __future__ import annotations

from typing import Any

from lrkit import _checks as C
from lrkit.schedules._ops import Ops
from lrkit.schedules.base import Product, Schedule


def _schedule(fn: str, name: str, value: Any) -> Schedule:
    if not isinstance(value, Schedule):
        raise TypeError(f"{fn}: {name} must be a Schedule, got {C.shown(value)}")
    return value


class Warmup(Schedule):
    """Linear warmup in front of a schedule.

    ``eta_n = start + (s(0) - start) * n / steps`` for n < steps, then ``s(n - steps)``:
    ``warmup(cosine(peak, D - W, end), W, start=init)`` equals optax
    ``warmup_cosine_decay_schedule(init, peak, W, D, end)``.
    """

    name = "warmup"

    def __init__(self, s: Schedule, steps: int, start: float = 0.0) -> None:
        fn = "warmup()"
        self._set(
            s=_schedule(fn, "s", s),
            steps=C.nonnegative_int(fn, "steps", steps),
            start=C.nonnegative(fn, "start", start),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        s, steps, start = self._params["s"], self._params["steps"], self._params["start"]
        if steps == 0:
            return s.evaluate(o.maximum(n, 0.0), o)
        # one evaluation of s, on the steps after the warmup with step 0 appended: two
        # evaluations per level would double the work with every nested warmup
        flat = o.reshape(o.maximum(n - steps, 0.0), (-1,))
        values = s.evaluate(o.concatenate([flat, o.zeros((1,), dtype=o.float_dtype)]), o)
        after, first = o.reshape(values[:-1], o.shape(n)), values[-1]
        return o.where(n < steps, start + (first - start) * (n / steps), after)


class Join(Schedule):
    """``schedules[i](n - boundaries[i-1])`` for ``boundaries[i-1] <= n < boundaries[i]``.

    Each schedule restarts its own step count at its boundary (= optax ``join_schedules``).
    """

    name = "join"

    def __init__(self, schedules: list[Schedule], boundaries: list[int]) -> None:
        fn = "join()"
        schedules = [
            _schedule(fn, f"schedules[{i}]", s)
            for i, s in enumerate(C.sequence(fn, "schedules", schedules, min_len=1))
        ]
        boundaries = C.increasing_ints(fn, "boundaries", boundaries, minimum=0, strict=False)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(
                f"{fn}: boundaries must have one item fewer than schedules, got "
                f"{len(boundaries)} boundaries for {len(schedules)} schedules"
            )
        self._set(schedules=schedules, boundaries=boundaries)

    def _eval(self, n: Any, o: Ops) -> Any:
        schedules, boundaries = self._params["schedules"], self._params["boundaries"]
        out = schedules[0].evaluate(n, o)
        for b, s in zip(boundaries, schedules[1:]):
            out = o.where(n < b, out, s.evaluate(o.maximum(n - b, 0.0), o))
        return out





class Clip(Schedule):
    """``min(max(s(n), low), high)``; ``high=None`` leaves the top open."""

    name = "clip"

    def __init__(self, s: Schedule, low: float = 0.0, high: float | None = None) -> None:
        fn = "clip()"
        s = _schedule(fn, "s", s)
        low = C.nonnegative(fn, "low", low)
        if high is not None:
            high = C.nonnegative(fn, "high", high)
        if high is not None and high < low:
            raise ValueError(f"{fn}: high must be >= low, got low={low!r}, high={high!r}")
        self._set(s=s, low=low, high=high)

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        out = o.maximum(p["s"].evaluate(n, o), p["low"])
        return out if p["high"] is None else o.minimum(out, p["high"])


warmup = Warmup
join = Join
product = Product
clip = Clip
