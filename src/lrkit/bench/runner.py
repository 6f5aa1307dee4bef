"""``bench``: the arena's protocol, run, recorded and resumed.

A suite is a grid: tasks x methods x each method's learning rates (the suite's log grid
for a tuned method, its one lr for an untuned one) x paired seeds (seed s builds the same
initial weights and data order for every method). Every cell is one training run; its
row goes to ``OUT/results.csv`` as soon as it finishes (``lrkit.bench.results``), so a
rerun of the same command skips every finished cell and an interrupted bench loses only
the cells that were running. Beside the runs, one range test (``lrkit.find_lr`` with its
defaults) per task x optimizer x seed goes to ``OUT/range_tests.csv``: the report marks its
suggestion on the lr-sensitivity curves.

Cells run in ``workers`` processes (one torch thread each), the longest first, or, with
``executor="ray"``, as Ray tasks (one CPU and one torch thread each) on a running Ray
cluster or a local one; either way the driver writes the files, so results, resume and
report are the same. A live progress bar weighs each cell by its expected cost, so its
time remaining holds while cheap and expensive tasks mix.
"""
from __future__ import annotations

import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrkit import _checks as C
from lrkit.bench import results as R
from lrkit.bench.methods import METHODS, SCHEDULES, Method, get_method
from lrkit.bench.tasks import HELD_OUT, TASKS, get_task

DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
HALF_DECADES = tuple(float(f"{10 ** (e / 2):.3g}") for e in range(-8, 1))  # 1e-4 ... 1


@dataclass(frozen=True)
class Suite:
    """A named protocol: which tasks, how many paired seeds, and the lr grids."""

    name: str
    description: str
    tasks: tuple[str, ...]
    seeds: int
    grids: dict[str, tuple[float, ...]] = field(hash=False)
    methods: tuple[str, ...] | None = None  # None: every registered method


SUITES: dict[str, Suite] = {
    "quick": Suite(
        "quick", "the five tasks that train in about a second or two, one seed, lr grid of "
        "decades 1e-4 ... 1: about 4 minutes on 2 idle cores",
        tasks=("quadratic", "noisy_quadratic", "mnist1d_mlp", "digits_softmax", "rosenbrock"),
        seeds=1, grids={"sgd": DECADES, "adam": DECADES}),
    "full": Suite(
        "full", "all seven tasks, three paired seeds, lr grid of half decades 1e-4 ... 1",
        tasks=tuple(TASKS), seeds=3, grids={"sgd": HALF_DECADES, "adam": HALF_DECADES}),
    "heldout": Suite(
        "heldout", "issue 14's three held-out tasks (never tuned on), three paired seeds: "
        "Adam x the 8 schedule families x half decades 1e-4 ... 1, and the untuned and "
        "self-tuning contenders",
        tasks=tuple(HELD_OUT), seeds=3, grids={"sgd": HALF_DECADES, "adam": HALF_DECADES},
        methods=(*(f"adam_{f}" for f in SCHEDULES), "adam_default", "sf_adamw_default",
                 "sf_adamw_algoperf", "prodigy", "adam_linear_suggested", "autopilot")),
}

# Seconds one full-budget run of a task takes on one thread (measured on a 2-core CPU):
# the weights of the progress bar and of the scheduling order, not a promise.
COST = {"quadratic": 0.4, "noisy_quadratic": 0.4, "mnist1d_mlp": 2.5, "mnist1d_cnn": 5.2,
        "digits_softmax": 0.8, "rosenbrock": 0.5, "char_lm": 11.0,
        # the held-out tasks, estimated: median 9.3, 13.2 and 4.6 s measured on the same
        # machine under a load average of 6, which made char_lm take 2-3x its 11 s
        "shapes_bn": 4.5, "tiny_transformer": 5.5, "noisy_regression": 1.9}
RANGE_TEST_STEPS = 100


def get_suite(name: str) -> Suite:
    """The suite of ``SUITES`` called ``name``."""
    return _suite("get_suite()", "name", name)


