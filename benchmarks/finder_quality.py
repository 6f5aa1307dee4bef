"""The range test's suggestions against the quality bar of issue 5, in full: least
squares with a known Hessian (20 seeds), and every built-in task x {SGD with momentum
0.9, Adam} x 5 seeds x every rule (the protocol: ``lrkit.bench.finder_quality``). Prints,
per rule, how often the suggestion lands in the band. Runs are appended to a JSON-lines
file (``--cache``) and reused on a rerun, so an interrupted benchmark loses nothing.

    python benchmarks/finder_quality.py                          # about 45 min on 2 cores
    python benchmarks/finder_quality.py --tasks quadratic --seeds 2 --edge-divisors 4,16
    python benchmarks/finder_quality.py --tasks mnist1d_mlp --rules edge,noisy --workers 1

A sweep recorded before lrkit kept the gradients has no noise measurement: the rules that
read it (``noisy``) fall back to ``edge`` on it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from lrkit.bench.finder_quality import (  # noqa: E402
    BAND,
    LR_GRID,
    least_squares_sweep,
    loss_form,
    task_sweep,
    trained_loss,
)

GRID = LR_GRID


def train_cell(task_name: str, optimizer: str, seed: int, lr: float) -> dict:
    from lrkit.bench import get_task

    loss = trained_loss(get_task(task_name), optimizer, seed, lr)
    return {"kind": "run", "task": task_name, "optimizer": optimizer, "seed": seed, "lr": lr,
            "loss": loss}


def record_loss(task, rec: dict) -> float:
    """The final loss of a run record (older records hold the raw metric as "final")."""
    return rec["loss"] if "loss" in rec else loss_form(task, rec["final"])


def sweep_cell(task_name: str, optimizer: str, seed: int) -> dict:
    from lrkit.bench import get_task

    began = time.perf_counter()
    result = task_sweep(get_task(task_name), optimizer, seed)
    return {"kind": "sweep", "task": task_name, "optimizer": optimizer, "seed": seed,
            "curve": result.to_dict(), "wall": time.perf_counter() - began}


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _key(rec: dict) -> tuple:
    if rec["kind"] == "sweep":
        return ("sweep", rec["task"], rec["optimizer"], rec["seed"])
    return ("run", rec["task"], rec["optimizer"], rec["seed"], f"{rec['lr']:.12g}")


class Cache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[tuple, dict] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.records[_key(rec)] = rec

    def add(self, rec: dict) -> None:
        self.records[_key(rec)] = rec
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")


def run_all(tasks, optimizers, seeds, rules, cache: Cache, workers: int) -> None:
    from lrkit.finder import LRFinderResult

    def pending_sweeps():
        return [(t, o, s) for t in tasks for o in optimizers for s in seeds
                if ("sweep", t, o, s) not in cache.records]

    def pending_runs():
        out = set()
        for t in tasks:
            for o in optimizers:
                for s in seeds:
                    lrs = list(GRID)
                    sweep = cache.records.get(("sweep", t, o, s))
                    if sweep is not None:
                        res = LRFinderResult.from_dict(sweep["curve"])
                        lrs += [lr for lr in (res.suggest(r) for r in rules.values())
                                if lr is not None]
                    out.update((t, o, s, lr) for lr in lrs
                               if ("run", t, o, s, f"{lr:.12g}") not in cache.records)
        # the slow tasks first, so the pool drains evenly
        order = {"char_lm": 0, "mnist1d_cnn": 1, "mnist1d_mlp": 2}
        return sorted(out, key=lambda c: (order.get(c[0], 9), c))

    with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
        for stage, jobs, fn in (("sweeps", pending_sweeps(), sweep_cell),
                                ("runs", None, train_cell)):
            jobs = pending_runs() if jobs is None else jobs
            print(f"{stage}: {len(jobs)} to do", flush=True)
            futures = [pool.submit(fn, *job) for job in jobs]
            began = time.time()
            for i, fut in enumerate(as_completed(futures), 1):
                cache.add(fut.result())
                if i % 10 == 0 or i == len(jobs):
                    rate = (time.time() - began) / i
                    print(f"  {i}/{len(jobs)}  ~{rate * (len(jobs) - i) / 60:.1f} min left",
                          flush=True)


# -- the report ----------------------------------------------------------------------------
def task_table(tasks, optimizers, seeds, rules, cache: Cache) -> tuple[list[str], dict]:
    from lrkit.bench import get_task
    from lrkit.finder import LRFinderResult

    hits: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    ratios: dict[str, list[float]] = defaultdict(list)
    missing: dict[str, int] = defaultdict(int)
    for t in tasks:
        task = get_task(t)
        for o in optimizers:
            for s in seeds:
                sweep = cache.records.get(("sweep", t, o, s))
                grid = [cache.records.get(("run", t, o, s, f"{lr:.12g}")) for lr in GRID]
                if sweep is None or any(g is None for g in grid):
                    continue
                best = min(record_loss(task, g) for g in grid)
                res = LRFinderResult.from_dict(sweep["curve"])
                for name, rule in rules.items():
                    lr = res.suggest(rule)
                    rec = None if lr is None else cache.records.get(
                        ("run", t, o, s, f"{lr:.12g}"))
                    if lr is not None and rec is None:
                        missing[name] += 1  # not trained yet: left out, and said so
                        continue
                    value = math.inf if rec is None else record_loss(task, rec)
                    hits[(name, t, o)].append(value <= BAND * best)
                    ratios[name].append(value / best if best > 0 else math.inf)
    lines = []
    cols = [(t, o) for t in tasks for o in optimizers]
    lines.append("| rule | " + " | ".join(f"{t} {o}" for t, o in cols) + " | all | median ratio |")
    lines.append("|---" * (len(cols) + 3) + "|")
    summary = {}
    for name in rules:
        cells, total, count = [], 0, 0
        for c in cols:
            h = hits.get((name, *c), [])
            cells.append(f"{sum(h)}/{len(h)}")
            total += sum(h)
            count += len(h)
        med = float(np.median(ratios[name])) if ratios[name] else math.nan
        summary[name] = (total, count)
        lines.append(f"| {name} | " + " | ".join(cells)
                     + f" | **{total}/{count}** | {med:.2f} |")
    for name, n in missing.items():
        lines.append(f"\n({name}: {n} case(s) whose suggestion is not trained yet are left "
                     "out; run without --report-only to train them)")
    return lines, summary


def least_squares_table(seeds, rules) -> list[str]:
    sweeps = [least_squares_sweep(s) for s in seeds]
    lines = ["| rule | in [0.05/L, 2/L] | suggestion x L: min, median, max |", "|---|---|---|"]
    for name, rule in rules.items():
        scaled = [math.nan if (lr := r.suggest(rule)) is None else lr * top
                  for r, top in sweeps]
        ok = sum(0.05 <= v <= 2 for v in scaled)
        lines.append(f"| {name} | {ok}/{len(sweeps)} | {np.nanmin(scaled):.3g}, "
                     f"{np.nanmedian(scaled):.3g}, {np.nanmax(scaled):.3g} |")
    return lines


def edge_with_divisor(divisor: float):
    from lrkit.finder import edge_of_progress

    def rule(lrs, losses, smoothed):
        return edge_of_progress(lrs, losses)[0] / divisor

    return rule


def main() -> None:
    from lrkit.bench import TASKS
    from lrkit.finder import RULES

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--optimizers", default="sgd,adam")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--ls-seeds", type=int, default=20)
    ap.add_argument("--workers", type=int, default=max(1, min(2, os.cpu_count() or 1)))
    ap.add_argument("--cache", default="finder-quality.jsonl")
    ap.add_argument("--edge-divisors", default="",
                    help="Also rate the edge rule with these divisors, e.g. 6,10.")
    ap.add_argument("--rules", default=",".join(RULES),
                    help="The rules of lrkit.finder.RULES to rate (default: all).")
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    rules = {name: RULES[name] for name in args.rules.split(",")}
    for d in filter(None, args.edge_divisors.split(",")):
        rules[f"edge/{d}"] = edge_with_divisor(float(d))
    tasks = args.tasks.split(",")
    optimizers = args.optimizers.split(",")
    seeds = list(range(args.seeds))
    cache = Cache(Path(args.cache))
    began = time.time()
    if not args.report_only:
        run_all(tasks, optimizers, seeds, rules, cache, args.workers)
    print(f"\nLeast squares, plain SGD, {args.ls_seeds} seeds (L log-uniform in [1, 1000]):\n")
    print("\n".join(least_squares_table(range(args.ls_seeds), rules)))
    print(f"\nTasks: suggestion within {BAND}x of the best of the 9-point grid "
          f"(hits / seeds), seeds {seeds[0]}..{seeds[-1]}:\n")
    print("\n".join(task_table(tasks, optimizers, seeds, rules, cache)[0]))
    print(f"\n({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
