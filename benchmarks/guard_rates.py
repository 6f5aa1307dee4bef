"""False-alarm and miss rates of ``lrkit.DivergenceGuard`` on the arena's tasks.

For every built-in task and seed, three runs are trained once without a guard, recording
every minibatch loss: a healthy one (the task's known-good recipe: its optimizer and lr,
linear warmup over 5% then cosine), and two faulty ones, the same until 40% of the budget
and then at a constant lr FAULT times the recipe's (x5 and x30). Each guard setting then
replays the losses, observing only: up to its first intervention a guarded run is the
same run, so the first intervention is what matters.

* false alarm: a healthy run with an intervention, or a faulty run with one before the
  fault (counted over all runs);
* harmful fault: a faulty run whose final metric misses the task's target while the
  healthy run of that seed reaches it, or that diverged;
* miss: a harmful fault with no intervention after the fault step;
* delay: steps from the fault to the first intervention (median over the caught).

    python benchmarks/guard_rates.py                       # full budgets, 2 seeds
    python benchmarks/guard_rates.py --tasks quadratic --seeds 1 --scale 0.5
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FAULTS = (5.0, 30.0)
FAULT_AT = 0.4
SETTINGS = {
    "default": {},
    "spread=3": {"spread": 3.0},
    "spread=3, window=20": {"spread": 3.0, "window": 20},
    "spread=3, rise=None (before issue 16)": {"spread": 3.0, "rise": None},
    "default, rise=None (before issue 16)": {"rise": None},
}


def run(task_name: str, seed: int, factor: float | None, scale: float) -> dict:
    import torch

    from lrkit import schedules as S
    from lrkit.bench import get_task, train
    from lrkit.bench.tasks import warmup_cosine

    torch.set_num_threads(1)
    task = get_task(task_name)
    steps = max(100, int(task.steps * scale))
    recipe = task.reference
    healthy = warmup_cosine(recipe.lr, steps, recipe.warmup)
    fault = int(FAULT_AT * steps)
    schedule = healthy if factor is None else S.join(
        [healthy, S.constant(recipe.lr * factor)], [fault])
    losses: list[float] = []
    record = train(task, recipe.make_optimizer, schedule, seed=seed, steps=steps,
                   callback=lambda step, loss: losses.append(loss))
    if record.diverged and (not losses or math.isfinite(losses[-1])):
        losses.append(math.nan)  # a non-finite metric ended it: the loop would see it next
    return {"task": task_name, "seed": seed, "factor": factor, "fault": fault,
            "losses": losses, "final": record.final, "diverged": record.diverged,
            "reached": task.reached(record.final)}


def first_intervention(losses: list[float], kwargs: dict) -> int | None:
    import logging

    import torch

    logging.getLogger("lrkit.guard").setLevel(logging.ERROR)  # events are counted here

    from lrkit import DivergenceGuard

    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    guard = DivergenceGuard(model, opt, max_retries=10**9, **kwargs)
    for i, value in enumerate(losses):
        if not guard.check(value):
            return i
    return None


def main() -> None:
    from lrkit.bench import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each budget")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    jobs = [(t, s, f, args.scale) for t in args.tasks.split(",") for s in range(args.seeds)
            for f in (None, *FAULTS)]
    began = time.perf_counter()
    with ProcessPoolExecutor(args.workers) as pool:
        runs = list(pool.map(run, *zip(*jobs)))
    healthy_ok = {(r["task"], r["seed"]): r["reached"] for r in runs if r["factor"] is None}
    print(f"{len(runs)} runs in {time.perf_counter() - began:.0f} s")
    for r in runs:
        print(f"  {r['task']:16s} seed {r['seed']} fault x{r['factor'] or 1:<4g} "
              f"final {r['final']:.4g} reached={r['reached']} diverged={r['diverged']}")
    print("\n| guard setting | false alarms | harmful faults caught | missed | median delay |")
    print("|---|---|---|---|---|")
    for name, kwargs in SETTINGS.items():
        alarms = caught = missed = 0
        delays = []
        for r in runs:
            at = first_intervention(r["losses"], kwargs)
            if r["factor"] is None:
                alarms += at is not None
                continue
            if at is not None and at < r["fault"]:
                alarms += 1
                continue
            harmful = r["diverged"] or (healthy_ok[(r["task"], r["seed"])] and not r["reached"])
            if not harmful:
                continue
            if at is None:
                missed += 1
            else:
                caught += 1
                delays.append(at - r["fault"])
        delay = f"{statistics.median(delays):.0f} steps" if delays else "-"
        print(f"| {name} | {alarms}/{len(runs)} | {caught}/{caught + missed} | {missed} | "
              f"{delay} |")


if __name__ == "__main__":
    main()