def _suite(fn: str, arg: str, name: Any) -> Suite:
    if not isinstance(name, str):
        raise TypeError(f"{fn}: {arg} must be a suite name ({', '.join(SUITES)}) or a Suite, "
                        f"got {type(name).__name__}")
    if name not in SUITES:
        raise ValueError(f"{fn}: {arg} must be one of {', '.join(SUITES)}, got {name!r}")
    return SUITES[name]


# -- the plan ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """One unit of work: a training cell ("run") or a range test ("range_test")."""

    kind: str
    task: str
    method: Method
    lr: float
    seed: int
    steps: int
    cost: float

    def describe(self) -> str:
        if self.kind == "range_test":
            return f"{self.task} range test {self.method.probe} seed {self.seed}"
        return f"{self.task} {self.method.name} lr={self.lr:g} seed {self.seed}"


@dataclass
class Plan:
    jobs: list[Job]
    done: int  # cells (and range tests) already in the files
    total: int
    skipped: list[str]  # methods that cannot run here, and why
    notes: list[str] = field(default_factory=list)  # stand-ins used


def plan(suite: Suite, *, tasks: Sequence[str] | None = None,
         methods: Sequence[str | Method] | None = None, seeds: int | None = None,
         steps: int | None = None, finished_runs: Iterable[tuple] = (),
         finished_range_tests: Iterable[tuple] = ()) -> Plan:
    """Every cell and range test of ``suite`` (narrowed by the arguments) not yet finished."""
    task_names = list(tasks or suite.tasks)
    for name in task_names:
        get_task(name)
    if methods is None:
        chosen = [METHODS[m] for m in (suite.methods or METHODS)]
    else:
        chosen = [m if isinstance(m, Method) else get_method(m) for m in methods]
    skipped = [f"{m.name} ({m.missing})" for m in chosen if m.missing]
    notes = [f"{m.name}: {m.stand_in}" for m in chosen if not m.missing and m.stand_in]
    chosen = [m for m in chosen if not m.missing]
    n_seeds = suite.seeds if seeds is None else seeds
    runs_done, tests_done = set(finished_runs), set(finished_range_tests)
    jobs: list[Job] = []
    done = total = 0
    for t in task_names:
        task = get_task(t)
        n = task.steps if steps is None else steps
        base = COST.get(t, task.steps / 1000) * n / task.steps
        probes: dict[str, Method] = {}
        for m in chosen:
            if m.tasks is not None and t not in m.tasks:
                continue
            if m.grid is not None and m.runner is None:
                probes.setdefault(m.probe, m)
            for lr in m.lrs(suite.grids):
                for s in range(n_seeds):
                    total += 1
                    if (t, m.name, s, m.setting(lr, n)) in runs_done:
                        done += 1
                        continue
                    factor = 2.5 if m.closure else 1.0
                    jobs.append(Job("run", t, m, lr, s, n, base * factor))
        for probe, m in probes.items():
            for s in range(n_seeds):
                total += 1
                if (t, probe, s) in tests_done:
                    done += 1
                    continue
                jobs.append(Job("range_test", t, m, math.nan, s, n,
                                base * RANGE_TEST_STEPS / task.steps + 0.05))
    jobs.sort(key=lambda j: -j.cost)  # longest first: the workers finish together
    return Plan(jobs, done, total, skipped, notes)


# -- one job, in a worker -------------------------------------------------------------------
def execute(job: Job) -> dict[str, Any]:
    """Run a job and return its record (what ``results.csv`` or ``range_tests.csv`` holds)."""
    task = get_task(job.task)
    began = time.perf_counter()
    if job.kind == "range_test":
        return _range_test(task, job.method, job.seed, began)
    run = job.method.cell(task, job.lr, job.seed, job.steps)
    return R.run_record(task, job.method, job.lr, job.seed, run)


