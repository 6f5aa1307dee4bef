"""The few array operations schedules are written in, for numpy, jax.numpy and keras.ops.

Every schedule's formula is written once against an ``Ops`` object, so the same definition
evaluates on numpy float64 arrays (the library), on traced jax arrays (``s.optax()``, jit
compatible) and on keras backend tensors (``s.keras()``). Only numpy is imported here; the
other backends are built lazily by the adapters.
"""
from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np


class Ops:
    """Elementwise operations over one array library (``xp``)."""

    #: whether ``n / d`` is correctly rounded (a float32 backend may divide as n * (1 / d))
    exact_division = False

    def __init__(self, xp: Any, float_dtype: Any) -> None:
        self.xp = xp
        self.float_dtype = float_dtype

    def asfloat(self, n: Any) -> Any:
        return self.xp.asarray(n, dtype=self.float_dtype)

    def full_like(self, n: Any, value: float) -> Any:
        return self.xp.zeros_like(n) + value

    def where(self, cond: Any, a: Any, b: Any) -> Any:
        return self.xp.where(cond, a, b)

    def __getattr__(self, name: str) -> Any:
        # cos, exp, log, log1p, sqrt, floor, minimum, maximum, power, ...
        return getattr(self.xp, name)

    def branch(self, cond: Any, x: Any, f: Any, g: Any, safe_f: float, safe_g: float) -> Any:
        """``where(cond, f(x), g(x))``, each function fed only inputs of its own branch.

        ``safe_f``/``safe_g`` stand in for the other branch's inputs, so neither function
        sees an argument outside its domain (which would give NaN, or NaN gradients in jax).
        """
        return self.where(
            cond, f(self.where(cond, x, safe_f)), g(self.where(cond, safe_g, x))
        )

    def floor_div(self, n: Any, d: float) -> Any:
        """``floor(n / d)`` for integer-valued n >= 0 and integer d >= 1, exact in float32 for
        n < 2**24 (and in float64 for n < 2**53): beyond, the float cannot hold n itself.

        Adding one half keeps the quotient off the integer boundary, which makes it exact in
        float64 for n < 2**52. A float32 quotient (which a backend may also compute as
        ``n * (1/d)``) can still be one off; the multiply-back checks move it to the one
        integer q with ``q d <= n < (q + 1) d``. Both products compare exactly: below 2**24
        (2**53) an integer product that exceeds n rounds to at least n + 1. Where the first
        quotient is right (every float64 n < 2**52) they change nothing.
        """
        q = self.floor((n + 0.5) / d)
        q = self.where(q * d > n, q - 1.0, q)
        return self.where((q + 1.0) * d <= n, q + 1.0, q)

    def cycle_fraction(self, n: Any, d: float, q: Any) -> Any:
        """How far n is into its cycle of length d, as a fraction in [0, 1); ``q`` is
        ``floor_div(n, d)``. The remainder ``n - q d`` is an exact integer, so no float32
        rounding of ``n / d`` (which loses the fraction from 2**23) can put it outside."""
        return (n - q * d) / d

    def count_le(self, boundaries: list[float], n: Any) -> Any:
        """Number of boundaries <= n, elementwise (boundaries sorted ascending)."""
        out = self.full_like(n, 0.0)
        for b in boundaries:
            out = out + self.where(n >= b, 1.0, 0.0)
        return out

    def select(self, n: Any, boundaries: list[float], values: list[float]) -> Any:
        """values[i] where boundaries[i-1] <= n < boundaries[i] (boundaries sorted)."""
        out = self.full_like(n, values[0])
        for b, v in zip(boundaries, values[1:]):
            out = self.where(n >= b, v, out)
        return out


