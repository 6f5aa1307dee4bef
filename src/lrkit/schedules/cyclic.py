"""Schedules that rise and fall: cosine with warm restarts, cyclic, one-cycle."""
from __future__ import annotations

import math
from typing import Any

from lrkit import _checks as C
from lrkit.schedules._ops import Ops, check_cosine_span
from lrkit.schedules.base import Schedule


class CosineRestarts(Schedule):
    """Cosine annealing with warm restarts (Loshchilov & Hutter 2017, "SGDR").

    Cycle ``i`` lasts ``T_i = period * mult**i`` steps; within it, with ``t`` steps done,
    ``eta = end + (lr - end) * (1 + cos(pi * t / T_i)) / 2``. Equals torch
    ``CosineAnnealingWarmRestarts(T_0=period, T_mult=mult, eta_min=end)``.
    """

    name = "cosine_restarts"

    def __init__(self, lr: float, period: int, mult: int = 1, end: float = 0.0) -> None:
        fn = "cosine_restarts()"
        self._set(
            lr=C.nonnegative(fn, "lr", lr),
            period=C.positive_int(fn, "period", period),
            mult=C.positive_int(fn, "mult", mult),
            end=C.nonnegative(fn, "end", end),
        )
        check_cosine_span(fn, self._params["lr"], self._params["end"])

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        lr, period, mult, end = p["lr"], p["period"], p["mult"], p["end"]
        if mult == 1:
            t_cur = n - period * o.floor_div(n, period)
            t_i = o.full_like(n, float(period))
        else:
            # cycle index from the closed form, then corrected by one where rounding erred
            i = o.floor(o.log(n * (mult - 1) / period + 1.0) / math.log(mult))

            def cycle_start(k: Any) -> Any:
                return period * (o.power(float(mult), k) - 1.0) / (mult - 1)

            i = o.where(cycle_start(i) > n, i - 1.0, i)
            i = o.where(cycle_start(i + 1.0) <= n, i + 1.0, i)
            t_cur = n - cycle_start(i)
            t_i = period * o.power(float(mult), i)
        return end + (lr - end) * (1.0 + o.cos(math.pi * t_cur / t_i)) / 2.0


_CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


class Cyclic(Schedule):
    """Cyclical learning rate (Smith 2017, "Cyclical Learning Rates for Training NNs").

    Rises linearly from ``low`` to ``high`` over ``up`` steps, falls back over ``down``
    (default ``up``) steps, and repeats. The amplitude is scaled per cycle by 1
    ("triangular"), ``1 / 2**(cycle - 1)`` ("triangular2") or per step by ``gamma**n``
    ("exp_range"). Equals torch ``CyclicLR(base_lr=low, max_lr=high, step_size_up=up,
    step_size_down=down, mode, gamma)``.
    """

    name = "cyclic"

    def __init__(
        self,
        low: float,
        high: float,
        up: int,
        down: int | None = None,
        mode: str = "triangular",
        gamma: float = 1.0,
    ) -> None:
        fn = "cyclic()"
        low = C.nonnegative(fn, "low", low)
        high = C.nonnegative(fn, "high", high)
        if high < low:
            raise ValueError(f"{fn}: high must be >= low, got low={low!r}, high={high!r}")
        up = C.positive_int(fn, "up", up)
        if down is not None:
            down = C.positive_int(fn, "down", down)
        mode = C.choice(fn, "mode", mode, _CYCLIC_MODES)
        gamma = C.in_range(fn, "gamma", gamma, 0.0, 1.0, low_open=True)
        self._set(low=low, high=high, up=up, down=down, mode=mode, gamma=gamma)

    def _eval(self, n: Any, o: Ops) -> Any:
        p = self._params
        up = p["up"]
        down = up if p["down"] is None else p["down"]
        total = float(up + down)
        ratio = up / total
        q = o.floor_div(n, total)
        cycle = 1.0 + q
        x = o.cycle_fraction(n, total, q)  # torch: 1 + n / total - cycle
        scale = o.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
        height = (p["high"] - p["low"]) * scale
        if p["mode"] == "triangular2":
            height = height * (1.0 / o.power(2.0, cycle - 1.0))
        elif p["mode"] == "exp_range":
            height = height * o.power(p["gamma"], n)
        return p["low"] + height


