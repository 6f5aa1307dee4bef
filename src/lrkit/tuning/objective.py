"""What a trial of ``lrkit.tune`` trains and measures: a built-in task, a user's
``module:function`` target, or a callable; and the ``report(step, value)`` hook that hands
intermediate values to Optuna's pruner."""
from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lrkit.tuning.space import schedule_of

DEFAULT_TARGET_STEPS = 300


class Report:
    """``report(step, value)`` inside an objective: records an intermediate value and raises
    ``optuna.TrialPruned`` when the pruner stops the trial."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def __call__(self, step: int, value: float) -> None:
        import optuna

        if not math.isfinite(value):
            return
        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4g}")


@dataclass
class Objective:
    """What a trial trains: a built-in task, a ``module:function`` target or a callable."""

    name: str
    direction: str
    fn: Callable[[dict[str, Any], Report], float]
    steps: int | None = None
    lr_suggestion: Callable[[], float | None] | None = None
    #: what a trial's value depends on besides its parameters, recorded in the study so
    #: that a rerun with other settings does not mix values that cannot be compared
    settings: dict[str, Any] = field(default_factory=dict)
    #: what "value" means, in words (the report and the study's user attributes say it)
    description: str = ""


def _make_optimizer(optimizer: str, params: Mapping[str, Any]):
    """``params -> optimizer`` with the setting's momentum as SGD's momentum or Adam's beta1."""
    from lrkit.optim.names import optimizer_factory

    factory = optimizer_factory(optimizer)

    def make(parameters):
        opt = factory(parameters, lr=float(params.get("lr", 1e-3)))
        if "momentum" in params:
            m = float(params["momentum"])
            for group in opt.param_groups:
                if "momentum" in group:
                    group["momentum"] = m
                elif "betas" in group:
                    group["betas"] = (m, *tuple(group["betas"])[1:])
        return opt

    return make


def _task_objective(task: Any, optimizer: str | None, steps: int | None, seed: int):
    from lrkit.bench.train import train

    optimizer = optimizer or task.reference.optimizer
    budget = steps or task.steps

    def fn(params: dict[str, Any], report: Report) -> float:
        run = train(task, _make_optimizer(optimizer, params), schedule_of(params, budget),
                    seed=seed, steps=budget, on_eval=report)
        return float(run.final)

    def suggestion() -> float | None:
        return _range_test(lambda: task.build(seed).as_target(), optimizer)

    return Objective(task.name, "maximize" if task.higher_is_better else "minimize", fn,
                     budget, suggestion,
                     {"steps": budget, "optimizer": optimizer, "seed": seed},
                     f"{task.metric} of task {task.name} after {budget} training steps with "
                     f"{optimizer} (task seed {seed}), "
                     f"{'maximised' if task.higher_is_better else 'minimised'}")


def _target_objective(text: str, optimizer: str | None, steps: int | None):
    """A user's ``module:function`` target: the mean training loss of the last tenth of
    ``steps`` updates (default 300), reported every tenth of the run."""
    from lrkit.loop import Loop, Step, batch_loss, endless
    from lrkit.scheduler import Scheduler
    from lrkit.targets import load_target

    optimizer = optimizer or "adam"
    budget = steps or DEFAULT_TARGET_STEPS

    def fn(params: dict[str, Any], report: Report) -> float:
        target = load_target(text)
        model = target.model
        opt = _make_optimizer(optimizer, params)(model.parameters())
        schedule = schedule_of(params, budget)
        loop = Loop(Step(model, opt, batch_loss(target.loss_fn, "tune()")),
                    Scheduler(opt, lr=schedule) if schedule is not None else None)
        every = max(1, budget // 10)

        def on_step(step: int, loss: float, lr: float) -> None:
            if step % every == 0:
                report(step, sum(loop.losses[-every:]) / every)

        if not loop.run(endless(target.loader, "tune()"), budget, on_step):
            return math.inf
        tail = loop.losses[-max(1, budget // 10):]
        return sum(tail) / len(tail)

    def suggestion() -> float | None:
        def build():
            t = load_target(text)
            return t.model, t.loader, t.loss_fn
        return _range_test(build, optimizer)

    return Objective(text, "minimize", fn, budget, suggestion,
                     {"steps": budget, "optimizer": optimizer},
                     f"mean training loss of {text} over the last tenth of {budget} "
                     f"training steps with {optimizer}, minimised")


def _range_test(build: Callable[[], tuple[Any, Any, Any]], optimizer: str) -> float | None:
    from lrkit.finder import find_lr
    from lrkit.optim.names import optimizer_factory

    model, loader, loss_fn = build()
    opt = optimizer_factory(optimizer)(model.parameters(), lr=1e-3)
    result = find_lr(model, opt, loader, loss_fn, warn=False)
    value = result.suggestion
    return float(value) if value is not None and math.isfinite(value) else None


def _callable_objective(fn: Callable[..., float], direction: str, name: str | None):
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= 2:
        call = fn
    else:
        def call(settings: dict[str, Any], report: Report) -> float:
            return fn(settings)
    label = name or getattr(fn, "__name__", "objective")
    return Objective(label, direction, call,
                     description=f"the number {label}(params) returns, {direction[:-1]}ed")


@dataclass(frozen=True)
class ObjectiveSpec:
    """What ``tune()`` was asked to optimise, as given (picklable, so that a spawned worker
    resolves it again): a task name or ``Task``, ``"module:function"`` or a callable, with
    the optimizer, the budget in steps, the task's seed and the direction."""

    target: Any
    optimizer: str | None = None
    steps: int | None = None
    seed: int = 0
    direction: str | None = None


def resolve(spec: ObjectiveSpec) -> Objective:
    """The ``Objective`` a spec names (a TARGET that cannot load fails here, once)."""
    from lrkit.bench.tasks import TASKS, Task

    target, optimizer, steps, seed = spec.target, spec.optimizer, spec.steps, spec.seed
    if isinstance(target, Task):
        return _task_objective(target, optimizer, steps, seed)
    if isinstance(target, str):
        text = target.strip()
        if text in TASKS:
            return _task_objective(TASKS[text], optimizer, steps, seed)
        if ":" in text:
            from lrkit.targets import load_target

            load_target(text)  # a TARGET that cannot load fails here, once, with one line
            return _target_objective(text, optimizer, steps)
        from lrkit.targets import TargetError

        raise TargetError(f"TARGET {text!r} is neither 'package.module:function' nor a "
                          f"built-in task ({', '.join(TASKS)})")
    if callable(target):
        return _callable_objective(target, spec.direction or "minimize", None)
    raise TypeError("tune(): objective_or_target must be a task name, 'module:function', a "
                    f"Task or a callable, got {type(target).__name__}")
