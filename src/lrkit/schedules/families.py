"""Schedule families shaped from a step budget: one peak learning rate, one budget.

Tuning (``lrkit.tune``), the benchmark arena (``lrkit bench``), the autopilot and the
plots all compare schedule *families* at a given peak rate and step budget;
``family(name, peak, steps, warmup)`` fixes how each family's remaining parameters follow
from the budget, here and nowhere else. A warmup fraction ``warmup`` puts
``W = round(warmup * steps)`` linear warmup steps (from 0, ``S.warmup``) in front; the
family then spans the ``D = steps - W`` steps after it:

==============  =================================================================
constant        ``peak`` after the warmup
step_based      ``step_based(peak, drop=0.1, every=(D + 1) // 3 + 1)``: ten-fold drops
                at a third (step ``round(D / 3)``) and two thirds of D (one step
                after twice that), ``peak / 100`` for the last third and at step D
                (the third drop falls past D); the first update runs at ``peak``.
                Below D = 3, too short for two drops, one hundred-fold drop at
                step D: ``step_based(peak, drop=0.01, every=D + 1)``
exponential     ``exponential(peak, decay=ln(100) / D)``: ``peak / 100`` at the end
time_based      ``time_based(peak, decay=d)`` (``eta_{n+1} = eta_n / (1 + d n)``), d
                solved so that it too reaches ``peak / 100`` at the end
cosine          ``cosine(peak, total=D)``: half a cosine to 0 at the end
one_cycle       ``one_cycle(peak, total=steps, pct_start=warmup)``: torch's one-cycle
                over the whole budget, its rise from ``peak / 25`` being its warmup
                (``pct_start`` = the warmup fraction; 0.3, torch's default, when none)
wsd             ``wsd(peak, total=steps, warmup=W, decay=0.2)``: warmup, stable, then a
                linear decay to 0 over the last 20% of the budget
linear          ``linear(peak, end=0, total=D)``: a straight line to 0 at the end
inverse_sqrt    ``inverse_sqrt(peak, warmup=max(W, 1))``: ``peak * sqrt(W / n)`` after
                the warmup; it ignores the budget
==============  =================================================================

"At the end" is step ``steps`` (one past the last update), for every family: cosine and
linear reach 0 there, so the step, exponential and time-based decays end at ``peak / 100``
there too, the three classic decays then differing only in how they get there. The decay
constants are rounded to 6 significant digits (their end within ln(100) * 5e-6, under
2.5e-5, of the aim) so that spec text stays short.

Why these shapes (issue 13: the arena, ``tune`` and the autopilot had drifted apart, with
``step_based`` halving every quarter in one place and falling ten-fold every third in
another): one definition, and the one the arena measured, so that the figures the README
and the autopilot quote are figures of the schedules ``tune`` and ``autopilot`` run. The
ten-fold step drops are the classic practice (He et al. 2016; Goyal et al. 2017), and
ending the three classic decays at the same ``peak / 100`` compares their shapes, not
their end points. one_cycle keeps torch's shape, its warmup fraction being its rise
phase; the arena passes 0.3, torch's default.

``FAMILIES`` lists every name; ``COMPARED`` the eight that the arena runs and ``tune``
searches by default: all but ``inverse_sqrt``, which is shaped by its warmup alone for
runs of open-ended length, not for a fixed budget.
"""
from __future__ import annotations

import math

from lrkit import _checks as C
from lrkit.schedules.base import Schedule
from lrkit.schedules.classic import Exponential, StepBased, TimeBased
from lrkit.schedules.combinators import Warmup
from lrkit.schedules.cyclic import OneCycle
from lrkit.schedules.decay import WSD, Constant, Cosine, InverseSqrt, Linear

FAMILIES = ("constant", "step_based", "exponential", "time_based", "cosine", "one_cycle",
            "wsd", "linear", "inverse_sqrt")
