"""PyTorch Lightning callbacks: lrkit's range test, the autopilot's choice of rate and
schedule, and schedule-free train/eval switching.

An lrkit optimizer and ``lrkit.Scheduler`` go into Lightning as any torch pair does;
return the Scheduler with ``"interval": "step"`` so its step count is the optimizer's::

    def configure_optimizers(self):
        opt = lrkit.optim.AdamW(self.parameters(), lr=1e-3)
        sched = lrkit.Scheduler(opt, lr=S.warmup(S.cosine(1e-3, total=1000), steps=50))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

Lightning saves the Scheduler's ``state_dict`` (its step and its schedules' configs) in
every checkpoint, so ``fit(ckpt_path=...)`` resumes the same rate sequence. ``RangeTest``
and ``Autopilot`` change that Scheduler's lr schedule before the first step; the change
is part of the Scheduler's state, so a resumed run keeps it and they do not run again.
The loss they train on is the module's ``training_step(batch, batch_idx)`` (a tensor, or
a dict with ``"loss"``); its ``self.log`` calls are dropped meanwhile.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit.finder import LRFinderResult, find_lr
from lrkit.pilot import AutopilotReport, choose_lr
from lrkit.scheduler import Scheduler


# -- what the callbacks share -----------------------------------------------------------------
def _scheduler(trainer: pl.Trainer, fn: str) -> Scheduler:
    """The lrkit.Scheduler that ``configure_optimizers`` returned, stepping every batch."""
    for config in trainer.lr_scheduler_configs:
        if isinstance(config.scheduler, Scheduler):
            if config.interval != "step":
                raise ValueError(f"{fn}: the lrkit.Scheduler must step with the optimizer: "
                                 f"return it with 'interval': 'step', got "
                                 f"{config.interval!r}")
            if "lr" not in config.scheduler.schedules:
                raise ValueError(f"{fn}: the lrkit.Scheduler has no lr schedule to set; "
                                 f"build it with lr=<a schedule>")
            return config.scheduler
    found = [type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs]
    raise ValueError(f"{fn}: configure_optimizers must return an lrkit.Scheduler (with "
                     f"'interval': 'step'), got {', '.join(found) or 'no scheduler'}")


def _total_steps(trainer: pl.Trainer, fn: str) -> int:
    total = trainer.estimated_stepping_batches
    if not math.isfinite(total) or total < 10:
        raise ValueError(f"{fn}: the run's length must be known and at least 10 steps "
                         f"(set max_steps or max_epochs), got {total}")
    return int(total)


def _step_fn(trainer: pl.Trainer) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    def step(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        out = module.training_step(trainer.strategy.batch_to_device(batch), 0)
        if isinstance(out, dict):
            out = out.get("loss")
        if not torch.is_tensor(out):
            raise TypeError(f"lrkit.integrations.lightning: training_step must return the "
                            f"loss (a tensor, or a dict with 'loss'), got {out!r:.60}")
        return out
    return step


@contextlib.contextmanager
def _unlogged(module: pl.LightningModule) -> Iterator[None]:
    """``self.log`` / ``self.log_dict`` do nothing while lrkit trains outside Lightning's
    loop (Lightning refuses them there)."""
    module.log = module.log_dict = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del module.log, module.log_dict


def _rescaled(sched: Scheduler, peak: float, total: int) -> S.Schedule:
    """The Scheduler's lr schedule, scaled so that its peak over the run is ``peak``."""
    s = sched.schedules["lr"]
    current = s.peak(total)
    if not (current > 0 and math.isfinite(current)):
        raise ValueError(f"RangeTest: the lr schedule {s} has no positive peak in the "
                         f"run's {total} steps")
    return s * (peak / current)


# -- the callbacks ----------------------------------------------------------------------------
class RangeTest(pl.Callback):
    """Before the first step: lrkit's range test (``lrkit.find_lr`` with its default
    "edge" rule, or ``rule``) on the module and its optimizer, which are then put back as
    they were; the Scheduler's lr schedule is rescaled so that its peak is
    ``factor`` x the suggestion. ``result`` holds the ``LRFinderResult`` and ``peak`` the
    peak set. Under several processes, rank 0's suggestion is used by all.
    """

    def __init__(self, *, steps: int = 100, start: float = 1e-7, end: float = 10.0,
                 rule: str | None = None, factor: float = 1.0) -> None:
        fn = "RangeTest()"
        self.steps = C.integer(fn, "steps", steps, minimum=5)
        self.start = C.positive(fn, "start", start)
        self.end = C.positive(fn, "end", end)
        if self.end <= self.start:
            raise ValueError(f"{fn}: end must be above start, got start={start}, end={end}")
        if rule is not None and not isinstance(rule, str):
            raise TypeError(f"{fn}: rule must be a rule name (str) or None, got "
                            f"{type(rule).__name__}")
        self.rule = rule
        self.factor = C.positive(fn, "factor", factor)
        self.result: LRFinderResult | None = None
        self.peak: float | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:  # resumed: the checkpoint's Scheduler has the peak
            return
        sched = _scheduler(trainer, "RangeTest")
        total = _total_steps(trainer, "RangeTest")
        with _unlogged(pl_module):
            self.result = find_lr(pl_module, sched.optimizer, trainer.train_dataloader,
                                  step_fn=_step_fn(trainer), steps=self.steps,
                                  start=self.start, end=self.end)
        suggestion = self.result.suggestion if self.rule is None else \
            self.result.suggest(self.rule)
        suggestion = trainer.strategy.broadcast(suggestion, src=0)
        if suggestion is None:
            warnings.warn(f"RangeTest: no suggestion ({self.result.stop_reason}); the lr "
                          f"schedule is left as it was", stacklevel=2)
            return
        self.peak = float(suggestion) * self.factor
        sched.set_schedule("lr", _rescaled(sched, self.peak, total))


