r"""Line searches: the step length along a descent direction, found by evaluating it.

In a quasi-Newton method the learning rate is the step length :math:`t` of
:math:`x_{k+1} = x_k + t\,d_k`, chosen by an inexact search on the one-dimensional
objective :math:`\phi(t) = f(x_k + t d_k)`, :math:`\phi'(t) = \nabla f(x_k + t d_k)^\top d_k`.
Each search here takes

* ``fun(t)``: returns ``(phi, dphi)`` or ``(phi, dphi, payload)``: the value, the
  directional derivative and anything the caller wants back for the accepted step (the
  *vector form*: L-BFGS passes the full gradient, so it never re-evaluates the accepted
  point);
* ``phi0``, ``dphi0``: the value and derivative at ``t = 0`` (``dphi0 < 0``: a descent
  direction);
* ``t``: the first trial step (the initial guess);

and returns a :class:`LineSearchResult`: the accepted step, ``phi``/``dphi``/``payload``
there, the number of calls of ``fun`` (each one a function *and* gradient evaluation) and
``reason``, why it stopped:

* ``"converged"``: the search's conditions hold at ``step``;
* ``"max_evals"``: it ran out of evaluations (``step`` is its best point, possibly 0);
* ``"interval_too_small"``: the bracket shrank below the tolerance (no point satisfying
  the conditions is distinguishable in floating point there);
* ``"no_progress"`` (Armijo): the trial step fell below ``min_step``.

A trial whose value or derivative is not finite (NaN or Inf: the step overflowed) counts
as a step that is too long. Values and derivatives may be Python floats or 0-dim tensors
(the arithmetic is written once for both, so ``strong_wolfe`` equals torch's own search
on the same inputs).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lrkit import _checks as C

REASONS = ("converged", "max_evals", "interval_too_small", "no_progress")


@dataclass(frozen=True)
class LineSearchResult:
    """What a line search found: ``step`` (the accepted step length ``t``; 0.0 where no
    step was accepted), ``phi``/``dphi`` at it, ``payload`` (the third item ``fun``
    returned there; None at ``t = 0`` or in the scalar form), ``evals`` (calls of
    ``fun``) and ``reason`` (see the module docstring)."""

    step: Any
    phi: Any
    dphi: Any
    evals: int
    reason: str
    payload: Any = None

    @property
    def converged(self) -> bool:
        return self.reason == "converged"


def _call(fn: str, fun: Callable, t: Any) -> tuple[Any, Any, Any]:
    out = fun(t)
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise TypeError(f"{fn}: fun(t) must return (phi, dphi) or (phi, dphi, payload), got "
                        f"{type(out).__name__}")
    return (out[0], out[1], out[2]) if len(out) == 3 else (out[0], out[1], None)


def _finite(*values: Any) -> bool:
    return all(math.isfinite(float(v)) for v in values)


def _start(fn: str, fun: Any, phi0: Any, dphi0: Any, t: Any, max_evals: Any) -> int:
    """Check the common arguments; returns max_evals as an int."""
    if not callable(fun):
        raise TypeError(f"{fn}: fun must be a function t -> (phi, dphi[, payload]), got "
                        f"{type(fun).__name__}")
    C.real(fn, "phi0", phi0)
    if C.real(fn, "dphi0", dphi0) >= 0:
        raise ValueError(f"{fn}: dphi0 must be negative (a descent direction), got "
                         f"{float(dphi0)!r}")
    C.positive(fn, "t", t)
    return C.positive_int(fn, "max_evals", max_evals)


def _fraction(fn: str, name: str, value: Any) -> float:
    return C.in_range(fn, name, value, 0.0, 1.0, low_open=True, high_open=True)


# -- Armijo backtracking -------------------------------------------------------------------
def armijo(fun: Callable, phi0: Any, dphi0: Any, t: Any = 1.0, *, c1: float = 1e-4,
           shrink: tuple[float, float] = (0.1, 0.5), max_evals: int = 30,
           min_step: float = 1e-20) -> LineSearchResult:
    r"""Backtracking until the Armijo (sufficient decrease) condition holds:

    .. math::  \phi(t) \le \phi(0) + c_1\, t\, \phi'(0).

    Nocedal & Wright, *Numerical Optimization* (2nd ed. 2006), Algorithm 3.1 with the
    safeguarded quadratic interpolation of section 3.5: after a failed trial the next one
    is the minimiser of the quadratic through :math:`\phi(0), \phi'(0), \phi(t)`, kept in
    ``[shrink[0] * t, shrink[1] * t]`` (halving where the value is not finite). The first
    trial that satisfies the condition is accepted (``"converged"``); otherwise, after
    ``max_evals`` trials (``"max_evals"``) or once the step falls below ``min_step``
    (``"no_progress"``), ``step`` is 0.0 (no move). ``0 < c1 < 1``,
    ``0 < shrink[0] <= shrink[1] < 1``.
    """
    fn = "armijo()"
    max_evals = _start(fn, fun, phi0, dphi0, t, max_evals)
    c1 = _fraction(fn, "c1", c1)
    if not (isinstance(shrink, (tuple, list)) and len(shrink) == 2):
        raise ValueError(f"{fn}: shrink must be a pair (low, high) of fractions, got {shrink!r}")
    lo, hi = _fraction(fn, "shrink[0]", shrink[0]), _fraction(fn, "shrink[1]", shrink[1])
    if lo > hi:
        raise ValueError(f"{fn}: shrink must have shrink[0] <= shrink[1], got {shrink!r}")
    min_step = C.positive(fn, "min_step", min_step)
    for evals in range(1, max_evals + 1):
        phi, dphi, payload = _call(fn, fun, t)
        ok = _finite(phi, dphi)
        if ok and phi <= phi0 + c1 * t * dphi0:
            return LineSearchResult(t, phi, dphi, evals, "converged", payload)
        if ok:  # minimiser of the quadratic interpolant, safeguarded
            curv = phi - phi0 - dphi0 * t
            t_new = -dphi0 * t * t / (2 * curv)
            t = min(max(t_new, lo * t), hi * t)
        else:
            t = t * 0.5
        if t < min_step:
            return LineSearchResult(0.0, phi0, dphi0, evals, "no_progress")
    return LineSearchResult(0.0, phi0, dphi0, max_evals, "max_evals")


# -- strong Wolfe: bracketing and zoom ----------------------------------------------------------
def _sqrt(x: Any) -> Any:
    return x.sqrt() if hasattr(x, "sqrt") else math.sqrt(x)


def cubic_minimizer(x1: Any, f1: Any, g1: Any, x2: Any, f2: Any, g2: Any,
                    bounds: tuple[Any, Any] | None = None) -> Any:
    """The minimiser of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)`` (values and
    slopes), clipped to ``bounds`` (default: between x1 and x2); their midpoint where the
    cubic has no finite minimiser (torch's returns NaN there). Nocedal & Wright (2006),
    eq. (3.59); the operations of torch's ``_cubic_interpolate`` (from torch7's
    ``polyinterp.lua``), in its order."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    middle = (xmin_bound + xmax_bound) / 2.0
    try:
        d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
        d2_square = d1**2 - g1 * g2
        if d2_square >= 0:
            d2 = _sqrt(d2_square)
            if x1 <= x2:
                min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
            else:
                min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
            out = min(max(min_pos, xmin_bound), xmax_bound)
            return out if _finite(out) else middle
    except ZeroDivisionError:  # (Python floats; tensors give Inf/NaN: the midpoint too)
        pass
    return middle


