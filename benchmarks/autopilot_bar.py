"""Issue 14's bar, read from arena results: a self-tuning method (the autopilot) against the
best cell of the Adam grid (every schedule family x the half-decade lrs), per task, on the
seven arena tasks and on the three held-out ones, beside the untuned contenders.

    ADAM=adam_constant,adam_step_based,adam_exponential,adam_time_based,adam_cosine,\\
        adam_one_cycle,adam_wsd,adam_linear
    UNTUNED=adam_default,sf_adamw_default,sf_adamw_algoperf,prodigy,adam_linear_suggested
    lrkit bench --suite full --methods $ADAM,$UNTUNED,autopilot --out bench-full
    lrkit bench --suite heldout --out bench-heldout            # its methods are these
    python benchmarks/autopilot_bar.py bench-full bench-heldout [--method autopilot]

The noise floor of the bar (``--redraw``): the grid's best cell is the best of many
3-seed means, so it is biased low by its selection, and the tasks' seed-to-seed spread is
often far above 1%. Given results of the best cells (and of ``--method``) on seeds the
grid did not use, kept apart from the main results so that they are not pooled into the
grid, it prints each best cell on those fresh seeds (its gap to its own paired mean: what
the grid's own winner loses to a new draw of seeds) and ``--method`` against that cell on
the same fresh seeds::

    lrkit bench --suite full --tasks digits_softmax --methods adam_wsd --seeds 6 \\
        --out bench-redraw                       # every lr; the best cell's is read
    python benchmarks/autopilot_bar.py bench-full --redraw bench-redraw

Every results directory (or file) given is read and pooled. For each task: the final
metric of ``--method`` (the mean over its paired seeds) and of the grid's best cell (the
best (family, lr) of every tuned Adam method, chosen on that same mean); the gap, relative,
in the metric's better direction (positive: worse than the grid); its compute in runs of
the task's budget (the grid's: its number of cells per seed); how many seeds diverged;
whether it meets the bar: within 1% of the grid's best, at most 2x one run's compute, no
seed diverged. Then the counts the issue asks for (5 of the 7 arena tasks, 2 of the 3
held-out ones) and the mean shortfall (the arena report's: log(score / best) /
log(start / best), 0 the task's best entry, 1 the untrained model) of the method against
that of the best tuned single family (the Adam family whose best lr has the lowest mean
shortfall over the same tasks), and the same lines for each untuned contender.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from lrkit.bench import results as R
from lrkit.bench.report import Arena, Entry, TaskResult, summarize
from lrkit.bench.tasks import HELD_OUT, TASKS

UNTUNED = (("prodigy", "Prodigy"), ("sf_adamw_default", "SF-AdamW default"),
           ("sf_adamw_algoperf", "SF-AdamW AlgoPerf"),
           ("adam_linear_suggested", "Adam linear at suggestion"),
           ("adam_default", "Adam 1e-3 const"))
GROUPS = (("arena", "arena tasks", len(TASKS), 5), ("held-out", "held-out tasks",
                                                     len(HELD_OUT), 2))


@dataclass
class Cell:
    """One method on one task, against the grid's best cell."""

    final: float  # mean over seeds (nan: a seed diverged)
    compute: float
    diverged: int
    seeds: tuple[int, ...]
    gap: float  # relative to the grid's best, positive = worse; inf when diverged
    shortfall: float
    ok: bool


@dataclass
class TaskBar:
    task: str
    group: str
    metric: str
    best_final: float
    best_label: str
    best_lr: float
    best_seeds: tuple[int, ...]
    cells: int
    method: Cell | None
    contenders: dict[str, Cell] = field(default_factory=dict)


def group_of(task: str) -> str:
    return "held-out" if task in HELD_OUT else "arena"


def relative_gap(task: TaskResult, value: float, best: float) -> float:
    """How much worse ``value`` is than ``best``, relative, in the metric's better
    direction (negative: better); inf for a non-finite value."""
    if not math.isfinite(value):
        return math.inf
    sign = -1.0 if task.higher_is_better else 1.0
    return sign * (value - best) / max(abs(best), 1e-300)


def _cell(task: TaskResult, entry: Entry, best: float, tolerance: float,
          max_compute: float) -> Cell:
    b = entry.best
    gap = relative_gap(task, b.final, best) if not b.diverged else math.inf
    ok = not b.diverged and gap <= tolerance and b.compute <= max_compute
    return Cell(b.final, b.compute, b.diverged, tuple(r.seed for r in b.rows), gap,
                task.shortfall(entry), ok)


def grid_entries(task: TaskResult, probe: str) -> list[Entry]:
    """The tuned entries of the grid's optimizer (``probe``: "Adam()") on a task."""
    return [e for e in task.entries if e.tuned and e.probe == probe]


