"""The article's three schedules against their defining recursions and formulas."""
from __future__ import annotations

import math

import mpmath
import numpy as np
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
