"""``lrkit.Scheduler``: drives a torch optimizer's param groups from schedules.

Unlike torch's stateful schedulers, nothing is computed recursively: at step ``n`` every
scheduled value is ``s(n)``, so resuming needs only ``n`` (and the plateau's counters),
the order in which optimizer, scheduler and their states are restored does not matter,
and any number of hyperparameters share one step count.
"""
from __future__ import annotations

import math
import numbers
import warnings
import weakref
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from lrkit import _checks as C
from lrkit.errors import user_stacklevel
from lrkit.schedules.parse import as_schedule
from lrkit.schedules.registry import ScheduleLike as Schedule
from lrkit.schedules.registry import StepCache, from_config

_PLATEAU_MODES = ("min", "max")
_THRESHOLD_MODES = ("rel", "abs")


class Plateau:
    """Reduce the learning rate when a metric stops improving (torch ``ReduceLROnPlateau``).

    Passed as ``Scheduler(opt, lr=s, plateau=Plateau(...))``, it multiplies ``s`` by
    ``factor`` each time the metric given to ``scheduler.step(metric)`` (or
    ``scheduler.report(metric)``) has not improved for more than ``patience`` reports, then
    waits ``cooldown`` reports. "Improved" means below ``best * (1 - threshold)`` (mode "min",
    threshold_mode "rel"), ``best - threshold`` ("abs"), or the mirror images for "max".
    The learning rate never goes below ``min_lr`` (a float, or one per param group); as in
    torch, a reduction smaller than ``eps`` is skipped. With a constant ``s`` this is
    exactly torch's ReduceLROnPlateau on the same metric sequence.
    """

    def __init__(
        self,
        factor: float = 0.1,
        patience: int = 10,
        mode: str = "min",
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float | list[float] = 0.0,
        eps: float = 1e-8,
    ) -> None:
        fn = "Plateau()"
        self.factor = C.in_range(fn, "factor", factor, 0.0, 1.0, low_open=True, high_open=True)
        self.patience = C.nonnegative_int(fn, "patience", patience)
        self.mode = C.choice(fn, "mode", mode, _PLATEAU_MODES)
        self.threshold = C.nonnegative(fn, "threshold", threshold)
        self.threshold_mode = C.choice(fn, "threshold_mode", threshold_mode, _THRESHOLD_MODES)
        self.cooldown = C.nonnegative_int(fn, "cooldown", cooldown)
        if isinstance(min_lr, (list, tuple)):
            self.min_lr: float | list[float] = [
                C.nonnegative(fn, f"min_lr[{i}]", v) for i, v in enumerate(min_lr)]
        else:
            self.min_lr = C.nonnegative(fn, "min_lr", min_lr)
        self.eps = C.nonnegative(fn, "eps", eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad = 0
        self.cooldown_counter = 0

    def is_better(self, value: float) -> bool:
        if self.mode == "min":
            bar = self.best * (1 - self.threshold) if self.threshold_mode == "rel" \
                else self.best - self.threshold
            return value < bar
        bar = self.best * (1 + self.threshold) if self.threshold_mode == "rel" \
            else self.best + self.threshold
        return value > bar

    def update(self, metric: float) -> bool:
        """Record a metric; True when the learning rate should be reduced now."""
        value = float(metric)
        if self.is_better(value):
            self.best = value
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad = 0
        if self.num_bad > self.patience:
            self.cooldown_counter = self.cooldown
            self.num_bad = 0
            return True
        return False

    def min_lr_of(self, group_index: int) -> float:
        if isinstance(self.min_lr, list):
            return self.min_lr[group_index]
        return self.min_lr

    def config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("factor", "patience", "mode", "threshold",
                                              "threshold_mode", "cooldown", "min_lr", "eps")}

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config(), "best": self.best, "num_bad": self.num_bad,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore settings and counters; a corrupted ``state`` raises ValueError or
        TypeError naming the entry and changes nothing."""
        fn = "Plateau.load_state_dict()"
        if not isinstance(state, dict):
            raise TypeError(f"{fn}: state must be a dict (from Plateau.state_dict()), got "
                            f"{type(state).__name__}")
        missing = [k for k in ("config", "best", "num_bad", "cooldown_counter")
                   if k not in state]
        if missing:
            raise ValueError(f"{fn}: state lacks {', '.join(map(repr, missing))}")
        if not isinstance(state["config"], dict):
            raise TypeError(f"{fn}: config must be a dict, got {state['config']!r}")
        try:
            fresh = Plateau(**state["config"])
        except (TypeError, ValueError) as exc:  # an invalid, unknown or missing setting
            raise type(exc)(f"{fn}: config: {exc}") from None
        best = state["best"]
        if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):
            raise TypeError(f"{fn}: best must be a number, got {best!r}")
        num_bad = C.nonnegative_int(fn, "num_bad", state["num_bad"])
        cooldown = C.nonnegative_int(fn, "cooldown_counter", state["cooldown_counter"])
        self.__dict__.update(fresh.__dict__)
        self.best = float(best)
        self.num_bad = num_bad
        self.cooldown_counter = cooldown

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"Plateau({args})"


class Scheduler(LRScheduler):
    """A torch ``LRScheduler`` whose values are lrkit schedules of the step.

    ``Scheduler(opt, lr=s)`` sets every param group's lr to ``s(n) * group.get("lr_scale",
    1.0)`` after ``n`` calls of ``step()`` (n = 0 right after construction), so layer-wise
    scales compose with any schedule. Other numeric param-group values are scheduled the
    same way, unscaled: ``momentum=``, ``weight_decay=``, ``beta1=``/``beta2=`` (the items
    of ``betas``), or any key the groups hold (``eps=``...). ``momentum=`` on an optimizer
    whose groups have ``betas`` but no ``momentum`` (Adam and kin) schedules ``beta1``, as
    torch's OneCycleLR does. Each value is a ``Schedule``, spec text (``"cosine(0.1,
    total=1000)"``) or a number. A count a group holds as an int (``history_size``,
    ``slice_p``...) stays an int: its schedule must reach only integral values.

    ``lr=None`` leaves the lr alone, except that a ``plateau`` then scales each group's
    initial lr, which is exactly torch's ReduceLROnPlateau. With a plateau, call
    ``step(metric)``, or ``step()`` every update and ``report(metric)`` when a metric is
    known.

    ``state_dict()`` holds the step count, every schedule's config and the plateau's
    counters; loading it, before or after the optimizer's own state and whatever the order
    of construction, restores the exact sequence.

    With torch's schedulers: ``SequentialLR`` of lrkit Schedulers runs each from its own
    step 0 at its milestone (and saves and loads before the later ones started). One
    Scheduler per optimizer drives a value: two that both step (side by side, or inside
    ``ChainedScheduler``) would overwrite each other, the last one winning, so the second
    to step warns; combine their schedules in one Scheduler instead (``product``, ``join``,
    ``warmup``...). As torch's schedulers, ``step()`` before the first ``optimizer.step()``
    warns. Param groups added later (``add_param_group``) are scheduled from their own lr.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr: Schedule | str | float | None = None,
        *,
        plateau: Plateau | None = None,
        **hyperparams: Schedule | str | float,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Scheduler(): optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if plateau is not None and not isinstance(plateau, Plateau):
            raise TypeError(f"Scheduler(): plateau must be an lrkit.Plateau, got {plateau!r}")
        self.optimizer = optimizer
        self.schedules: dict[str, Schedule] = {}
        if lr is not None:
            self.schedules["lr"] = _schedule_arg("lr", lr)
        for key, value in hyperparams.items():
            self.schedules[key] = _schedule_arg(key, value)
        for key in self.schedules:
            self._check_key(key)
        values = {k: s(0) for k, s in self.schedules.items()}
        _check_values(optimizer, values, 0, None,
                      self._counts_of(values, getattr(optimizer, "param_groups", None)))
        if lr is not None:
            optimizer.lr_scale_applied = True  # type: ignore[attr-defined]
        self.plateau = plateau
        if plateau is not None and isinstance(plateau.min_lr, list) and len(
                plateau.min_lr) != len(optimizer.param_groups):
            raise ValueError(f"Scheduler(): the plateau's min_lr has {len(plateau.min_lr)} "
                             f"values, the optimizer {len(optimizer.param_groups)} param "
                             "groups: give one per group, or a single number")
        self.base_lrs: list[float] = []
        self.plateau_scales: list[float] = []
        self.lr_multiplier = 1.0
        self.last_epoch = 0
        self._step_count = 1
        self._last_lr: list[float] = []
        self._steps_warned = False
        _track_optimizer_step(optimizer)
        self._apply()

    # -- the values at the current step ---------------------------------------------
    def _check_key(self, key: str) -> None:
        for i, group in enumerate(self.optimizer.param_groups):
            target = _target(key, group)
            if target is None and key in group and key != "params":
                value = group[key]
                what = "a switch (bool)" if isinstance(value, bool) else "not a number"
                raise ValueError(f"Scheduler(): {key}= cannot be scheduled: param group {i} "
                                 f"holds {key}={value!r:.60}, {what}; only numeric values "
                                 "can be scheduled")
            if target is None:
                keys = ", ".join(sorted(k for k in group if k != "params"))
                raise ValueError(f"Scheduler(): {key}= cannot be scheduled: param group {i} has "
                                 f"no such value (it has {keys})")

    def _sync_groups(self) -> None:
        """Take in param groups added since (``add_param_group``): their own lr is their
        base, as torch's schedulers and ReduceLROnPlateau take them."""
        groups = self.optimizer.param_groups
        for group in groups[len(self.base_lrs):]:
            initial = group["lr"]
            group.setdefault("initial_lr", initial.clone() if torch.is_tensor(initial) else initial)
            self.base_lrs.append(_as_float(group["initial_lr"]))
            self.plateau_scales.append(1.0)
        if self.plateau is not None and isinstance(self.plateau.min_lr, list) and len(
                self.plateau.min_lr) != len(groups):
            raise ValueError(f"Scheduler: the plateau's min_lr has {len(self.plateau.min_lr)} "
                             f"values, the optimizer now {len(groups)} param groups (one was "
                             "added): set plateau.min_lr to one value per group")

    def get_lr(self) -> list[float]:
        """The learning rate of each param group at the current step."""
        groups = self.optimizer.param_groups
        if len(groups) != len(self.base_lrs) or self.plateau is not None:
            self._sync_groups()
        if "lr" in self.schedules:
            base, m = self._value("lr", self.last_epoch), self.lr_multiplier
            lrs = [base * g.get("lr_scale", 1.0) * m for g in groups]
        elif self.plateau is not None:
            lrs = [lr * self.lr_multiplier for lr in self.base_lrs]
        else:
            return [_as_float(g["lr"]) for g in groups]
        if self.plateau is not None:
            lrs = [max(lr * scale, self.plateau.min_lr_of(i))
                   for i, (lr, scale) in enumerate(zip(lrs, self.plateau_scales))]
        return lrs

    def values(self) -> dict[str, float]:
        """Every scheduled value at the current step (lr before group scales)."""
        return {key: self._value(key, self.last_epoch) for key in self.schedules}

    def _value(self, key: str, n: int) -> float:
        """``self.schedules[key](n)``, bit for bit, from a block of values evaluated at
        once (``StepCache``); a schedule replaced in ``self.schedules`` gets a new block."""
        caches = self.__dict__.get("_caches")
        if caches is None:
            caches = self.__dict__["_caches"] = {}
        cache = caches.get(key)
        s = self.schedules[key]
        if cache is None or cache.schedule is not s:
            cache = caches[key] = StepCache(s)
        return cache(n)

    def _apply(self) -> None:
        if self.last_epoch < 0:  # not started (a later scheduler of SequentialLR)
            return
        groups = self.optimizer.param_groups
        n = self.last_epoch
        values = {key: self._value(key, n) for key in self.schedules if key != "lr"}
        targets: dict[str, list] = {}
        counts = self._counts_of(values)
        if values:  # before anything is written
            _check_values(self.optimizer, values, n, targets, counts)
        last = []
        # this loop runs every step: _write inlined (a plain float lr written as it is, a
        # tensor lr filled in place)
        for group, lr in zip(groups, self.get_lr()):
            current = group["lr"]
            if isinstance(current, torch.Tensor):
                current.fill_(lr)
                last.append(float(current.item()))
            else:
                group["lr"] = lr
                last.append(lr if type(lr) is float else _as_float(lr))
        for key, value in values.items():
            for group, target, count in zip(groups, targets[key], counts[key]):
                if target is not None:
                    _write_target(target, group, int(value) if count else value)
        self._last_lr = last

    def _counts_of(self, keys: Any, groups: list | None = None) -> dict[str, list[bool]]:
        """Per scheduled key, per param group: whether the group held a count there (a
        nonzero int, not a bool: ``history_size``, ``slice_p``) when the Scheduler first
        saw it. A count is written as an int (its schedule must reach only integral
        values); every other value as a float, also where torch keeps a float option as
        the int 0 (``SGD(momentum=0)``: a schedule of it may reach 1, then 0.5)."""
        if groups is None:
            groups = self.optimizer.param_groups
        counts = self.__dict__.setdefault("_counts", {})
        for key in keys:
            flags = counts.setdefault(key, [])
            for group in groups[len(flags):]:
                target = _target(key, group)
                flags.append(target is not None and target[1] is None
                             and _int_key(group[target[0]]))
        return counts

    # -- stepping ----------------------------------------------------------------------
    def step(self, metric: float | None = None) -> None:  # type: ignore[override]
        """Advance one step; with a plateau, ``metric`` is this step's metric. A metric that
        is refused (no plateau, not a number) raises before anything changes."""
        if metric is not None:
            metric = self._checked_metric("Scheduler.step(metric)", metric)
        if self._step_count == 1 and not getattr(self.optimizer, "_opt_called", False):
            warnings.warn(
                "Scheduler.step() was called before optimizer.step(): call "
                "optimizer.step() first, or the first update skips the schedule's value at "
                "step 0 (as torch's schedulers warn)", UserWarning, stacklevel=user_stacklevel())
        self._step_count += 1
        self.last_epoch += 1
        if metric is not None:
            self._report(metric)
        self._check_sole_writer()
        self._apply()

    def _update_lr(self, epoch: int | None = None) -> None:
        """torch's hook: ``SequentialLR`` starts a later scheduler with ``_update_lr(0)``."""
        self.last_epoch = self.last_epoch + 1 if epoch is None else C.nonnegative_int(
            "Scheduler._update_lr()", "epoch", epoch)
        self._check_sole_writer()
        self._apply()

    def _check_sole_writer(self) -> None:
        """Warn (once) where another lrkit Scheduler steps the same values of this
        optimizer in turn with this one (A, B, A): each overwrites the other. A handover
        (SequentialLR: A, A, B, B) is fine."""
        opt = self.optimizer
        last = _LAST_WRITER.get(id(opt))
        if last is not None and last[1]() is self and last[0]() is opt:
            return  # this Scheduler stepped the optimizer last: nothing new to compare
        keys = set(self.schedules) | ({"lr"} if self.plateau is not None else set())
        log = _WRITERS.setdefault(opt, {})
        clash = []
        for key in sorted(keys):
            # weak references: a Scheduler that is gone (a probe's, say) writes no more,
            # and its id may be reused by a new one
            hist = [r for r in log.get(key, []) if r() is not None]
            mine = [r for r in hist if r() is self]
            if hist and hist[-1]() is not self:
                if mine:
                    clash.append(key)
                hist = [r for r in hist if r() is not self][-1:] + [weakref.ref(self)]
            elif not hist:
                hist = [weakref.ref(self)]
            log[key] = hist
        key = id(opt)
        _LAST_WRITER[key] = (weakref.ref(opt, lambda _, key=key: _LAST_WRITER.pop(key, None)),
                             weakref.ref(self))
        if clash and not self._steps_warned:
            self._steps_warned = True
            warnings.warn(
                f"Scheduler.step(): another lrkit Scheduler also steps {', '.join(clash)} of "
                "this optimizer (two Schedulers, or both inside ChainedScheduler): each "
                "overwrites the other and the last to step wins. Put the schedules in one "
                "Scheduler (lrkit.schedules product, join, warmup...) instead",
                UserWarning, stacklevel=user_stacklevel())

    def report(self, metric: float) -> None:
        """Give the plateau a metric without advancing the step."""
        self._report(self._checked_metric("Scheduler.report()", metric))
        self._apply()

    def _checked_metric(self, fn: str, metric: Any) -> float:
        """``metric`` as a float, checked before the step or report changes anything."""
        if self.plateau is None:
            raise ValueError(f"{fn}: a metric needs a plateau; build the Scheduler with "
                             "plateau=lrkit.Plateau(...)")
        if torch.is_tensor(metric) or hasattr(metric, "__array__"):  # numpy, jax arrays
            size = metric.numel() if torch.is_tensor(metric) else getattr(metric, "size", None)
            if size != 1 or not hasattr(metric, "item"):
                raise ValueError(f"{fn}: metric must be a number or a one-element tensor, "
                                 f"got a tensor of shape {tuple(metric.shape)}")
            metric = metric.item()
        if isinstance(metric, bool) or not isinstance(metric, numbers.Real):
            raise TypeError(f"{fn}: metric must be a number or a one-element tensor, got "
                            f"{type(metric).__name__}")
        return float(metric)

    def _report(self, metric: float) -> None:
        self._sync_groups()
        assert self.plateau is not None  # _checked_metric saw to it
        if self.plateau.update(metric):
            current = self.get_lr()
            for i, lr in enumerate(current):
                reduced = max(lr * self.plateau.factor, self.plateau.min_lr_of(i))
                if lr - reduced > self.plateau.eps:
                    self.plateau_scales[i] *= self.plateau.factor

    def scale_lr(self, factor: float) -> None:
        """Multiply the learning rate by ``factor`` from now on, keeping the schedule's shape."""
        self.lr_multiplier *= C.positive("Scheduler.scale_lr()", "factor", factor)
        self._apply()

    def set_schedule(self, key: str, schedule: Schedule | str | float) -> None:
        """Schedule ``key`` (``"lr"``, ``"momentum"``, any key the constructor takes) by
        ``schedule`` from the current step on: the step count is kept, the value is applied
        at once, and ``state_dict()`` saves the new schedule (a resume continues it)."""
        if not isinstance(key, str):
            raise TypeError(f"Scheduler.set_schedule(): key must be a hyperparameter name "
                            f"(str), got {type(key).__name__}")
        value = _schedule_arg(key, schedule)
        self._check_key(key)
        if self.last_epoch >= 0:
            _check_values(self.optimizer, {key: value(self.last_epoch)}, self.last_epoch,
                          None, self._counts_of([key]))
        self.schedules[key] = value
        _LAST_WRITER.pop(id(self.optimizer), None)  # a new key: compare writers again
        self._apply()

    def get_last_lr(self) -> list[float]:
        """The learning rate of each param group in use now."""
        return list(self._last_lr)

    # -- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "last_epoch": self.last_epoch,
            "schedules": {k: s.to_config() for k, s in self.schedules.items()},
            "plateau": None if self.plateau is None else self.plateau.state_dict(),
            "plateau_scales": list(self.plateau_scales),
            "lr_multiplier": self.lr_multiplier,
            "base_lrs": list(self.base_lrs),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the step, the schedules and the plateau. Everything is checked first: a
        corrupted or foreign ``state_dict`` raises ValueError or TypeError naming the
        entry and leaves the Scheduler and the optimizer unchanged."""
        fn = "Scheduler.load_state_dict()"
        required = ("last_epoch", "schedules", "plateau", "plateau_scales", "lr_multiplier")
        if not isinstance(state_dict, dict):
            raise TypeError(f"{fn}: state_dict must be a dict (from Scheduler.state_dict()), "
                            f"got {type(state_dict).__name__}")
        missing = [k for k in required if k not in state_dict]
        if missing:
            raise ValueError(f"{fn}: not an lrkit Scheduler state_dict: it lacks "
                             f"{', '.join(map(repr, missing))} (needs {', '.join(required)})")
        self._sync_groups()
        n_groups = len(self.optimizer.param_groups)
        last_epoch = state_dict["last_epoch"]
        if last_epoch != -1:  # -1: not started yet (a later scheduler of SequentialLR)
            last_epoch = C.nonnegative_int(fn, "last_epoch", last_epoch)
        configs = state_dict["schedules"]
        if not isinstance(configs, dict):
            raise TypeError(f"{fn}: schedules must be a dict of schedule configs, got "
                            f"{configs!r:.80}")
        schedules = {}
        for key, config in configs.items():
            try:
                schedules[key] = from_config(config)
            except ValueError as exc:
                raise type(exc)(f"{fn}: schedules[{key!r}]: {exc}") from None
            for i, group in enumerate(self.optimizer.param_groups):
                if _target(key, group) is None:
                    raise ValueError(f"{fn}: schedules[{key!r}] cannot be applied: param "
                                     f"group {i} has no such value")
        scales = _number_list(fn, "plateau_scales", state_dict["plateau_scales"], n_groups,
                              C.positive)
        multiplier = C.positive(fn, "lr_multiplier", state_dict["lr_multiplier"])
        base_lrs = state_dict.get("base_lrs")
        base_lrs = self.base_lrs if base_lrs is None else _number_list(
            fn, "base_lrs", base_lrs, n_groups, C.nonnegative)
        plateau = None
        if state_dict["plateau"] is not None:
            plateau = Plateau()
            plateau.load_state_dict(state_dict["plateau"])
            if isinstance(plateau.min_lr, list) and len(plateau.min_lr) != n_groups:
                raise ValueError(f"{fn}: the plateau's min_lr has {len(plateau.min_lr)} "
                                 f"values, the optimizer {n_groups} param groups")
        if last_epoch >= 0:  # a beta out of range: refused before anything changes
            _check_values(self.optimizer, {k: sch(last_epoch) for k, sch in schedules.items()},
                          last_epoch, None, self._counts_of(schedules))
        if schedules != self.schedules and self.schedules:
            warnings.warn("Scheduler.load_state_dict(): the saved schedules differ from those "
                          "this Scheduler was built with; resuming the saved ones", stacklevel=2)
        self.schedules = schedules
        if plateau is None:
            self.plateau = None
        elif self.plateau is None:
            self.plateau = plateau
        else:
            self.plateau.__dict__.update(plateau.__dict__)
        self.plateau_scales = scales
        self.lr_multiplier = multiplier
        self.base_lrs = list(base_lrs)
        self.last_epoch = last_epoch
        self._apply()

    def __repr__(self) -> str:
        parts = [f"{k}={s}" for k, s in self.schedules.items()]
        if self.plateau is not None:
            parts.append(f"plateau={self.plateau!r}")
        return f"Scheduler({', '.join(parts)}, step={self.last_epoch})"


def scale_lr(optimizer: torch.optim.Optimizer, factor: float, scheduler: Any = None) -> None:
    """Multiply the learning rate by ``factor`` from now on. With lrkit's ``Scheduler`` the
    schedule keeps its shape (``Scheduler.scale_lr``); otherwise every param group's lr is
    scaled, and a torch scheduler's ``base_lrs`` with it (it recomputes from them).

    With ``Scheduler._apply`` this is the one place that writes learning rates into param
    groups (the guard's back-off and the autopilot go through them)."""
    fn = "scale_lr()"
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{fn}: optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    factor = C.positive(fn, "factor", factor)
    if scheduler is not None and not any(
            hasattr(scheduler, a) for a in ("scale_lr", "base_lrs", "state_dict")):
        raise TypeError(f"{fn}: scheduler must be an lrkit.Scheduler, a torch scheduler or "
                        f"None, got {type(scheduler).__name__}")
    if scheduler is not None and hasattr(scheduler, "scale_lr"):
        scheduler.scale_lr(factor)
        return
    for group in optimizer.param_groups:
        if torch.is_tensor(group["lr"]):
            group["lr"].mul_(factor)
        else:
            group["lr"] = group["lr"] * factor
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]


