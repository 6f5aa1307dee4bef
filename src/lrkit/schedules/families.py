"""Schedule families shaped from a step budget: one peak learning rate, one budget.

Tuning (``lrkit.tune``), the benchmark arena and the autopilot all compare schedule
*families* at a given peak rate and step budget; ``family(name, peak, steps, warmup)``
fixes how each family's remaining parameters follow from the budget, in one place:

==============  =================================================================
constant        ``peak`` throughout
cosine          half a cosine from ``peak`` to 0 at the end of the budget
linear          straight line from ``peak`` to 0 at the end
one_cycle       torch's one-cycle over the budget (its own warmup: ``pct_start``
                = the warmup fraction, or 0.3 when none is given)
wsd             warmup-stable-decay, the last 20% of the budget decaying linearly to 0
step_based      the article's step decay, halving every quarter of the budget
exponential     the article's exponential decay, down to ``peak / 100`` at the end
time_based      the article's time-based decay, down to ``peak / 100`` at the end
inverse_sqrt    ``peak * sqrt(w / n)`` after the warmup (w = warmup steps, at least 1)
==============  =================================================================

A warmup fraction ``warmup`` puts ``round(warmup * steps)`` linear warmup steps in front
(``S.warmup``), the family then spanning the rest of the budget.
"""
from __future__ import annotations

import math

from lrkit import _checks as C
from lrkit.schedules.base import Schedule
from lrkit.schedules.classic import Exponential, StepBased, TimeBased
from lrkit.schedules.combinators import Warmup
from lrkit.schedules.cyclic import OneCycle
from lrkit.schedules.decay import WSD, Constant, Cosine, InverseSqrt, Linear

FAMILIES = ("constant", "cosine", "linear", "one_cycle", "wsd", "step_based", "exponential",
            "time_based", "inverse_sqrt")
FINAL_FRACTION = 0.01  # exponential and time_based end at peak / 100


def family(name: str, peak: float, steps: int, warmup: float = 0.0) -> Schedule:
    """The schedule of family ``name`` peaking at ``peak`` over a budget of ``steps``."""
    fn = "family()"
    name = C.choice(fn, "name", name, FAMILIES)
    peak = C.positive(fn, "peak", peak)
    steps = C.integer(fn, "steps", steps, minimum=2)
    warmup = C.in_range(fn, "warmup", warmup, 0.0, 1.0, high_open=True)
    w = int(round(warmup * steps))
    if name == "one_cycle":
        pct = warmup if warmup > 0 else 0.3
        pct = min(max(pct, 1.5 / steps), 0.95)
        return OneCycle(peak, steps, pct_start=pct)
    if name == "wsd":
        return WSD(peak, steps, warmup=min(w, steps - round(0.2 * steps)), decay=0.2)
    if name == "inverse_sqrt":
        return InverseSqrt(peak, max(w, 1))
    rest = steps - w
    if name == "constant":
        body: Schedule = Constant(peak)
    elif name == "cosine":
        body = Cosine(peak, rest)
    elif name == "linear":
        body = Linear(peak, 0.0, rest)
    elif name == "step_based":
        body = StepBased(peak, 0.5, max(1, math.ceil(rest / 4)))
    elif name == "exponential":
        body = Exponential(peak, -math.log(FINAL_FRACTION) / max(rest - 1, 1))
    else:
        body = TimeBased(peak, time_based_decay(rest - 1, FINAL_FRACTION))
    return Warmup(body, w) if w else body


def time_based_decay(n: int, fraction: float) -> float:
    """The decay at which ``time_based(1, decay)`` reaches ``fraction`` at step ``n``."""
    fn = "time_based_decay()"
    n = C.nonnegative_int(fn, "n", n)
    fraction = C.in_range(fn, "fraction", fraction, 0.0, 1.0, low_open=True)
    if n <= 1:
        return 0.0
    lo, hi = 0.0, 1.0
    while TimeBased(1.0, hi)(n) > fraction:
        hi *= 2.0
    for _ in range(200):  # bisection on a monotone function of the decay
        mid = 0.5 * (lo + hi)
        if TimeBased(1.0, mid)(n) > fraction:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-15 * hi:
            break
    return hi