def _range_test(task, method: Method, seed: int, began: float) -> dict[str, Any]:
    import lrkit
    from lrkit.finder import find_lr

    inst = task.build(seed)
    kwargs = method.kwargs(1e-3, task.steps)
    if method.warmup_option:  # the sweep sets every step's lr itself
        kwargs[method.warmup_option] = 0
    opt = method.optimizer_class()(inst.model.parameters(), **kwargs)
    if callable(getattr(opt, "train", None)):  # schedule-free: sweep the training weights
        opt.train()
    result = find_lr(inst.model, opt, inst.loader, inst.loss_fn, steps=RANGE_TEST_STEPS,
                     warn=False)
    return {"task": task.name, "probe": method.probe, "seed": seed,
            "suggestion": result.suggestion, "rule": result.rule,
            "suggestions": result.suggestions, "stop_reason": result.stop_reason,
            "wall_time": round(time.perf_counter() - began, 4), "lrkit": lrkit.__version__,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}


def _init_worker(parent: int) -> None:
    """A worker: one torch thread, deaf to Ctrl-C (the parent stops the bench), and gone
    when its parent is (killed benches leave no orphans training on)."""
    import torch

    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


# -- the bench ----------------------------------------------------------------------------
@dataclass
class BenchResult:
    """What a bench did: where its files are, how many cells were new, what went wrong."""

    out: Path
    results: Path
    total: int
    before: int
    new: int
    skipped: list[str]
    errors: list[str]
    wall_time: float
    interrupted: bool = False
    report: Path | None = None

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.errors and \
            self.before + self.new == self.total


