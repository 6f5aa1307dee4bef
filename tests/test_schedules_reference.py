"""Every modern schedule equals its reference (torch, keras, optax) over random arguments."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import schedules as S

lrs = st.floats(1e-5, 1.0)
float64_tol = {"rtol": 1e-9}
float32_tol = {"rtol": 1e-4}


def torch_lrs(make, base_lr: float, steps: int) -> np.ndarray:
    """The lr each of ``steps`` optimizer updates uses under a torch scheduler."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=base_lr, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = make(opt)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
    return np.asarray(out)


def close(ours: np.ndarray, ref: np.ndarray, scale: float, rtol: float) -> None:
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * 1e-3 * scale)


# -- torch -------------------------------------------------------------------------------
@given(lrs, st.integers(1, 40), st.floats(0.05, 1.0), st.integers(1, 200))
def test_step_equals_torch_steplr(lr, every, gamma, steps):
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, every, gamma), lr, steps)
    close(S.step(lr, every, gamma)(np.arange(steps)), ref, lr, **float64_tol)


@given(lrs, st.lists(st.integers(1, 150), max_size=6), st.floats(0.05, 1.0),
       st.integers(1, 200))
def test_multistep_equals_torch(lr, milestones, gamma, steps):
    milestones = sorted(milestones)
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma), lr,
                    steps)
    close(S.multistep(lr, milestones, gamma)(np.arange(steps)), ref, lr, **float64_tol)


@given(lrs, st.integers(1, 150), st.floats(0.2, 4.0), st.integers(0, 40))
def test_polynomial_end0_equals_torch_polynomiallr(lr, total, power, extra):
    steps = total + extra
    ref = torch_lrs(lambda o: torch.optim.lr_scheduler.PolynomialLR(o, total, power), lr, steps)
    close(S.polynomial(lr, total, power=power)(np.arange(steps)), ref, lr, **float64_tol)


@given(lrs, st.integers(1, 200), st.floats(0.0, 1e-3))
def test_cosine_equals_torch_cosineannealing(lr, total, end):
    end = min(end, lr)
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=total, eta_min=end), lr,
        total + 1)
    close(S.cosine(lr, total, end)(np.arange(total + 1)), ref, lr, **float64_tol)


def test_cosine_holds_end_after_total():
    s = S.cosine(0.1, 100, end=0.001)
    assert np.all(s(np.arange(100, 1000)) == pytest.approx(0.001))


@given(lrs, st.integers(1, 30), st.integers(1, 3), st.floats(0.0, 1e-3), st.integers(1, 400))
def test_cosine_restarts_equals_torch(lr, period, mult, end, steps):
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(o, period, mult, end),
        lr, steps)
    close(S.cosine_restarts(lr, period, mult, end)(np.arange(steps)), ref, lr, **float64_tol)


@given(st.floats(1e-5, 0.1), st.floats(0.0, 1.0), st.integers(1, 40),
       st.none() | st.integers(1, 40), st.sampled_from(["triangular", "triangular2", "exp_range"]),
       st.floats(0.9, 1.0), st.integers(1, 300))
def test_cyclic_equals_torch_cycliclr(low, width, up, down, mode, gamma, steps):
    high = low + width
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.CyclicLR(
            o, low, high, step_size_up=up, step_size_down=down, mode=mode, gamma=gamma,
            cycle_momentum=False),
        low, steps)
    ours = S.cyclic(low, high, up, down, mode=mode, gamma=gamma)(np.arange(steps))
    close(ours, ref, high, **float64_tol)


@given(lrs, st.integers(10, 500), st.floats(0.05, 0.9), st.sampled_from(["cos", "linear"]),
       st.floats(1.5, 100), st.floats(1.5, 1e4), st.booleans())
def test_one_cycle_equals_torch_onecyclelr(max_lr, total, pct, anneal, div, final_div, three):
    if three:
        pct = min(pct, 0.45)
    try:
        ours = S.one_cycle(max_lr, total, pct, anneal, div, final_div, three)
    except ValueError:  # a phase shorter than one step: torch would divide by zero
        assert pct * total <= 1 or (three and 2 * pct * total - 2 >= total - 1) or \
            (three and pct * total - 1 >= 2 * pct * total - 2)
        return
    ref = torch_lrs(
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, max_lr, total_steps=total, pct_start=pct, anneal_strategy=anneal,
            div_factor=div, final_div_factor=final_div, three_phase=three,
            cycle_momentum=False),
        max_lr, total)
    close(ours(np.arange(total)), ref, max_lr, **float64_tol)


# -- keras -------------------------------------------------------------------------------
keras = pytest.importorskip("keras")


def keras_lrs(schedule, steps: int) -> np.ndarray:
    return np.array([float(schedule(i)) for i in range(steps)])


