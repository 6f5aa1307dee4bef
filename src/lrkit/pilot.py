"""``lrkit.autopilot`` (this module is ``lrkit.pilot``): pick the learning rate and schedule,
guard the run, explain it all.

One call does what users otherwise do by hand: a range test, a guess of the schedule, a
restart when the loss explodes. Within an extra-compute ``budget`` it

1. **chooses the peak learning rate**: a range test (``lrkit.find_lr``, its default
   "edge" rule), then short *probes* of candidate rates around the suggestion (a factor
   of 2 apart), pruned by successive halving. Every probe starts from the same saved
   state and runs the chosen schedule *compressed* to the probe's length (warmup, peak,
   decay to zero), so short probes judge a rate as a full run would use it, not at a
   constant rate (which favours small rates: the short-horizon bias of Wu et al. 2018).
   Probes are scored on the same held batches (or ``val_loader``, or ``val_fn``) at
   their end;
2. **chooses the schedule**: by default a linear warmup over 5% of the steps, then a
   linear decay to zero (``S.family("linear", ...)``). The evidence: the literature
   (Defazio et al. 2023, "When, why and how much?": linear decay to zero matches or
   beats cosine for a fixed step budget) and the arena (``lrkit bench``, 2026-11-28):
   in the quick suite tuned linear decay is Adam's best schedule (mean shortfall 0.127
   against WSD 0.134, cosine 0.140); in the full suite (7 tasks, 3 seeds) it ties
   cosine and one-cycle (0.063, 0.062, 0.062) behind WSD (0.042), whose wins come with
   the largest losses (+361% on rosenbrock, +46% on the quadratic), and with this
   function's own rate choice linear decay beat WSD on all four tasks tried (quadratic,
   noisy_quadratic, digits_softmax, rosenbrock). ``schedule=`` overrides it with any
   schedule or spec text, rescaled so its peak is the chosen rate;
3. **trains** with ``lrkit.DivergenceGuard`` on, a live progress bar (loss, lr, steps per
   second, time left), and a record of every decision and why;
4. returns an ``AutopilotReport`` with the chosen rate, the schedule as spec text, the
   probes and their losses, guard events, the training curve, the compute spent relative
   to one plain run, ``plot()`` and ``to_html()``.

Learning-rate-free optimizers (``optimizer="prodigy"``, ``"dadaptadam"``, ``"dog"``,
``"schedulefree"``) need no peak rate: step 1 is skipped and the report says so.
"""
from __future__ import annotations

import base64
import contextlib
import html
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit._snapshot import Snapshot

DEFAULT_FAMILY = "linear"
WARMUP_FRACTION = 0.05
PROBE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SMALL_PROBE_FACTORS = (0.5, 1.0, 2.0)
MIN_PROBE_STEPS = 10
HELD_BATCHES = 4
# learning-rate-free optimizers: name -> (lrkit.optim class, its lr, its schedule family)
LR_FREE = {
    "prodigy": ("Prodigy", 1.0, "cosine"),
    "dadaptadam": ("DAdaptAdam", 1.0, "cosine"),
    "dadaptsgd": ("DAdaptSGD", 1.0, "cosine"),
    "dog": ("DoG", 1.0, "constant"),
    "ldog": ("LDoG", 1.0, "constant"),
    "schedulefree": ("ScheduleFreeAdamW", 2.5e-3, "constant"),
    "schedulefreeadamw": ("ScheduleFreeAdamW", 2.5e-3, "constant"),
    "schedulefreesgd": ("ScheduleFreeSGD", 1.0, "constant"),
}


@dataclass
class Probe:
    """One short run at a candidate peak rate."""

    lr: float
    steps: int
    score: float  # loss on the held batches at the end (inf when it diverged)
    rung: int  # from 1, as explain() counts them