# per optimizer: per scheduled key, weak references to the last two lrkit Schedulers that
# stepped it
_WRITERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: id(optimizer) -> (optimizer, the Scheduler that stepped it last), weakly: the step's
#: check of other writers is skipped while the same Scheduler keeps stepping
_LAST_WRITER: dict[int, tuple[weakref.ref, weakref.ref]] = {}


_TRACKED: weakref.WeakSet = weakref.WeakSet()


def _mark_step_called(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    opt._opt_called = True  # type: ignore[attr-defined]


def _track_optimizer_step(opt: torch.optim.Optimizer) -> None:
    """Set ``opt._opt_called`` after its steps (the flag torch's LRScheduler sets), by a
    step post-hook: it survives torch.compile and is left out of copies, as torch's
    hooks are."""
    if opt not in _TRACKED:
        _TRACKED.add(opt)
        opt.register_step_post_hook(_mark_step_called)


def _number_list(fn: str, name: str, value: Any, n: int, check: Any) -> list[float]:
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{fn}: {name} must be a list of {n} numbers, got {value!r:.80}")
    if len(value) != n:
        raise ValueError(f"{fn}: {name} has {len(value)} values, the optimizer {n} param "
                         "groups")
    return [check(fn, f"{name}[{i}]", v) for i, v in enumerate(value)]


def _schedule_arg(key: str, value: Any) -> Schedule:
    try:
        return as_schedule(value)
    except TypeError:
        raise TypeError(f"Scheduler(): {key} must be a Schedule, spec text or a number, "
                        f"got {value!r}") from None


def _as_float(v: Any) -> float:
    if type(v) is float:  # the common case first: this runs per group on every step
        return v
    return float(v.item()) if isinstance(v, torch.Tensor) else float(v)


def _target(key: str, group: dict[str, Any]) -> tuple[str, int | None] | None:
    """Where ``key`` lives in a param group: (group key, index into a tuple or None)."""
    if key in ("beta1", "beta2"):
        return ("betas", 0 if key == "beta1" else 1) if "betas" in group else None
    if key == "momentum" and "momentum" not in group and "betas" in group:
        return ("betas", 0)
    if key in group and key != "params":
        value = group[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, torch.Tensor)):
            return None
        return (key, None)
    return None


