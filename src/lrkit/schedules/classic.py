"""The three decays of the textbook (and of Wikipedia's "Learning rate" article).

Each is written exactly as the article states it; the docstrings give the formula.
"""
from __future__ import annotations

from typing import Any

from lrkit import _checks as C
from lrkit.schedules._ops import Ops, log1p_minus_x_over_x, stirling_remainder
from lrkit.schedules.base import Schedule


class TimeBased(Schedule):
    r"""Time-based decay: ``eta_0 = lr``, ``eta_{n+1} = eta_n / (1 + decay * n)``.

    Unrolled, ``eta_n = lr / prod_{k=0}^{n-1} (1 + decay k)``. The product is a ratio of
    Gamma functions, ``decay^n Gamma(n + 1/decay) / Gamma(1/decay)``, which is how it is
    evaluated (no loop over steps). With ``x = 1/decay`` and ``t = n decay``, Stirling's
    formula splits its logarithm into terms free of cancellation::

        log prod = (log1p(t) - t) / decay + (n - 1/2) log1p(t) + c(x + n) - c(x)

    where ``c`` is Stirling's remainder ``lgamma(y) - (y - 1/2) log y + y - log(2 pi)/2``.
    The result equals the exact recursion within 1e-12 relative for n up to 10^6.

    Args:
        lr: the initial rate ``eta_0`` (> 0).
        decay: the decay parameter (>= 0; 0 gives a constant rate).
    """

    name = "time_based"

    def __init__(self, lr: float, decay: float) -> None:
        fn = "time_based()"
        self._set(lr=C.positive(fn, "lr", lr), decay=C.nonnegative(fn, "decay", decay))

    def _eval(self, n: Any, o: Ops) -> Any:
        lr, d = self._params["lr"], self._params["decay"]
        if d == 0.0:
            return o.full_like(n, lr)
        x = 1.0 / d
        t = n * d
        log_prod = (
            # n * (log1p(t) - t) / t = (log1p(t) - t) / decay, finite also where a float32
            # backend rounds a tiny decay to 0
            n * log1p_minus_x_over_x(o, t)
            + (n - 0.5) * o.log1p(t)
            + stirling_remainder(o, n + x)
            - stirling_remainder(o, o.full_like(n, x))
        )
        return lr * o.exp(-log_prod)


class StepBased(Schedule):
    r"""Step-based decay: ``eta_n = lr * drop ** floor((1 + n) / every)``.

    Args:
        lr: the initial rate (> 0).
        drop: the factor applied at each drop, in (0, 1].
        every: how many steps between drops (a positive integer).
    """

    name = "step_based"

    def __init__(self, lr: float, drop: float, every: int) -> None:
        fn = "step_based()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            drop=C.in_range(fn, "drop", drop, 0.0, 1.0, low_open=True),
            every=C.positive_int(fn, "every", every),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        return p["lr"] * o.power(p["drop"], o.floor_div(1.0 + n, p["every"]))


class Exponential(Schedule):
    r"""Exponential decay: ``eta_n = lr * exp(-decay * n)``.

    Args:
        lr: the initial rate (> 0).
        decay: the decay parameter (>= 0).
    """

    name = "exponential"

    def __init__(self, lr: float, decay: float) -> None:
        fn = "exponential()"
        self._set(lr=C.positive(fn, "lr", lr), decay=C.nonnegative(fn, "decay", decay))

    def _eval(self, n: Any, o: Ops) -> Any:
        return self._params["lr"] * o.exp(-self._params["decay"] * n)


time_based = TimeBased
step_based = StepBased
exponential = Exponential