@dataclass
class AutopilotReport:
    """What the autopilot chose, why, and how the run went."""

    lr: float | None  # the chosen peak rate (None for a learning-rate-free optimizer)
    schedule: str  # the schedule as S.parse text
    optimizer: str
    steps: int
    suggestion: float | None = None  # the range test's suggestion
    range_test: dict[str, Any] | None = None
    probes: list[Probe] = field(default_factory=list)
    decisions: list[str] = field(default_factory=list)
    guard_events: list[dict[str, Any]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # training loss of every step
    lrs: list[float] = field(default_factory=list)  # lr of every step (group 0)
    val_steps: list[int] = field(default_factory=list)
    val_losses: list[float] = field(default_factory=list)
    compute: dict[str, float] = field(default_factory=dict)  # in steps of one plain run
    wall_time: dict[str, float] = field(default_factory=dict)  # seconds per phase
    diverged: bool = False
    #: the trained model's scores that a caller measured (a task's metric: ``lrkit fit``
    #: adds it), shown in the HTML page: name -> (value, target or None)
    metrics: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    @property
    def relative_compute(self) -> float:
        """Everything spent (range test, probes, training) over one plain run's steps."""
        return sum(self.compute.values()) / self.steps

    def explain(self) -> str:
        """The decisions, one per line."""
        return "\n".join(f"- {d}" for d in self.decisions)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        out = asdict(self)
        out["relative_compute"] = self.relative_compute
        return out

    def plot(self, axes: Sequence[Any] | None = None):
        """Three panels: the range test and probes, the schedule used, the training curve."""
        from lrkit.plot import plot_autopilot

        return plot_autopilot(self, axes)

    def to_html(self, path: str | None = None) -> str:
        """A self-contained HTML page (figures embedded); written to ``path`` if given."""
        from lrkit.plot import new_axes, save_png_bytes

        fig, axes = new_axes(3, figsize=(16, 4.2))
        self.plot(axes)
        image = base64.b64encode(save_png_bytes(fig)).decode()
        rows = "".join(
            f"<tr><td>{p.rung}</td><td>{p.lr:.3g}</td><td>{p.steps}</td>"
            f"<td>{p.score:.4g}</td></tr>" for p in self.probes)
        events = "".join(f"<li>{html.escape(e['description'])}</li>"
                         for e in self.guard_events) or "<li>none</li>"
        compute = ", ".join(f"{k} {v:.0f} steps" for k, v in self.compute.items())
        lr_text = "learning-rate-free" if self.lr is None else f"{self.lr:.4g}"
        page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>lrkit autopilot</title><style>body{{font-family:sans-serif;max-width:1100px;
margin:2em auto}}td,th{{padding:2px 10px;text-align:right}}</style></head><body>
<h1>lrkit autopilot</h1>
<p>Optimizer <b>{html.escape(self.optimizer)}</b>, peak learning rate <b>{lr_text}</b>,
schedule <code>{html.escape(self.schedule)}</code>, {self.steps} steps.
Compute: {self.relative_compute:.2f}x one plain run ({compute}).
Final training loss {self._final_loss():.4g}{self._final_val()}.{self._metrics()}</p>
<h2>Decisions</h2><ol>{"".join(f"<li>{html.escape(d)}</li>" for d in self.decisions)}</ol>
<img src="data:image/png;base64,{image}" style="width:100%">
<h2>Probes</h2><table><tr><th>rung</th><th>lr</th><th>steps</th><th>score</th></tr>{rows}
</table><h2>Divergence guard</h2><ul>{events}</ul></body></html>"""
        if path is not None:
            with open(path, "w") as f:
                f.write(page)
        return page

    def _final_loss(self) -> float:
        tail = [v for v in self.losses[-max(1, len(self.losses) // 20):] if math.isfinite(v)]
        return float(np.mean(tail)) if tail else math.nan

    def _metrics(self) -> str:
        return "".join(
            f" <b>{html.escape(name)}</b> {value:.4g}"
            + (f" (target {target:g})" if target is not None else "") + "."
            for name, (value, target) in self.metrics.items())

    def _final_val(self) -> str:
        return f", validation loss {self.val_losses[-1]:.4g}" if self.val_losses else ""


# -- the pieces -----------------------------------------------------------------------------
def _batches(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches for ever, re-iterating ``loader`` when it runs out."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("autopilot(): loader yields no batches")


def _loss_of(model: torch.nn.Module, batch: Any, loss_fn: Any, step_fn: Any) -> torch.Tensor:
    if step_fn is not None:
        return step_fn(model, batch)
    inputs, targets = C.batch_pair("autopilot()", batch)
    return loss_fn(model(inputs), targets)


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode without gradients; every module's train/eval flag restored after."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in modes:
            m.training = flag


def _evaluate(model: torch.nn.Module, batches: Sequence[Any], loss_fn: Any,
              step_fn: Any) -> float:
    """Mean loss over ``batches`` in eval mode, without gradients."""
    with _evaluating(model):
        values = [float(_loss_of(model, b, loss_fn, step_fn)) for b in batches]
    value = float(np.mean(values)) if values else math.nan
    return value if math.isfinite(value) else math.inf


def _scored(model: torch.nn.Module, val_fn: Callable[[torch.nn.Module], Any]) -> float:
    """``val_fn(model)`` in eval mode without gradients, as a float (inf if not finite)."""
    with _evaluating(model):
        value = val_fn(model)
    if torch.is_tensor(value):
        value = value.detach().float().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"autopilot(): val_fn must return a number, got {value!r:.40}")
    value = float(value)
    return value if math.isfinite(value) else math.inf


def _optimizer_factory(optimizer: str | Callable[..., torch.optim.Optimizer]):
    if callable(optimizer) and not isinstance(optimizer, str):
        return optimizer, getattr(optimizer, "__name__", type(optimizer).__name__)
    if not isinstance(optimizer, str):
        raise TypeError(f"autopilot(): optimizer must be a name such as 'adamw' or a function "
                        f"params -> optimizer, got {type(optimizer).__name__}")
    from lrkit.targets import TargetError, optimizer_factory

    try:
        return optimizer_factory(optimizer), optimizer
    except TargetError as exc:
        raise ValueError(f"autopilot(): optimizer: {exc}") from None


def _shape(schedule: S.Schedule | str | None, steps: int) -> S.Schedule | None:
    """A user schedule normalised to peak 1 over the run (None: the default family)."""
    if schedule is None:
        return None
    s = S.as_schedule(schedule)
    peak = s.peak(steps)
    if not (peak > 0 and math.isfinite(peak)):
        raise ValueError(f"autopilot(): schedule must be positive somewhere in the first "
                         f"{steps} steps, got {s}")
    return s * (1.0 / peak)


def _schedule(shape: S.Schedule | None, family: str, peak: float, steps: int) -> S.Schedule:
    """The run's schedule: the user's shape at ``peak``, else the family's."""
    if shape is None:
        return S.family(family, peak, steps, WARMUP_FRACTION)
    return shape * peak


def _compressed(shape: S.Schedule | None, family: str, peak: float, steps: int,
                full_steps: int) -> S.Schedule:
    """The run's schedule squeezed into ``steps`` steps (for a probe)."""
    if shape is None:
        return S.family(family, peak, max(steps, 2), WARMUP_FRACTION)
    ratio = full_steps / steps
    return _Stretched(shape * peak, ratio)


class _Stretched:
    """``s(round(n * ratio))``: a user schedule played faster (probes only)."""

    def __init__(self, s: S.Schedule, ratio: float) -> None:
        self.s, self.ratio = s, ratio

    def __call__(self, n: Any) -> Any:
        return self.s(np.rint(np.asarray(n) * self.ratio).astype(np.int64))


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, schedule: Any,
           batches: Iterator[Any], steps: int, loss_fn: Any, step_fn: Any,
           needs_closure: bool) -> list[float]:
    """A probe: ``steps`` updates at ``schedule(k) * lr_scale``; stops at a non-finite loss."""
    losses: list[float] = []
    for k in range(steps):
        _set_lr(optimizer, schedule(k))
        batch = next(batches)
        if not _update(model, optimizer, batch, loss_fn, step_fn, needs_closure, losses):
            break
    return losses


