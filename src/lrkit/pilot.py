"""``lrkit.autopilot`` (this module is ``lrkit.pilot``): pick the learning rate and schedule,
guard the run, explain it all.

One call does what users otherwise do by hand: a range test, a guess of the schedule, a
restart when the loss explodes. Within an extra-compute ``budget`` (default 1.5 runs, at
most 2 in the arena's bar) it

1. **runs a range test** (``lrkit.find_lr``, its default rule): a first guess ``s``;
2. **measures how the best rate moves with the length of the run.** Probes are short runs
   from the same saved state along the run's schedule *compressed* to the probe's length
   (warmup, peak, decay to zero), scored on held batches (or ``val_loader``, or
   ``val_fn``) at their end. The held batches are held out of the loader's data where it
   can be split (``lrkit.loop.split_held``: a DataLoader over a map-style dataset, a list
   of batches): the range test and the probes train on the rest, the run on all of it;
   otherwise they are the stream's first batches, which a later epoch trains on too.
   Five probes at length L (peaks s/4 ... 4s, a factor 2 apart)
   and three at 4L around the first optimum (each row extended by one probe when its best
   lies at an end) give the best peak at two lengths, each the vertex of a parabola in
   (log lr, log score) through the best probe and its neighbours. The best peak falls
   with the length of training, ``lr*(T) ~ T^-beta`` (Bjorck et al., ICLR 2025,
   arXiv 2409.19913; beta = 1/2 in noise-dominated SGD theory); the two optima give beta
   for the task at hand (clipped to [0, 1/2]) and the peak is the long optimum extrapolated
   to the run's ``steps``. This is the *horizon bias* of short probes corrected (they pick
   peaks 3-5x too high on noise-dominated problems; Wu et al. 2018 for its origin).
   Probes scored on held batches are compared by their paired per-batch differences: a
   lower rate within one standard error of a row's best is that row's optimum (a tie at
   a short horizon is evidence for the lower rate);
3. **chooses the schedule family from the same measurement**: a beta of at least
   ``BETA_NOISE`` (0.2) says gradient noise limits the run, where geometric decay,
   which spends most steps at small rates, is near-optimal (Ge et al. 2019, "The step
   decay schedule", arXiv 1904.12838): ``exponential`` (warmup, then down to peak/100).
   An optimum that rises with the probes' length (a fitted exponent of -``BETA_PROGRESS``
   or less) says the distance to travel limits the run: linear warmup over 5% of the
   steps and cosine decay to zero (``DEFAULT_FAMILY``), at the probes' peak. Between the
   two, warmup-stable-decay (``MIDDLE_FAMILY``; Hagele et al. 2024, arXiv 2405.18392),
   the best single family of the arena's tuned grids, at the peak that gives it the
   cosine run's mean rate (about 0.57x the probes' peak). Measured on 2026-12-03 (the
   arena, 3 paired seeds against the best of a tuned Adam grid): within 1% on 3 of 7
   tasks and a mean shortfall of 0.038, against 2 of 7 and 0.049 with cosine in place of
   WSD; on the 3 held-out tasks 0.126 against 0.119 (benchmarks/README.md). The probes
   run the default family compressed. Short probes cannot rank the families themselves:
   at 60-250 steps of the noisy quadratic the family ranking is the reverse of the full
   run's (constant and WSD first, exponential last; measured 2026-12-03). ``schedule=``
   overrides the family with any schedule or spec text, rescaled so its peak is the
   chosen rate;
4. **predicts the score** the run should reach (the probes' best scores on a power law of
   the length) and, after training, puts the reached one beside it;
5. **trains** with ``lrkit.DivergenceGuard`` on, a live progress bar (loss, lr, steps per
   second, time left), and a record of every decision and why;
6. returns an ``AutopilotReport`` with the chosen rate, the schedule as spec text, the
   probes and their scores, the horizon fit, guard events, the training curve, the
   compute spent relative to one plain run, ``plot()`` and ``to_html()``.

With a small budget (the probes at two lengths do not fit) it runs one row of three
probes at one length and takes their optimum (no extrapolation); with less, the range
test's suggestion.

Learning-rate-free optimizers (``optimizer="prodigy"``, ``"dadaptadam"``, ``"dog"``,
``"schedulefree"``) need no peak rate: step 1 is skipped and the report says so.
"""
from __future__ import annotations

import base64
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit._snapshot import Snapshot
from lrkit.loop import Loop, Step, averaged, batch_loss, endless, evaluating, has_modes, split_held
from lrkit.scheduler import Scheduler

DEFAULT_FAMILY = "cosine"  # of probes, and of runs that noise does not limit
WARMUP_FRACTION = 0.05
PROBE_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
SMALL_PROBE_FACTORS = (0.5, 1.0, 2.0)
MIN_PROBE_STEPS = 10
HELD_BATCHES = 4
#: how many standard errors of the paired per-batch differences make a tie between probes
#: (0: only an exact tie, the comparison as it was before issue 14's tie rule)
TIE_STANDARD_ERRORS = 1.0


