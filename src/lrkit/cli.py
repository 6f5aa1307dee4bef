"""The ``lrkit`` command line: thin, it parses arguments and calls the library."""
from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from typing import Any

import click
import numpy as np

from lrkit import schedules as S
from lrkit.errors import SpecError


def _parse_spec(spec: str) -> S.Schedule:
    try:
        return S.parse(spec)
    except SpecError as exc:
        raise click.UsageError(f"bad schedule {spec!r}: {exc}") from None


def _writable(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A ``--out``-like path checked before the command runs (a range test or a tuning
    run must not end in a traceback because its output cannot be written): missing
    folders on the way are created when it is written, below the nearest existing one,
    which must be a writable folder."""
    if value is None:
        return value
    import os
    from pathlib import Path

    path = Path(value).expanduser()
    where = path.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise click.BadParameter(f"{str(where)!r} is not a folder", ctx, param)
    if not os.access(where, os.W_OK):
        raise click.BadParameter(f"cannot write into {str(where)!r}", ctx, param)
    return value


def _parent_made(path: str) -> None:
    """The folders on the way to ``path``, made (as the reports' writers make them)."""
    from pathlib import Path

    Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)


#: torch.manual_seed's range (a seed below 0 or above it raised a traceback)
_SEED = click.IntRange(min=0, max=2**63 - 1)
class _LRBound(click.FloatRange):
    """A learning rate bound of the range test: positive and finite (a FloatRange lets
    NaN through: every comparison with it is false)."""

    def __init__(self) -> None:
        super().__init__(min=0, max=1e300, min_open=True)

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if v != v:
            self.fail(f"{value!r} is not a number", param, ctx)
        return v


_LR_BOUND = _LRBound()


def _steps_option(default: int = 1000):
    return click.option("--steps", "-n", type=click.IntRange(min=1, max=S.MAX_STEPS),
                        default=default, show_default=True,
                        help="Number of optimizer steps to draw or tabulate.")


def _save(fig, out: str) -> None:
    """Write the figure, or stop with a one-line error where ``out`` cannot be written."""
    from lrkit.plot import save

    try:
        _parent_made(out)
        save(fig, out)
    except OSError as exc:
        raise click.ClickException(f"cannot write the figure to {out!r}: "
                                   f"{exc.strerror or exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lrkit")
def main() -> None:
    """lrkit: learning-rate schedules, optimizers, range tests and benchmarks."""


# -- schedules ----------------------------------------------------------------------
ARTICLE = [
    ("time_based(0.1, decay=2e-6)", "time-based"),
    ("step_based(0.1, drop=0.5, every=200)", "step-based"),
    ("exponential(0.1, decay=0.003)", "exponential"),
]
MODERN = [
    ("cosine(0.1, total=1000)", "cosine"),
    ("warmup(cosine(0.1, total=900), steps=100)", "warmup + cosine"),
    ("one_cycle(0.1, total=1000)", "one-cycle"),
    ("wsd(0.1, total=1000, warmup=50, decay=0.2)", "WSD"),
    ("cosine_restarts(0.1, period=100, mult=2)", "cosine restarts"),
    ("cyclic(0.01, high=0.1, up=100, mode='triangular2')", "cyclic (triangular2)"),
    ("inverse_sqrt(0.1, warmup=100)", "inverse sqrt"),
]


@main.command()
@_steps_option(1000)
@click.option("--out", type=click.Path(dir_okay=False),
              callback=_writable, default="lrkit-demo.png",
              show_default=True, help="Where to save the figure.")
def demo(steps: int, out: str) -> None:
    """Plot the article's three schedules beside the modern family, and print a table."""
    from lrkit.plot import new_axes, plot_schedules

    article = [(S.parse(t), label) for t, label in ARTICLE]
    modern = [(S.parse(t), label) for t, label in MODERN]
    fig, (left, right) = new_axes(2, figsize=(13, 4.5))
    plot_schedules([s for s, _ in article], steps, left, labels=[lbl for _, lbl in article],
                   title="The article: time-based, step-based, exponential")
    plot_schedules([s for s, _ in modern], steps, right, labels=[lbl for _, lbl in modern],
                   title="The modern family")
    _save(fig, out)
    _print_table(article + modern, _default_points(steps), title="Learning rate by step")
    click.echo(f"figure written to {out}")


def _default_points(steps: int) -> list[int]:
    points = sorted({0, 1, 10, steps // 10, steps // 4, steps // 2, 3 * steps // 4, steps - 1})
    return [p for p in points if 0 <= p < steps]


def _print_table(rows: Sequence[tuple[S.Schedule, str]], points: Sequence[int], title: str):
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("schedule", no_wrap=True)
    for p in points:
        table.add_column(f"n={p}", justify="right")
    n = np.asarray(points)
    for s, label in rows:
        table.add_row(label, *(f"{v:.3g}" for v in s(n)))
    console = Console()
    console.width = max(console.width, 130)
    console.print(table)


@main.command()
@click.argument("specs", nargs=-1, required=True)
@_steps_option(1000)
@click.option("--out", "-o", type=click.Path(dir_okay=False),
              callback=_writable, default="schedules.png",
              show_default=True, help="Where to save the figure.")
@click.option("--log", is_flag=True, help="Logarithmic learning-rate axis.")
def plot(specs: tuple[str, ...], steps: int, out: str, log: bool) -> None:
    """Draw one or more schedules (spec text such as "cosine(0.1, total=1000)")."""
    from lrkit.plot import new_axes, plot_schedules

    schedules = [_parse_spec(s) for s in specs]
    fig, (ax,) = new_axes(1, figsize=(8, 4.5))
    plot_schedules(schedules, steps, ax, log=log)
    _save(fig, out)
    click.echo(f"figure written to {out}")


@main.command()
@click.argument("spec")
@_steps_option(1000)
@click.option("--at", "at", default=None,
              help="Comma-separated steps to show (default: a spread over --steps).")
def show(spec: str, steps: int, at: str | None) -> None:
    """Print a table of a schedule's values at chosen steps."""
    s = _parse_spec(spec)
    if at:
        try:
            points = [int(p) for p in at.split(",") if p.strip()]
        except ValueError:
            raise click.UsageError(f"--at must be comma-separated integers, got {at!r}") from None
        if any(not 0 <= p <= S.MAX_STEPS for p in points):
            raise click.UsageError(f"--at steps must be from 0 to 2**53, got {at!r}")
    else:
        points = _default_points(steps)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=str(s))
    table.add_column("step", justify="right")
    table.add_column("learning rate", justify="right")
    for p, v in zip(points, s(np.asarray(points))):
        table.add_row(str(p), f"{v:.6g}")
    Console().print(table)


# -- the range test -----------------------------------------------------------------------
@main.command()
@click.argument("target")
@click.option("--optimizer", default="adam", show_default=True,
              help='An lrkit.optim or torch.optim class, any case, with optional arguments: '
                   '"sgd(momentum=0.9)", "prodigy", "adamw(weight_decay=0.1)" (an lrkit name '
                   'wins over torch\'s).')
@click.option("--start", type=_LR_BOUND, default=1e-7,
              show_default=True, help="First learning rate of the sweep.")
@click.option("--end", type=_LR_BOUND, default=10.0,
              show_default=True, help="Last learning rate of the sweep.")
@click.option("--steps", type=click.IntRange(min=2, max=S.MAX_STEPS), default=100,
              show_default=True,
              help="Number of optimizer steps (learning rates) in the sweep.")
@click.option("--mode", type=click.Choice(["exp", "linear"]), default="exp",
              show_default=True, help="Geometric or linear sweep.")
@click.option("--seed", type=_SEED, default=0, show_default=True,
              help="Seed of torch's generator (and of a built-in task's build).")
@click.option("--out", type=click.Path(dir_okay=False),
              callback=_writable, default="finder.png",
              show_default=True, help="Where to save the plot.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              callback=_writable, default=None,
              help="Also write the curve and the suggestions to this JSON file.")
def find(target: str, optimizer: str, start: float, end: float, steps: int, mode: str,
         seed: int, out: str, json_path: str | None) -> None:
    """Run the learning-rate range test on TARGET and suggest an initial learning rate.

    TARGET is package.module:function, a function returning (model, loader, loss_fn), or
    a built-in task: quadratic, noisy_quadratic, mnist1d_mlp, mnist1d_cnn, digits_softmax,
    rosenbrock, char_lm.
    """
    import json

    import torch

    from lrkit.finder import find_lr
    from lrkit.targets import TargetError, load_target, optimizer_factory

    if end <= start:
        raise click.UsageError(f"--end must be greater than --start ({start:g}), got {end:g}")
    torch.manual_seed(seed)
    try:
        make = optimizer_factory(optimizer)
        _prepare(target)
        loaded = load_target(target, seed=seed)
        opt = make(loaded.model.parameters(), lr=start)
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
    with _progress(steps, f"range test on {loaded.name}") as advance:
        result = find_lr(loaded.model, opt, loaded.loader, loaded.loss_fn, start=start,
                         end=end, steps=steps, mode=mode, callback=advance, warn=False)
    _print_suggestions(result)
    from lrkit.plot import new_axes

    fig, (ax,) = new_axes(1, figsize=(8, 4.5))
    result.plot(ax)
    ax.set_title(f"Range test: {loaded.name}, {type(opt).__name__}")
    _save(fig, out)
    click.echo(f"figure written to {out}")
    if json_path:
        try:
            _parent_made(json_path)
            with open(json_path, "w") as f:
                json.dump({"target": loaded.name, "optimizer": optimizer,
                           **result.to_dict()}, f, indent=1, allow_nan=False)
        except OSError as exc:
            raise click.ClickException(f"cannot write the result to {json_path!r}: "
                                       f"{exc.strerror or exc}") from None
        click.echo(f"result written to {json_path}")


def _prepare(target: str) -> None:
    """A built-in task's first build on a machine makes its data or reference optimum
    (cached after): say so on stderr before the wait."""
    from lrkit.bench.tasks import TASKS

    if target.strip() in TASKS:
        TASKS[target.strip()].prepare(log=lambda line: click.echo(line, err=True))


class _progress:
    """A rich progress bar over the sweep; ``advance(step, lr, loss)`` updates it."""

    def __init__(self, total: int, title: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("lr {task.fields[lr]}"),
                            TextColumn("loss {task.fields[loss]}"), TimeRemainingColumn())
        self.task = self.bar.add_task(title, total=total, lr="-", loss="-")

    def __enter__(self):
        self.bar.start()

        def advance(step: int, lr: float, loss: float) -> None:
            self.bar.update(self.task, completed=step + 1, lr=f"{lr:.2e}", loss=f"{loss:.4g}")

        return advance

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()


def _print_suggestions(result) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Suggested learning rates ({len(result.lrs)} steps, "
                        f"{result.stop_reason})")
    table.add_column("rule")
    table.add_column("learning rate", justify="right")
    for rule, lr in result.suggestions.items():
        mark = "  <- suggestion" if rule == result.rule else ""
        table.add_row(rule + mark, "-" if lr is None else f"{lr:.3g}")
    console = Console()
    console.print(table)
    noise = result.noise
    if noise is not None:
        scale = "" if noise.scale is None else f", B_simple = {noise.scale:.3g} examples"
        console.print(f"gradient noise: tr(Sigma_B) / |G|^2 = {noise.ratio:.3g}{scale} "
                      f"({noise.pairs} pairs of steps at lr <= {noise.lr_max:.2g})")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")


@main.command()
@click.argument("target")
@click.option("--trials", type=click.IntRange(min=1), default=50, show_default=True,
              help="Finished trials to reach in the study (a rerun resumes up to it).")
@click.option("--storage", default=None,
              help="sqlite:///FILE, postgresql://USER@HOST/DB or journal:FILE "
                   "[default: lrkit-tune.db here; lrkit-tune.journal with --workers > 1].")
@click.option("--study", default=None, help="Study name [default: lrkit-TARGET].")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine.")
@click.option("--optimizer", default=None,
              help="Optimizer, e.g. adam or \"sgd(nesterov=True)\" [default: the task's].")
@click.option("--steps", type=click.IntRange(min=2, max=S.MAX_STEPS), default=None,
              help="Training steps per trial [default: the task's budget; 300 for a "
                   "module:function TARGET].")
@click.option("--pruner", type=click.Choice(["asha", "median", "hyperband", "none"]),
              default="asha", show_default=True)
@click.option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe",
              show_default=True)
@click.option("--seed", type=_SEED, default=None, help="Seed of the sampler and of the task.")
@click.option("--out", type=click.Path(dir_okay=False),
              callback=_writable, default="tune-report.html",
              show_default=True, help="Where to write the HTML report.")
def tune(target: str, trials: int, storage: str | None, study: str | None, workers: int,
         optimizer: str | None, steps: int | None, pruner: str, sampler: str,
         seed: int | None, out: str) -> None:
    """Search the learning rate and schedule of TARGET with Optuna.

    TARGET is a built-in task (quadratic, noisy_quadratic, mnist1d_mlp, mnist1d_cnn,
    digits_softmax, rosenbrock, char_lm) or package.module:function returning (model,
    loader, loss_fn). Every machine of a multi-machine search runs the same command with
    the same --storage (PostgreSQL or a journal file on shared storage).

    The value of a trial: for a built-in task, its metric after --steps updates (test
    accuracy is maximised, the others minimised); for package.module:function, the mean
    training loss over the last tenth of --steps updates (minimised). A study records its
    --steps, --optimizer and --seed and refuses a rerun with others (name a new --study).
    """
    from lrkit.targets import TargetError
    from lrkit.tuning import StorageError, StudyMismatchError
    from lrkit.tuning import tune as run_tune

    _prepare(target)
    try:
        result = run_tune(target, trials=trials, storage=storage, study=study,
                          workers=workers, optimizer=optimizer, steps=steps, pruner=pruner,
                          sampler=sampler, seed=seed, report=out, progress=True)
    except (TargetError, StorageError, StudyMismatchError) as exc:
        raise click.ClickException(str(exc)) from None
    counts = ", ".join(f"{n} {k}" for k, n in sorted(result.counts().items()))
    click.echo(f"trials: {counts}")
    try:
        best = result.best_trial
    except ValueError:
        raise click.ClickException("no trial completed; see the report") from None
    click.echo(f"best value {result.best_value:.6g} (trial #{best.number})")
    if result.best_schedule is not None:
        click.echo(f"best schedule: {result.best_schedule}")
    for key, value in best.params.items():
        if key not in ("lr", "schedule", "warmup"):
            click.echo(f"best {key}: {value:.4g}" if isinstance(value, float)
                       else f"best {key}: {value}")
    click.echo(f"report written to {result.report_path}")


@main.command()
@click.argument("target")
@click.option("--steps", type=click.IntRange(min=10, max=S.MAX_STEPS), default=None,
              help="Training steps [default: the task's budget; required for a "
                   "module:function TARGET].")
@click.option("--optimizer", default="adamw", show_default=True,
              help="Optimizer, e.g. adamw, \"sgd(momentum=0.9)\", or a learning-rate-free "
                   "one: prodigy, schedulefree.")
@click.option("--budget", type=click.FloatRange(min=1.0), default=1.5, show_default=True,
              help="Total compute allowed, in runs of --steps (the search gets the rest).")
@click.option("--schedule", default=None, help="Override the schedule (spec text); its "
              "peak becomes the chosen rate.")
@click.option("--seed", type=_SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False),
              callback=_writable, default="autopilot-report.html",
              show_default=True, help="Where to write the HTML report.")