def _write(group: dict[str, Any], key: str, value: float) -> None:
    current = group[key]
    if isinstance(current, torch.Tensor):
        current.fill_(value)
    else:
        group[key] = value


def _int_key(current: Any) -> bool:
    """Whether a param-group value is a count that must stay an int: a Python int (not a
    bool) other than 0, since torch's float options default to an int 0 (``momentum=0``,
    ``weight_decay=0``) and a schedule may move those to any number."""
    return type(current) is int and current != 0


def _check_values(optimizer: torch.optim.Optimizer, values: dict[str, Any], step: int,
                  targets: dict[str, list] | None = None,
                  counts: dict[str, list[bool]] | None = None) -> None:
    """Refuse a scheduled value the optimizer could not step with, before anything is
    written: an item of ``betas`` outside [0, 1) (``1 - beta**t`` would be 0: NaN, or a
    division by zero, in the optimizer's step), and, for an optimizer that checks its
    param groups' values itself (lrkit's learning-rate-free and schedule-free ones:
    ``_checks``), any value those checks refuse (``betas[0] = 0`` or ``momentum = 0`` of
    the schedule-free ones, whose ``eval()`` divides by it). A count the groups hold as an
    int (``history_size``, ``slice_p``, ``max_backtracks``...) must be scheduled with
    integral values: it is written as an int. Each distinct value is checked by the
    optimizer once per step, not once per group. ``targets`` (where given) gets, per key,
    each group's ``_target`` (the writes that follow reuse them)."""
    checks = getattr(type(optimizer), "_checks", None)
    if not isinstance(checks, dict):
        checks = None
    for key, value in values.items():
        if key == "lr":
            continue
        v = None
        last: Any = None  # the last candidate checked (groups mostly hold the same)
        found = [_target(key, group) for group in optimizer.param_groups]
        if targets is not None:
            targets[key] = found
        for i, (group, target) in enumerate(zip(optimizer.param_groups, found)):
            if target is None:
                continue
            name, index = target
            if v is None:
                v = _as_float(value)
                if name == "betas" and not 0.0 <= v < 1.0:
                    raise ValueError(
                        f"Scheduler: the schedule of {key}= reaches {v:g} at step {step}, "
                        f"which would set betas[{index}] of a param group; betas must be "
                        "in [0, 1)")
            candidate: Any = v
            if counts is not None and counts[key][i]:
                if not v.is_integer():
                    raise ValueError(
                        f"Scheduler: the schedule of {key}= reaches {v:g} at step {step}, but "
                        f"{key} is a count (param group {i} held an int when the Scheduler "
                        "was built): schedule it with integral values")
                candidate = int(v)
            if checks is None or name not in checks:
                continue  # nothing more to check for this key and group
            if index is not None:
                items = list(group[name])
                items[index] = v
                candidate = tuple(items)
            try:
                if last is not None and candidate == last:
                    continue
            except RuntimeError:  # tensors among them: compared element-wise
                pass
            last = candidate
            try:
                type(optimizer)._validated(  # type: ignore[attr-defined]
                    f"{type(optimizer).__name__} param group {i}", {name: candidate},
                    group=True)
            except (ValueError, TypeError) as exc:
                raise ValueError(
                    f"Scheduler: the schedule of {key}= reaches {v:g} at step {step}, "
                    f"which the optimizer refuses: {exc}") from exc


def _write_target(target: tuple[str, int | None], group: dict[str, Any],
                  value: float) -> None:
    name, index = target
    if index is None:
        current = group[name]
        if type(current) is float:  # the common case, every step
            group[name] = value
        else:
            _write(group, name, value)
        return
    items = list(group[name])
    if isinstance(items[index], torch.Tensor):
        items[index].fill_(value)
    else:
        items[index] = value
    group[name] = tuple(items)
