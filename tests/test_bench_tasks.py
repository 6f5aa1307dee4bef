"""lrkit.bench.tasks: every task builds reproducibly, trains to its target with its
known-good setting, and a diverging run is recorded rather than raised."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from lrkit import schedules as S
from lrkit.bench import TASKS, Batches, Run, get_task, train
from lrkit.bench.tasks import HELD_OUT

pytestmark = pytest.mark.usefixtures("one_thread")

# Budgets for the target check: the full budget where a run takes seconds, less for the
# MNIST-1D models (the known-good setting reaches the target well before its budget).
REDUCED_STEPS = {"mnist1d_mlp": 600, "mnist1d_cnn": 600}


def first_batches(loader: Batches, k: int = 3):
    return [b for _, b in zip(range(k), loader)]


def same_batches(a, b) -> bool:
    return all(torch.equal(x, y) for ba, bb in zip(a, b) for x, y in zip(ba, bb))


def test_registry_has_the_seven_tasks():
    assert list(TASKS) == ["quadratic", "noisy_quadratic", "mnist1d_mlp", "mnist1d_cnn",
                           "digits_softmax", "rosenbrock", "char_lm"]
    for task in TASKS.values():
        assert task.steps > 0 and task.batch_size > 0 and task.metric
        assert task.reached(task.target)
        assert not task.reached(task.worst) and not task.reached(math.nan)
    with pytest.raises(ValueError, match="get_task\\(\\): name must be one of 'quadratic'"):
        get_task("mnist")


def test_held_out_tasks_are_outside_the_arena_suites():
    """Issue 14's held-out discipline: three tasks no suite but "heldout" runs."""
    from lrkit.bench.runner import SUITES

    assert list(HELD_OUT) == ["shapes_bn", "tiny_transformer", "noisy_regression"]
    assert not set(HELD_OUT) & set(TASKS)
    for name in ("quick", "full"):
        assert not set(SUITES[name].tasks) & set(HELD_OUT)
    held = SUITES["heldout"]
    assert held.tasks == tuple(HELD_OUT) and held.seeds == 3
    assert held.grids["adam"] == SUITES["full"].grids["adam"]
    for task in HELD_OUT.values():
        assert get_task(task.name) is task
        assert task.reached(task.target) and not task.reached(task.worst)


@pytest.mark.parametrize("name", [*TASKS, *HELD_OUT])
def test_build_is_paired_by_seed_and_leaves_global_rng_alone(name):
    task = get_task(name)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())  # noqa: NPY002
    a, b, c = task.build(1), task.build(1), task.build(2)
    assert torch.equal(state[0], torch.get_rng_state())
    assert np.array_equal(state[1], np.random.get_state()[1]) and state[2] == random.getstate()  # noqa: NPY002
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    ba = first_batches(a.loader)
    assert same_batches(ba, first_batches(b.loader))
    assert same_batches(ba, first_batches(a.loader))  # every iter() replays the stream
    assert not same_batches(ba, first_batches(c.loader))
    inputs, targets = ba[0]
    assert len(inputs) == task.batch_size
    loss = a.loss_fn(a.model(inputs), targets)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    value = a.evaluate(a.model)
    assert math.isfinite(value) and not task.reached(value)
    m, loader, loss_fn = a.as_target()
    assert m is a.model and loader is a.loader and loss_fn is a.loss_fn


