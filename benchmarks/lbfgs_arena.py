"""The arena's full-batch tasks with and without L-BFGS: one table per task, read from a
``lrkit bench`` results file.

    lrkit bench --suite quick --tasks quadratic,digits_softmax,rosenbrock --out arena18
    python benchmarks/lbfgs_arena.py arena18/results.csv

Rows: the two L-BFGS methods, then each other method family's best entry (tuned methods at
their best lr of the grid), ranked as the report ranks them. "compute to target" is what a
method spent until its metric first met the task's target, in runs of the task's budget
(L-BFGS: full-batch function evaluations x their cost in minibatch steps); "spent" what
the run used in all (L-BFGS stops early once converged; every other method uses its
budget).
"""
from __future__ import annotations

import argparse
import math

from lrkit.bench import results as R
from lrkit.bench.report import fmt, summarize


def tables(path: str) -> str:
    arena = summarize(R.load_rows(path))
    out = []
    for task in arena.tasks:
        best_of: dict[str, object] = {}
        for e in task.entries:  # best first
            key = e.method if e.family in ("quasi_newton", "baseline", "lr_free", "auto") \
                else e.family
            best_of.setdefault(key, e)
        rank = {e.method: i for i, e in enumerate(task.entries, 1)}
        chosen = sorted(best_of.values(), key=lambda e: rank[e.method])
        out.append(f"**{task.name}** ({task.metric}, target {fmt(task.target)}, "
                   f"{task.steps} steps of budget; untrained {fmt(task.start)})\n")
        out.append("| rank | method | lr | final | steps to target | compute to target | "
                   "spent |")
        out.append("|---|---|---|---|---|---|---|")
        for e in chosen:
            b = e.best
            lr = fmt(b.lr, 3) + ("" if e.tuned else " (untuned)")
            stt, ctt = b.steps_to_target, b.cost_to_target
            out.append(f"| {rank[e.method]} | {e.label} | {lr} | "
                       f"{'diverged' if b.diverged else fmt(b.final)} | "
                       f"{fmt(stt) if math.isfinite(stt) else '-'} | "
                       f"{fmt(ctt, 3) if math.isfinite(ctt) else '-'} | {fmt(_spent(b), 3)} |")
        out.append("")
    return "\n".join(out)


def _spent(setting) -> float:
    """The compute a setting used (median over its seeds' runs)."""
    values = sorted(r.info.get("spent", r.compute) if isinstance(r.info, dict) else r.compute
                    for r in setting.rows)
    return values[len(values) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="a results.csv of lrkit bench")
    print(tables(parser.parse_args().results))


if __name__ == "__main__":
    main()