@given(lrs, st.floats(0.0, 2.0), st.integers(1, 50), st.booleans(), st.integers(1, 150))
def test_inverse_time_equals_keras(lr, rate, every, staircase, steps):
    ref = keras_lrs(keras.optimizers.schedules.InverseTimeDecay(lr, every, rate, staircase),
                    steps)
    close(S.inverse_time(lr, rate, every, staircase)(np.arange(steps)), ref, lr, **float32_tol)


@given(lrs, st.floats(0.1, 1.0), st.integers(1, 50), st.booleans(), st.integers(1, 150))
def test_exponential_decay_equals_keras(lr, rate, every, staircase, steps):
    ref = keras_lrs(keras.optimizers.schedules.ExponentialDecay(lr, every, rate, staircase),
                    steps)
    close(S.exponential_decay(lr, rate, every, staircase)(np.arange(steps)), ref, lr,
          **float32_tol)


@given(lrs, st.integers(1, 150), st.floats(0.0, 1e-3), st.floats(0.2, 4.0), st.integers(0, 30))
def test_polynomial_equals_keras(lr, total, end, power, extra):
    steps = total + extra
    ref = keras_lrs(keras.optimizers.schedules.PolynomialDecay(lr, total, end, power), steps)
    close(S.polynomial(lr, total, end, power)(np.arange(steps)), ref, lr, **float32_tol)


# -- optax -------------------------------------------------------------------------------
optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")


def optax_lrs(schedule, steps: int) -> np.ndarray:
    return np.asarray(schedule(jnp.arange(steps)), dtype=np.float64)


@given(st.floats(0, 1e-3), lrs, st.integers(0, 100), st.integers(1, 200), st.floats(0, 1e-4))
def test_warmup_cosine_equals_optax(init, peak, warmup, decay_len, end):
    total = warmup + decay_len
    ref = optax.warmup_cosine_decay_schedule(init, peak, warmup, total, end)
    ours = S.warmup(S.cosine(peak, total - warmup, end), warmup, start=init)
    close(ours(np.arange(total + 20)), optax_lrs(ref, total + 20), peak, **float32_tol)


@given(lrs, lrs, st.integers(1, 100), st.integers(0, 100), st.integers(1, 100))
def test_join_equals_optax_join_schedules(a, b, total, boundary, extra):
    ref = optax.join_schedules(
        [optax.constant_schedule(a), optax.cosine_decay_schedule(b, total)], [boundary])
    ours = S.join([S.constant(a), S.cosine(b, total)], [boundary])
    n = boundary + total + extra
    close(ours(np.arange(n)), optax_lrs(ref, n), max(a, b), **float32_tol)


@given(lrs, lrs, st.integers(1, 200))
def test_linear_equals_optax(start, end, total):
    ref = optax.linear_schedule(start, end, total)
    close(S.linear(start, end, total)(np.arange(total + 10)), optax_lrs(ref, total + 10),
          max(start, end), **float32_tol)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 10**6))
@settings(max_examples=40)
def test_linear_equals_optax_in_float64_and_ends_exactly_at_end(start, end, total):
    """optax's values in float64 (jax with x64), ``end`` itself from ``total`` on, and never
    outside [min(start, end), max(start, end)] (a negative rate with end=0 was possible).
    The formula has four roundings, each within an ulp of max(start, end) (XLA may divide
    by multiplying with the reciprocal: one more): the tolerance is 8 of them, and at least
    float64's smallest normal number (XLA flushes subnormals to zero)."""
    n = np.unique(np.r_[0, 1, total // 2, np.arange(max(total - 5, 0), total + 5), 2 * total])
    ours = S.linear(start, end, total)(n)
    with jax.enable_x64(True):
        ref = np.asarray(optax.linear_schedule(start, end, total)(jnp.asarray(n)))
    assert ref.dtype == np.float64
    atol = max(8 * np.finfo(float).eps * max(start, end), np.finfo(float).tiny)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=atol)
    assert np.all(ours[n >= total] == end)  # (XLA's reciprocal can leave optax an ulp off)
    assert min(start, end) <= ours.min() and ours.max() <= max(start, end)


def test_linear_family_ends_at_zero():
    assert S.linear(0.0030442159472861005, 0.0, 6)(6) == 0.0  # was -4.3e-19
    for steps, warmup in [(5, 0.0), (6, 0.0), (1000, 0.05), (12345, 0.3)]:
        s = S.family("linear", 1.9587494410651531, steps, warmup)
        assert s(steps) == 0.0 and s(steps + 7) == 0.0 and s(steps - 1) > 0.0


@given(lrs, st.floats(0.1, 1.0), st.integers(1, 50), st.booleans())
def test_exponential_decay_equals_optax(lr, rate, every, staircase):
    ref = optax_lrs(optax.exponential_decay(lr, every, rate, staircase=staircase), 200)
    ours = S.exponential_decay(lr, rate, every, staircase)(np.arange(200))
    if staircase:  # optax's float32 floor(k*every / every) can land on k - 1; skip those steps
        keep = np.arange(200) % every != 0
        ours, ref = ours[keep], ref[keep]
    close(ours, ref, lr, **float32_tol)