@pytest.mark.parametrize("name", [*TASKS, *HELD_OUT])
def test_known_good_setting_reaches_the_target(name):
    task = get_task(name)
    steps = REDUCED_STEPS.get(name, task.steps)
    ref = task.reference
    run = train(task, ref.make_optimizer, ref.schedule(steps), seed=0, steps=steps)
    assert not run.diverged
    assert task.reached(run.final), (name, run.final, task.target)
    assert run.steps_to_target is not None and run.steps_to_target <= steps
    assert run.eval_steps[0] == 0 and run.eval_steps[-1] == steps
    assert steps // 2 in run.eval_steps and run.half == run.metrics[
        run.eval_steps.index(steps // 2)]
    assert len(run.losses) == steps and run.wall_time > 0


@pytest.mark.parametrize("name", list(HELD_OUT))
def test_held_out_task_trains_a_few_steps_deterministically(name):
    """Same seed, same curve bit for bit; the loss falls; the metric is finite."""
    task = get_task(name)
    ref = task.reference

    def run(seed: int) -> Run:
        return train(task, ref.make_optimizer, ref.schedule(20), seed=seed, steps=20)

    a, b, c = run(0), run(0), run(1)
    assert a.metrics == b.metrics and a.losses == b.losses
    assert a.losses != c.losses
    assert not a.diverged and all(math.isfinite(v) for v in a.metrics)
    assert np.mean(a.losses[-5:]) < np.mean(a.losses[:5])


def test_same_seed_same_run_whatever_was_run_before():
    task = get_task("noisy_quadratic")
    ref = task.reference

    def run() -> Run:
        return train(task, ref.make_optimizer, ref.schedule(200), seed=3, steps=200)

    a = run()
    torch.manual_seed(123)
    train(task, ref.make_optimizer, ref.schedule(50), seed=4, steps=50)
    b = run()
    assert a.metrics == b.metrics and a.losses == b.losses


def test_diverging_run_is_recorded_not_raised():
    task = get_task("rosenbrock")
    run = train(task, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
                schedule=lambda n: S.family("cosine", 0.1, n, 0.05), seed=0)
    assert run.diverged and run.final == math.inf and run.half == math.inf
    assert run.steps_to_target is None and len(run.losses) < task.steps
    assert run.to_dict()["diverged"] is True


def test_schedule_forms_and_constant_lr():
    task = get_task("quadratic")
    make = task.reference.make_optimizer
    a = train(task, make, "cosine(0.01, total=100)", steps=100)
    b = train(task, make, lambda n: S.family("cosine", 0.01, n, warmup=0), steps=100)
    assert a.metrics == b.metrics
    c = train(task, make, None, steps=100)  # the optimizer's own lr, constant
    d = train(task, make, 0.01, steps=100)
    assert c.metrics == d.metrics


def test_digits_optimum_is_exact():
    from lrkit.bench import tasks as T

    w = T.digits_optimum()
    inst = get_task("digits_softmax").build(0)
    x, y = T._digits_tensors()
    weight = w[:-10].view(10, -1).clone().requires_grad_(True)
    bias = w[-10:].clone().requires_grad_(True)
    reg = 0.5 * T.DIGITS_L2 * (weight.pow(2).sum() + bias.pow(2).sum())
    loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + reg
    loss.backward()
    assert torch.cat([weight.grad.flatten(), bias.grad]).norm() < 1e-10
    assert inst.evaluate(inst.model) == pytest.approx(1.0)  # starts from zero


def test_digits_optimum_stops_at_rounding_and_is_cached_on_disk(tmp_path, monkeypatch):
    """Newton's method stops at the objective's rounding (a dozen solves, not 100 with
    backtracking that can never succeed); the result is computed once per machine."""
    from lrkit.bench import tasks as T

    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path))
    T.digits_optimum.cache_clear()
    solve, solves = torch.linalg.solve, []
    monkeypatch.setattr(torch.linalg, "solve", lambda *a: solves.append(1) or solve(*a))
    heard = []
    try:
        w = T.digits_optimum(log=heard.append)
        assert len(solves) <= 15
        assert len(heard) == 1 and "optimum" in heard[0] and str(tmp_path) in heard[0]
        assert len(list(tmp_path.glob("digits-optimum-*.npz"))) == 1
        T.digits_optimum.cache_clear()
        monkeypatch.setattr(T, "newton_softmax", lambda *a: pytest.fail("not cached"))
        again = T.digits_optimum(log=heard.append)
        assert torch.equal(again, w) and len(heard) == 1
    finally:
        T.digits_optimum.cache_clear()
    x, y = T._digits_tensors()
    weight = w[:-10].view(10, -1).clone().requires_grad_(True)
    bias = w[-10:].clone().requires_grad_(True)
    reg = 0.5 * T.DIGITS_L2 * (weight.pow(2).sum() + bias.pow(2).sum())
    (torch.nn.functional.cross_entropy(x @ weight.T + bias, y) + reg).backward()
    assert torch.cat([weight.grad.flatten(), bias.grad]).norm() < 1e-10


def test_train_checks_its_arguments():
    make = get_task("quadratic").reference.make_optimizer
    with pytest.raises(TypeError, match="train\\(\\): task must be a Task or a task name"):
        train(3, make)
    with pytest.raises(ValueError, match="get_task\\(\\): name must be one of"):
        train("nope", make)
    with pytest.raises(TypeError, match="make_optimizer must be callable"):
        train("quadratic", "adam")
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        train("quadratic", make, steps=0)
    with pytest.raises(ValueError, match="seed must be a non-negative integer, got -1"):
        train("quadratic", make, seed=-1)
