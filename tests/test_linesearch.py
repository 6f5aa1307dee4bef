"""lrkit.linesearch: every accepted step satisfies the search's stated conditions, on
one-dimensional functions drawn by hypothesis; a search finds an acceptable step where one
exists (smooth functions bounded below along a descent direction); strong_wolfe equals
torch's own search on the same inputs; bad arguments are refused by name."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.optim.lbfgs import _strong_wolfe

from lrkit import linesearch as LS

C1, C2 = 1e-4, 0.9
DELTA, SIGMA, EPS = 0.1, 0.9, 1e-6


def _f(v: float) -> st.SearchStrategy:
    return st.floats(-v, v, allow_nan=False, allow_infinity=False)


@st.composite
def functions(draw):
    """phi(t) = q (t - m)^2 + b sin(w t + p) + r t^4 + s: smooth, bounded below (q > 0 or
    r > 0), with a clear descent at t = 0; and a first trial step over six decades."""
    q = draw(st.floats(0.01, 100.0))
    m = draw(st.floats(0.01, 50.0))
    b = draw(_f(5.0))
    w = draw(st.floats(0.1, 20.0))
    p = draw(_f(3.0))
    r = draw(st.sampled_from([0.0, 1e-4, 1e-2, 1.0]))
    s = draw(_f(100.0))

    def phi(t: float) -> tuple[float, float, float]:
        value = q * (t - m) ** 2 + b * math.sin(w * t + p) + r * t ** 4 + s
        slope = 2 * q * (t - m) + b * w * math.cos(w * t + p) + 4 * r * t ** 3
        return value, slope, t  # payload: the step it was evaluated at

    phi0, dphi0, _ = phi(0.0)
    assume(dphi0 < -1e-3 * (1 + abs(phi0)) and dphi0 < -1e-2)
    t0 = 10.0 ** draw(st.floats(-3.0, 3.0))
    return phi, phi0, dphi0, t0


def _armijo_holds(phi0, dphi0, t, value, c1) -> bool:
    return value <= phi0 + c1 * t * dphi0


@settings(max_examples=200, deadline=None)
@given(functions())
def test_armijo_accepts_only_sufficient_decrease(case):
    phi, phi0, dphi0, t0 = case
    calls = []
    res = LS.armijo(lambda t: calls.append(t) or phi(t), phi0, dphi0, t0, c1=C1, max_evals=80)
    assert res.converged, res  # a smooth function has sufficient decrease for small t
    assert res.step > 0 and _armijo_holds(phi0, dphi0, res.step, res.phi, C1)
    assert res.payload == res.step and res.evals == len(calls)
    assert (res.phi, res.dphi) == phi(res.step)[:2]
    for t in calls[:-1]:  # every rejected trial violated the condition
        assert not _armijo_holds(phi0, dphi0, t, phi(t)[0], C1)


@settings(max_examples=200, deadline=None)
@given(functions())
def test_strong_wolfe_accepts_only_strong_wolfe_points(case):
    phi, phi0, dphi0, t0 = case
    calls = []
    res = LS.strong_wolfe(lambda t: calls.append(t) or phi(t), phi0, dphi0, t0, c1=C1, c2=C2,
                          tolerance_change=0.0, max_evals=100)
    assert res.converged, res  # bounded below: strong Wolfe points exist (N&W Lemma 3.1)
    assert _armijo_holds(phi0, dphi0, res.step, res.phi, C1)
    assert abs(res.dphi) <= C2 * abs(dphi0)
    assert res.payload == res.step and res.evals == len(calls)
    assert (res.phi, res.dphi) == phi(res.step)[:2]


@settings(max_examples=200, deadline=None)
@given(functions())
def test_hager_zhang_accepts_only_wolfe_or_approximate_wolfe(case):
    phi, phi0, dphi0, t0 = case
    calls = []
    res = LS.hager_zhang(lambda t: calls.append(t) or phi(t), phi0, dphi0, t0, delta=DELTA,
                         sigma=SIGMA, epsilon=EPS, max_evals=100)
    assert res.converged, res
    value, slope = res.phi, res.dphi
    wolfe = value - phi0 <= DELTA * res.step * dphi0 and slope >= SIGMA * dphi0
    approx = ((2 * DELTA - 1) * dphi0 >= slope >= SIGMA * dphi0
              and value <= phi0 + EPS * abs(phi0))
    assert wolfe or approx
    assert res.payload == res.step and res.evals == len(calls)


@pytest.mark.parametrize("search", ["armijo", "strong_wolfe", "hager_zhang"])
def test_overflowing_trials_count_as_too_long(search):
    """A trial with a non-finite value is a step too long: the search comes back."""
    def phi(t):
        if t > 2.0:
            return math.inf, math.nan
        return (t - 1.0) ** 2, 2 * (t - 1.0)
    res = LS.LINE_SEARCHES[search](phi, 1.0, -2.0, 100.0, max_evals=60)
    assert res.converged and 0 < res.step <= 2.0 and math.isfinite(res.phi)


@pytest.mark.parametrize("search", ["armijo", "strong_wolfe", "hager_zhang"])
def test_max_evals_is_respected(search):
    """A function decreasing without end along the line: out of evaluations, the search
    stops and says so (Wolfe searches), never calling fun more than max_evals times."""
    calls = []

    def phi(t):
        calls.append(t)
        return -t, -1.0
    res = LS.LINE_SEARCHES[search](phi, 0.0, -1.0, 1.0, max_evals=7)
    assert res.evals == len(calls) <= 7
    if search == "armijo":
        assert res.converged and res.step == 1.0
    else:
        assert res.reason == "max_evals" and res.step > 0


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31), st.floats(1e-3, 1e2), st.integers(1, 25))
def test_strong_wolfe_equals_torch(seed, t0, max_evals):
    """On a random convex-plus-wiggle problem in 20 dimensions (float64), the same inputs
    give torch's ``_strong_wolfe`` result bit for bit."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(20, 20, generator=g, dtype=torch.float64)
    h = a @ a.T / 20 + 0.1 * torch.eye(20, dtype=torch.float64)
    x = torch.randn(20, generator=g, dtype=torch.float64)
    freq = torch.rand(20, generator=g, dtype=torch.float64) * 5

    def loss_grad(z):
        value = 0.5 * z @ h @ z + torch.sin(freq * z).sum()
        return float(value), h @ z + freq * torch.cos(freq * z)

    f, grad = loss_grad(x)
    d = -grad
    gtd = grad.dot(d)

    def obj(x0, t, d):
        return loss_grad(x0 + t * d)

    f_t, g_t, t_t, n_t = _strong_wolfe(obj, x, t0, d, f, grad, gtd, max_ls=max_evals - 1)

    def fun(t):
        value, gr = loss_grad(x + t * d)
        return value, gr.dot(d), gr

    res = LS.strong_wolfe(fun, f, gtd, t0, scale=d.abs().max(), payload0=grad,
                          max_evals=max_evals)
    assert res.step == t_t and res.phi == f_t and res.evals == n_t
    assert torch.equal(res.payload, g_t)


