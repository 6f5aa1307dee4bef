"""The article's three schedules against their defining recursions and formulas."""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S


def exact_time_based(lr: float, decay: float, steps: int) -> list[float]:
    """eta_{n+1} = eta_n / (1 + decay n), computed at 40 significant digits."""
    with mpmath.workdps(40):
        eta, d, out = mpmath.mpf(lr), mpmath.mpf(decay), []
        for n in range(steps):
            out.append(float(eta))
            eta = eta / (1 + d * n)
    return out


def assert_rel(ours: np.ndarray, exact: list[float], rtol: float) -> None:
    exact_arr = np.asarray(exact)
    normal = exact_arr > 1e-300  # below, float64 itself has lost relative precision
    rel = np.abs(ours[normal] - exact_arr[normal]) / exact_arr[normal]
    assert rel.max(initial=0.0) <= rtol, rel.max()


@given(st.floats(1e-4, 10.0), st.floats(0.0, 5.0) | st.floats(1e-12, 1e-3))
@settings(max_examples=40)
def test_time_based_equals_exact_recursion(lr, decay):
    steps = 2000
    assert_rel(S.time_based(lr, decay)(np.arange(steps)), exact_time_based(lr, decay, steps),
               1e-12)


@given(st.floats(1e-4, 10.0), st.floats(1e-13, 1e-9))
@settings(max_examples=10)
def test_time_based_exact_up_to_a_million_steps(lr, decay):
    """At n up to 10^6, against the exact product prod (1 + decay k) as Gamma functions."""
    steps = np.array([0, 1, 7, 1000, 65_537, 250_000, 999_999, 1_000_000])
    ours = S.time_based(lr, decay)(steps)
    with mpmath.workdps(60):
        d = mpmath.mpf(decay)
        exact = [
            float(mpmath.mpf(lr) * mpmath.exp(
                -(n * mpmath.log(d) + mpmath.loggamma(n + 1 / d) - mpmath.loggamma(1 / d))))
            for n in steps.tolist()
        ]
    assert_rel(ours, exact, 1e-12)


def test_time_based_first_steps_by_hand():
    s = S.time_based(0.1, 0.5)
    # eta_1 = eta_0 / 1, eta_2 = eta_1 / 1.5, eta_3 = eta_2 / 2
    np.testing.assert_allclose(s(np.arange(4)), [0.1, 0.1, 0.1 / 1.5, 0.1 / 1.5 / 2.0],
                               rtol=1e-13)


@given(st.floats(1e-4, 10.0), st.floats(0.01, 1.0), st.integers(1, 100))
def test_step_based_formula(lr, drop, every):
    n = np.arange(1000)
    expected = [lr * drop ** math.floor((1 + k) / every) for k in range(1000)]
    np.testing.assert_allclose(S.step_based(lr, drop, every)(n), expected, rtol=1e-12)


@given(st.floats(1e-4, 10.0), st.floats(0.0, 0.1))
def test_exponential_formula_and_recursion(lr, decay):
    n = np.arange(1000)
    ours = S.exponential(lr, decay)(n)
    np.testing.assert_allclose(ours, [lr * math.exp(-decay * k) for k in range(1000)],
                               rtol=1e-13)
    # the same decay as a recursion: eta_{n+1} = eta_n * exp(-decay)
    ratio = ours[1:] / ours[:-1]
    normal = ours[1:] > 1e-300
    np.testing.assert_allclose(ratio[normal], math.exp(-decay), rtol=1e-12)


def test_step_based_family_drops_as_documented_for_every_budget():
    """family("step_based"): the first update after the warmup at peak, ten-fold drops at
    round(D / 3) and one step after twice that, peak / 100 at step D (no third drop); below
    D = 3 one hundred-fold drop at D. D counts the steps after the warmup."""
    peak = 0.3
    budgets = [(steps, 0.0) for steps in range(2, 400)] + [
        (steps, w) for steps in (3, 7, 20, 301, 302, 1000, 10**6 + 1) for w in (0.05, 0.3)]
    for steps, warmup in budgets:
        s = S.family("step_based", peak, steps, warmup)
        w = int(round(warmup * steps))
        d = steps - w
        v = s(np.arange(w, steps + 1)) / peak  # body steps 0..D
        drops = (np.nonzero(np.diff(v))[0] + 1).tolist()
        assert v[0] == 1.0, (steps, warmup)
        assert v[-1] == pytest.approx(0.01, rel=1e-12), (steps, warmup)
        if d >= 3:
            first = round(d / 3)
            assert drops == [first, 2 * first + 1], (steps, warmup, drops)
            assert abs(3 * first - d) <= 1 and abs(3 * (2 * first + 1) - 2 * d) <= 5
            assert v[first] == pytest.approx(0.1, rel=1e-12)
        else:
            assert drops == [d], (steps, warmup, drops)


def test_time_based_family_reaches_its_end_for_huge_budgets():
    """The decay solved for budgets up to 2**53 (the bisection's lower bound stopped at
    1e-15, right for ~1e8 steps at most). Rounding the decay to 6 digits moves the end by
    at most ln(100) * 5e-6 (< 2.5e-5) relative; against the exact product (Gamma
    functions at 60 digits) the evaluation itself is within 1e-12."""
    for steps in (10**6, 10**8, 10**9, 10**12, 2**53):
        s = S.family("time_based", 1.0, steps)
        decay = s.params["decay"]
        ours = s(steps)
        assert ours == pytest.approx(0.01, rel=2.5e-5), steps
        with mpmath.workdps(60):
            d = mpmath.mpf(decay)
            exact = float(mpmath.exp(-(steps * mpmath.log(d) + mpmath.loggamma(steps + 1 / d)
                                       - mpmath.loggamma(1 / d))))
        assert ours == pytest.approx(exact, rel=1e-12), steps
