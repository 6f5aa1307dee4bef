"""The arena's L-BFGS methods: full batch only where a task has one, charged by function
evaluations (compute, and the metric curve), and what the optimizer reported."""
from __future__ import annotations

import pytest
import torch

from lrkit.bench import METHODS, get_task
from lrkit.bench.methods import FULL_BATCH_TASKS, Method, lbfgs_cell
from lrkit.bench.runner import SUITES, plan

LBFGS_METHODS = ("lbfgs_strong_wolfe", "lbfgs_armijo")


def test_planned_only_on_the_full_batch_tasks():
    p = plan(SUITES["full"], methods=[METHODS[m] for m in LBFGS_METHODS], seeds=1)
    assert {(j.task, j.method.name) for j in p.jobs} == {
        (t, m) for t in FULL_BATCH_TASKS for m in LBFGS_METHODS}
    assert all(get_task(t).build(0).full_batch is not None for t in ("quadratic", "rosenbrock"))
    assert get_task("noisy_quadratic").build(0).full_batch is None


@pytest.mark.parametrize("name", LBFGS_METHODS)
def test_rosenbrock_cell_is_charged_by_function_evaluations(name):
    task = get_task("rosenbrock")
    run = METHODS[name].cell(task, 1.0, 0, steps=200)
    evals = run.info["function_evals"]
    assert run.info["spent"] == pytest.approx(evals / 200)  # one evaluation: one step
    assert run.compute == 1.0  # (charged its budget: the curve is indexed by compute)
    assert not run.diverged
    assert run.steps_to_target is not None  # (at the checkpoints: every 50 steps)
    assert run.final < 1e-8 < run.metrics[0]  # the noise-free objective: to its minimum
    assert run.eval_steps == sorted(task.evaluation_steps(200))
    assert run.info["curvature_pairs"] > 0 and len(run.losses) == run.info["iterations"]


def test_quadratic_full_batch_is_the_training_objective_and_its_cost():
    task = get_task("quadratic")
    inst = task.build(0)
    full = inst.full_batch
    assert full.cost == pytest.approx(1000 / task.batch_size)
    batch, _ = next(iter(inst.loader))
    manual = torch.stack([inst.loss_fn(inst.model(p[None]), None) for p in full.inputs]).mean()
    assert float(inst.loss_fn(inst.model(full.inputs), full.targets).detach()) == pytest.approx(
        float(manual), rel=1e-5)
    run = METHODS["lbfgs_strong_wolfe"].cell(task, 1.0, 0, steps=160)  # 20 evaluations
    assert run.info["function_evals"] <= 160 // full.cost + 1
    assert run.info["spent"] == pytest.approx(run.info["function_evals"] * full.cost / 160)
    assert run.metrics[-1] < run.metrics[0]


def test_a_task_without_a_full_batch_is_refused_clearly():
    m = Method("lb", "L-BFGS", "LBFGS", lr=1.0, runner=lbfgs_cell)
    with pytest.raises(ValueError, match="has no full batch"):
        m.cell(get_task("noisy_quadratic"), 1.0, 0, steps=10)


def test_benchmark_table_from_a_small_bench(tmp_path):
    """benchmarks/lbfgs_arena.py reads a results file into one table per task."""
    import importlib.util
    from pathlib import Path

    from lrkit.bench import bench
    bench("quick", tasks=["rosenbrock"], methods=["lbfgs_strong_wolfe", "adam_default"],
          workers=1, out=tmp_path, steps=100, report=False, progress=False, log=lambda _: None)
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lbfgs_arena.py"
    spec = importlib.util.spec_from_file_location("lbfgs_arena", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.tables(str(tmp_path / "results.csv"))
    assert "**rosenbrock**" in text and "| 1 | L-BFGS strong Wolfe (full batch) | 1 (untuned)" \
        in text and "Adam 1e-3 constant (default)" in text