def bar(arena: Arena, method: str = "autopilot", probe: str = "Adam()",
        tolerance: float = 0.01, max_compute: float = 2.0,
        contenders: Sequence[str] = tuple(n for n, _ in UNTUNED)) -> list[TaskBar]:
    """Per task with a grid: ``method`` and each of ``contenders`` against the best cell
    of ``probe``'s grid."""
    out = []
    for task in arena.tasks:
        grid = grid_entries(task, probe)
        if not grid:
            continue
        best_entry = min(grid, key=lambda e: (e.score, e.method))
        best = best_entry.best
        row = TaskBar(task.name, group_of(task.name), task.metric, best.final,
                      best_entry.label, best.lr, tuple(r.seed for r in best.rows),
                      sum(len(e.settings) for e in grid), None)
        entry = arena.entry(task, method)
        if entry is not None:
            row.method = _cell(task, entry, best.final, tolerance, max_compute)
        for name in contenders:
            e = arena.entry(task, name)
            if e is not None:
                row.contenders[name] = _cell(task, e, best.final, tolerance, max_compute)
        out.append(row)
    return out


def best_family(arena: Arena, tasks: Sequence[str], probe: str = "Adam()"
                ) -> tuple[str, str, float] | None:
    """The tuned family of ``probe``'s grid with the lowest mean shortfall over ``tasks``
    (only families that ran on all of them): (name, label, mean shortfall)."""
    chosen = [t for t in arena.tasks if t.name in tasks]
    if not chosen:
        return None
    families: dict[str, tuple[str, list[float]]] = {}
    for t in chosen:
        for e in grid_entries(t, probe):
            families.setdefault(e.method, (e.label, []))[1].append(t.shortfall(e))
    scored = [(statistics.fmean(v), name, label) for name, (label, v) in families.items()
              if len(v) == len(chosen)]
    if not scored:
        return None
    value, name, label = min(scored)
    return name, label, value


def mean_shortfall(rows: Sequence[TaskBar], name: str | None) -> float:
    cells = [r.method if name is None else r.contenders.get(name) for r in rows]
    if not cells or any(c is None for c in cells):
        return math.nan
    return statistics.fmean(c.shortfall for c in cells)


# -- the text --------------------------------------------------------------------------------
def fmt(x: float) -> str:
    return "diverged" if not math.isfinite(x) else f"{x:.4g}"


def _gap(x: float) -> str:
    return f"{x:+.1%}" if math.isfinite(x) else "inf"


def _brief(c: Cell | None) -> str:
    if c is None:
        return "-"
    div = f", {c.diverged} div" if c.diverged else ""
    return f"{fmt(c.final)} ({_gap(c.gap)}, {c.compute:.2f}x{div})"


