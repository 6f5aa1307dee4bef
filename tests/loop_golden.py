"""Seeded cells, first recorded from main at 4cb7062, before the one training loop (issue
13): ``python tests/loop_golden.py --record --record-extra`` writes
``tests/data/loop_golden.json``; ``tests/test_loop_identity.py`` replays every cell and
asserts identical numbers. The one loop replayed the 4cb7062 numbers bit for bit (branch
house-loop, ce87060). Two later changes moved some of them on purpose, and the file was
recorded again when they were merged: the kernels' correctly rounded square root (issue 19;
with ``LRKIT_KERNEL_SQRT=torch`` the 4cb7062 numbers of Adam, Prodigy and the autopilot
came back) and the digits_softmax optimum solved to its rounding (issue 16; the
``distance_to_optimum`` metric of the four digits_softmax cells). The autopilot's own
search changed in issue 14 (probes at two lengths, the horizon fit, the family chosen from
it): its three cells were recorded again then, the others replayed unchanged. The
``step_based`` family's drops were mended on 2026-12-03 (a third ten-fold drop fell at the
last step of budgets D with D % 3 == 0): its cell was recorded again. They now hold the
loop to its numbers against regressions.

Each cell is an arena method on a task for a few steps (plain steps, a closure, the
schedule-free eval switch, a learning-rate-free optimizer, every schedule family the arena
kept), the range test, the autopilot (range test, probes, guard) and a tuning trial.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

GOLDEN = Path(__file__).with_name("data") / "loop_golden.json"
CELLS = [  # (method, task, lr, seed, steps)
    ("adam_cosine", "mnist1d_mlp", 3e-3, 0, 40),
    ("adam_linear", "quadratic", 0.1, 1, 60),
    ("sgd_constant", "digits_softmax", 0.1, 0, 60),
    ("sgd_step_based", "noisy_quadratic", 0.01, 0, 60),
    ("adam_exponential", "rosenbrock", 0.01, 0, 60),
    ("adam_time_based", "quadratic", 0.01, 2, 60),
    ("adam_one_cycle", "rosenbrock", 0.01, 0, 60),
    ("sgd_wsd", "quadratic", 0.1, 0, 60),
    ("adam_default", "digits_softmax", 1e-3, 0, 40),
    ("sf_adamw", "digits_softmax", 0.01, 0, 40),
    ("prodigy", "quadratic", 1.0, 0, 40),
    ("sls", "quadratic", 1.0, 0, 40),
    ("sls", "mnist1d_mlp", 1.0, 0, 20),
    ("sgd_constant", "rosenbrock", 1.0, 0, 60),  # diverges
]


def cell(method: str, task: str, lr: float, seed: int, steps: int) -> dict:
    from lrkit.bench import get_task
    from lrkit.bench.methods import METHODS

    torch.set_num_threads(1)
    run = METHODS[method].cell(get_task(task), lr, seed, steps=steps)
    return {"losses": run.losses, "metrics": run.metrics, "final": run.final,
            "diverged": run.diverged, "compute": run.compute,
            "info": {k: v for k, v in run.info.items() if isinstance(v, (int, float))}}


def finder() -> dict:
    import lrkit
    from lrkit.bench import get_task

    torch.set_num_threads(1)
    inst = get_task("mnist1d_mlp").build(0)
    opt = torch.optim.Adam(inst.model.parameters(), lr=1e-3)
    r = lrkit.find_lr(inst.model, opt, inst.loader, inst.loss_fn, steps=60)
    acc = lrkit.find_lr(inst.model, opt, inst.loader, inst.loss_fn, steps=30, accumulate=2)
    return {"losses": r.losses.tolist(), "lrs": r.lrs.tolist(), "suggestion": r.suggestion,
            "acc_losses": acc.losses.tolist(),
            "after": [float(p.detach().sum()) for p in inst.model.parameters()]}


def autopilot(optimizer: str, steps: int, **options) -> dict:
    import lrkit
    from lrkit.bench import get_task

    torch.set_num_threads(1)
    inst = get_task("quadratic").build(0)
    rep = lrkit.autopilot(inst.model, inst.loader, inst.loss_fn, steps=steps,
                          optimizer=optimizer, seed=0, progress=False, **options)
    return {"lr": rep.lr, "schedule": rep.schedule, "losses": rep.losses, "lrs": rep.lrs,
            "probes": [[p.lr, p.steps, p.score] for p in rep.probes],
            "guard_events": len(rep.guard_events), "compute": rep.compute,
            "metric": inst.evaluate(inst.model)}


def tune_trial() -> dict:
    from lrkit.bench import get_task
    from lrkit.bench.train import train
    from lrkit.tuning.objective import _make_optimizer
    from lrkit.tuning.space import schedule_of

    torch.set_num_threads(1)
    params = {"lr": 0.01, "schedule": "cosine", "warmup": 0.1, "momentum": 0.85}
    run = train(get_task("digits_softmax"), _make_optimizer("adam", params),
                schedule_of(params, 50), seed=0, steps=50)
    return {"losses": run.losses, "metrics": run.metrics}


def tune_target() -> dict:
    from lrkit.tuning.objective import _target_objective

    torch.set_num_threads(1)
    reported = []
    objective = _target_objective("quadratic", "sgd(momentum=0.9)", 60)
    value = objective.fn({"lr": 0.05, "schedule": "cosine", "warmup": 0.1},
                         lambda step, v: reported.append([step, v]))
    return {"value": value, "reported": reported}


EXTRA = {  # recorded from 4cb7062 too, after the first set
    "autopilot/adam/cosine-given": lambda: autopilot("adam", 150,
                                                     schedule="cosine(1, total=150)"),
    "autopilot/sgd/val_fn": lambda: autopilot("sgd(momentum=0.9)", 120, budget=2.0,
                                              val_fn=lambda m: float(m.theta.sum() ** 2)),
    "tune/target": tune_target,
}


def compute_all() -> dict:
    out = {f"{m}/{t}/{lr}/{s}/{n}": cell(m, t, lr, s, n) for m, t, lr, s, n in CELLS}
    out["find_lr"] = finder()
    out["autopilot/adam"] = autopilot("adam", 200)
    out["autopilot/prodigy"] = autopilot("prodigy", 60)
    out["tune/cosine"] = tune_trial()
    return out


if __name__ == "__main__":
    if "--record" in sys.argv:
        GOLDEN.write_text(json.dumps(compute_all(), indent=1))
        print("wrote", GOLDEN)
    if "--record-extra" in sys.argv:
        recorded = json.loads(GOLDEN.read_text())
        recorded.update({k: f() for k, f in EXTRA.items()})
        GOLDEN.write_text(json.dumps(recorded, indent=1))
        print("added", ", ".join(EXTRA))