COMPARED = FAMILIES[:-1]  # what the arena runs and tune searches: all but inverse_sqrt
FINAL_FRACTION = 0.01  # step_based, exponential and time_based end at peak / 100
ONE_CYCLE_RISE = 0.3  # torch's OneCycleLR pct_start, one_cycle's rise when warmup=0
WSD_DECAY = 0.2  # wsd's decay phase: the last 20% of the budget


def family(name: str, peak: float, steps: int, warmup: float = 0.0) -> Schedule:
    """The schedule of family ``name`` peaking at ``peak`` over a budget of ``steps``
    steps, ``warmup`` of them warming up (see the module docstring for each shape)."""
    fn = "family()"
    name = C.choice(fn, "name", name, FAMILIES)
    peak = C.positive(fn, "peak", peak)
    steps = C.steps(fn, "steps", steps, minimum=2)
    warmup = C.in_range(fn, "warmup", warmup, 0.0, 1.0, high_open=True)
    w = int(round(warmup * steps))
    rest = steps - w
    if rest < 1:
        raise ValueError(f"{fn}: warmup={warmup!r} of steps={steps} leaves no step after "
                         "the warmup; lower warmup or raise steps")
    if name == "one_cycle":
        pct = warmup if warmup > 0 else ONE_CYCLE_RISE
        return OneCycle(peak, steps, pct_start=min(max(pct, 1.5 / steps), 0.95))
    if name == "wsd":
        return WSD(peak, steps, warmup=min(w, steps - round(WSD_DECAY * steps)),
                   decay=WSD_DECAY)
    if name == "inverse_sqrt":
        return InverseSqrt(peak, max(w, 1))
    if name == "constant":
        body: Schedule = Constant(peak)
    elif name == "cosine":
        body = Cosine(peak, rest)
    elif name == "linear":
        body = Linear(peak, 0.0, rest)
    elif name == "step_based":
        # step_based drops at n = every - 1, 2 every - 1, ...: two drops in [1, D], the third
        # past D, needs (D + 1) / 3 < every <= (D + 1) / 2, which has an integer from D = 3
        body = (StepBased(peak, 0.1, (rest + 1) // 3 + 1) if rest >= 3 else
                StepBased(peak, FINAL_FRACTION, rest + 1))
    elif name == "exponential":
        body = Exponential(peak, _round(math.log(1.0 / FINAL_FRACTION) / rest))
    else:
        body = TimeBased(peak, time_based_decay(rest))
    return Warmup(body, w) if w else body


def time_based_decay(steps: int, end: float = FINAL_FRACTION) -> float:
    """The ``decay`` of ``S.time_based`` whose rate falls to ``end`` of its start after
    ``steps`` steps (bisection on log decay), rounded to 6 significant digits; 0 for
    ``steps`` of 0 or 1, where no decay acts yet.

    The bisection starts from a bracket that holds the answer for every ``steps`` up to
    2**53: as ``log(1 + d k) <= d k``, the fall after n steps is at most ``d n (n - 1) / 2``,
    so a decay below ``log(1 / end) / (n (n - 1))`` falls by less than half the aim."""
    fn = "time_based_decay()"
    steps = C.nonnegative_int(fn, "steps", steps)
    end = C.in_range(fn, "end", end, 0.0, 1.0, low_open=True, high_open=True)
    if steps <= 1:
        return 0.0
    target = math.log(1.0 / end)

    def fall(d: float) -> float:  # log(lr_0 / lr_steps)
        value = float(TimeBased(1.0, d)(steps))
        return -math.log(value) if value > 0 else math.inf

    low, high = target / (steps * (steps - 1.0)), 1.0
    while fall(high) < target:  # a fall larger than 1e308-fold needs a decay above 1
        high *= 2.0
    while high / low > 1 + 1e-12:
        mid = math.sqrt(low * high)
        low, high = (mid, high) if fall(mid) < target else (low, mid)
    return _round(math.sqrt(low * high))


def _round(x: float) -> float:
    """6 significant digits: short spec text, the rate's end within 2.5e-5 of the aim."""
    return float(f"{x:.6g}")