def strong_wolfe(fun: Callable, phi0: Any, dphi0: Any, t: Any = 1.0, *, c1: float = 1e-4,
                 c2: float = 0.9, tolerance_change: float = 1e-9, scale: Any = 1.0,
                 max_evals: int = 25, payload0: Any = None) -> LineSearchResult:
    r"""A step satisfying the strong Wolfe conditions

    .. math::  \phi(t) \le \phi(0) + c_1 t \phi'(0), \qquad |\phi'(t)| \le c_2 |\phi'(0)|

    (``0 < c1 < c2 < 1``), by bracketing and zoom with cubic interpolation: Nocedal &
    Wright, *Numerical Optimization* (2nd ed. 2006), Algorithms 3.5 and 3.6, in the form of
    torch's ``torch.optim.lbfgs._strong_wolfe`` (ported from torch7's ``lswolfe.lua``): the
    bracketing phase extrapolates by cubic interpolation within ``[t + 0.01 (t - t_prev),
    10 t]``; the zoom phase interpolates within the bracket and moves a trial that falls
    within 10% of the bracket's length from an end (twice in a row, or on it) to 10% from
    it. It stops (``"interval_too_small"``) when the bracket's length times ``scale``
    (torch: ``max |d|``, so the test is on the parameters' change) is below
    ``tolerance_change``, and after ``max_evals`` evaluations (``"max_evals"``); ``step``
    is then the bracket's lower point (which may be 0, with ``payload0``). Same inputs,
    same arithmetic, same result as torch's (its ``max_ls`` is ``max_evals - 1``).
    """
    fn = "strong_wolfe()"
    max_evals = _start(fn, fun, phi0, dphi0, t, max_evals)
    c1 = _fraction(fn, "c1", c1)
    c2 = _fraction(fn, "c2", c2)
    if c2 <= c1:
        raise ValueError(f"{fn}: c2 must be greater than c1 (0 < c1 < c2 < 1), got c1={c1!r}, "
                         f"c2={c2!r}")
    C.nonnegative(fn, "tolerance_change", tolerance_change)
    C.nonnegative(fn, "scale", scale)
    max_ls = max_evals - 1
    f, gtd, g = phi0, dphi0, payload0

    def too_high(f_new: Any, t: Any, gtd_new: Any) -> bool:
        return not _finite(f_new, gtd_new) or f_new > (f + c1 * t * gtd)

    f_new, gtd_new, g_new = _call(fn, fun, t)
    evals = 1
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    bracket: list = []
    while ls_iter < max_ls:  # bracketing (Algorithm 3.5)
        if too_high(f_new, t, gtd_new) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g, bracket_gtd = [t], [f_new], [g_new], [gtd_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g, bracket_gtd = [g_prev, g_new], [gtd_prev, gtd_new]
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_minimizer(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                            bounds=(min_step, max_step))
        t_prev, f_prev, g_prev, gtd_prev = tmp, f_new, g_new, gtd_new
        f_new, gtd_new, g_new = _call(fn, fun, t)
        evals += 1
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]
        bracket_gtd = [gtd, gtd_new]
    reason = "converged" if done else "max_evals"

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:  # zoom (Algorithm 3.6)
        if abs(bracket[1] - bracket[0]) * scale < tolerance_change:
            reason = "interval_too_small"
            break
        t = cubic_minimizer(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1],
                            bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) \
                    else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new, gtd_new, g_new = _call(fn, fun, t)
        evals += 1
        ls_iter += 1
        if too_high(f_new, t, gtd_new) or f_new >= bracket_f[low_pos]:
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos], bracket_gtd[high_pos] = g_new, gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
                reason = "converged"
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos] = bracket_g[low_pos]
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos], bracket_gtd[low_pos] = g_new, gtd_new
    return LineSearchResult(bracket[low_pos], bracket_f[low_pos], bracket_gtd[low_pos], evals,
                            reason, bracket_g[low_pos])