@click.option("--save", type=click.Path(dir_okay=False),
              callback=_writable, default=None,
              help="Save the trained model's state_dict there (torch.save), e.g. model.pt.")
def fit(target: str, steps: int | None, optimizer: str, budget: float, schedule: str | None,
        seed: int, out: str, save: str | None) -> None:
    """Train TARGET with the autopilot: it picks the learning rate and schedule, guards
    the run and explains its choices.

    TARGET is package.module:function returning (model, loader, loss_fn), or a built-in
    task (its metric is reported at the end).
    """
    from lrkit.pilot import autopilot
    from lrkit.targets import TargetError, load_target

    try:
        _prepare(target)
        loaded = load_target(target, seed=seed)
    except TargetError as exc:
        raise click.ClickException(str(exc)) from None
    task = None
    if ":" not in target:
        from lrkit.bench.tasks import get_task

        task = get_task(target)
        steps = steps or task.steps
    if steps is None:
        raise click.UsageError("--steps is required for a module:function TARGET")
    if schedule is not None:
        _parse_spec(schedule)
    try:
        report = autopilot(loaded.model, loaded.loader, loaded.loss_fn, steps=steps,
                           optimizer=optimizer, budget=budget, seed=seed, schedule=schedule)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(report.explain())
    lr = "learning-rate-free" if report.lr is None else f"{report.lr:.4g}"
    click.echo(f"peak lr {lr}; schedule {report.schedule}")
    click.echo(f"compute {report.relative_compute:.2f}x one run; final training loss "
               f"{report._final_loss():.4g}" + (" (diverged)" if report.diverged else ""))
    if task is not None:
        value = _task_metric(task, loaded.model, seed)
        report.metrics[task.metric] = (value, task.target)
        click.echo(f"{task.metric}: {value:.4g} (target {task.target:g})")
    report.to_html(out)
    click.echo(f"report written to {out}")
    if save:
        import torch

        torch.save(loaded.model.state_dict(), save)
        click.echo(f"model weights (state_dict) written to {save}")


