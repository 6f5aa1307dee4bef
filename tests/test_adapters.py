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


keras = pytest.importorskip("keras")


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