# -- Hager-Zhang approximate Wolfe ----------------------------------------------------------
def hager_zhang(fun: Callable, phi0: Any, dphi0: Any, t: Any = 1.0, *, delta: float = 0.1,
                sigma: float = 0.9, epsilon: float = 1e-6, theta: float = 0.5,
                gamma: float = 0.66, rho: float = 5.0, max_evals: int = 50,
                payload0: Any = None) -> LineSearchResult:
    r"""A step satisfying the Wolfe or the approximate Wolfe conditions of Hager & Zhang:

    .. math::
        \text{(T1, Wolfe)}\quad & \phi(t) - \phi(0) \le \delta t \phi'(0),
        \quad \phi'(t) \ge \sigma \phi'(0); \\
        \text{(T2, approximate Wolfe)}\quad & (2\delta - 1)\phi'(0) \ge \phi'(t)
        \ge \sigma \phi'(0), \quad \phi(t) \le \phi(0) + \epsilon_k

    with :math:`\epsilon_k = \epsilon |\phi(0)|`, ``0 < delta < 0.5`` and
    ``delta < sigma < 1``. Hager & Zhang, "A new conjugate gradient method with guaranteed
    descent and an efficient line search", SIAM J. Optim. 16 (2005) 170-192, section 4
    (the line search of CG_DESCENT; defaults of its paper and of "Algorithm 851",
    ACM TOMS 32 (2006)): bracketing (B0-B3: expand by ``rho`` until the slope turns
    non-negative or the value rises above :math:`\phi(0) + \epsilon_k`), then double
    secant steps (``secant2``, S1-S4) with the interval update (U0-U3: bisection at
    ``theta`` where the value rises without the slope turning), and a bisection whenever
    an iteration does not shrink the interval below ``gamma`` of its length. The
    approximate condition lets the search converge where rounding hides the decrease of
    the Armijo test (near a minimum, :math:`\phi(t) - \phi(0)` is lost in the rounding of
    :math:`\phi`). Stops at the first trial satisfying T1 or T2 (``"converged"``), after
    ``max_evals`` evaluations (``"max_evals"``: ``step`` is the trial with the lowest value
    below ``phi0``, else 0), or when the interval can no longer shrink
    (``"interval_too_small"``, same choice of ``step``).
    """
    fn = "hager_zhang()"
    max_evals = _start(fn, fun, phi0, dphi0, t, max_evals)
    delta = _fraction(fn, "delta", delta)
    sigma = _fraction(fn, "sigma", sigma)
    if delta >= 0.5:
        raise ValueError(f"{fn}: delta must be in (0, 0.5), got {delta!r}")
    if sigma <= delta:
        raise ValueError(f"{fn}: sigma must be greater than delta (0 < delta < sigma < 1), "
                         f"got delta={delta!r}, sigma={sigma!r}")
    epsilon = C.nonnegative(fn, "epsilon", epsilon)
    theta = _fraction(fn, "theta", theta)
    gamma = _fraction(fn, "gamma", gamma)
    rho = C.in_range(fn, "rho", rho, 1.0, math.inf, low_open=True)
    phi0f, d0 = float(phi0), float(dphi0)
    bound = phi0f + epsilon * abs(phi0f)
    points: dict[float, tuple[float, float, Any]] = {0.0: (phi0f, d0, payload0)}
    found: list[LineSearchResult] = []

    class _Stop(Exception):
        pass

    def ev(c: float) -> tuple[float, float]:
        if c in points:
            return points[c][0], points[c][1]
        if len(points) - 1 >= max_evals:
            raise _Stop("max_evals")
        p, dp, pay = _call(fn, fun, c)
        p, dp = float(p), float(dp)
        if not _finite(p, dp):
            p, dp = math.inf, math.nan
        points[c] = (p, dp, pay)
        wolfe = p - phi0f <= delta * c * d0 and dp >= sigma * d0
        approx = (2 * delta - 1) * d0 >= dp >= sigma * d0 and p <= bound
        if wolfe or approx:
            found.append(LineSearchResult(c, p, dp, len(points) - 1, "converged", pay))
            raise _Stop("converged")
        return p, dp

    def rises(c: float) -> bool:  # the slope is not negative there (or it is not finite)
        p, dp = ev(c)
        return not (dp < 0) or not math.isfinite(p)

    def bisect_down(a: float, b: float) -> tuple[float, float]:  # U3: phi(b) > bound, dphi(b) < 0
        while True:
            if b - a <= 1e-16 * max(b, 1e-300):
                raise _Stop("interval_too_small")
            d = (1 - theta) * a + theta * b
            p, dp = ev(d)
            if dp >= 0:
                return a, d
            if p <= bound:
                a = d
            else:
                b = d

    def update(a: float, b: float, c: float) -> tuple[float, float]:
        if not (a < c < b):  # U0
            return a, b
        p, dp = ev(c)
        if not math.isfinite(p):  # overflow: too far, treat as a rise in value
            return bisect_down(a, c)
        if dp >= 0:  # U1
            return a, c
        if p <= bound:  # U2
            return c, b
        return bisect_down(a, c)  # U3

    def secant(a: float, b: float) -> float:
        da, db = points[a][1], points[b][1]
        c = (a * db - b * da) / (db - da) if db != da else math.nan
        return c if math.isfinite(c) else 0.5 * (a + b)

    def secant2(a: float, b: float) -> tuple[float, float]:
        c = secant(a, b)
        A, B = update(a, b, c)
        if c == B:
            return update(A, B, secant(b, B))
        if c == A:
            return update(A, B, secant(a, A))
        return A, B

    def bracket(c: float) -> tuple[float, float]:
        last_low = 0.0  # the largest trial with phi <= bound and negative slope
        while True:
            p, dp = ev(c)
            if not math.isfinite(p):  # overflow: shrink towards the last good point
                c = last_low + 0.5 * (c - last_low)
                if c - last_low <= 1e-16 * max(c, 1e-300):
                    raise _Stop("interval_too_small")
                continue
            if dp >= 0:  # B1
                return last_low, c
            if p > bound:  # B2
                return bisect_down(0.0, c)
            last_low, c = c, rho * c  # B3

    reason = "converged"
    try:
        a, b = bracket(float(t))
        while True:  # L1-L3
            width = b - a
            a, b = secant2(a, b)
            if b - a > gamma * width:
                a, b = update(a, b, 0.5 * (a + b))
            if b - a <= 1e-16 * max(b, 1e-300):
                raise _Stop("interval_too_small")
    except _Stop as stop:
        reason = str(stop)
    if reason == "converged":
        return found[0]
    best = min(points.items(), key=lambda kv: kv[1][0])
    c, (p, dp, pay) = best if best[1][0] < phi0f else (0.0, points[0.0])
    return LineSearchResult(c, p, dp, len(points) - 1, reason, pay)


LINE_SEARCHES: dict[str, Callable[..., LineSearchResult]] = {
    "armijo": armijo, "strong_wolfe": strong_wolfe, "hager_zhang": hager_zhang}