def _update(model, optimizer, batch, loss_fn, step_fn, needs_closure, losses,
            guard=None) -> bool | None:
    """One update on ``batch``; False at a non-finite loss, None when the guard rolled back."""
    optimizer.zero_grad(set_to_none=True)
    loss = _loss_of(model, batch, loss_fn, step_fn)
    if guard is not None and not guard.check(loss):
        return None
    value = float(loss.detach())
    losses.append(value)
    if not math.isfinite(value):
        return False
    loss.backward()
    if needs_closure:
        optimizer.step(lambda: _loss_of(model, batch, loss_fn, step_fn))
    else:
        optimizer.step()
    return True


# -- the entry point -------------------------------------------------------------------------
def autopilot(
    model: torch.nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    *,
    steps: int,
    optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw",
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    val_loader: Iterable[Any] | None = None,
    budget: float = 1.5,
    seed: int | None = None,
    callbacks: Sequence[Callable[[int, float, float], Any]] = (),
    schedule: S.Schedule | str | None = None,
    progress: bool = True,
    guard: bool = True,
    val_fn: Callable[[torch.nn.Module], float] | None = None,
) -> AutopilotReport:
    """Train ``model`` for ``steps`` updates with a learning rate and schedule it chooses.

    ``loader`` yields batches (re-iterated when it runs out); the loss of a batch is
    ``step_fn(model, batch)`` when given, else ``loss_fn(model(inputs), targets)``.
    ``optimizer``: a name in ``lrkit.optim``/``torch.optim`` (with optional arguments:
    ``"sgd(momentum=0.9)"``) or a function ``params -> optimizer``; the learning-rate-free
    names skip the rate search. ``budget``: the most compute allowed in all, in runs of
    ``steps`` (1.5: at most 50% more than one plain run goes to the range test and the
    probes; 1.0: no search, the range test's suggestion is used only if it fits).
    ``val_loader``: probes are scored and the run is followed on it. ``callbacks``:
    ``f(step, loss, lr)`` after every training step. ``schedule``: overrides the default
    family (any schedule or spec text; it is rescaled so its peak is the chosen rate).
    ``val_fn``: ``model -> number``, lower is better (a validation loss, or minus an
    accuracy): when given, probes are scored, and the run followed, by it instead of the
    loss on held batches (it is called in eval mode without gradients; each call is
    counted as one held-batch evaluation in the compute).
    The model ends trained; the returned ``AutopilotReport`` explains how.
    """
    fn = "autopilot()"
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"{fn}: loader must be an iterable of batches, got "
                        f"{type(loader).__name__}")
    if loss_fn is None and step_fn is None:
        raise ValueError(f"{fn}: loss_fn or step_fn is needed to compute the loss")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"{fn}: loss_fn must be callable, got {type(loss_fn).__name__}")
    if step_fn is not None and not callable(step_fn):
        raise TypeError(f"{fn}: step_fn must be callable, got {type(step_fn).__name__}")
    steps = C.integer(fn, "steps", steps, minimum=10)
    budget = C.in_range(fn, "budget", budget, 1.0, 100.0)
    if seed is not None:
        seed = C.nonnegative_int(fn, "seed", seed)
        torch.manual_seed(seed)
    callbacks = C.functions(fn, "callbacks", callbacks)
    progress = C.boolean(fn, "progress", progress)
    guard = C.boolean(fn, "guard", guard)
    if val_fn is not None and not callable(val_fn):
        raise TypeError(f"{fn}: val_fn must be callable (model -> number), got "
                        f"{type(val_fn).__name__}")
    shape = _shape(schedule, steps)

    began = time.perf_counter()
    key = optimizer.replace("_", "").replace("-", "").lower() if isinstance(optimizer, str) \
        else ""
    lr_free = LR_FREE.get(key)
    if lr_free is not None:
        make, opt_name = _optimizer_factory(lr_free[0])
    else:
        make, opt_name = _optimizer_factory(optimizer)
    opt = make(model.parameters(), lr=1e-3) if lr_free is None else make(model.parameters())
    needs_closure = _needs_closure(opt)
    batches = _batches(loader)
    held = list(val_loader) if val_loader is not None else \
        [next(batches) for _ in range(HELD_BATCHES)]
    eval_cost = len(held) / 3.0  # a forward pass is about a third of a training step

    def scorer() -> float:
        if val_fn is None:
            return _evaluate(model, held, loss_fn, step_fn)
        return _scored(model, val_fn)
    report = AutopilotReport(lr=None, schedule="", optimizer=opt_name, steps=steps)
    report.compute = {"range_test": 0.0, "probes": 0.0, "training": 0.0}
    family = DEFAULT_FAMILY
    extra = (budget - 1.0) * steps

    if lr_free is not None:
        family = lr_free[2]
        peak = lr_free[1]
        report.decisions.append(
            f"{opt_name} is learning-rate-free: no range test or probes (its own estimate "
            f"sets the step size); its lr stays at the recommended {peak:g} and the "
            f"schedule is {family!r}")
        chosen = None
    else:
        chosen, peak = _choose_lr(model, opt, batches, scorer, loss_fn, step_fn, steps, extra,
                                  shape, family, needs_closure, report, eval_cost)
    run_schedule = _schedule(shape, family, peak, steps)
    report.lr = chosen
    report.schedule = str(run_schedule)
    if shape is None:
        report.decisions.append(
            f"schedule: the default {family!r} family with {WARMUP_FRACTION:.0%} warmup "
            f"({round(WARMUP_FRACTION * steps)} steps), peak {peak:.3g}: {report.schedule}")
    else:
        report.decisions.append(f"schedule: the one given, rescaled to peak {peak:.3g}: "
                                f"{report.schedule}")
    report.wall_time["search"] = time.perf_counter() - began
    _final_run(model, opt, run_schedule, batches, steps, loss_fn, step_fn, needs_closure,
               val_loader is not None or val_fn is not None, scorer, report, callbacks,
               progress, guard, eval_cost)
    report.wall_time["total"] = time.perf_counter() - began
    return report