class NumpyOps(Ops):
    """float64 numpy; uses searchsorted where the generic form would loop over boundaries."""

    def __init__(self) -> None:
        super().__init__(np, np.float64)

    def branch(self, cond: Any, x: Any, f: Any, g: Any, safe_f: float, safe_g: float) -> Any:
        cond = np.asarray(cond)
        x = np.broadcast_to(np.asarray(x, dtype=np.float64), cond.shape)
        if cond.all():
            return f(x)
        if not cond.any():
            return g(x)
        out = np.empty(cond.shape, dtype=np.float64)
        out[cond] = f(x[cond])
        out[~cond] = g(x[~cond])
        return out

    #: n / d is correctly rounded (float64 true division): no float32 shortcuts to undo
    exact_division = True

    def floor_div(self, n: Any, d: float) -> Any:
        # the one-line form is exact in float64 below 2**52 (the checks of Ops.floor_div
        # change nothing there, and cost 1.5-2x a step-wise schedule's evaluation)
        q = np.floor((n + 0.5) / d)
        if np.max(n, initial=0.0) < 2.0**52:
            return q
        return super().floor_div(n, d)

    def cycle_fraction(self, n: Any, d: float, q: Any) -> Any:
        # as torch's CyclicLR computes it (1 + n / d - cycle), for bit-equal values
        return 1.0 + n / d - (1.0 + q)

    def count_le(self, boundaries: list[float], n: Any) -> Any:
        return np.searchsorted(np.asarray(boundaries, dtype=np.float64), n, side="right").astype(
            np.float64
        )

    def select(self, n: Any, boundaries: list[float], values: list[float]) -> Any:
        idx = np.searchsorted(np.asarray(boundaries, dtype=np.float64), n, side="right")
        return np.asarray(values, dtype=np.float64)[idx]


NUMPY = NumpyOps()


def check_cosine_span(fn: str, lr: float, end: float) -> None:
    """Refuse ``lr`` and ``end`` so far apart that ``(lr - end) * (1 + cos)``, the cosine
    formula as torch evaluates it (cosine, cosine_restarts), overflows float64."""
    if math.isinf((lr - end) * 2.0):
        raise ValueError(f"{fn}: lr and end must differ by at most {sys.float_info.max / 2:g} "
                         f"(half float64's largest number), got lr={lr!r}, end={end!r}")


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
_STIRLING_SHIFT = 15  # below this argument, shift up by recurrence before the series


def stirling_remainder(o: Ops, y: Any) -> Any:
    """c(y) = lgamma(y) - [(y - 1/2) log y - y + log(2 pi)/2], for y > 0.

    For y >= 15 from the asymptotic series (error below 2e-14); below, from
    lgamma(y) = lgamma(y + 15) - sum_{j<15} log(y + j). Only log/where are needed, so
    it evaluates on every backend (keras.ops has no lgamma).
    """

    def series(z: Any) -> Any:
        iz = 1.0 / z
        iz2 = iz * iz
        return iz * (1 / 12 + iz2 * (-1 / 360 + iz2 * (1 / 1260 + iz2 * (-1 / 1680))))

    def base(z: Any) -> Any:
        return (z - 0.5) * o.log(z) - z + _HALF_LOG_2PI

    def small(z: Any) -> Any:
        shifted = z + _STIRLING_SHIFT
        log_sum = o.log(z)
        for j in range(1, _STIRLING_SHIFT):
            log_sum = log_sum + o.log(z + j)
        return base(shifted) + series(shifted) - log_sum - base(z)

    return o.branch(y >= _STIRLING_SHIFT, y, series, small, 2.0 * _STIRLING_SHIFT, 1.0)


def log1p_minus_x_over_x(o: Ops, t: Any) -> Any:
    """``(log(1 + t) - t) / t`` for t >= 0 (0 at t = 0), free of cancellation near 0.

    Near 0, with ``u = t / (2 + t)``, ``log1p(t) = 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...)``
    and ``2u - t = -t^2 / (2 + t)`` carries the cancellation exactly; dividing by t
    leaves ``(2 (u^2/3 + u^4/5 + ...) - t) / (2 + t)`` (8 terms reach 1e-17 at t = 0.1).
    """

    def series(ts: Any) -> Any:
        u = ts / (2.0 + ts)
        u2 = u * u
        acc = u2 * 0.0
        for k in range(17, 1, -2):
            acc = u2 * (1.0 / k + acc)
        return (2.0 * acc - ts) / (2.0 + ts)

    def direct(tb: Any) -> Any:
        return (o.log1p(tb) - tb) / tb

    return o.branch(t < 0.1, t, series, direct, 0.0, 1.0)
