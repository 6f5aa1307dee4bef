"""One definition serves Keras 3 and JAX/Optax."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings

from lrkit import schedules as S
from strategies import any_schedule


def test_importing_lrkit_imports_neither_keras_nor_jax():
    code = ("import sys, lrkit, lrkit.scheduler; from lrkit import schedules as S; "
            "S.cosine(0.1, 10)(3); "
            "bad = [m for m in ('keras', 'jax', 'optax') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def boundary_steps(d: int, lo: int = 2**23 - 2**12, hi: int = 2**24) -> np.ndarray:
    """The steps on both sides of each multiple of d in [lo, hi): where a float32 quotient
    n / d, or n + 0.5 (not representable from 2**23), lands on the wrong integer."""
    k = np.arange(-(-lo // d), -(-hi // d))
    n = np.concatenate([k * d - 1, k * d])
    return np.sort(n[(n >= lo) & (n < hi)])


def test_floor_div_is_exact_in_float32_below_2_24():
    """Ops.floor_div on float32 arrays (numpy here, as float32 backends divide): exact for
    every integer step below 2**24, which float32 holds exactly."""
    from lrkit.schedules._ops import Ops

    o = Ops(np, np.float32)
    rng = np.random.default_rng(0)
    for d in (1, 2, 3, 7, 41, 97, 1000, 4097, 12345, 57536, 90137, 2**20 + 1, 2**24 - 1):
        n = np.concatenate([boundary_steps(d), rng.integers(0, 2**24, 10_000)])
        got = o.floor_div(n.astype(np.float32), float(d))
        np.testing.assert_array_equal(got, n // d)


STEPWISE = [  # the fuzz sweep's cases: optax and keras switched one step early or went < 0
    (S.step(0.1, every=1048577, gamma=0.5), 1048577),
    (S.inverse_time(0.1, 1.0, every=57536, staircase=True), 57536),
    (S.cyclic(0.01, 0.1, up=1), 2),
    (S.cyclic(0.01, 0.1, up=10), 20),
    (S.cosine_restarts(0.1, period=1000), 1000),
    (S.step_based(0.1, 0.5, every=3), 3),
]


def check_float32_adapter(values, s, n):
    """float32 evaluation of the formula: within float32 rounding of the float64 values
    (a few roundings of quantities up to the schedule's peak), never a neighbour's value."""
    ref = s(n)
    np.testing.assert_allclose(values, ref, rtol=1e-5, atol=1e-6 * ref.max())
    assert values.min() >= 0


keras = pytest.importorskip("keras")


@pytest.mark.parametrize("s, d", STEPWISE, ids=[x.name for x, _ in STEPWISE])
def test_keras_stepwise_schedules_switch_at_the_right_step_up_to_2_24(s, d):
    n = boundary_steps(d, lo=max(2**24 - 400 * d, 0))[-400:]
    ks = s.keras()
    check_float32_adapter(np.asarray(keras.ops.convert_to_numpy(ks(n)), dtype=np.float64), s, n)


def test_keras_linear_ends_exactly_at_end():
    # arguments for which the float32 form start + (end - start) * n / total ended at -3e-8
    for lr, total in ((0.2997819185256958, 963), (0.0030442159472861005, 6)):
        ks = S.linear(lr, 0.0, total).keras()
        assert float(ks(total)) == 0.0 and float(ks(10**6)) == 0.0
        assert float(ks(0)) == np.float32(lr)


@given(any_schedule)
@settings(max_examples=25)
def test_keras_schedule_computes_the_same_values(s):
    ks = s.keras()
    assert isinstance(ks, keras.optimizers.schedules.LearningRateSchedule)
    steps = [0, 1, 2, 5, 17, 50, 99, 250]
    got = np.array([float(ks(n)) for n in steps])
    np.testing.assert_allclose(got, s(np.asarray(steps)), rtol=2e-4, atol=1e-7)


def test_keras_schedule_survives_saving(tmp_path):
    s = S.warmup(S.cosine(1e-2, total=90), steps=10)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=s.keras()), loss="mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((16, 3), dtype=np.float32), rng.random((16, 1), dtype=np.float32)
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    restored = loaded.optimizer.learning_rate if hasattr(loaded.optimizer, "learning_rate") \
        else None
    schedule = loaded.optimizer._learning_rate
    assert schedule.schedule == s
    assert restored is not None
    # the optimizer has taken 4 steps: the lr in use is s(4)
    assert float(loaded.optimizer.learning_rate) == pytest.approx(s(4), rel=1e-5)
    config = keras.optimizers.schedules.serialize(s.keras())
    again = keras.optimizers.schedules.deserialize(config)
    assert again.schedule == s


jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")


@given(any_schedule)
@settings(max_examples=25)
def test_optax_schedule_is_jittable_and_equal(s):
    fn = jax.jit(s.optax())
    steps = np.array([0, 1, 2, 5, 17, 50, 99, 250])
    got = np.asarray(fn(jax.numpy.asarray(steps)), dtype=np.float64)
    np.testing.assert_allclose(got, s(steps), rtol=2e-4, atol=1e-7)
    assert float(fn(jax.numpy.asarray(3))) == pytest.approx(s(3), rel=2e-4, abs=1e-7)


def test_optax_schedule_drives_an_optax_optimizer():
    s = S.warmup(S.cosine(0.1, 90), 10)
    tx = optax.sgd(learning_rate=s.optax())
    params = {"w": jax.numpy.ones(3)}
    state = tx.init(params)

    @jax.jit
    def update(params, state):
        grads = {"w": jax.numpy.ones(3)}
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    for _ in range(20):
        params, state = update(params, state)
    expected = 1.0 - s(np.arange(20)).sum()
    np.testing.assert_allclose(np.asarray(params["w"]), expected, rtol=1e-5)


@pytest.mark.parametrize("s, d", STEPWISE, ids=[x.name for x, _ in STEPWISE])
def test_optax_stepwise_schedules_switch_at_the_right_step_up_to_2_24(s, d):
    n = boundary_steps(d, lo=max(2**24 - 400 * d, 0))[-400:]
    fn = jax.jit(s.optax())
    check_float32_adapter(np.asarray(fn(jax.numpy.asarray(n, dtype=jax.numpy.int32)),
                                     dtype=np.float64), s, n)


def test_optax_takes_numpy_integer_steps_past_2_31():
    """numpy int64 (scalars and arrays) are converted as Python ints are: jax without x64
    would wrap them to int32 (3 * 2**30 became -2**30, a rate above the start)."""
    s = S.linear(0.1, 0.0, 2**32)
    fn = s.optax()
    step = 3 * 2**30
    expected = float(fn(step))
    assert expected == pytest.approx(s(step), rel=1e-6)
    assert float(fn(np.int64(step))) == expected
    assert float(fn(np.uint64(step))) == expected
    np.testing.assert_array_equal(np.asarray(fn(np.array([step], dtype=np.int64))),
                                  [expected])


def test_optax_nested_warmups_and_linear_end():
    s = S.warmup(S.warmup(S.linear(0.3, 0.0, 6), steps=2, start=0.1), steps=3)
    n = np.arange(15)
    fn = jax.jit(s.optax())
    np.testing.assert_allclose(np.asarray(fn(jax.numpy.asarray(n))), s(n), rtol=1e-6)
    assert float(fn(jax.numpy.asarray(5))) == pytest.approx(s(5), rel=1e-6)
    assert float(fn(jax.numpy.asarray(11))) == 0.0