def _needs_closure(opt: torch.optim.Optimizer) -> bool:
    try:
        from lrkit.optim.registry import REGISTRY

        info = REGISTRY.get(type(opt).__name__)
        return info is not None and "needs_closure" in info.tags
    except ImportError:  # pragma: no cover
        return False


def _choose_lr(model, opt, batches, scorer, loss_fn, step_fn, steps, extra, shape, family,
               needs_closure, report, eval_cost) -> tuple[float, float]:
    """Range test, then successive halving over probes; returns (chosen, peak)."""
    from lrkit.finder import find_lr

    range_steps = int(min(100, max(30, extra * 0.2))) if extra >= 30 else 0
    suggestion = None
    if range_steps:
        result = find_lr(model, opt, _Replay(batches), loss_fn, step_fn=step_fn,
                         steps=range_steps, warn=False)
        report.compute["range_test"] = float(len(result.lrs))
        suggestion = result.suggestion
        report.suggestion = suggestion
        report.range_test = {"lrs": [float(x) for x in result.lrs],
                             "losses": [float(x) for x in result.losses],
                             "suggestions": dict(result.suggestions),
                             "stop_reason": result.stop_reason}
        report.decisions.append(
            f"range test: {len(result.lrs)} steps from 1e-7 up ({result.stop_reason}); the "
            f"'{result.rule}' rule suggests {suggestion:.3g}" if suggestion else
            f"range test: {len(result.lrs)} steps, no suggestion ({result.stop_reason})")
    if not suggestion:
        suggestion = 1e-3
        report.decisions.append("no usable suggestion: starting from 1e-3")
    left = extra - report.compute["range_test"]
    plan = _plan(left, eval_cost)
    if plan is None:
        report.decisions.append(
            f"budget leaves {max(left, 0):.0f} steps: too few for probes, so the "
            f"suggestion {suggestion:.3g} is the peak")
        return suggestion, suggestion
    factors, rungs, base = plan
    candidates = [suggestion * f for f in factors]
    snap = Snapshot(model, opt)
    alive = candidates
    for rung, count in enumerate(rungs):
        probe_steps = min(base * 2 ** rung, steps)
        scores = []
        for lr in alive:
            snap.restore()
            schedule = _compressed(shape, family, lr, probe_steps, steps)
            losses = _train(model, opt, schedule, batches, probe_steps, loss_fn, step_fn,
                            needs_closure)
            report.compute["probes"] += len(losses) + eval_cost
            diverged = len(losses) < probe_steps or not all(map(math.isfinite, losses))
            score = math.inf if diverged else scorer()
            scores.append(score)
            report.probes.append(Probe(float(lr), probe_steps, float(score), rung + 1))
        order = np.argsort(scores, kind="stable")
        keep = max(1, math.ceil(count / 2))
        alive = [alive[i] for i in order[:keep]]
        shown = ", ".join(f"{lr:.3g}: {s:.4g}" for lr, s in zip(
            [p.lr for p in report.probes[-len(scores):]], scores))
        report.decisions.append(
            f"probes, rung {rung + 1} ({probe_steps} steps each, schedule compressed to "
            f"that length): {shown}; keeping {', '.join(f'{lr:.3g}' for lr in alive)}")
    snap.restore()
    chosen = float(alive[0])
    report.decisions.append(f"peak learning rate {chosen:.3g} (the best probe), "
                            f"{chosen / suggestion:.3g}x the range test's suggestion")
    return chosen, chosen