def bench(
    suite: str | Suite = "quick",
    *,
    tasks: Sequence[str] | None = None,
    methods: Sequence[str | Method] | None = None,
    seeds: int | None = None,
    workers: int | None = None,
    out: str | os.PathLike = "bench-results",
    steps: int | None = None,
    report: bool = True,
    progress: bool = True,
    log: Callable[[str], None] = print,
    executor: str = "local",
    address: str | None = None,
) -> BenchResult:
    """Run a suite of the arena (``SUITES``: "quick", "full", "heldout") into ``out``,
    resuming.

    ``tasks``, ``methods`` (names of ``METHODS`` or ``Method`` objects) and ``seeds``
    narrow or widen the suite; ``steps`` overrides every task's budget (smoke tests: such
    cells are kept apart from full-budget ones). ``workers`` processes run the cells
    (default: one per CPU core; 1 runs them in this process). Writes ``out/results.csv``,
    ``out/range_tests.csv`` and, with ``report``, the report (``lrkit.bench.report``).
    Ctrl-C (or SIGTERM) stops it after the running cells finish and are recorded; a
    second Ctrl-C abandons them.

    ``executor="ray"`` runs the cells as Ray tasks (one CPU, one torch thread each): on
    the cluster at ``address`` (``"auto"``, ``"ray://head:10001"``, ...), or, without one,
    on a local Ray instance of ``workers`` CPUs started for this bench and stopped after
    it (a session already opened with ``ray.init`` is used as it is). Ctrl-C cancels the
    Ray tasks still running; their cells run again on resume.
    """
    began = time.perf_counter()
    fn = "bench()"
    the_suite = suite if isinstance(suite, Suite) else _suite(fn, "suite", suite)
    tasks = None if tasks is None else C.sequence(fn, "tasks", tasks)
    methods = None if methods is None else C.sequence(fn, "methods", methods)
    out = C.path(fn, "out", out)
    report = C.boolean(fn, "report", report)
    progress = C.boolean(fn, "progress", progress)
    if not callable(log):
        raise TypeError(f"{fn}: log must be a function (text -> None), got "
                        f"{type(log).__name__}")
    if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
        raise ValueError(f"bench(): seeds must be a positive integer, got {seeds!r}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"bench(): steps must be a positive integer, got {steps!r}")
    if executor not in EXECUTORS:
        raise ValueError(f"bench(): executor must be one of {', '.join(EXECUTORS)}, "
                         f"got {executor!r}")
    if address is not None and (executor != "ray" or not isinstance(address, str)
                                or not address):
        raise ValueError(f"bench(): address is the Ray cluster's address (a non-empty "
                         f"string, with executor='ray'), got {address!r} with "
                         f"executor={executor!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = R.ResultsFile(out / R.RESULTS, R.RUN_COLUMNS)
    tests = R.ResultsFile(out / R.RANGE_TESTS, R.RANGE_COLUMNS)
    the_plan = plan(the_suite, tasks=tasks, methods=methods, seeds=seeds, steps=steps,
                    finished_runs=(R.run_key(r) for r in runs.records),
                    finished_range_tests=(R.range_key(r) for r in tests.records))
    for note in the_plan.skipped:
        log(f"skipped {note}")
    for note in the_plan.notes:
        log(note)
    if the_plan.done:
        log(f"resuming: {the_plan.done} of {the_plan.total} cells already in {out}")
    workers = _workers(workers, len(the_plan.jobs))
    result = BenchResult(out, runs.path, the_plan.total, the_plan.done, 0, the_plan.skipped,
                         [], 0.0)

    def record(job: Job, rec: dict[str, Any]) -> None:
        (tests if job.kind == "range_test" else runs).add(rec)
        result.new += 1

    for name in dict.fromkeys(job.task for job in the_plan.jobs):  # before the workers
        get_task(name).prepare(log if progress else None)            # read it from disk
    bar = _Progress(the_plan, progress, log)
    try:
        with bar, _sigterm_as_interrupt():
            if executor == "ray":
                _execute_ray(the_plan.jobs, workers, address, record, bar, result, log)
            else:
                _execute_all(the_plan.jobs, workers, record, bar, result, log)
    except KeyboardInterrupt:
        result.interrupted = True
    result.wall_time = time.perf_counter() - began
    if result.interrupted:
        log(f"interrupted: {result.before + result.new} of {result.total} cells are in "
            f"{runs.path}; run the same command again to resume")
    for err in result.errors[:5]:
        log(f"error: {err}")
    if report and runs.records and not result.interrupted:
        from lrkit.bench.report import write_report

        try:
            result.report = write_report(runs.path, out)
        except Exception as exc:  # the results are safe: say so, keep the exit clean
            result.errors.append(f"report: {type(exc).__name__}: {exc}")
            log(f"error: the report failed ({exc}); the results are in {runs.path}, "
                f"`lrkit report {runs.path}` retries it")
    return result


EXECUTORS = ("local", "ray")


def _workers(workers: int | None, jobs: int) -> int:
    if workers is None:
        workers = os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"bench(): workers must be a positive integer, got {workers!r}")
    return max(1, min(workers, jobs))


def _execute_all(jobs: list[Job], workers: int, record, bar: _Progress, result: BenchResult,
                 log) -> None:
    def finish(job: Job, fut_or_rec) -> None:
        if isinstance(fut_or_rec, Future):
            try:
                rec = fut_or_rec.result()
            except BrokenProcessPool as exc:
                raise RuntimeError(f"bench(): a worker process died ({exc}); if this runs "
                                   "from a script, put its code under `if __name__ == "
                                   "'__main__':` (workers are spawned)") from None
            except Exception as exc:  # a bug or a missing package: keep going
                result.errors.append(f"{job.describe()}: {type(exc).__name__}: {exc}")
                bar.advance(job, None)
                return
        else:
            rec = fut_or_rec
        record(job, rec)
        bar.advance(job, rec)

    if workers == 1:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for job in jobs:
                try:
                    rec = execute(job)
                except Exception as exc:
                    result.errors.append(f"{job.describe()}: {type(exc).__name__}: {exc}")
                    bar.advance(job, None)
                    continue
                finish(job, rec)
        finally:
            torch.set_num_threads(threads)
        return

    import multiprocessing

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(os.getpid(),))
    pending: dict[Future, Job] = {}
    try:
        for job in jobs:
            pending[pool.submit(execute, job)] = job
        while pending:
            try:
                ready, _ = wait(list(pending), timeout=0.5, return_when=FIRST_COMPLETED)
            except KeyboardInterrupt:
                running = _stop_submitting(pending)
                log(f"stopping: waiting for the {running} running cells to finish "
                    "(Ctrl-C again to abandon them)")
                try:
                    for fut in list(pending):
                        if not fut.cancelled():
                            finish(pending.pop(fut), fut)
                except KeyboardInterrupt:
                    pass
                raise
            for fut in ready:
                finish(pending.pop(fut), fut)
    except BaseException:
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _ray_execute(job: Job) -> dict[str, Any]:
    """A Ray task: one cell on one torch thread."""
    import torch

    torch.set_num_threads(1)
    return execute(job)


