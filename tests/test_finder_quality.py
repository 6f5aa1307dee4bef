"""The quality bar of the range test, reduced for CI (the full version, every task x 2
optimizers x 5 seeds x every rule, is benchmarks/finder_quality.py; its table, failures
included, is in benchmarks/README.md)."""
from __future__ import annotations

import pytest

from lrkit.bench import get_task
from lrkit.bench.finder_quality import (
    grid_losses,
    least_squares_sweep,
    task_sweep,
    trained_loss,
    within_band,
)
from lrkit.finder import DEFAULT_RULE

pytestmark = pytest.mark.usefixtures("one_thread")
SEEDS = range(10)


@pytest.mark.parametrize("rule", [DEFAULT_RULE, "minimum", "noisy"])
def test_least_squares_suggestion_for_sgd_lies_between_005_and_2_over_l(rule):
    for seed in SEEDS:  # L log-uniform in [1, 1000]
        result, top = least_squares_sweep(seed)
        lr = result.suggest(rule)
        assert 0.05 / top <= lr <= 2 / top, (seed, lr * top)


@pytest.mark.parametrize("kwargs", [{"steps": 50}, {"steps": 300}, {"smooth": 0.9},
                                    {"end": 1e3}, {"diverge": 20.0}])
def test_default_stays_in_the_band_whatever_the_sweep_settings(kwargs):
    for seed in range(5):
        result, top = least_squares_sweep(seed, **kwargs)
        assert 0.05 / top <= result.suggestion <= 2 / top, (seed, result.suggestion * top)


@pytest.mark.parametrize("name, optimizer, steps", [("quadratic", "adam", 400),
                                                    ("rosenbrock", "adam", 500)])
def test_default_suggestion_reaches_the_best_of_a_9_point_grid(name, optimizer, steps):
    task = get_task(name)
    for seed in range(5):
        result = task_sweep(task, optimizer, seed)
        grid = grid_losses(task, optimizer, seed, steps)
        loss = trained_loss(task, optimizer, seed, result.suggestion, steps)
        assert within_band(loss, grid), (seed, result.suggestion, loss, grid)
