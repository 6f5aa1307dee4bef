"""``train``: one training run of a benchmark task with a given optimizer and schedule.

It never raises on divergence: a non-finite loss or metric, or an optimizer refusing a
non-finite value (``FloatingPointError``, which ``lrkit.NonFiniteGradientError`` is), ends
the run early, with ``diverged=True`` and the task's worst metric as ``final``.

Its steps are ``lrkit.loop``'s: optimizers that keep two sets of weights (schedule-free:
``opt.train()`` / ``opt.eval()``) are switched to eval mode around every evaluation;
optimizers that need a closure (SLS) get one with ``closure=True``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit.bench.tasks import Task, TaskInstance, get_task
from lrkit.loop import Loop, Step, averaged, batch_loss, has_modes
from lrkit.scheduler import Scheduler

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
ScheduleArg = S.Schedule | str | float | Callable[[int], S.Schedule] | None


@dataclass
class Run:
    """The record of one run: the metric curve, its summaries, and how it ended.

    ``compute`` is what the run cost relative to one plain run of ``steps`` steps (one
    forward and backward pass per step): 1.0 unless a method says otherwise (a line search
    evaluates the loss several times per step; a method that tunes itself spends extra
    runs). ``info`` holds whatever else a method reports (an estimated learning rate...).
    """

    task: str
    seed: int
    steps: int
    eval_steps: list[int] = field(default_factory=list)
    metrics: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    final: float = math.nan
    half: float = math.nan
    steps_to_target: int | None = None
    diverged: bool = False
    wall_time: float = 0.0
    compute: float = 1.0
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_metric(self, task: Task, step: int, value: float) -> None:
        """Record the metric at ``step``: the curve, the first step at the target, and the
        value at half the budget."""
        self.eval_steps.append(step)
        self.metrics.append(value)
        if self.steps_to_target is None and task.reached(value):
            self.steps_to_target = step
        if step == self.steps // 2:
            self.half = value

    def finish(self, task: Task, diverged: bool) -> None:
        """End the record: a diverged run scores the task's worst value, also at half the
        budget when it did not get there."""
        self.diverged = diverged
        self.final = task.worst if diverged else self.metrics[-1]
        if math.isnan(self.half):
            self.half = task.worst



def train(
    task: Task | str,
    make_optimizer: OptimizerFactory,
    schedule: ScheduleArg = None,
    *,
    seed: int = 0,
    steps: int | None = None,
    instance: TaskInstance | None = None,
    callback: Callable[[int, float], None] | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    closure: bool = False,
    on_end: Callable[[torch.optim.Optimizer, Run], None] | None = None,
) -> Run:
    """Train ``task`` (built from ``seed``, or the given ``instance``) for ``steps`` steps
    (default: the task's budget) and record its metric.

    ``make_optimizer(params)`` builds the optimizer. ``schedule`` sets the learning rate of
    every step through ``lrkit.Scheduler``: a Schedule, spec text or number, or a function
    of the number of steps returning one (``lambda n: S.cosine(0.1, total=n)``); ``None``
    leaves the optimizer's own lr alone. The metric is evaluated at step 0, every
    ``task.eval_every`` steps, at half the budget and at the end, in eval mode for an
    optimizer with ``train()``/``eval()`` methods (schedule-free: the averaged weights).
    ``callback(step, loss)`` is called after every step, ``on_eval(step, metric)`` after
    every evaluation (an exception either raises, such as a tuner's pruning signal, ends the
    run and propagates). With ``closure=True`` the step is ``opt.step(closure)``, the
    closure returning the batch's loss (backward only where gradients are enabled, so a
    line search can re-evaluate it without them). ``on_end(opt, run)`` is called once the
    run ends (before ``wall_time`` is taken): a method reads what its optimizer measured
    (function evaluations, its estimated lr).
    """
    fn = "train()"
    if not isinstance(task, (Task, str)):
        raise TypeError(f"{fn}: task must be a Task or a task name, got {type(task).__name__}")
    task = get_task(task) if isinstance(task, str) else task
    if not callable(make_optimizer):
        raise TypeError(f"{fn}: make_optimizer must be callable (params -> optimizer), got "
                        f"{type(make_optimizer).__name__}")
    steps = task.steps if steps is None else C.positive_int(fn, "steps", steps)
    seed = C.nonnegative_int(fn, "seed", seed)
    closure = C.boolean(fn, "closure", closure)
    for name, hook in (("callback", callback), ("on_eval", on_eval), ("on_end", on_end)):
        C.optional_callable(fn, name, hook)
    inst = task.build(seed) if instance is None else instance
    model = inst.model
    opt = make_optimizer(model.parameters())
    if callable(schedule) and not isinstance(schedule, S.Schedule):
        schedule = schedule(steps)
    sched = Scheduler(opt, lr=schedule) if schedule is not None else None
    checkpoints = task.evaluation_steps(steps)
    run = Run(task.name, inst.seed, steps)
    began = time.perf_counter()
    if has_modes(opt):  # schedulefree's optimizers start in eval mode
        opt.train()

    def record(step: int) -> bool:
        with averaged(opt):
            value = inst.evaluate(model)
        run.add_metric(task, step, value)
        if on_eval is not None:
            on_eval(step, value)
        return math.isfinite(value)

    def on_step(step: int, loss: float, lr: float) -> bool:
        if callback is not None:
            callback(step, loss)
        return record(step) if step in checkpoints else True

    loop = Loop(Step(model, opt, batch_loss(inst.loss_fn, fn), closure=closure), sched,
                nonfinite_errors=(FloatingPointError,), losses=run.losses)
    ok = record(0) and loop.run(iter(inst.loader), steps, on_step)
    run.finish(task, diverged=not ok)
    if on_end is not None:
        on_end(opt, run)
    run.wall_time = time.perf_counter() - began
    return run