def _plan(left: float, eval_cost: float) -> tuple[tuple[float, ...], list[int], int] | None:
    """The widest probing plan the budget affords: (factors, rungs, base probe length).

    Successive halving over 5 candidates (rungs of 5, 3, 2 probes, each rung's probes
    twice as long), else over 3 (rungs of 3, 2), else one rung of 3; None when even that
    leaves probes shorter than ``MIN_PROBE_STEPS``.
    """
    for factors, halving in ((PROBE_FACTORS, True), (SMALL_PROBE_FACTORS, True),
                             (SMALL_PROBE_FACTORS, False)):
        rungs, n = [], len(factors)
        while n > 1 and (halving or not rungs):
            rungs.append(n)
            n = math.ceil(n / 2)
        weight = sum(r * 2 ** i for i, r in enumerate(rungs))
        base = int((left - eval_cost * sum(rungs)) // weight)
        if base >= MIN_PROBE_STEPS:
            return factors, rungs, base
    return None


class _Replay:
    """An iterable over a live batch stream (the range test re-iterates its loader)."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return self.batches


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> float:
    opt.lr_scale_applied = True  # type: ignore[attr-defined]
    for group in opt.param_groups:
        value = float(lr) * group.get("lr_scale", 1.0)
        if torch.is_tensor(group["lr"]):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
    return float(lr)


def _final_run(model, opt, schedule, batches, steps, loss_fn, step_fn, needs_closure,
               follow, scorer, report, callbacks, progress, use_guard, eval_cost) -> None:
    from lrkit.guard import DivergenceError, DivergenceGuard
    from lrkit.scheduler import Scheduler

    sched = Scheduler(opt, lr=schedule)
    guard = DivergenceGuard(model, opt, sched, spread=3.0) if use_guard else None
    if guard is not None:
        report.decisions.append("training with DivergenceGuard on (spike: 3x the recent "
                                "median and 3x the recent spread above it; back-off 0.5, "
                                "3 retries)")
    if hasattr(opt, "train"):
        opt.train()
    every = max(1, steps // 20)
    bar = _Progress(steps) if progress else None
    began = time.perf_counter()
    done = 0  # updates performed, rolled-back ones included
    try:
        while sched.last_epoch < steps:
            position = sched.last_epoch
            lr = sched.get_last_lr()[0]
            batch = next(batches)
            ok = _update(model, opt, batch, loss_fn, step_fn, needs_closure, report.losses,
                         guard)
            if ok is None:  # rolled back: the curve resumes from the restored step
                del report.losses[sched.last_epoch:], report.lrs[sched.last_epoch:]
                continue
            if not ok:
                report.diverged = True
                report.decisions.append(f"stopped: non-finite loss at step {position}")
                break
            done += 1
            sched.step()
            report.lrs.append(lr)
            step, loss = sched.last_epoch, report.losses[-1]
            for cb in callbacks:
                cb(step, loss, lr)
            if bar is not None:
                bar.update(step, loss, lr, time.perf_counter() - began)
            if follow and (step % every == 0 or step == steps):
                report.val_steps.append(step)
                report.val_losses.append(_eval_mode(opt, scorer))
                report.compute["training"] += eval_cost
    except DivergenceError as exc:
        report.diverged = True
        report.decisions.append(f"stopped: {str(exc).splitlines()[0]}")
    finally:
        if bar is not None:
            bar.close()
    report.compute["training"] += float(done)
    if guard is not None:
        report.guard_events = [{"step": e.step, "kind": e.kind, "loss": e.loss,
                                "lr_factor": e.lr_factor, "description": e.describe()}
                               for e in guard.events]
        if guard.events:
            report.decisions.append(f"the guard intervened {len(guard.events)} time(s); "
                                    f"learning rate x{guard.lr_factor:.3g} at the end")
    if hasattr(opt, "eval"):
        opt.eval()  # schedule-free: leave the model at its averaged weights
        report.decisions.append(f"{type(opt).__name__}: switched to eval mode at the end, "
                                f"so the model holds the averaged weights")


def _eval_mode(opt, scorer) -> float:
    """``scorer()`` with a schedule-free optimizer's averaged weights in place."""
    if hasattr(opt, "eval"):
        opt.eval()
        try:
            return scorer()
        finally:
            opt.train()
    return scorer()


class _Progress:
    """A rich progress bar: loss, lr, steps per second, time left."""

    def __init__(self, total: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("autopilot"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"),
                            TextColumn("lr {task.fields[lr]}"),
                            TextColumn("{task.fields[rate]} steps/s"), TimeRemainingColumn())
        self.task = self.bar.add_task("train", total=total, loss="-", lr="-", rate="-")
        self.bar.start()

    def update(self, step: int, loss: float, lr: float, elapsed: float) -> None:
        if step % 10 and step != self.bar.tasks[0].total:
            return
        rate = step / elapsed if elapsed > 0 else 0.0
        self.bar.update(self.task, completed=step, loss=f"{loss:.4g}", lr=f"{lr:.3g}",
                        rate=f"{rate:.0f}")

    def close(self) -> None:
        self.bar.stop()