@pytest.mark.parametrize("search,kwargs,name", [
    ("armijo", {"c1": 1.0}, "c1"), ("armijo", {"shrink": (0.6, 0.5)}, "shrink"),
    ("armijo", {"max_evals": 0}, "max_evals"), ("armijo", {"min_step": 0.0}, "min_step"),
    ("strong_wolfe", {"c1": 0.5, "c2": 0.4}, "c2"), ("strong_wolfe", {"c2": 1.0}, "c2"),
    ("strong_wolfe", {"tolerance_change": -1.0}, "tolerance_change"),
    ("hager_zhang", {"delta": 0.6}, "delta"), ("hager_zhang", {"sigma": 0.05}, "sigma"),
    ("hager_zhang", {"epsilon": -1.0}, "epsilon"), ("hager_zhang", {"theta": 1.0}, "theta"),
    ("hager_zhang", {"gamma": 0.0}, "gamma"), ("hager_zhang", {"rho": 1.0}, "rho"),
])
def test_bad_arguments_are_named(search, kwargs, name):
    fun = LS.LINE_SEARCHES[search]
    with pytest.raises(ValueError, match=f"{search}\\(\\): {name}"):
        fun(lambda t: (t * t - t, 2 * t - 1), 0.0, -1.0, 1.0, **kwargs)


@pytest.mark.parametrize("search", ["armijo", "strong_wolfe", "hager_zhang"])
def test_bad_common_arguments(search):
    fun = LS.LINE_SEARCHES[search]
    ok = lambda t: (t * t - t, 2 * t - 1)  # noqa: E731
    with pytest.raises(ValueError, match="dphi0 must be negative"):
        fun(ok, 0.0, 0.5)
    with pytest.raises(ValueError, match="t must be a positive"):
        fun(ok, 0.0, -1.0, 0.0)
    with pytest.raises(TypeError, match="fun must be a function"):
        fun(3, 0.0, -1.0)
    with pytest.raises(ValueError, match="phi0 must be a finite"):
        fun(ok, math.nan, -1.0)
    with pytest.raises(TypeError, match=r"fun\(t\) must return"):
        fun(lambda t: 1.0, 0.0, -1.0)
