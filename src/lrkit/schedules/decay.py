"""Monotone decays: constant, step, polynomial, cosine, inverse-sqrt, WSD and friends.

Each docstring gives the formula and the reference implementation it equals.
"""
from __future__ import annotations

import math
from typing import Any

from lrkit import _checks as C
from lrkit.schedules._ops import Ops, check_cosine_span
from lrkit.schedules.base import Schedule


class Constant(Schedule):
    """``eta_n = lr``."""

    name = "constant"

    def __init__(self, lr: float) -> None:
        self._set(lr=C.nonnegative("constant()", "lr", lr))

    def _eval(self, n: Any, o: Ops) -> Any:
        return o.full_like(n, self._params["lr"])


class Linear(Schedule):
    """Linear interpolation from ``start`` to ``end`` over ``total`` steps, then ``end``.

    ``eta_n = start + (end - start) * t`` with ``t = min(n, total) / total`` (= optax
    ``linear_schedule``, to rounding), computed from the nearer end (``end - (end - start)
    * (1 - t)`` from ``t = 1/2`` on): exactly ``start`` at 0 and ``end`` from ``total`` on,
    never outside them (the one-sided form ended at -1e-17 for some ``end = 0``).
    """

    name = "linear"

    def __init__(self, start: float, end: float, total: int) -> None:
        fn = "linear()"
        self._set(
            start=C.nonnegative(fn, "start", start),
            end=C.nonnegative(fn, "end", end),
            total=C.positive_int(fn, "total", total),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        start, end, total = self._params["start"], self._params["end"], self._params["total"]
        t = o.minimum(n, total) / total
        # from the nearer end: exactly start at 0 and end at total, never past either
        value = o.where(t < 0.5, start + (end - start) * t, end - (end - start) * (1.0 - t))
        if o.exact_division:
            return value
        # exactly end also where a float32 backend computes n / total as n * (1 / total)
        return o.where(n >= total, end, value)


class Step(Schedule):
    """``eta_n = lr * gamma ** floor(n / every)`` (= torch ``StepLR(step_size=every, gamma)``)."""

    name = "step"

    def __init__(self, lr: float, every: int, gamma: float = 0.1) -> None:
        fn = "step()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            every=C.positive_int(fn, "every", every),
            gamma=C.positive(fn, "gamma", gamma),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        return p["lr"] * o.power(p["gamma"], o.floor_div(n, p["every"]))


class MultiStep(Schedule):
    """``eta_n = lr * gamma ** #{milestones <= n}`` (= torch ``MultiStepLR``).

    Repeated milestones count once each, as in torch.
    """

    name = "multistep"

    def __init__(self, lr: float, milestones: list[int], gamma: float = 0.1) -> None:
        fn = "multistep()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            milestones=C.increasing_ints(fn, "milestones", milestones, minimum=1, strict=False),
            gamma=C.positive(fn, "gamma", gamma),
        )
        lr, k, gamma = self._params["lr"], len(self._params["milestones"]), self._params["gamma"]
        try:  # the rate after the last milestone (the largest one, where gamma > 1)
            last = lr * gamma ** k
        except OverflowError:
            last = math.inf
        if math.isinf(last):
            raise ValueError(f"{fn}: lr * gamma ** {k} (one factor per milestone) must be "
                             f"finite in float64, got lr={lr!r}, gamma={gamma!r}")

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        return p["lr"] * o.power(p["gamma"], o.count_le(p["milestones"], n))


class InverseTime(Schedule):
    """``eta_n = lr / (1 + rate * p)``, ``p = n / every`` (floored if ``staircase``).

    Equals keras ``InverseTimeDecay(lr, decay_steps=every, decay_rate=rate, staircase)``.
    """

    name = "inverse_time"

    def __init__(self, lr: float, rate: float, every: int = 1, staircase: bool = False) -> None:
        fn = "inverse_time()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            rate=C.nonnegative(fn, "rate", rate),
            every=C.positive_int(fn, "every", every),
            staircase=C.boolean(fn, "staircase", staircase),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        q = o.floor_div(n, p["every"]) if p["staircase"] else n / p["every"]
        return p["lr"] / (1.0 + p["rate"] * q)


class ExponentialDecay(Schedule):
    """``eta_n = lr * rate ** p``, ``p = n / every`` (floored if ``staircase``).

    Equals keras ``ExponentialDecay(lr, decay_steps=every, decay_rate=rate, staircase)``.
    """

    name = "exponential_decay"

    def __init__(self, lr: float, rate: float, every: int = 1, staircase: bool = False) -> None:
        fn = "exponential_decay()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            rate=C.positive(fn, "rate", rate),
            every=C.positive_int(fn, "every", every),
            staircase=C.boolean(fn, "staircase", staircase),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        q = o.floor_div(n, p["every"]) if p["staircase"] else n / p["every"]
        return p["lr"] * o.power(p["rate"], q)


class Polynomial(Schedule):
    """``eta_n = (lr - end) * (1 - min(n, total) / total) ** power + end``.

    Equals keras ``PolynomialDecay(lr, decay_steps=total, end_learning_rate=end, power)``
    (``cycle=False``) and, with ``end=0``, torch ``PolynomialLR(total_iters=total, power)``.
    """

    name = "polynomial"

    def __init__(self, lr: float, total: int, end: float = 0.0, power: float = 1.0) -> None:
        fn = "polynomial()"
        self._set(
            lr=C.positive(fn, "lr", lr),
            total=C.positive_int(fn, "total", total),
            end=C.nonnegative(fn, "end", end),
            power=C.positive(fn, "power", power),
        )

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        # (total - n) / total rather than 1 - n / total: exactly 0 at the end also in float32
        frac = (p["total"] - o.minimum(n, p["total"])) / p["total"]
        return (p["lr"] - p["end"]) * o.power(frac, p["power"]) + p["end"]


