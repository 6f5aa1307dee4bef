"""The arena's methods: an optimizer, a learning-rate schedule shaped from the step budget,
and how the learning rate is chosen (tuned over a grid, or not at all).

A ``Method`` names its optimizer as a class of ``lrkit.optim`` (or ``"module:Class"``).
Where ``lrkit.optim`` lacks it (issue 4's learning-rate-free optimizers, until merged),
the authors' package named by ``reference`` stands in when installed (the dev extra has
them), with a note and its own name in the setting text, so its cells are redone once
lrkit's class exists; with neither, the method is skipped with a note
(``Method.missing``).
``method.cell(task, lr, seed)`` trains one cell of the grid and returns a
``lrkit.bench.Run``. A method that chooses its own learning rate (issue 9's autopilot) plugs
in with ``runner=``: a function ``(method, task, lr, seed, steps) -> Run`` that sets
``run.compute`` to what it spent relative to one plain run (range test and probes
included), and ``grid=None``::

    register(Method("autopilot", "autopilot (AdamW)", "AdamW", family="auto",
                    runner=autopilot_cell))

Schedules are the families of ``lrkit.schedules.family`` (one definition for the arena,
``tune``, the autopilot and the plots; its docstring gives each shape), shaped from the
budget with a linear warmup over ``WARMUP`` = 5% of the steps; one_cycle's warmup is its
rise over the first 30% (torch's default, ``S.families.ONE_CYCLE_RISE``).
"""
from __future__ import annotations

import importlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from lrkit import optim
from lrkit import schedules as S
from lrkit.bench.tasks import Task
from lrkit.bench.train import Run, train
from lrkit.finder import DEFAULT_RULE
from lrkit.optim import LBFGS

WARMUP = 0.05
SCHEDULES = S.families.COMPARED  # the families the arena runs, with SGD and with Adam


# -- methods -----------------------------------------------------------------------------
Runner = Callable[["Method", Task, float, int, int], Run]


