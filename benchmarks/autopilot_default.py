"""The autopilot as a user runs it by default: probes scored on 4 held training batches
(no ``val_fn``), Adam, budget 1.5, on arena and held-out tasks x seeds; the task's metric
at the end, the chosen peaks and how many probe rows ended in a tie (issue 14's rule: a
lower rate within ``--tie-se`` standard errors of a row's best, on the paired per-batch
differences, is that row's optimum; ``--tie-se 0`` compares as before the rule).

    python benchmarks/autopilot_default.py --tasks noisy_quadratic,mnist1d_mlp --seeds 3
    python benchmarks/autopilot_default.py --tie-se 0          # without the tie rule
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from lrkit import pilot
from lrkit.bench.tasks import HELD_OUT, TASKS

DEFAULT_TASKS = ("noisy_regression", "noisy_quadratic", "digits_softmax", "mnist1d_mlp",
                 "quadratic", "rosenbrock")


def run(task_name: str, seed: int) -> dict:
    task = {**TASKS, **HELD_OUT}[task_name]
    inst = task.build(seed)
    report = pilot.autopilot(inst.model, inst.loader, inst.loss_fn, steps=task.steps,
                             optimizer="adam", seed=seed, progress=False)
    return {"final": inst.evaluate(inst.model), "lr": report.lr,
            "family": report.schedule.split("(")[0] if not report.schedule.startswith(
                "warmup(") else report.schedule[7:].split("(")[0],
            "ties": sum("ties with" in d for d in report.decisions),
            "metric": task.metric}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(DEFAULT_TASKS))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tie-se", type=float, default=pilot.TIE_STANDARD_ERRORS)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    pilot.TIE_STANDARD_ERRORS = args.tie_se
    print(f"tie rule: {args.tie_se:g} standard errors; {args.seeds} seeds")
    print("| task | metric | mean | per seed | peaks | families | rows tied |")
    print("|---|---|---:|---|---|---|---|")
    for name in args.tasks.split(","):
        rows = [run(name, s) for s in range(args.seeds)]
        mean = statistics.fmean(r["final"] for r in rows)
        finals = ", ".join(format(r["final"], ".4g") for r in rows)
        peaks = ", ".join(format(r["lr"], ".3g") for r in rows)
        families = ", ".join(r["family"] for r in rows)
        print(f"| {name} | {rows[0]['metric']} | {mean:.4g} | {finals} | {peaks} "
              f"| {families} | {[r['ties'] for r in rows]} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