class Cosine(Schedule):
    """Half a cosine from ``lr`` to ``end`` over ``total`` steps, then ``end`` for good.

    ``eta_n = end + (lr - end) * (1 + cos(pi * min(n, total) / total)) / 2``: torch
    ``CosineAnnealingLR(T_max=total, eta_min=end)`` for n <= total (torch then rises again;
    this schedule stays at ``end``). Loshchilov & Hutter 2017, "SGDR".
    """

    name = "cosine"

    def __init__(self, lr: float, total: int, end: float = 0.0) -> None:
        fn = "cosine()"
        self._set(
            lr=C.nonnegative(fn, "lr", lr),
            total=C.positive_int(fn, "total", total),
            end=C.nonnegative(fn, "end", end),
        )
        check_cosine_span(fn, self._params["lr"], self._params["end"])

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        frac = o.minimum(n, p["total"]) / p["total"]
        return p["end"] + (p["lr"] - p["end"]) * (1.0 + o.cos(math.pi * frac)) / 2.0


class InverseSqrt(Schedule):
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then ``lr * sqrt(warmup / n)``.

    The schedule of "Attention Is All You Need" (Vaswani et al. 2017), with the peak given
    directly as ``lr``.
    """

    name = "inverse_sqrt"

    def __init__(self, lr: float, warmup: int) -> None:
        fn = "inverse_sqrt()"
        self._set(lr=C.positive(fn, "lr", lr), warmup=C.positive_int(fn, "warmup", warmup))

    def _eval(self, n: Any, o: Ops) -> Any:
        lr, w = self._params["lr"], self._params["warmup"]
        return o.where(n < w, lr * n / w, lr * o.sqrt(w / o.maximum(n, w)))


_WSD_SHAPES = ("linear", "cosine", "sqrt")


class WSD(Schedule):
    """Warmup-stable-decay (Hu et al. 2024, "MiniCPM"; Hägele et al. 2024).

    Linear warmup from 0 to ``lr`` over ``warmup`` steps, constant ``lr``, then over the
    last ``D = round(decay * total)`` steps a decay to ``end``; ``end`` after ``total``.
    With ``p`` the fraction of the decay done, the decay is ``end + (lr - end) * g(p)`` with
    ``g = 1 - p`` ("linear"), ``(1 + cos(pi p)) / 2`` ("cosine") or ``1 - sqrt(p)``
    ("sqrt", the 1-sqrt cooldown of Hägele et al.).
    """

    name = "wsd"

    def __init__(
        self,
        lr: float,
        total: int,
        warmup: int = 0,
        decay: float = 0.2,
        end: float = 0.0,
        shape: str = "linear",
    ) -> None:
        fn = "wsd()"
        lr = C.positive(fn, "lr", lr)
        total = C.steps(fn, "total", total)
        warmup = C.steps(fn, "warmup", warmup, minimum=0)
        decay = C.in_range(fn, "decay", decay, 0.0, 1.0)
        end = C.nonnegative(fn, "end", end)
        shape = C.choice(fn, "shape", shape, _WSD_SHAPES)
        if warmup + round(decay * total) > total:
            raise ValueError(
                f"{fn}: warmup + decay * total must be <= total, got warmup={warmup} and "
                f"{round(decay * total)} decay steps for total={total}"
            )
        self._set(lr=lr, total=total, warmup=warmup, decay=decay, end=end, shape=shape)

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        lr, total, warmup, end = p["lr"], p["total"], p["warmup"], p["end"]
        # a float: as a Python int it reaches JAX's jitted ops as an int32 (2**31 overflows)
        decay_steps = float(round(p["decay"] * total))
        out = o.full_like(n, lr)
        if decay_steps > 0:
            start = total - decay_steps
            frac = o.minimum(o.maximum(n - start, 0.0), decay_steps) / decay_steps
            if p["shape"] == "linear":
                g = 1.0 - frac
            elif p["shape"] == "cosine":
                g = (1.0 + o.cos(math.pi * frac)) / 2.0
            else:
                g = 1.0 - o.sqrt(frac)
            out = end + (lr - end) * g
        else:
            out = o.where(n >= total, end, out)
        if warmup > 0:
            out = o.where(n < warmup, lr * n / warmup, out)
        return out


class Piecewise(Schedule):
    """``values[i]`` for ``boundaries[i-1] <= n < boundaries[i]`` (piecewise constant)."""

    name = "piecewise"

    def __init__(self, boundaries: list[int], values: list[float]) -> None:
        fn = "piecewise()"
        boundaries = C.increasing_ints(fn, "boundaries", boundaries, minimum=1)
        values = [
            C.nonnegative(fn, f"values[{i}]", v)
            for i, v in enumerate(C.sequence(fn, "values", values, min_len=1))
        ]
        if len(values) != len(boundaries) + 1:
            raise ValueError(
                f"{fn}: values must have one more item than boundaries, got "
                f"{len(values)} values for {len(boundaries)} boundaries"
            )
        self._set(boundaries=boundaries, values=values)

    def _eval(self, n: Any, o: Ops) -> Any:
        return o.select(n, self._params["boundaries"], self._params["values"])


constant = Constant
linear = Linear
step = Step
multistep = MultiStep
inverse_time = InverseTime
exponential_decay = ExponentialDecay
polynomial = Polynomial
cosine = Cosine
inverse_sqrt = InverseSqrt
wsd = WSD
piecewise = Piecewise