@dataclass(frozen=True)
class Method:
    """One contender of the arena.

    name: its key in results files and on the command line.
    label: how the report names it.
    optimizer: a class name of ``lrkit.optim`` or ``"module:Class"``.
    reference: ``"module:Class"`` of the authors' package with the same constructor, used
        where ``lrkit.optim`` lacks ``optimizer`` (noted in the setting text).
    options: further constructor arguments (momentum...).
    schedule: a family of ``SCHEDULES`` shaped by ``S.family`` from the budget and the lr,
        or None: the optimizer's own lr throughout.
    grid: the suite's lr grid it is tuned over ("sgd", "adam"), or None: one untuned run
        at ``lr``.
    lr: the untuned lr (grid None).
    lr_option: the constructor argument the lr goes to (SLS: ``init_lr``).
    warmup: the warmup fraction of its schedule (``S.family``), or of ``warmup_option``.
    warmup_option: a constructor argument taking the warmup in steps (schedule-free's
        ``warmup_steps``), for optimizers that warm up themselves.
    closure: whether its ``step`` needs a closure (line search; lrkit's classes say so:
        ``needs_closure``).
    family: "sgd", "adam", "lr_free", "baseline" or "auto", for grouping in the report.
    runner: trains a cell instead of the default ``train`` call (a method that tunes
        itself); see the module docstring.
    style: how plots draw it (``color``, ``ls``, ``marker``; None: by its schedule and
        optimizer).
    tasks: the tasks it runs on (None: every task; L-BFGS: those with a full batch).
    """

    name: str
    label: str
    optimizer: str
    options: tuple[tuple[str, Any], ...] = ()
    reference: str | None = None
    schedule: str | None = None
    grid: str | None = None
    lr: float | None = None
    lr_option: str = "lr"
    warmup: float = WARMUP
    warmup_option: str | None = None
    closure: bool = False
    family: str = "sgd"
    note: str = ""
    runner: Runner | None = field(default=None, compare=False, repr=False)
    style: Mapping[str, Any] | None = field(default=None, compare=False, repr=False)
    tasks: tuple[str, ...] | None = None

    # -- what it is made of --
    def resolve(self) -> tuple[type | None, str]:
        """The optimizer class and its name in settings: ``lrkit.optim``'s (or the given
        ``"module:Class"``), else the authors' package named by ``reference``
        (``"prodigyopt.Prodigy"``), else ``(None, "")``."""
        for spec, own in ((self.optimizer, True), (self.reference, False)):
            if not spec:
                continue
            module, _, attr = spec.rpartition(":")
            try:
                cls = getattr(importlib.import_module(module or "lrkit.optim"), attr)
            except (ImportError, AttributeError):
                continue
            return cls, attr if own else f"{module}.{attr}"
        return None, ""

    def optimizer_class(self) -> type | None:
        return self.resolve()[0]

    @property
    def missing(self) -> str | None:
        """Why this method cannot run here (None: it can)."""
        if self.runner is not None or self.optimizer_class() is not None:
            return None
        module, _, attr = self.optimizer.rpartition(":")
        why = f"{module or 'lrkit.optim'} has no {attr}"
        if self.reference:
            why += f" and {self.reference.partition(':')[0]} is not installed"
        return why

    @property
    def stand_in(self) -> str | None:
        """A note when the authors' package stands in for a missing lrkit optimizer."""
        if self.runner is not None:
            return None
        cls, name = self.resolve()
        if cls is None or name == self.optimizer.rpartition(":")[2]:
            return None
        return f"lrkit.optim has no {self.optimizer} yet; using {name}"

    @property
    def probe(self) -> str:
        """The optimizer and options of its range test: ``"SGD(momentum=0.9)"``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.optimizer.rpartition(':')[2]}({args})"

    def kwargs(self, lr: float, steps: int) -> dict[str, Any]:
        out = {self.lr_option: lr, **dict(self.options)}
        if self.warmup_option:
            out[self.warmup_option] = int(round(self.warmup * steps))
        return out

    def lr_schedule(self, lr: float, steps: int) -> S.Schedule | None:
        if self.schedule is None:
            return None
        return S.family(self.schedule, lr, steps, self.warmup)

    def setting(self, lr: float, steps: int) -> str:
        """The complete setting of a cell as text: ``SGD(lr=0.1, momentum=0.9) | cosine(...)``."""
        if self.runner is not None:  # a self-tuning method: its name and options
            args = "".join(f", {k}={v!r}" for k, v in self.options)
            return f"{self.name}(optimizer={self.optimizer!r}{args}, steps={steps})"
        name = self.resolve()[1] or self.optimizer.rpartition(":")[2]
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs(lr, steps).items())
        sched = self.lr_schedule(lr, steps)
        return f"{name}({args}) | {sched if sched is not None else 'constant'}"

    def lrs(self, grids: dict[str, tuple[float, ...]]) -> tuple[float, ...]:
        """The learning rates it runs at in a suite with these grids."""
        if self.grid is None:
            return (self.lr if self.lr is not None else 1.0,)
        return tuple(grids[self.grid])

    # -- one cell --
    def cell(self, task: Task, lr: float, seed: int, steps: int | None = None) -> Run:
        """Train ``task`` from ``seed`` at peak ``lr`` for ``steps`` (default: its budget)."""
        steps = task.steps if steps is None else steps
        if self.runner is not None:
            return self.runner(self, task, lr, seed, steps)
        cls = self.optimizer_class()
        if cls is None:
            raise RuntimeError(f"{self.name}: {self.missing}")
        kwargs = self.kwargs(lr, steps)
        return train(task, lambda params: cls(params, **kwargs), self.lr_schedule(lr, steps),
                     seed=seed, steps=steps, closure=self.closure, on_end=_measure)


def _measure(opt: torch.optim.Optimizer, run: Run) -> None:
    """What an optimizer measured about itself: the step size it estimated (learning-rate
    free methods: d * lr; Prodigy, D-Adaptation, SLS), and the compute of a line search."""
    group = opt.param_groups[0]
    estimate = getattr(opt, "estimated_lr", None)
    if callable(estimate):
        try:
            run.info["estimated_lr"] = float(estimate()[0])
        except (TypeError, IndexError, ValueError):
            pass
    elif "d" in group:  # the authors' packages: d (the lr multiplier is the schedule's)
        run.info["d"] = float(group["d"])
    evals = getattr(opt, "total_function_evals", None)
    steps = len(run.losses)
    if isinstance(evals, int) and steps:
        # a step: one loss-and-gradient evaluation (forward + backward, about 3 forward
        # passes) plus evals - 1 loss-only trials (1 each); a plain step costs 3
        run.compute = (2 * steps + evals) / (3 * steps)
        run.info["function_evals_per_step"] = evals / steps


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add a method to the arena (``METHODS``); a later one of the same name replaces it."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"get_method(): name must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


_OPTIMIZERS = {  # key (and grid): label, class, options
    "sgd": ("SGD+m", "SGD", (("momentum", 0.9),)),
    "adam": ("Adam", "Adam", ()),
}
for _key, (_label, _cls, _options) in _OPTIMIZERS.items():
    for _family in SCHEDULES:
        register(Method(f"{_key}_{_family}", f"{_label} {_family}", _cls, _options,
                        schedule=_family, grid=_key, family=_key,
                        warmup=S.families.ONE_CYCLE_RISE if _family == "one_cycle" else WARMUP))

register(Method("adam_default", "Adam 1e-3 constant (default)", "Adam",
                lr=optim.Adam.recommended_lr, warmup=0.0, family="baseline",
                style={"color": "black", "ls": ":", "marker": "*"},
                note="the default choice of most users: Adam at 1e-3, no schedule, untuned"))
register(Method("sf_adamw", "ScheduleFreeAdamW", "ScheduleFreeAdamW", grid="adam",
                warmup_option="warmup_steps", family="lr_free",
                style={"color": "#17becf", "ls": "-", "marker": "D"},
                note="schedule-free AdamW (Defazio et al. 2024), warmup_steps = 5%, lr tuned"))
register(Method("sf_adamw_default", "ScheduleFreeAdamW 2.5e-3 (default)", "ScheduleFreeAdamW",
                lr=optim.ScheduleFreeAdamW.recommended_lr, warmup_option="warmup_steps",
                family="lr_free", style={"color": "#17becf", "ls": ":", "marker": "*"},
                note="schedule-free AdamW at its package's default lr, untuned"))
# AlgoPerf's self-tuning winner (Defazio et al. 2024, "The Road Less Scheduled"; the
# AlgoPerf v0.5 submission's HPARAMS): one calibrated configuration, no search. Its
# warmup_steps are 2% of the step budget here (the submission: 2% of 0.75 x the workload's
# step hint); its label smoothing and dropout belong to the workloads, not the optimizer.
ALGOPERF_SF_ADAMW = (("betas", (0.9, 0.9955159689799007)),
                     ("weight_decay", 0.08121616522670176), ("weight_lr_power", 2.0),
                     ("r", 0.75))
register(Method("sf_adamw_algoperf", "ScheduleFreeAdamW AlgoPerf (calibrated)",
                "ScheduleFreeAdamW", ALGOPERF_SF_ADAMW, lr=0.0025, warmup=0.02,
                warmup_option="warmup_steps", family="lr_free",
                style={"color": "#17becf", "ls": "--", "marker": "v"},
                note="AlgoPerf's self-tuning winner, schedule-free AdamW v2's calibrated "
                     "configuration: lr 0.0025, betas (0.9, 0.9955), weight decay 0.081, "
                     "weight_lr_power 2, r 0.75, warmup_steps = 2% of the budget; untuned"))
register(Method("prodigy", "Prodigy", "Prodigy", schedule=optim.Prodigy.recommended_family,
                lr=optim.Prodigy.recommended_lr, warmup=0.0, family="lr_free",
                style={"color": "#bcbd22", "ls": "-.", "marker": "P"},
                note="Prodigy (Mishchenko & Defazio 2023), lr=1 with cosine annealing as "
                     "its authors recommend, untuned"))
register(Method("dadapt_adam", "DAdaptAdam", "DAdaptAdam",
                schedule=optim.DAdaptAdam.recommended_family,
                lr=optim.DAdaptAdam.recommended_lr, warmup=0.0, family="lr_free",
                style={"color": "#7f7f7f", "ls": "-.", "marker": "X"},
                note="D-Adaptation Adam (Defazio & Mishchenko 2023), lr=1 with cosine "
                     "annealing, untuned"))
register(Method("sls", "SLS", "SLS", lr=1.0, lr_option="init_lr",
                closure=optim.SLS.needs_closure, family="lr_free",
                style={"color": "#393b79", "ls": "-.", "marker": "h"},
                note="stochastic Armijo line search (Vaswani et al. 2019), its defaults "
                     "(init_lr=1), untuned"))


# -- the autopilot: a method that chooses its own learning rate -------------------------------
def autopilot_cell(method: Method, task: Task, lr: float, seed: int, steps: int) -> Run:
    """One arena cell of ``lrkit.autopilot``: it trains ``task`` from ``seed`` with the
    method's optimizer, choosing the peak rate and the schedule family itself (range test,
    then probes at two lengths, scored by the task's metric as a user scores them on
    validation data) within
    ``budget`` (a method option, default 1.5 runs); ``lr`` is ignored. The
    metric is taken at the task's evaluation steps of the final run; ``run.compute`` is the
    autopilot's own account (range test + probes + training, in runs of ``steps``)."""
    from lrkit.pilot import autopilot

    options = dict(method.options)
    inst = task.build(seed)
    run = Run(task.name, seed, steps)
    checkpoints = task.evaluation_steps(steps)
    metrics = {0: inst.evaluate(inst.model)}

    def on_step(step: int, loss: float, lr: float) -> None:
        if step in checkpoints:  # a step redone after a guard rollback overwrites
            metrics[step] = inst.evaluate(inst.model)

    def validation(model: torch.nn.Module) -> float:  # the task's metric, lower is better
        value = inst.evaluate(model)
        return -value if task.higher_is_better else value

    began = time.perf_counter()
    report = autopilot(inst.model, inst.loader, inst.loss_fn, steps=steps,
                       optimizer=options.get("optimizer", method.optimizer.lower()),
                       budget=options.get("budget", 1.5), seed=seed,
                       callbacks=[on_step], progress=False, val_fn=validation)
    run.wall_time = time.perf_counter() - began
    if max(metrics) < steps and not report.diverged:  # the final state, if not yet seen
        metrics[steps] = inst.evaluate(inst.model)
    for step in sorted(metrics):
        run.add_metric(task, step, metrics[step])
    run.losses = list(report.losses)
    run.finish(task, diverged=report.diverged or not math.isfinite(run.metrics[-1]))
    run.compute = report.relative_compute
    run.info = {"chosen_lr": report.lr, "schedule": report.schedule,
                "suggestion": report.suggestion, "probes": len(report.probes),
                "guard_events": len(report.guard_events),
                "compute_parts": {k: v / steps for k, v in report.compute.items()},
                "overhead": (report.compute["range_test"] + report.compute["probes"]) / steps}
    return run