_ANNEALS = ("cos", "linear")


class OneCycle(Schedule):
    """The one-cycle policy (Smith & Topin 2019, "Super-Convergence").

    From ``max_lr / div`` up to ``max_lr`` over the first ``pct_start`` of ``total``
    steps, then down to ``max_lr / div / final_div`` (with ``three_phase``: back to
    ``max_lr / div`` first, then down). Each phase anneals by half a cosine or linearly.
    Equals torch ``OneCycleLR(max_lr, total_steps=total, pct_start, anneal_strategy=anneal,
    div_factor=div, final_div_factor=final_div, three_phase)`` at every step that torch
    uses for an update (n < total); from n = total - 1 on it holds the final value, where
    torch would extrapolate past the end of its last phase.
    """

    name = "one_cycle"

    def __init__(
        self,
        max_lr: float,
        total: int,
        pct_start: float = 0.3,
        anneal: str = "cos",
        div: float = 25.0,
        final_div: float = 1e4,
        three_phase: bool = False,
    ) -> None:
        fn = "one_cycle()"
        max_lr = C.positive(fn, "max_lr", max_lr)
        total = C.positive_int(fn, "total", total)
        pct_start = C.in_range(fn, "pct_start", pct_start, 0.0, 1.0, low_open=True,
                               high_open=True)
        anneal = C.choice(fn, "anneal", anneal, _ANNEALS)
        div = C.positive(fn, "div", div)
        final_div = C.positive(fn, "final_div", final_div)
        three_phase = C.boolean(fn, "three_phase", three_phase)
        if math.isinf(max_lr / div) or math.isinf(max_lr / div / final_div):
            raise ValueError(f"{fn}: max_lr / div and max_lr / div / final_div (the first and "
                             f"final rates) must be finite in float64, got max_lr={max_lr!r}, "
                             f"div={div!r}, final_div={final_div!r}")
        self._set(max_lr=max_lr, total=total, pct_start=pct_start, anneal=anneal, div=div,
                  final_div=final_div, three_phase=three_phase)
        ends = [end for end, _, _ in self._phases()]
        if not all(b > a for a, b in zip([0.0, *ends], ends)):
            raise ValueError(
                f"{fn}: every phase must last at least one step, got phase ends {ends} for "
                f"total={total}, pct_start={pct_start} (need pct_start * total > 1"
                + (" and pct_start < 0.5 with three_phase" if three_phase else "") + ")"
            )

    def _phases(self) -> list[tuple[float, float, float]]:
        """(end_step, start_lr, end_lr) of each phase, as torch builds them."""
        p = self._params
        initial = p["max_lr"] / p["div"]
        final = initial / p["final_div"]
        total, pct = p["total"], p["pct_start"]
        if p["three_phase"]:
            return [
                (float(pct * total) - 1, initial, p["max_lr"]),
                (float(2 * pct * total) - 2, p["max_lr"], initial),
                (total - 1.0, initial, final),
            ]
        return [(float(pct * total) - 1, initial, p["max_lr"]), (total - 1.0, p["max_lr"], final)]

    def _eval(self, n: Any, o: Ops) -> Any:
        cos = self._params["anneal"] == "cos"
        phases = self._phases()
        out = None
        start_step = 0.0
        pieces = []
        for end_step, lr_a, lr_b in phases:
            pct = o.minimum(o.maximum((n - start_step) / (end_step - start_step), 0.0), 1.0)
            if cos:
                value = lr_b + (lr_a - lr_b) / 2.0 * (o.cos(math.pi * pct) + 1)
            else:
                value = (lr_b - lr_a) * pct + lr_a
            pieces.append((end_step, value))
            start_step = end_step
        out = pieces[-1][1]
        for end_step, value in reversed(pieces[:-1]):
            out = o.where(n <= end_step, value, out)
        return out


cosine_restarts = CosineRestarts
cyclic = Cyclic
one_cycle = OneCycle