def render(arena: Arena, rows: list[TaskBar], method: str, probe: str, tolerance: float,
           max_compute: float) -> str:
    lines = []
    head = ["task", "metric", method, "gap", "compute", "diverged", "bar",
            f"grid best ({probe.rstrip('()')})", "its setting", "grid cells",
            *[label for _, label in UNTUNED]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        c = r.method
        body = [r.task + (" (held-out)" if r.group == "held-out" else ""), r.metric]
        if c is None:
            body += ["-"] * 5
        else:
            seeds = "" if c.seeds == r.best_seeds else f" (seeds {list(c.seeds)})"
            body += [fmt(c.final) + seeds, _gap(c.gap), f"{c.compute:.2f}x",
                     f"{c.diverged}/{len(c.seeds)}", "yes" if c.ok else "no"]
        body += [fmt(r.best_final), f"{r.best_label} lr={r.best_lr:g}", str(r.cells)]
        body += [_brief(r.contenders.get(name)) for name, _ in UNTUNED]
        lines.append("| " + " | ".join(body) + " |")
    lines.append("")
    seeds = sorted({len(r.best_seeds) for r in rows})
    lines.append(f"The bar: within {tolerance:.0%} of the grid's best cell, at most "
                 f"{max_compute:g}x one run's compute, no seed diverged. Seeds per cell: "
                 f"{', '.join(map(str, seeds)) or '-'}; compute in runs of the task's budget; "
                 "gap relative, positive = worse than the grid.")
    lines.append("")
    for group, name, total, needs in GROUPS:
        grouped = [r for r in rows if r.group == group]
        if not grouped:
            lines.append(f"{name}: none in the results")
            continue
        ran = [r for r in grouped if r.method is not None]
        met = sum(r.method.ok for r in ran)
        short = f"{group}: " if group == "held-out" else ""
        lines.append(f"{short}{method} within {tolerance:.0%} on {met} of {total} {name} "
                     f"(needs {needs}; {len(ran)} in the results)"
                     + (": met" if met >= needs else ": not met"))
        tasks = [r.task for r in grouped]
        fam = best_family(arena, tasks, probe)
        mine = mean_shortfall(ran, None) if len(ran) == len(grouped) else math.nan
        if fam is not None:
            verdict = ("below it: met" if mine < fam[2] else "not below it: not met") \
                if math.isfinite(mine) else "-"
            lines.append(f"  mean shortfall over the {len(grouped)} {name}: {method} "
                         f"{fmt(mine)}, best tuned single family {fam[1]} ({fam[0]}) "
                         f"{fmt(fam[2])}; {verdict}")
        for cname, label in UNTUNED:
            cells = [r.contenders.get(cname) for r in grouped]
            if all(c is None for c in cells):
                continue
            within = sum(1 for c in cells if c is not None and c.ok)
            present = sum(1 for c in cells if c is not None)
            lines.append(f"  {label} ({cname}): within {tolerance:.0%} on {within} of "
                         f"{present}, mean shortfall "
                         f"{fmt(mean_shortfall(grouped, cname))}")
    return "\n".join(lines)


@dataclass
class Redraw:
    """A task's best grid cell, and the method, on seeds the grid's cells did not use."""

    task: str
    seeds: tuple[int, ...]
    cell: float  # the best cell's mean over the fresh seeds
    cell_gap: float  # against its own mean over the paired seeds
    method: float | None  # the method's mean over the same fresh seeds
    method_gap: float | None  # against the cell on those seeds


def redraw(arena: Arena, rows: Sequence[TaskBar], fresh: Sequence[R.Row],
           method: str) -> list[Redraw]:
    """Per task of ``rows``: its best cell (method label, lr) and ``method`` on the seeds of
    ``fresh`` that the cell's paired mean did not use (only seeds where the cell ran)."""
    out = []
    tasks = {t.name: t for t in arena.tasks}
    for r in rows:
        task = tasks[r.task]
        entry = next(e for e in task.entries if e.label == r.best_label and e.tuned)
        best = entry.best
        cell = {x.seed: x.final for x in fresh if x.task == r.task and x.method == entry.method
                and math.isclose(x.lr, best.lr, rel_tol=1e-9) and not x.diverged
                and x.seed not in r.best_seeds}
        if not cell:
            continue
        seeds = tuple(sorted(cell))
        value = statistics.fmean(cell[s] for s in seeds)
        mine = {x.seed: x.final for x in fresh if x.task == r.task and x.method == method
                and x.seed in cell}
        m = statistics.fmean(mine[s] for s in seeds) if set(mine) == set(seeds) else None
        out.append(Redraw(r.task, seeds, value, relative_gap(task, value, r.best_final), m,
                          None if m is None else relative_gap(task, m, value)))
    return out


def render_redraw(found: Sequence[Redraw], method: str, tolerance: float) -> str:
    lines = ["", "The bar's noise floor: each task's best grid cell on fresh seeds (seeds the "
             "grid did not use), and " + method + " against it on the same seeds", "",
             "| task | fresh seeds | best cell there | its gap to its paired mean | "
             f"{method} there | {method} gap to the cell |", "|---|---|---|---|---|---|"]
    for x in found:
        lines.append(f"| {x.task} | {list(x.seeds)} | {fmt(x.cell)} | {_gap(x.cell_gap)} | "
                     f"{fmt(x.method) if x.method is not None else '-'} | "
                     f"{_gap(x.method_gap) if x.method_gap is not None else '-'} |")
    own = sum(1 for x in found if x.cell_gap <= tolerance)
    lines.append("")
    lines.append(f"The grid's own best cell stays within {tolerance:.0%} of its paired mean on "
                 f"{own} of {len(found)} tasks when the seeds are drawn again.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="+",
                    help="results.csv files or the directories holding them (pooled)")
    ap.add_argument("--method", "--auto", dest="method", default="autopilot",
                    help="the self-tuning method's name in the results (default: autopilot)")
    ap.add_argument("--probe", default="Adam()", help="the grid's optimizer as the results "
                                                      "name it (default: Adam())")
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--max-compute", type=float, default=2.0)
    ap.add_argument("--redraw", nargs="*", default=[],
                    help="results (files or directories) of the best cells and of --method "
                         "on fresh seeds, kept apart from the main results: the noise floor")
    args = ap.parse_args(argv)
    rows = [row for path in args.results for row in R.load_rows(path)]
    arena = summarize(rows)
    table = bar(arena, args.method, args.probe, args.tolerance, args.max_compute)
    if not table:
        print(f"no task in {', '.join(args.results)} has a {args.probe} grid",
              file=sys.stderr)
        return 1
    if all(r.method is None for r in table):
        print(f"warning: no results of method {args.method!r}", file=sys.stderr)
    print(render(arena, table, args.method, args.probe, args.tolerance, args.max_compute))
    if args.redraw:
        fresh = [row for path in args.redraw for row in R.load_rows(path)]
        found = redraw(arena, table, fresh, args.method)
        print(render_redraw(found, args.method, args.tolerance) if found else
              "\nno best cell of the grid on fresh seeds in " + ", ".join(args.redraw))
    return 0


if __name__ == "__main__":
    sys.exit(main())