def _task_metric(task, model, seed: int) -> float:
    """Evaluate a trained model with the task's metric (built for the same seed)."""
    return task.build(seed).evaluate(model)


# -- the benchmark arena ----------------------------------------------------------------------
def _lr_grid(text: str) -> tuple[float, ...]:
    """``--lrs``: positive finite numbers, comma-separated, in increasing order."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.UsageError(f"--lrs expects comma-separated numbers, got {text!r}") from None
    if not values or not all(0 < v < math.inf for v in values):
        raise click.UsageError(f"--lrs expects positive finite learning rates, got {text!r}")
    return tuple(sorted(set(values)))


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise click.UsageError(f"expected comma-separated names, got {text!r}")
    return names


@main.command()
@click.option("--suite", type=click.Choice(["quick", "full", "heldout"]), default="quick",
              show_default=True,
              help="quick: 5 fast tasks, 1 seed, lr decades (about 4 min on 2 idle cores); full: "
                   "all 7 tasks, 3 seeds, half decades; heldout: the 3 held-out tasks, 3 seeds, "
                   "the Adam grid and the untuned contenders.")
@click.option("--tasks", default=None, help="Comma-separated tasks (default: the suite's).")
@click.option("--methods", default=None,
              help="Comma-separated methods (default: all; see --list).")
@click.option("--seeds", type=click.IntRange(min=1), default=None,
              help="Paired seeds per cell (default: the suite's).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Worker processes, one torch thread each (default: one per CPU core).")
@click.option("--out", type=click.Path(file_okay=False),
              callback=_writable, default="bench-results",
              show_default=True, help="Directory of results.csv (appended to, resumed from) "
                                      "and the report.")
@click.option("--steps", type=click.IntRange(min=1, max=S.MAX_STEPS), default=None,
              help="Override every task's step budget (smoke runs; kept apart from "
                   "full-budget results).")
@click.option("--lrs", default=None,
              help="Comma-separated peak learning rates of the tuned methods' grid "
                   "(default: the suite's), e.g. 0.001,0.00316,0.01 for a reduced grid "
                   "of the slow tasks.")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write the report at the end.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local",
              show_default=True, help="local: worker processes on this machine; ray: Ray "
                                      "tasks on a Ray cluster (--address) or a local one.")
@click.option("--address", default=None,
              help="The Ray cluster to run on (e.g. auto, ray://head:10001); default: a "
                   "local Ray instance of --workers CPUs. Only with --executor ray.")
@click.option("--list", "list_only", is_flag=True, help="List suites, tasks and methods, "
                                                       "then exit.")
def bench(suite: str, tasks: str | None, methods: str | None, seeds: int | None,
          workers: int | None, out: str, steps: int | None, lrs: str | None, report: bool,
          executor: str, address: str | None, list_only: bool) -> None:
    """Run the benchmark arena: tasks x methods x learning rates x paired seeds.

    Every finished cell is appended to OUT/results.csv at once; rerunning the same
    command resumes, skipping finished cells. Ctrl-C stops after the running cells.
    """
    from lrkit.bench.methods import METHODS
    from lrkit.bench.runner import SUITES
    from lrkit.bench.runner import bench as run_bench
    from lrkit.bench.tasks import HELD_OUT, TASKS

    if list_only:
        for s in SUITES.values():
            click.echo(f"suite {s.name}: {s.description}")
        click.echo("tasks: " + ", ".join(TASKS))
        click.echo("held-out tasks (suite heldout): " + ", ".join(HELD_OUT))
        for m in METHODS.values():
            state = f"  [skipped here: {m.missing}]" if m.missing else \
                (f"  [{m.stand_in}]" if m.stand_in else "")
            click.echo(f"  {m.name:18s} {m.label}{state}")
        return
    task_list, method_list = _names(tasks), _names(methods)
    for t in task_list or ():
        if t not in TASKS and t not in HELD_OUT:
            raise click.UsageError(f"unknown task {t!r}; choose from "
                                   f"{', '.join([*TASKS, *HELD_OUT])}")
    for m in method_list or ():
        if m not in METHODS:
            raise click.UsageError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    if address is not None and executor != "ray":
        raise click.UsageError("--address is the Ray cluster's; add --executor ray")
    chosen: Any = suite
    if lrs is not None:
        grid = _lr_grid(lrs)
        base = SUITES[suite]
        chosen = dataclasses.replace(base, grids={k: grid for k in base.grids})
    result = run_bench(chosen, tasks=task_list, methods=method_list, seeds=seeds,
                       workers=workers, out=out, steps=steps, report=report,
                       executor=executor, address=address,
                       log=lambda line: click.echo(line, err=True))
    click.echo(f"{result.new} cells run, {result.before} already done, of {result.total}, "
               f"in {result.wall_time:.0f} s; results in {result.results}")
    if result.report is not None:
        click.echo(f"report: {result.report} and {result.report.with_suffix('.md')}")
    if result.interrupted:
        sys.exit(130)
    if result.errors:
        raise click.ClickException(f"{len(result.errors)} cells failed; first: "
                                   f"{result.errors[0]}")


@main.command()
@click.argument("results", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False),
              callback=_writable, default=None,
              help="Directory of the report (default: beside RESULTS).")
def report(results: str, out: str | None) -> None:
    """Write the arena report (Markdown and one self-contained HTML page) for RESULTS, a
    results.csv file or a directory holding one."""
    from lrkit.bench.report import write_report

    try:
        page = write_report(results, out)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {page} and {page.with_suffix('.md')}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