def _execute_ray(jobs: list[Job], workers: int, address: str | None, record,
                 bar: _Progress, result: BenchResult, log) -> None:
    if not jobs:  # all done: no cluster to start
        return
    try:
        import ray
    except ImportError:
        raise RuntimeError("bench(): executor='ray' needs the ray package "
                           "(pip install 'lrkit[ray]')") from None
    started = False
    if not ray.is_initialized():
        if address is None:  # a local instance for this bench only
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False,
                     object_store_memory=256 * 2**20)
        else:
            ray.init(address=address, log_to_driver=False)
        started = True
        log(f"ray: {ray.cluster_resources().get('CPU', 0):g} CPUs")
    remote = ray.remote(num_cpus=1, max_retries=0)(_ray_execute)
    pending: dict[Any, Job] = {}
    try:
        pending = {remote.remote(job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.5)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    rec = ray.get(ref)
                except Exception as exc:  # the cell's own error, as the local executor
                    cause = getattr(exc, "cause", None) or exc
                    result.errors.append(f"{job.describe()}: {type(cause).__name__}: {cause}")
                    bar.advance(job, None)
                    continue
                record(job, rec)
                bar.advance(job, rec)
    except KeyboardInterrupt:
        log(f"stopping: cancelling the {len(pending)} Ray tasks left (their cells run "
            "again on resume)")
        raise
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()


def _stop_submitting(pending: dict[Future, Job]) -> int:
    for fut in list(pending):
        if fut.cancel():
            del pending[fut]
    return len(pending)


class _sigterm_as_interrupt:
    """SIGTERM stops a bench like Ctrl-C (main thread only)."""

    def __enter__(self):
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)


class _Progress:
    """A rich progress bar weighted by expected cost, with time remaining; plain log lines
    every 10% where the output is not a terminal."""

    def __init__(self, the_plan: Plan, enabled: bool, log) -> None:
        self.enabled = enabled
        self.log = log
        self.cells = len(the_plan.jobs)
        self.done = 0
        self.weight = sum(j.cost for j in the_plan.jobs) or 1.0
        self.began = time.perf_counter()
        self.next_line = 0.1
        self.weight_done = 0.0
        self.bar = None

    def __enter__(self) -> _Progress:
        if not self.enabled or not self.cells:
            return self
        from rich.console import Console

        console = Console(stderr=True)
        if not console.is_terminal:
            self.log(f"{self.cells} cells to run")
            return self
        from rich.progress import (
            BarColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[bold]bench[/bold]"), BarColumn(),
                            TextColumn("{task.fields[cells]}"), TimeElapsedColumn(),
                            TextColumn("left"), TimeRemainingColumn(),
                            TextColumn("{task.fields[last]}"), console=console)
        self.task = self.bar.add_task("bench", total=self.weight,
                                      cells=f"0/{self.cells} cells", last="")
        self.bar.start()
        return self

    def advance(self, job: Job, rec: dict[str, Any] | None) -> None:
        self.done += 1
        self.weight_done += job.cost
        if rec is None:
            last = f"{job.describe()}: failed"
        elif job.kind == "range_test":
            sug = rec.get("suggestion")
            last = f"{job.describe()}: {'-' if sug is None else f'{sug:.3g}'}"
        else:
            last = f"{job.describe()}: " + ("diverged" if rec["diverged"] else
                                            f"{rec['metric']} {rec['final']:.4g}")
        if self.bar is not None:
            width = max(20, self.bar.console.width - 75)  # the bar and times keep their room
            last = last if len(last) <= width else last[:width - 3] + "..."
            self.bar.update(self.task, advance=job.cost, cells=f"{self.done}/{self.cells} cells",
                            last=last)
        elif self.enabled and self.done >= self.next_line * self.cells:
            elapsed = time.perf_counter() - self.began
            left = elapsed * (self.weight - self.weight_done) / max(self.weight_done, 1e-9)
            self.log(f"{self.done}/{self.cells} cells, {elapsed:.0f} s, about {left:.0f} s left")
            self.next_line += 0.1

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