register(Method("autopilot", "autopilot (Adam)", "Adam", family="auto", runner=autopilot_cell,
                style={"color": "#ff1493", "ls": "-", "marker": "o"},
                note="lrkit.autopilot with Adam, budget 1.5 runs: range test, probes at "
                     "two lengths (the horizon fit), the family from the fit (exponential, "
                     "cosine or WSD), DivergenceGuard; untuned"))


# -- the range test's suggestion, untuned: linear decay to zero at it ---------------------------
def suggested_cell(method: Method, task: Task, lr: float, seed: int, steps: int) -> Run:
    """One arena cell of "train at the range test's suggestion": ``lrkit.find_lr`` with its
    defaults (100 steps from 1e-7 to 10; the model, optimizer and generators restored
    after) on the task built from ``seed``, with the method's optimizer, then training at
    the suggestion of the method's ``rule`` option (the finder's default rule) as the peak
    of its schedule family (linear decay to zero after a 5% warmup: Defazio et al. 2023,
    arXiv 2310.07831; Bergsma et al. 2025, arXiv 2502.15938); ``lr`` is ignored. Where the
    rule finds nothing, the optimizer's ``recommended_lr`` (``info["fallback"]``).
    ``run.compute`` counts the range test's steps: 1 + its steps / ``steps``."""
    from lrkit.finder import find_lr

    cls = method.optimizer_class()
    if cls is None:
        raise RuntimeError(f"{method.name}: {method.missing}")
    rule = dict(method.options).get("rule", DEFAULT_RULE)
    inst = task.build(seed)
    began = time.perf_counter()
    opt = cls(inst.model.parameters())
    result = find_lr(inst.model, opt, inst.loader, inst.loss_fn, warn=False)
    searched = time.perf_counter() - began
    chosen = result.suggestion if result.rule == rule else result.suggest(rule)
    fallback = chosen is None or not math.isfinite(chosen) or chosen <= 0
    if fallback:
        chosen = float(getattr(cls, "recommended_lr", None) or 1e-3)
    chosen = float(chosen)
    run = train(task, lambda params: cls(params, lr=chosen),
                S.family(method.schedule or "linear", chosen, steps, method.warmup),
                seed=seed, steps=steps, instance=inst, on_end=_measure)
    overhead = len(result.lrs) / steps
    run.wall_time += searched
    run.compute = 1.0 + overhead
    run.info = {**run.info, "chosen_lr": chosen, "suggestion": result.suggestion,
                "rule": rule, "fallback": fallback, "range_test_steps": len(result.lrs),
                "stop_reason": result.stop_reason, "overhead": overhead}
    return run