class Autopilot(pl.Callback):
    """Before the first step: the autopilot's choice (``lrkit.pilot.choose_lr``: range
    test, then probes at two lengths and a horizon fit, within ``budget`` runs of compute)
    of the peak rate and the schedule (the family the horizon fit chooses, with warmup,
    or ``schedule`` rescaled), written into the Scheduler for the whole run; the module
    and optimizer are put back as they were first. ``report`` holds the ``AutopilotReport`` (its
    ``explain()`` says why).
    """

    def __init__(self, *, budget: float = 1.5, schedule: S.Schedule | str | None = None,
                 val_fn: Callable[[torch.nn.Module], float] | None = None) -> None:
        fn = "Autopilot()"
        self.budget = C.in_range(fn, "budget", budget, 1.0, 100.0)
        if schedule is not None and not isinstance(schedule, (S.Schedule, str)):
            raise TypeError(f"{fn}: schedule must be a Schedule or spec text, got "
                            f"{schedule!r}")
        self.schedule = None if schedule is None else S.as_schedule(schedule)
        if val_fn is not None and not callable(val_fn):
            raise TypeError(f"{fn}: val_fn must be callable (model -> number), got "
                            f"{type(val_fn).__name__}")
        self.val_fn = val_fn
        self.report: AutopilotReport | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            return
        sched = _scheduler(trainer, "Autopilot")
        total = _total_steps(trainer, "Autopilot")
        with _unlogged(pl_module):
            self.report = choose_lr(pl_module, sched.optimizer, trainer.train_dataloader,
                                    step_fn=_step_fn(trainer), steps=total,
                                    budget=self.budget, schedule=self.schedule,
                                    val_fn=self.val_fn)
        text = trainer.strategy.broadcast(self.report.schedule, src=0)
        sched.set_schedule("lr", S.parse(text))


def _schedule_free(trainer: pl.Trainer) -> list[torch.optim.Optimizer]:
    return [o for o in trainer.optimizers
            if callable(getattr(o, "eval", None)) and callable(getattr(o, "train", None))]


def _training(opt: torch.optim.Optimizer) -> bool:
    flag = getattr(opt, "training", None)
    if isinstance(flag, bool):
        return flag
    return all(g.get("train_mode", True) for g in opt.param_groups)  # schedulefree's own


class ScheduleFree(pl.Callback):
    """Switch schedule-free optimizers (``lrkit.optim.ScheduleFreeAdamW``, ``...SGD``,
    the ``schedulefree`` package's) with the module: training steps see the training
    weights, validation, test and predict the averaged ones, and the training weights
    come back bit for bit after. Checkpoints hold the training weights and the optimizer
    state (they resume exactly) and, with ``save_averaged``, the averaged weights too,
    under ``"lrkit_averaged_state_dict"`` (what to deploy). After ``fit`` the module holds
    the averaged weights.
    """

    def __init__(self, *, save_averaged: bool = True) -> None:
        self.save_averaged = C.boolean("ScheduleFree()", "save_averaged", save_averaged)
        self._switched: list[torch.optim.Optimizer] = []

    def _to_eval(self, trainer: pl.Trainer) -> None:
        self._switched = [o for o in _schedule_free(trainer) if _training(o)]
        for opt in self._switched:
            opt.eval()

    def _back(self) -> None:
        for opt in self._switched:
            opt.train()
        self._switched = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in _schedule_free(trainer):
            opt.train()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for opt in _schedule_free(trainer):
            opt.eval()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_eval(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._back()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_eval(trainer)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._back()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._to_eval(trainer)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._back()

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if not self.save_averaged:
            return
        switched = [o for o in _schedule_free(trainer) if _training(o)]
        for opt in switched:
            opt.eval()
        checkpoint["lrkit_averaged_state_dict"] = {
            k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        for opt in switched:
            opt.train()