@dataclass
class Probe:
    """One short run at a candidate peak rate."""

    lr: float
    steps: int
    score: float  # loss on the held batches at the end (inf when it diverged)
    rung: int  # from 1, as explain() counts them
    #: the loss of each held (or validation) batch behind ``score``; None where the score
    #: is one number (``val_fn``) or the probe diverged
    batch_scores: tuple[float, ...] | None = None


@dataclass
class AutopilotReport:
    """What the autopilot chose, why, and how the run went."""

    lr: float | None  # the chosen peak rate (None for a learning-rate-free optimizer)
    schedule: str  # the schedule as S.parse text ("none": the optimizer sets its step size)
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
    #: the probes' horizon fit: lengths, optima, beta, optimum, peak
    horizon: dict[str, Any] = field(default_factory=dict)

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
        """Three panels: the range test and probes, the schedule used, the training curve;
        a fourth, the horizon fit, when the probes ran at two lengths."""
        from lrkit.plot import plot_autopilot

        return plot_autopilot(self.to_dict(), axes)

    def to_html(self, path: str | None = None) -> str:
        """A self-contained HTML page (figures embedded); written to ``path`` if given."""
        from lrkit.pages import render
        from lrkit.plot import new_axes, save_png_bytes

        fitted = len(self.horizon.get("lengths", ())) > 1
        fig, axes = new_axes(4 if fitted else 3, figsize=(21 if fitted else 16, 4.2))
        self.plot(axes)
        image = base64.b64encode(save_png_bytes(fig)).decode()
        compute = ", ".join(f"{k} {v:.0f} steps" for k, v in self.compute.items())
        page = render(
            "autopilot.html", optimizer=self.optimizer,
            lr_text="learning-rate-free" if self.lr is None else f"{self.lr:.4g}",
            schedule=self.schedule, steps=self.steps,
            relative_compute=f"{self.relative_compute:.2f}", compute=compute,
            final_loss=f"{self._final_loss():.4g}", final_val=self._final_val(),
            metrics=self._metrics(), decisions=self.decisions, image=image,
            probes=[(p.rung, f"{p.lr:.3g}", p.steps, f"{p.score:.4g}") for p in self.probes],
            events=[e["description"] for e in self.guard_events], horizon=self._horizon())
        if path is not None:
            with open(path, "w") as f:
                f.write(page)
        return page

    def _final_loss(self) -> float:
        tail = [v for v in self.losses[-max(1, len(self.losses) // 20):] if math.isfinite(v)]
        return float(np.mean(tail)) if tail else math.nan

    def _metrics(self) -> list[tuple[str, str, str | None]]:
        """The task metrics as (name, value, target) texts, for the page."""
        return [(name, f"{value:.4g}", None if target is None else f"{target:g}")
                for name, (value, target) in self.metrics.items()]

    def _horizon(self) -> dict[str, Any] | None:
        """The horizon fit as texts for the page (None without one)."""
        h = self.horizon
        if len(h.get("lengths", ())) < 2:
            return None

        def text(x: float | None) -> str:
            return "-" if x is None else f"{x:.4g}"
        return {"rows": [(n, f"{lr:.3g}", text(b)) for n, lr, b in
                         zip(h["lengths"], h["optima"], h["best_scores"])],
                "beta": f"{h['beta']:.2f}", "peak": f"{h['peak']:.3g}", "steps": self.steps,
                "predicted": text(h.get("predicted")), "realised": text(h.get("realised"))}

    def _final_val(self) -> str:
        return f", validation loss {self.val_losses[-1]:.4g}" if self.val_losses else ""


# -- the pieces -----------------------------------------------------------------------------
@dataclass
class _Setup:
    """What every phase works on: the model, its optimizer and update (``lrkit.loop``), the
    batch stream, the scorer of the current weights, and the report being written."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    step: Step  # one update (plain or closure) and the loss of a batch
    batches: Iterator[Any]
    scorer: Callable[[], float]  # lower is better, in eval mode
    steps: int  # the run's length
    eval_cost: float  # one scoring, in training steps
    report: AutopilotReport
    loss_fn: Callable[[Any, Any], torch.Tensor] | None  # for the range test
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None
    #: filled by ``scorer`` with the loss of each held batch (left empty by ``val_fn``)
    per_batch: list[float] = field(default_factory=list)
    #: what the probes are scored on: "validation" (``val_loader``/``val_fn``), "held out"
    #: (batches held out of the loader, ``lrkit.loop.split_held``: the range test and the
    #: probes train on the rest, the run on all of it) or "stream" (the training stream's
    #: first batches, which a later epoch trains on too)
    scored_on: str = "validation"
    #: what the scorer computes, for messages
    scored_by: str = "the loss on the held batches"
    #: probes that trained to their end but scored not finite
    unscored: int = 0


def _scoring_setup(fn: str, model: torch.nn.Module, opt: torch.optim.Optimizer, step: Step,
                   loader: Iterable[Any], steps: int, report: AutopilotReport, *,
                   loss_fn: Any, step_fn: Any, val_loader: Iterable[Any] | None = None,
                   val_fn: Callable[[torch.nn.Module], float] | None = None,
                   split: bool = True) -> _Setup:
    """The batch stream and the scorer of a search: probes scored by ``val_fn``, on
    ``val_loader``, else on ``HELD_BATCHES`` batches held out of the loader's data where
    ``split`` allows and the loader can be split (``split_held``), else on the stream's
    first batches."""
    parts = None
    if split and val_loader is None and val_fn is None:
        parts = split_held(loader, HELD_BATCHES, torch.initial_seed() % 2**63)
    batches = endless(loader if parts is None else parts[1], fn)
    if val_loader is not None:
        held = list(C.iterable(fn, "val_loader", val_loader))
        if not held:
            raise ValueError(f"{fn}: val_loader yields no batches")
    else:
        held = parts[0] if parts is not None else [next(batches) for _ in range(HELD_BATCHES)]
    per_batch: list[float] = []

    def scorer() -> float:
        return _evaluate(step, held, per_batch) if val_fn is None else _scored(model, val_fn)
    scored_on = "validation" if val_loader is not None or val_fn is not None else \
        "held out" if parts is not None else "stream"
    scored_by = "val_fn(model)" if val_fn is not None else "the loss on val_loader" \
        if val_loader is not None else "the loss on the held batches"
    return _Setup(model, opt, step, batches, scorer, steps, per_batch=per_batch,
                  eval_cost=len(held) / 3.0,  # a forward pass: about a third of a step
                  report=report, loss_fn=loss_fn, step_fn=step_fn, scored_on=scored_on,
                  scored_by=scored_by)


@dataclass
class _Search:
    """How the peak rate is searched: the compute it may spend (in steps) and the schedule
    probes compress (a user's ``shape`` at peak 1, else the default ``family``)."""

    extra: float
    shape: S.Schedule | None
    family: str


@dataclass
class _Watch:
    """What the final run does beside training."""

    follow: bool  # score the weights every 5% of the run
    callbacks: Sequence[Callable[[int, float, float], Any]]
    progress: bool
    guard: bool


def _evaluate(step: Step, batches: Sequence[Any], each: list[float] | None = None) -> float:
    """Mean loss over ``batches`` in eval mode, without gradients (``each``, when given,
    receives the loss of every batch)."""
    with evaluating(step.model):
        values = [float(step.loss(b)) for b in batches]
    if each is not None:
        each[:] = values
    value = float(np.mean(values)) if values else math.nan
    return value if math.isfinite(value) else math.inf


def _scored(model: torch.nn.Module, val_fn: Callable[[torch.nn.Module], Any]) -> float:
    """``val_fn(model)`` in eval mode without gradients, as a float (inf if not finite)."""
    with evaluating(model):
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
    from lrkit.optim.names import TargetError, optimizer_factory

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
    return _Stretched(shape * peak, full_steps / steps)


class _Stretched(S.Schedule):
    """``s(round(n * ratio))``: a user schedule played faster (probes only)."""

    def __init__(self, s: S.Schedule, ratio: float) -> None:
        self._set(s=s, ratio=ratio)

    def _eval(self, n: Any, o: Any) -> Any:
        return self._params["s"].evaluate(np.rint(n * self._params["ratio"]), o)


def _probe(setup: _Setup, schedule: S.Schedule, steps: int) -> list[float]:
    """A probe: ``steps`` updates along ``schedule``; stops at a non-finite loss."""
    loop = Loop(setup.step, Scheduler(setup.optimizer, lr=schedule))
    loop.run(setup.batches, steps)
    return loop.losses


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
    _check_training(fn, model, loader, loss_fn, step_fn)
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
    lr_free = _lr_free_class(optimizer)
    if lr_free is not None:
        make, opt_name = _optimizer_factory(lr_free.__name__)
        opt_name = lr_free.display_name
    else:
        make, opt_name = _optimizer_factory(optimizer)
    opt = make(model.parameters(), lr=1e-3) if lr_free is None else make(model.parameters())
    step = Step(model, opt, step_fn if step_fn is not None else batch_loss(loss_fn, fn),
                closure=bool(getattr(opt, "needs_closure", False)), name=fn)
    report = AutopilotReport(lr=None, schedule="", optimizer=opt_name, steps=steps)
    setup = _scoring_setup(fn, model, opt, step, loader, steps, report, loss_fn=loss_fn,
                           step_fn=step_fn, val_loader=val_loader, val_fn=val_fn,
                           split=lr_free is None)  # no search: nothing to hold out for
    report.compute = {"range_test": 0.0, "probes": 0.0, "training": 0.0}
    family = DEFAULT_FAMILY
    extra = (budget - 1.0) * steps

    peak: float | None
    if lr_free is not None:
        family = lr_free.recommended_family or DEFAULT_FAMILY
        peak = lr_free.recommended_lr
        if peak is None:  # its own search of the step size (SLS): no lr to set
            report.decisions.append(
                f"{opt_name} is learning-rate-free and finds its own step size at every "
                "step: no range test, probes or learning-rate schedule"
                + ("; the schedule given is not used" if shape is not None else ""))
        else:
            report.decisions.append(
                f"{opt_name} is learning-rate-free: no range test or probes (its own "
                f"estimate sets the step size); its lr stays at the recommended {peak:g} "
                f"and the schedule is {family!r}")
        chosen = None
    else:
        peak = _choose_lr(setup, _Search(extra, shape, family))
        family, peak = _choose_family(report, shape, family, peak, steps)
        chosen = peak
    run_schedule = None if peak is None else _schedule(shape, family, peak, steps)
    report.lr = chosen
    report.schedule = "none" if run_schedule is None else str(run_schedule)
    if run_schedule is None:
        pass
    elif shape is None:
        report.decisions.append(
            f"schedule: the default {family!r} family with {WARMUP_FRACTION:.0%} warmup "
            f"({round(WARMUP_FRACTION * steps)} steps), peak {peak:.3g}: {report.schedule}")
    else:
        report.decisions.append(f"schedule: the one given, rescaled to peak {peak:.3g}: "
                                f"{report.schedule}")
    report.wall_time["search"] = time.perf_counter() - began
    if setup.scored_on == "held out":  # the run trains on all of the data
        setup.batches = endless(loader, fn)
    _final_run(setup, run_schedule, _Watch(val_loader is not None or val_fn is not None,
                                           callbacks, progress, guard))
    _realised(setup)
    report.wall_time["total"] = time.perf_counter() - began
    return report


def _check_training(fn: str, model: Any, loader: Any, loss_fn: Any, step_fn: Any) -> None:
    """The checks of what autopilot and choose_lr train on."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(loader, Iterable):
        raise TypeError(f"{fn}: loader must be an iterable of batches, got "
                        f"{type(loader).__name__}")
    if loss_fn is None and step_fn is None:
        raise ValueError(f"{fn}: loss_fn or step_fn is needed to compute the loss")
    for name, f in (("loss_fn", loss_fn), ("step_fn", step_fn)):
        if f is not None and not callable(f):
            raise TypeError(f"{fn}: {name} must be callable, got {type(f).__name__}")


def choose_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    *,
    steps: int,
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    budget: float = 1.5,
    schedule: S.Schedule | str | None = None,
    val_fn: Callable[[torch.nn.Module], float] | None = None,
) -> AutopilotReport:
    """The autopilot's choice of the peak rate and the schedule (steps 1 and 2 of
    ``autopilot``), for a training loop you run yourself (a Lightning callback, say).

    The range test and the probes run on ``model`` and ``optimizer`` within ``budget``
    (runs of ``steps``) and both are put back as they were; the returned report's ``lr``
    is the chosen peak and ``schedule`` the spec text of the run's schedule over
    ``steps`` (``S.parse`` it). The arguments are ``autopilot``'s.
    """
    fn = "choose_lr()"
    _check_training(fn, model, loader, loss_fn, step_fn)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{fn}: optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    if val_fn is not None and not callable(val_fn):
        raise TypeError(f"{fn}: val_fn must be callable, got {type(val_fn).__name__}")
    steps = C.integer(fn, "steps", steps, minimum=10)
    budget = C.in_range(fn, "budget", budget, 1.0, 100.0)
    if schedule is not None and not isinstance(schedule, (S.Schedule, str)):
        raise TypeError(f"{fn}: schedule must be a Schedule or spec text, got {schedule!r}")
    shape = _shape(schedule, steps)
    step = Step(model, optimizer, step_fn if step_fn is not None else batch_loss(loss_fn, fn),
                closure=bool(getattr(optimizer, "needs_closure", False)), name=fn)
    report = AutopilotReport(lr=None, schedule="", optimizer=type(optimizer).__name__,
                             steps=steps)
    report.compute = {"range_test": 0.0, "probes": 0.0, "training": 0.0}
    setup = _scoring_setup(fn, model, optimizer, step, loader, steps, report,
                           loss_fn=loss_fn, step_fn=step_fn, val_fn=val_fn)
    peak = _choose_lr(setup, _Search((budget - 1.0) * steps, shape, DEFAULT_FAMILY))
    family, peak = _choose_family(report, shape, DEFAULT_FAMILY, peak, steps)
    report.lr = peak
    report.schedule = str(_schedule(shape, family, peak, steps))
    return report


def _lr_free_class(optimizer: Any) -> type | None:
    """The lrkit optimizer class an optimizer name means when it is learning-rate-free
    (``"prodigy"``, ``"dadapt_adam"``, ``"schedulefree"``, ``"sls"``), else None."""
    if not isinstance(optimizer, str):
        return None
    from lrkit.optim.names import optimizer_classes

    key = optimizer.replace("_", "").replace("-", "").lower()
    cls = optimizer_classes().get(key)
    if cls is None or not getattr(cls, "lr_free", False):
        return None
    return cls


def _choose_lr(setup: _Setup, search: _Search) -> float:
    """Range test, then probes at two lengths (one where the budget is small); returns the
    peak rate the probes found (the suggestion where the budget allows none)."""
    report = setup.report
    suggestion = _range_test(setup, search.extra)
    left = search.extra - report.compute["range_test"]
    plan = _plan(left, setup.eval_cost)
    if plan is None:
        report.decisions.append(
            f"budget leaves {max(left, 0):.0f} steps: too few for probes, so the "
            f"suggestion {suggestion:.3g} is the peak")
        return suggestion
    if setup.scored_on == "held out":
        report.decisions.append(
            f"the probes are scored on {HELD_BATCHES} batches held out of the loader's data: "
            "the range test and the probes train on the rest, so the scores are on data "
            "they have not fitted; the run trains on all of it")
    if setup.scored_on == "stream":
        report.decisions.append(
            f"the probes are scored on {HELD_BATCHES} batches taken from the training stream; "
            "the run trains on their samples too (in a later epoch), so the scores favour "
            "rates that fit the training data: val_loader= or val_fn= scores them on data "
            "the run does not train on")
    horizon = _horizon_search(setup, search, suggestion, plan)
    report.horizon = horizon
    peak = horizon["peak"]
    if len(horizon["lengths"]) == 1:
        report.decisions.append(
            f"peak learning rate {peak:.3g}: the probes' optimum (one length: the budget "
            f"allows no horizon fit); {peak / suggestion:.3g}x the range test's suggestion")
        return peak
    report.decisions.append(
        f"peak learning rate {peak:.3g}: the probes' optimum {horizon['optimum']:.3g} at "
        f"{horizon['lengths'][-1]} steps, times ({setup.steps} / {horizon['lengths'][-1]})"
        f"^-{horizon['beta']:.2f} (the horizon exponent fitted on the optima at "
        f"{', '.join(map(str, horizon['lengths']))} steps); {peak / suggestion:.3g}x the "
        f"range test's suggestion")
    return peak


def _range_test(setup: _Setup, extra: float) -> float:
    """The range test's suggestion (1e-3 when the budget allows none or it gives none)."""
    from lrkit.finder import find_lr

    report = setup.report
    range_steps = int(min(100, max(30, extra * 0.2))) if extra >= 30 else 0
    suggestion = None
    if range_steps:
        result = find_lr(setup.model, setup.optimizer, _Replay(setup.batches), setup.loss_fn,
                         step_fn=setup.step_fn, steps=range_steps, warn=False)
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
    return suggestion


def _horizon_search(setup: _Setup, search: _Search, suggestion: float,
                    plan: tuple[int, ...]) -> dict[str, Any]:
    """Probes at two lengths, L and ``HORIZON_RATIO`` L (``plan``): five around the
    suggestion at L, then three around the short optimum at the longer length, each rung
    extended by one probe beyond its end when its best probe lies there. A rung's optimum
    is the vertex of a parabola through its best probe and the neighbours (log lr, log
    score); the horizon exponent ``beta`` of ``lr*(T) ~ T^-beta`` (Bjorck et al. 2025) is
    -log(long optimum / short optimum) / log(HORIZON_RATIO), clipped to [BETA_MIN,
    BETA_MAX]; the peak is the long optimum extrapolated to the run's length. With one
    length in ``plan`` (a small budget), three probes around the suggestion and no
    extrapolation (``beta`` 0)."""
    report = setup.report
    snap = Snapshot(setup.model, setup.optimizer)
    lengths: list[int] = []
    optima: list[float] = []
    bests: list[float] = []
    beta = beta_raw = 0.0
    rows = (PROBE_FACTORS, SMALL_PROBE_FACTORS) if len(plan) > 1 else (SMALL_PROBE_FACTORS,)
    for rung, (planned, factors) in enumerate(zip(plan, rows)):
        length = min(planned, setup.steps)
        center = suggestion if not optima else optima[-1]
        lrs = [center * f for f in factors]
        unscored = setup.unscored
        scores = [_scored_probe(setup, search, snap, lr, length, rung) for lr in lrs]
        if setup.unscored - unscored == len(lrs):
            snap.restore()
            raise ValueError(
                f"{setup.step.name}: {setup.scored_by} was NaN or infinite after every probe "
                f"(rates {', '.join(f'{lr:.3g}' for lr in lrs)}), though each trained "
                "without diverging: the probes cannot be compared; check what scores them")
        best = int(np.argmin(scores))
        extra = lrs[0] / 2 if best == 0 else \
            lrs[-1] * 2 if best == len(lrs) - 1 and math.isfinite(scores[-1]) else None
        if extra is not None:  # the best probe at an end of the row: one more beyond it
            lrs.append(extra)
            scores.append(_scored_probe(setup, search, snap, extra, length, rung))
        each = [p.batch_scores for p in report.probes[-len(lrs):]]
        tie = _tie_to_lower(lrs, scores, each)
        if tie is None:
            optimum, note = _vertex(lrs, scores), ""
        else:
            optimum = lrs[tie[0]]
            note = (f"; {optimum:.3g} ties with the best probe {lrs[int(np.argmin(scores))]:.3g} "
                    f"within the noise of the held batches (paired difference "
                    f"{tie[1]:.3g} +- {tie[2]:.3g}): at a short horizon a tie is evidence "
                    f"for the lower rate")
        lengths.append(length)
        optima.append(optimum)
        if len(optima) > 1:
            beta_raw = _slope(lengths, optima, clip=False)
            beta = _clipped(beta_raw)
        shown = ", ".join(f"{lr:.3g}: {s:.4g}" for lr, s in sorted(zip(lrs, scores)))
        report.decisions.append(
            f"probes, rung {rung + 1} ({length} steps each, schedule compressed to that "
            f"length): {shown}; optimum {optimum:.3g}" + note
            + (f"; horizon exponent {beta:.2f}" if len(optima) > 1 else ""))
        bests.append(float(min(scores)))
    snap.restore()
    peak = optima[-1] * (setup.steps / lengths[-1]) ** -beta
    return {"lengths": lengths, "optima": optima, "beta": beta, "beta_raw": beta_raw,
            "optimum": optima[-1],
            "peak": peak, "best_scores": bests,
            "predicted": _predicted(lengths, bests, setup.steps)}


def _scored_probe(setup: _Setup, search: _Search, snap: Snapshot, lr: float, length: int,
                  rung: int) -> float:
    """One probe from the saved state: ``length`` steps along the run's schedule compressed
    to that length at peak ``lr``, scored at its end (inf when it diverged); recorded in the
    report with its compute."""
    report = setup.report
    snap.restore()
    schedule = _compressed(search.shape, search.family, lr, length, setup.steps)
    losses = _probe(setup, schedule, length)
    report.compute["probes"] += len(losses) + setup.eval_cost
    diverged = len(losses) < length or not all(map(math.isfinite, losses))
    setup.per_batch.clear()
    score = math.inf if diverged else setup.scorer()
    setup.unscored += not diverged and not math.isfinite(score)
    each = tuple(setup.per_batch) if setup.per_batch and math.isfinite(score) else None
    report.probes.append(Probe(float(lr), length, float(score), rung + 1, each))
    return score


def _tie_to_lower(lrs: Sequence[float], scores: Sequence[float],
                  each: Sequence[Sequence[float] | None]) -> tuple[int, float, float] | None:
    """The lowest rate below the best probe that the held batches cannot tell from it:
    (its index, the mean of its paired per-batch differences to the best, their standard
    error), where that mean is at most one standard error; None where there is none or
    the scores come without per-batch losses (``val_fn``).

    Probes are scored on the same batches, so the per-batch differences pair out what the
    batches have in common and their spread is the noise of the comparison. A short
    probe's optimum lies above the long run's (the horizon bias): when a lower rate is as
    good within that noise, it is the better guess (issue 14's trace: 0.0087 against 0.035
    scored 0.03009 against 0.02996 on four noisy batches, and the higher rate was kept)."""
    best = int(np.argmin(scores))
    if not math.isfinite(scores[best]) or each[best] is None or len(each[best]) < 2:
        return None
    ref = np.asarray(each[best], dtype=float)
    lower = sorted((i for i in range(len(lrs)) if lrs[i] < lrs[best] and each[i] is not None
                    and len(each[i]) == len(ref) and math.isfinite(scores[i])),
                   key=lambda i: lrs[i])
    for i in lower:
        d = np.asarray(each[i], dtype=float) - ref
        se = float(d.std(ddof=1) / math.sqrt(len(d)))
        if float(d.mean()) <= TIE_STANDARD_ERRORS * se:
            return i, float(d.mean()), se
    return None



def _predicted(lengths: Sequence[int], bests: Sequence[float], steps: int) -> float | None:
    """The score a run of ``steps`` should reach: the best probe scores of the rungs on a
    power law of the length (a straight line in log-log), None without two positive
    finite scores that fall with the length."""
    if len(lengths) < 2 or not all(0 < b < math.inf for b in bests) or bests[-1] >= bests[0]:
        return None
    slope = math.log(bests[-1] / bests[0]) / math.log(lengths[-1] / lengths[0])
    return float(bests[-1] * (steps / lengths[-1]) ** slope)


HORIZON_RATIO = 4
#: the range of the fitted horizon exponent: the best rate does not rise with the length
#: (a rise measured on short probes is their warmup's transient), and falls at most as
#: T^-1/2, the noise-dominated limit of SGD theory (Bjorck et al. 2025 measure 0.3-0.5);
#: faster falls between short probes come from the distance to travel (Adam's short runs
#: need large steps to get anywhere), which a long run covers at any sane rate: extrapolated
#: as 1/T, such a fall left a noisy regression unconverged (risk 2.7 where 0.03 was reached)
BETA_MIN, BETA_MAX = 0.0, 0.5
#: the horizon exponent from which the run counts as noise-dominated (geometric decay)
BETA_NOISE = 0.2
NOISY_FAMILY = "exponential"
#: the fitted (unclipped) exponent at or below which the best rate rises with the length
#: of the probes enough to call the run progress-limited (cosine decay), and the family
#: between the two
BETA_PROGRESS = 0.25
MIDDLE_FAMILY = "wsd"


def _choose_family(report: AutopilotReport, shape: S.Schedule | None, family: str,
                   peak: float, steps: int) -> tuple[str, float]:
    """The run's family and peak: ``family`` and ``peak`` with a user's schedule or without
    a horizon fit, else the family the fitted horizon exponent calls for, with the peak
    that gives it the probes' mean rate (the decision is recorded)."""
    if shape is not None or len(report.horizon.get("lengths", ())) < 2:
        return family, peak
    beta, raw = report.horizon["beta"], report.horizon.get("beta_raw", report.horizon["beta"])
    chosen = _family_for(beta, raw)
    if chosen == MIDDLE_FAMILY:
        factor = _mean_rate(DEFAULT_FAMILY, steps) / _mean_rate(chosen, steps)
        report.decisions.append(_family_reason(chosen, beta, raw) + (
            f"; its peak {peak * factor:.3g} is the probes' {peak:.3g} times {factor:.3g}, "
            f"so that its mean rate over the run is the {DEFAULT_FAMILY} run's"))
        return chosen, peak * factor
    report.decisions.append(_family_reason(chosen, beta, raw))
    return chosen, peak


def _mean_rate(family: str, steps: int) -> float:
    """The mean of a family's schedule at peak 1 over ``steps`` (with the run's warmup)."""
    return float(np.mean(S.family(family, 1.0, steps, WARMUP_FRACTION)(np.arange(steps))))


def _family_for(beta: float, beta_raw: float | None = None) -> str:
    """The schedule family for a horizon exponent (``beta_raw``: as fitted, unclipped):
    ``NOISY_FAMILY`` from ``BETA_NOISE`` up (the optimum falls with the length of the
    run: gradient noise sets the final loss, and a geometric decay, which spends most
    steps at small rates, is near-optimal there: Ge et al. 2019, "The step decay
    schedule", arXiv 1904.12838); ``DEFAULT_FAMILY`` (cosine decay to zero) where the
    optimum rises with the length by ``BETA_PROGRESS`` or more (longer probes want larger
    steps: the distance to travel, not noise, limits the run); between the two
    ``MIDDLE_FAMILY`` (warmup-stable-decay, the best single family of the arena's tuned
    grids: Hagele et al. 2024, arXiv 2405.18392)."""
    raw = beta if beta_raw is None else beta_raw
    if beta >= BETA_NOISE:
        return NOISY_FAMILY
    return DEFAULT_FAMILY if raw <= -BETA_PROGRESS else MIDDLE_FAMILY


def _family_reason(family: str, beta: float, beta_raw: float | None = None) -> str:
    raw = beta if beta_raw is None else beta_raw
    if family == NOISY_FAMILY:
        return (f"family {family!r}: the horizon exponent {beta:.2f} >= {BETA_NOISE} says "
                f"gradient noise limits this run (its best rate falls with its length), "
                f"where a geometric decay that spends most steps at small rates is "
                f"near-optimal (Ge et al. 2019)")
    if family == DEFAULT_FAMILY:
        return (f"family {family!r}: the best rate rises with the length of the probes "
                f"(fitted exponent {raw:.2f} <= -{BETA_PROGRESS}): the distance to travel, "
                f"not noise, limits this run: warmup and cosine decay to zero")
    return (f"family {family!r}: the best rate holds with the length of the probes (fitted "
            f"exponent {raw:.2f}, between -{BETA_PROGRESS} and {BETA_NOISE}): "
            f"warmup, a stable rate, and a linear cooldown over the last 20%")


def _slope(lengths: Sequence[int], optima: Sequence[float], clip: bool = True) -> float:
    """-d log(optimum) / d log(length), least squares, clipped to [BETA_MIN, BETA_MAX]
    (``clip=False``: as fitted)."""
    x = np.log(np.asarray(lengths, dtype=float))
    y = np.log(np.asarray(optima, dtype=float))
    slope = -float(np.polyfit(x, y, 1)[0])
    return _clipped(slope) if clip else slope


def _clipped(beta: float) -> float:
    """A horizon exponent within [BETA_MIN, BETA_MAX]."""
    return min(max(beta, BETA_MIN), BETA_MAX)


def _vertex(lrs: Sequence[float], scores: Sequence[float]) -> float:
    """The lr minimising a parabola through the best probe and its two neighbours in
    (log lr, log score) (raw scores when some are not positive), kept within the
    neighbours; the best probe's lr at an end of the row or beside a diverged one."""
    order = np.argsort(lrs)
    x = np.log(np.asarray(lrs, dtype=float)[order])
    y = np.asarray(scores, dtype=float)[order]
    i = int(np.argmin(y))
    if not math.isfinite(y[i]):
        return float(min(lrs))
    if i == 0 or i == len(y) - 1 or not (math.isfinite(y[i - 1]) and math.isfinite(y[i + 1])):
        return float(math.exp(x[i]))
    yy = y[i - 1:i + 2]
    if np.all(yy > 0):
        yy = np.log(yy)
    a, b, _ = np.polyfit(x[i - 1:i + 2], yy, 2)
    if a <= 0:
        return float(math.exp(x[i]))
    v = min(max(-b / (2 * a), x[i - 1]), x[i + 1])
    return float(math.exp(v))


def _plan(left: float, eval_cost: float) -> tuple[int, ...] | None:
    """The probes' lengths: (L, HORIZON_RATIO L) when 5 (+1) probes at L and 3 (+1) at
    the longer length fit in ``left`` steps with their scorings, else (L,) for one rung of
    3 (+1) probes, else None (L under ``MIN_PROBE_STEPS``)."""
    for counts in ((len(PROBE_FACTORS) + 1, len(SMALL_PROBE_FACTORS) + 1),
                   (len(SMALL_PROBE_FACTORS) + 1,)):
        weight = sum(c * HORIZON_RATIO ** i for i, c in enumerate(counts))
        base = int((left - eval_cost * sum(counts)) // weight)
        if base >= MIN_PROBE_STEPS:
            return tuple(base * HORIZON_RATIO ** i for i in range(len(counts)))
    return None


class _Replay:
    """An iterable over a live batch stream (the range test re-iterates its loader)."""

    def __init__(self, batches: Iterator[Any]) -> None:
        self.batches = batches

    def __iter__(self) -> Iterator[Any]:
        return self.batches


def _final_run(setup: _Setup, schedule: S.Schedule | None, watch: _Watch) -> None:
    """Train ``setup.steps`` steps along ``schedule`` (None: the optimizer's own lr; with
    the guard, following the score when asked), recording the curve, the compute and the
    decisions in the report."""
    from lrkit.guard import DivergenceError, DivergenceGuard

    model, opt, report, steps = setup.model, setup.optimizer, setup.report, setup.steps
    sched = Scheduler(opt, lr=schedule)
    guard = DivergenceGuard(model, opt, sched, spread=3.0) if watch.guard else None
    if guard is not None:
        report.decisions.append("training with DivergenceGuard on (spike: 3x the recent "
                                "median and 3x the recent spread above it; back-off 0.5, "
                                "3 retries)")
    if has_modes(opt):
        opt.train()
    every = max(1, steps // 20)
    bar = _Progress(steps) if watch.progress else None
    began = time.perf_counter()
    loop = Loop(replace(setup.step, guard=guard), sched, losses=report.losses, lrs=report.lrs)

    def on_step(step: int, loss: float, lr: float) -> None:
        for cb in watch.callbacks:
            cb(step, loss, lr)
        if bar is not None:
            bar.update(step, loss, lr, time.perf_counter() - began)
        if watch.follow and (step % every == 0 or step == steps):
            report.val_steps.append(step)
            with averaged(opt):
                report.val_losses.append(setup.scorer())
            report.compute["training"] += setup.eval_cost

    try:
        if not loop.run(setup.batches, steps, on_step):
            report.diverged = True
            report.decisions.append(f"stopped: non-finite loss at step {loop.position}")
    except DivergenceError as exc:
        report.diverged = True
        report.decisions.append(f"stopped: {str(exc).splitlines()[0]}")
    finally:
        if bar is not None:
            bar.close()
    report.compute["training"] += float(loop.updates)
    if guard is not None:
        report.guard_events = [{"step": e.step, "kind": e.kind, "loss": e.loss,
                                "lr_factor": e.lr_factor, "description": e.describe()}
                               for e in guard.events]
        if guard.events:
            report.decisions.append(f"the guard intervened {len(guard.events)} time(s); "
                                    f"learning rate x{guard.lr_factor:.3g} at the end")
    if has_modes(opt):
        opt.eval()  # schedule-free: leave the model at its averaged weights
        report.decisions.append(f"{type(opt).__name__}: switched to eval mode at the end, "
                                f"so the model holds the averaged weights")


def _realised(setup: _Setup) -> None:
    """The trained model's score beside the one the probes predicted (in the report)."""
    report = setup.report
    predicted = report.horizon.get("predicted")
    if predicted is None or report.diverged:
        return
    if report.val_steps and report.val_steps[-1] == setup.steps:
        realised = report.val_losses[-1]
    else:
        with averaged(setup.optimizer):
            realised = setup.scorer()
        report.compute["training"] += setup.eval_cost
    report.horizon["realised"] = realised
    seen = ("; the run trained on the held batches and the probes did not (or not as "
            "long), so the two are not on equal terms" if setup.scored_on != "validation"
            else "")
    report.decisions.append(
        f"score: the probes predicted {predicted:.4g} (their best scores on a power law of "
        f"the length), the run reached {realised:.4g}{seen}")


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