register(Method("adam_linear_suggested", "Adam linear at the range test's suggestion", "Adam",
                options=(("rule", DEFAULT_RULE),), schedule="linear", family="auto",
                runner=suggested_cell, style={"color": "#843c39", "ls": "-.", "marker": "*"},
                note="lrkit.find_lr with its defaults, then Adam with a 5% warmup and linear "
                     "decay to zero at the default rule's suggestion; untuned (compute: "
                     "one run plus the range test's steps)"))


# -- L-BFGS on the full batch: the step length from the curvature and a line search ---------
FULL_BATCH_TASKS = ("quadratic", "digits_softmax", "rosenbrock")


def lbfgs_cell(method: Method, task: Task, lr: float, seed: int, steps: int) -> Run:
    """One arena cell of ``lrkit.optim.LBFGS`` on the task's full batch (``FullBatch``):
    one ``step`` runs L-BFGS iterations until the budget is spent, the budget being the
    cell's ``steps`` plain minibatch steps, converted into full-batch evaluations (each
    costs ``full_batch.cost`` steps: its examples over the batch size). The metric at a
    checkpoint step c is that of the last iterate reached with at most c steps' worth of
    evaluations, so the curve is charged by function evaluations; ``run.compute`` is the
    budget, 1 run (``info["spent"]``: what it used before it stopped). ``lr`` is L-BFGS's
    initial step guess (1: the quasi-Newton step)."""
    inst = task.build(seed)
    full = inst.full_batch
    if full is None:
        raise ValueError(f"{method.name}: task {task.name!r} has no full batch (L-BFGS runs on "
                         f"{', '.join(FULL_BATCH_TASKS)})")
    run = Run(task.name, seed, steps)
    model = inst.model
    checkpoints = sorted(task.evaluation_steps(steps))
    budget = max(2, int(steps // full.cost))
    curve: list[tuple[float, float]] = [(0.0, inst.evaluate(model))]  # (spent, metric)
    losses: list[float] = []

    def closure() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        loss = inst.loss_fn(model(full.inputs), full.targets)
        loss.backward()
        return loss

    def watch(o: LBFGS) -> None:
        curve.append((o.total_function_evals * full.cost, inst.evaluate(model)))
        losses.append(o.explain().loss)

    options = dict(method.options)
    opt = LBFGS(model.parameters(), lr=lr, max_iter=budget, max_eval=budget,
                tolerance_grad=0.0, tolerance_change=0.0, callback=watch, **options)
    began = time.perf_counter()
    diverged = False
    try:
        opt.step(closure)
    except FloatingPointError:  # a non-finite loss or gradient at an iterate
        diverged = True
    run.wall_time = time.perf_counter() - began
    for c in checkpoints:
        value = [m for spent, m in curve if spent <= c][-1]
        run.add_metric(task, c, value)
        if not math.isfinite(value):
            diverged = True
            break
    run.losses = losses
    run.finish(task, diverged=diverged)
    # its curve is indexed by the compute spent, so the report's time to target (compute x
    # steps to target / steps) reads it directly with the budget as the run's compute;
    # what it spent before it stopped (converged, or the budget) is in info["spent"]
    run.compute = 1.0
    info = opt.explain() if opt.total_function_evals > 1 else None
    run.info = {"spent": opt.total_function_evals * full.cost / steps,
                "function_evals": opt.total_function_evals, "iterations": len(losses),
                "last_step_size": opt.last_step_size,
                "curvature_pairs": info.curvature_pairs if info else 0,
                "full_batch_cost": full.cost}
    return run


for _search, _label in (("strong_wolfe", "strong Wolfe"), ("armijo", "Armijo")):
    register(Method(
        f"lbfgs_{_search}", f"L-BFGS {_label} (full batch)", "LBFGS",
        options=(("line_search_fn", _search), ("history_size", 10)), lr=1.0,
        family="quasi_newton", runner=lbfgs_cell, tasks=FULL_BATCH_TASKS,
        note=f"lrkit.optim.LBFGS, {_label} line search, history 10, initial step 1, on the "
             "full batch; charged by function evaluations (one costs the full batch's "
             "examples over the batch size, in steps); untuned"))
