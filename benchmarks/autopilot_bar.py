"""Issue 9's bar, read from an arena results file: the autopilot against the best cell of
the same optimizer's lr x schedule grid, and the untuned contenders, per task.

    lrkit bench --suite full --methods adam_constant,adam_step_based,adam_exponential,\\
        adam_time_based,adam_cosine,adam_one_cycle,adam_wsd,adam_linear,adam_default,\\
        sf_adamw_default,prodigy,autopilot --out bench-full
    python benchmarks/autopilot_bar.py bench-full

For each task: the final metric (mean over the paired seeds) of the autopilot; of the grid
best (the best (schedule, lr) cell of every tuned Adam method, chosen on that same mean);
of Prodigy, ScheduleFreeAdamW at its default lr and Adam at 1e-3 constant; each one's
compute in runs of the task's budget (the grid's is its number of cells per seed); the
autopilot's gap to the grid best, relative, in the metric's better direction; and whether
it meets the bar: within 1% and at most 2x the compute of one run, not diverged on any seed.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys

from lrkit.bench import results as R
from lrkit.bench.report import summarize

UNTUNED = (("prodigy", "Prodigy"), ("sf_adamw_default", "SF-AdamW 2.5e-3"),
           ("adam_default", "Adam 1e-3 const"))


def fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4g}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results.csv or the directory holding it")
    ap.add_argument("--auto", default="autopilot", help="the self-tuning method's name")
    ap.add_argument("--probe", default="Adam()", help="its optimizer as the grid names it")
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--max-compute", type=float, default=2.0)
    args = ap.parse_args(argv)
    arena = summarize(R.load_rows(args.results))
    head = ["task", "metric", "autopilot", "compute", "grid best (Adam)", "its setting",
            "grid cells", "gap", "bar"] + [label for _, label in UNTUNED]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    met = 0
    for task in arena.tasks:
        auto = arena.entry(task, args.auto)
        grid = [e for e in task.entries if e.tuned and e.probe == args.probe]
        if auto is None or not grid:
            continue
        best_entry = min(grid, key=lambda e: e.score)
        best = best_entry.best
        cells = sum(len(e.settings) for e in grid)
        a = auto.best
        sign = -1.0 if task.higher_is_better else 1.0
        gap = sign * (a.final - best.final) / abs(best.final) if math.isfinite(a.final) \
            else math.inf
        ok = (not a.diverged and gap <= args.tolerance and a.compute <= args.max_compute)
        met += ok
        row = [task.name, task.metric, fmt(a.final), f"{a.compute:.2f}x", fmt(best.final),
               f"{best_entry.label} lr={best.lr:g}", str(cells),
               f"{gap:+.1%}" if math.isfinite(gap) else "inf", "yes" if ok else "no"]
        for name, _ in UNTUNED:
            e = arena.entry(task, name)
            row.append(f"{fmt(e.best.final)} ({e.best.compute:.2f}x)" if e else "-")
        print("| " + " | ".join(row) + " |")
    seeds = statistics.median(e.seeds for t in arena.tasks for e in t.entries)
    print(f"\nbar met on {met} of {len(arena.tasks)} tasks (needs 5 of 7); seeds per cell: "
          f"{seeds:g}; compute in runs of the task's budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
