"""How good are the range test's suggestions? The full version of the quality bar of
issue 5 (tests/test_finder_quality.py runs a reduced one).

1. Least squares with a known Hessian: for plain SGD, a suggestion must lie in
   [0.05/L, 2/L], L the Hessian's largest eigenvalue (2/L: the divergence limit).
2. Every built-in task, with SGD (momentum 0.9) and Adam: train with a linear warmup over
   5% of the budget then cosine decay, peak lr = the suggestion; it must reach, within
   1.5x, the final loss of the best lr of a 9-point log grid (half-decades, 1e-4..1) run
   the same way. "Loss" is the task's metric in lower-is-better form: the metric itself,
   or the error rate (1 - accuracy).

Per (task, optimizer, seed): one range test with find_lr's defaults, the grid, and one run
per distinct suggestion. Runs are appended to a JSON-lines file and reused on a rerun, so
an interrupted benchmark loses nothing (``--cache``).

    python benchmarks/finder_quality.py                  # everything: 7 tasks x 2 x 5 seeds
    python benchmarks/finder_quality.py --tasks quadratic,rosenbrock --seeds 2 --workers 2
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

GRID = [float(10 ** e) for e in np.linspace(-4, 0, 9)]
BAND = 1.5
OPTIMIZERS = {"sgd": ("SGD", {"momentum": 0.9}), "adam": ("Adam", {})}


def loss_form(task, value: float) -> float:
    if not math.isfinite(value):
        return math.inf
    return 1.0 - value if task.higher_is_better else value


# -- least squares -------------------------------------------------------------------------
def least_squares(seed: int, n: int = 1024, d: int = 32, batch: int = 64):
    """A random least-squares problem whose Hessian A'A/n has top eigenvalue L, L drawn
    log-uniformly in [1, 1000]; returns (model, loader, loss_fn, L)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    target_l = float(10 ** (3 * torch.rand((), generator=g)))
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -1, d, dtype=torch.float64)  # condition number 100
    a = (u * s) @ v.T * math.sqrt(n * target_l)
    lam = float(torch.linalg.eigvalsh(a.T @ a / n).max())
    x_true = torch.randn(d, generator=g, dtype=torch.float64)
    b = a @ x_true + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    data = torch.utils.data.TensorDataset(a.float(), b.float()[:, None])
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=g)
    torch.manual_seed(seed)
    model = torch.nn.Linear(d, 1, bias=False)

    def loss_fn(out, target):  # Hessian exactly A'A/n
        return 0.5 * (out - target).pow(2).mean()

    return model, loader, loss_fn, lam


def least_squares_suggestions(seed: int) -> dict:
    import torch

    from lrkit.finder import find_lr

    model, loader, loss_fn, lam = least_squares(seed)
    result = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, loss_fn)
    return {"seed": seed, "L": lam, "suggestions": result.suggestions,
            "curve": result.to_dict()}


# -- tasks ---------------------------------------------------------------------------------
def _factory(optimizer: str, lr: float):
    import torch

    name, options = OPTIMIZERS[optimizer]
    return lambda params: getattr(torch.optim, name)(params, lr=lr, **options)


def train_cell(task_name: str, optimizer: str, seed: int, lr: float) -> dict:
    from lrkit.bench import get_task, train
    from lrkit.bench.tasks import warmup_cosine

    task = get_task(task_name)
    run = train(task, _factory(optimizer, lr), schedule=lambda n: warmup_cosine(lr, n),
                seed=seed)
    return {"kind": "run", "task": task_name, "optimizer": optimizer, "seed": seed, "lr": lr,
            "final": run.final, "diverged": run.diverged, "wall": run.wall_time}


def sweep_cell(task_name: str, optimizer: str, seed: int) -> dict:
    from lrkit.bench import get_task
    from lrkit.finder import find_lr

    inst = get_task(task_name).build(seed)
    opt = _factory(optimizer, 1e-3)(inst.model.parameters())
    began = time.perf_counter()
    result = find_lr(inst.model, opt, inst.loader, inst.loss_fn)
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
    for t in tasks:
        task = get_task(t)
        for o in optimizers:
            for s in seeds:
                sweep = cache.records.get(("sweep", t, o, s))
                grid = [cache.records.get(("run", t, o, s, f"{lr:.12g}")) for lr in GRID]
                if sweep is None or any(g is None for g in grid):
                    continue
                best = min(loss_form(task, g["final"]) for g in grid)
                res = LRFinderResult.from_dict(sweep["curve"])
                for name, rule in rules.items():
                    lr = res.suggest(rule)
                    rec = None if lr is None else cache.records.get(
                        ("run", t, o, s, f"{lr:.12g}"))
                    if lr is not None and rec is None:
                        continue  # not trained yet
                    value = math.inf if rec is None else loss_form(task, rec["final"])
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
    return lines, summary


def least_squares_table(seeds, rules) -> list[str]:
    from lrkit.finder import LRFinderResult

    rows = [least_squares_suggestions(s) for s in seeds]
    lines = ["| rule | in [0.05/L, 2/L] | suggestion x L (min, median, max) |", "|---|---|---|"]
    for name, rule in rules.items():
        scaled = []
        for r in rows:
            lr = LRFinderResult.from_dict(r["curve"]).suggest(rule)
            scaled.append(math.nan if lr is None else lr * r["L"])
        ok = sum(0.05 <= v <= 2 for v in scaled)
        finite = [v for v in scaled if math.isfinite(v)]
        lines.append(f"| {name} | {ok}/{len(rows)} | {min(finite):.3g}, "
                     f"{float(np.median(finite)):.3g}, {max(finite):.3g} |")
    return lines


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
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    tasks = args.tasks.split(",")
    optimizers = args.optimizers.split(",")
    seeds = list(range(args.seeds))
    cache = Cache(Path(args.cache))
    began = time.time()
    if not args.report_only:
        run_all(tasks, optimizers, seeds, RULES, cache, args.workers)
    print(f"\nLeast squares, plain SGD, {args.ls_seeds} seeds (L log-uniform in [1, 1000]):\n")
    print("\n".join(least_squares_table(range(args.ls_seeds), RULES)))
    print(f"\nTasks: suggestion within {BAND}x of the best of the 9-point grid "
          f"(hits / seeds), seeds {seeds[0]}..{seeds[-1]}:\n")
    print("\n".join(task_table(tasks, optimizers, seeds, RULES, cache)[0]))
    print(f"\n({time.time() - began:.0f} s)")


if __name__ == "__main__":
    main()
