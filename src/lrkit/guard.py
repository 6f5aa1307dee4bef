"""``lrkit.DivergenceGuard``: roll back and back off when the loss explodes.

One bad batch, an over-eager learning rate or a numerical accident can turn the loss
into NaN or a spike that wipes out hours of training. The guard watches the loss, keeps
the last good state in memory, and on trouble restores it, multiplies the learning rate
by ``backoff`` and lets training resume; if that keeps happening it stops the run with a
summary instead of burning compute on a dead model.

The state it keeps is an in-memory snapshot (``lrkit._snapshot``, the one the range test
restores from): every parameter, gradient and buffer, the optimizer's state and settings,
copied to host memory and restored into the same tensor objects, so it works with any
torch optimizer (and with ``ZeroRedundancyOptimizer``'s local one); the scheduler is
restored from its ``state_dict()``.
"""
from __future__ import annotations

import copy
import logging
import math
import numbers
import statistics
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lrkit import _checks as C
from lrkit._snapshot import Snapshot
from lrkit.scheduler import scale_lr

log = logging.getLogger("lrkit.guard")
RISE_BLOCK = 50  # losses per median of the sustained-rise rule


class DivergenceError(RuntimeError):
    """Raised when the guard has backed off ``max_retries`` times without recovering."""


@dataclass
class GuardEvent:
    """One intervention of the guard."""

    step: int  # the 0-based index of the loss among those checked: a loop's own step
    kind: str  # "nonfinite", "spike" or "rise"
    loss: float
    median: float  # the recent median the loss was compared with (nan when none yet)
    restored_to: int  # the step whose starting state was restored
    lr_factor: float  # the total factor on the learning rate after this event

    def describe(self) -> str:
        what = {"nonfinite": "non-finite loss",
                "spike": f"loss spike {self.loss:.4g} (recent median {self.median:.4g})",
                "rise": f"sustained rise: the median of the last losses, {self.loss:.4g}, "
                        f"gave back most of the progress (best {self.median:.4g})"}[self.kind]
        return (f"step {self.step}: {what}; restored the state of step {self.restored_to}, "
                f"learning rate x{self.lr_factor:.4g}")


class DivergenceGuard:
    """Watch the loss; on a non-finite loss or a spike, restore the last good state and back off.

    Usage, in any training loop::

        guard = lrkit.DivergenceGuard(model, optimizer, scheduler)
        for x, y in loader:
            loss = loss_fn(model(x), y)
            if not guard.check(loss):   # state restored and lr backed off: skip this batch
                continue
            optimizer.zero_grad(); loss.backward(); optimizer.step(); scheduler.step()

    A loss is bad when it is not finite, or when it is a spike: above ``spike`` times the
    median m of the last ``window`` good losses (checked once ``min_history`` losses are
    known). With ``spread=k`` a spike must also exceed m + k (M - m), M the largest of those
    losses: a bound that scales with the noise, so that minibatch losses whose ordinary
    spread reaches 3x their median (a noisy objective near its minimum, where single
    batches' losses vary by orders of magnitude) are not mistaken for divergence, while on a
    smooth curve (M close to m) the rule stays ``spike`` times the median. Every
    ``snapshot_every`` good losses (default ``window``) the guard copies the model, optimizer
    and scheduler state in memory; that copy is the state it restores. After a restore the
    learning rate is multiplied by ``backoff`` once more than the snapshot had it: through
    ``lrkit.Scheduler.scale_lr`` when the scheduler is lrkit's (the schedule keeps its
    shape), else by scaling every param group's lr (and a torch scheduler's ``base_lrs``).
    ``max_retries`` consecutive interventions without a new good snapshot in between raise
    ``DivergenceError`` with a summary. ``events`` and ``summary()`` report what it did,
    and each intervention is logged (logger ``lrkit.guard``, level WARNING).

    In a multi-process run (``torch.distributed`` initialised, more than one process) the
    loss each rank checks is first averaged over all ranks (one all-reduce of two numbers),
    so every rank makes the same decision and restores together; each rank keeps its own
    snapshot (its own shards, under FSDP or ZeRO).

    A spike is judged against a positive median: with a loss that can be negative (a
    log-likelihood), only non-finite losses trigger it.

    A run can also fail without any spike: the loss climbs back, step by step, to where
    training started and stays there (a collapse to chance level), while the median of the
    window climbs with it. With ``rise=r`` (default 0.5) the guard also intervenes (kind
    ``"rise"``) when the median of a block of ``RISE_BLOCK`` (50) consecutive good losses
    has given back more than ``r`` of the progress made: it lies above
    ``best + r (start - best)``, ``start`` the median of the first block and ``best`` the
    lowest block median so far, once the loss has fallen to a quarter of its start
    (``best <= start / 4``: blocks of 50 and that margin keep minibatch noise from faking
    either). Snapshots are not taken while the median of the last ``min_history`` losses
    is more than half-way there, so the state restored predates the rise.
    ``rise=None`` turns this off.

    Steps are numbered from 0 in the order the losses are checked: ``GuardEvent.step`` is
    the loop's own step when the loop checks one loss per step from step 0.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any = None,
        spike: float = 3.0,
        window: int = 50,
        backoff: float = 0.5,
        max_retries: int = 3,
        *,
        min_history: int = 10,
        snapshot_every: int | None = None,
        spread: float | None = None,
        rise: float | None = 0.5,
    ) -> None:
        fn = "DivergenceGuard()"
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{fn}: model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"{fn}: optimizer must be a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        if scheduler is not None and not hasattr(scheduler, "state_dict"):
            raise TypeError(f"{fn}: scheduler must have state_dict(), got {scheduler!r}")
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.spike = C.in_range(fn, "spike", spike, 1.0, math.inf, low_open=True)
        self.window = C.positive_int(fn, "window", window)
        self.backoff = C.in_range(fn, "backoff", backoff, 0.0, 1.0, low_open=True,
                                  high_open=True)
        self.max_retries = C.nonnegative_int(fn, "max_retries", max_retries)
        self.min_history = C.positive_int(fn, "min_history", min_history)
        self.spread = None if spread is None else C.in_range(fn, "spread", spread, 0.0,
                                                             math.inf, low_open=True)
        self.rise = None if rise is None else C.in_range(fn, "rise", rise, 0.0, 1.0,
                                                         low_open=True)
        self.snapshot_every = C.positive_int(
            fn, "snapshot_every", self.window if snapshot_every is None else snapshot_every)
        self.steps = 0
        self.events: list[GuardEvent] = []
        self.lr_factor = 1.0
        self._losses: deque[float] = deque(maxlen=self.window)
        self._recent: deque[float] = deque(maxlen=self.min_history)  # snapshot gating
        self._block: list[float] = []  # the rise rule's current block
        self._start = math.nan  # median of the first block
        self._best = math.inf  # lowest block median
        self._retries = 0
        self._since_snapshot = 0
        self._snapshot: dict[str, Any] = {}
        self._take_snapshot(0)

    @staticmethod
    def _global(value: float, loss: Any) -> float:
        """The mean of ``value`` over all ranks (NaN if any rank's is not finite)."""
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
            return value
        device = loss.device if torch.is_tensor(loss) else torch.device("cpu")
        if dist.get_backend() == "nccl" and device.type != "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        finite = math.isfinite(value)
        t = torch.tensor([value if finite else 0.0, 0.0 if finite else 1.0],
                         dtype=torch.float64, device=device)
        dist.all_reduce(t)
        total, bad = t.tolist()
        return math.nan if bad else total / dist.get_world_size()

    # -- public -----------------------------------------------------------------------
    def check(self, loss: torch.Tensor | float) -> bool:
        """True when ``loss`` is healthy (go on and step); False after a rollback."""
        if torch.is_tensor(loss):
            if loss.numel() != 1:
                raise ValueError(f"DivergenceGuard.check(): loss must be one number, got a "
                                 f"tensor of shape {tuple(loss.shape)}")
            value = float(loss.detach().float().item())
        else:
            if isinstance(loss, bool) or not isinstance(loss, numbers.Real):
                raise TypeError(f"DivergenceGuard.check(): loss must be a number or a "
                                f"one-element tensor, got {loss!r:.40}")
            value = float(loss)
        value = self._global(value, loss)
        self.steps += 1
        median = statistics.median(self._losses) if self._losses else math.nan
        if not math.isfinite(value):
            self._intervene("nonfinite", value, median)
            return False
        if len(self._losses) >= self.min_history and value > self._bound(median) and median > 0:
            self._intervene("spike", value, median)
            return False
        self._losses.append(value)
        self._recent.append(value)
        if self.rise is not None:
            self._block.append(value)
            if len(self._block) == RISE_BLOCK:
                block = statistics.median(self._block)
                self._block = []
                if self._above(block, self.rise):
                    self._intervene("rise", block, self._best)
                    self._recent.clear()
                    return False
                if math.isnan(self._start):
                    self._start = block
                self._best = min(self._best, block)
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every and not (
                self.rise is not None and len(self._recent) == self.min_history
                and self._above(statistics.median(self._recent), 0.5 * self.rise)):
            self._take_snapshot(self.steps - 1)  # before this loss's update: its start
        return True

    def _above(self, median: float, fraction: float) -> bool:
        """``median`` gave back more than ``fraction`` of the progress from the first block
        to the best one (never before the loss fell to a quarter of its start)."""
        if not (self._start > 0 and self._best <= self._start / 4):
            return False
        return median > self._best + fraction * (self._start - self._best)

    def threshold(self) -> float:
        """The loss above which the next one counts as a spike (inf until ``min_history``
        good losses are known): ``spike * m``, or with ``spread=k`` max(spike * m,
        m + k (M - m)), m the median and M the largest of the recent good losses."""
        if len(self._losses) < self.min_history:
            return math.inf
        return self._bound(statistics.median(self._losses))

    def _bound(self, median: float) -> float:
        """``threshold()`` given the median of the recent good losses."""
        if self.spread is None:
            return self.spike * median
        return max(self.spike * median, median + self.spread * (max(self._losses) - median))

    def summary(self) -> str:
        if not self.events:
            return f"DivergenceGuard: {self.steps} losses checked, no intervention"
        lines = [f"DivergenceGuard: {len(self.events)} intervention(s) in {self.steps} losses; "
                 f"learning rate now x{self.lr_factor:.4g}"]
        lines += ["  " + e.describe() for e in self.events]
        return "\n".join(lines)

    def state_dict(self, snapshot: bool = False) -> dict[str, Any]:
        """The guard's counters and history, for checkpoints; with ``snapshot=True`` also
        the state it would restore (the model's and the optimizer's ``state_dict()`` and
        the scheduler's, as they were when the guard took it: about the size of a
        checkpoint of the model and optimizer again).

        What a resume from it keeps exact (``load_state_dict`` into fresh objects): the
        losses checked, the events, the learning-rate factor and the steps at which the
        next snapshots are taken, always; a rollback after the resume point is bit for bit
        that of the uninterrupted run once the guard has taken its first snapshot after
        the resume, and before that only with ``snapshot=True`` (without it, such a
        rollback restores the state at the resume point instead of the earlier snapshot).
        Gradients are not saved: a rollback from a saved snapshot leaves none (a step
        computes them afresh)."""
        state = {"steps": self.steps, "lr_factor": self.lr_factor, "retries": self._retries,
                 "losses": list(self._losses), "events": [asdict(e) for e in self.events],
                 "recent": list(self._recent), "block": list(self._block),
                 "start": self._start, "best": self._best,
                 "since_snapshot": self._since_snapshot}
        if C.boolean("DivergenceGuard.state_dict()", "snapshot", snapshot):
            snap = self._snapshot
            training = snap["training"]
            if isinstance(training, _SavedState):  # loaded so, and not replaced since
                model, opt = training.model_state, training.optimizer_state
            else:  # the snapshot's values in place, read out, then the current ones back
                live = Snapshot(self.model, self.optimizer, rng=False)
                try:
                    training.restore()
                    model = self.model.state_dict()
                    opt = self.optimizer.state_dict()
                    model, opt = copy.deepcopy(model), copy.deepcopy(opt)
                finally:
                    live.restore()
            state["snapshot"] = {"step": snap["step"], "lr_factor": snap["lr_factor"],
                                 "model": model, "optimizer": opt,
                                 "scheduler": copy.deepcopy(snap["scheduler"])}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and history, and the snapshot where ``state`` holds one
        (``state_dict(snapshot=True)``); otherwise snapshot the current state, so load the
        model, optimizer and scheduler first. The snapshots go on at the saved cadence
        (a ``state`` from before it was saved restarts it here)."""
        fn = "DivergenceGuard.load_state_dict()"
        if not isinstance(state, dict):
            raise TypeError(f"{fn}: state must be a dict (from state_dict()), got "
                            f"{type(state).__name__}")
        _require(fn, "state", state, ("steps", "lr_factor", "retries", "losses", "events"))
        steps = C.nonnegative_int(fn, "steps", state["steps"])
        lr_factor = C.positive(fn, "lr_factor", state["lr_factor"])
        retries = C.nonnegative_int(fn, "retries", state["retries"])
        since = C.nonnegative_int(fn, "since_snapshot", state.get("since_snapshot", 0))
        losses = [C.real(fn, f"losses[{i}]", v) for i, v in enumerate(
            C.sequence(fn, "losses", state["losses"]))]
        try:
            events = [GuardEvent(**e) for e in C.sequence(fn, "events", state["events"])]
        except TypeError as exc:
            raise TypeError(f"{fn}: events: {exc}") from None
        saved = state.get("snapshot")
        snapshot = self._current_snapshot(steps, lr_factor) if saved is None else \
            self._loaded_snapshot(fn, saved)
        self.steps, self.lr_factor = steps, lr_factor
        self._losses = deque(losses, maxlen=self.window)
        self._recent = deque((float(v) for v in state.get("recent", ())),
                             maxlen=self.min_history)  # absent from older checkpoints
        self._block = [float(v) for v in state.get("block", ())]
        self._start = float(state.get("start", math.nan))
        self._best = float(state.get("best", math.inf))
        self.events = events
        self._snapshot = snapshot
        self._since_snapshot = since
        self._retries = retries

    # -- internals --------------------------------------------------------------------
    def _take_snapshot(self, step: int) -> None:
        """Keep the current state, the starting state of loss ``step`` (0-based)."""
        self._snapshot = self._current_snapshot(step, self.lr_factor)
        self._since_snapshot = 0
        self._retries = 0  # a good stretch since the last intervention: recovered

    def _current_snapshot(self, step: int, lr_factor: float) -> dict[str, Any]:
        return {
            "step": step,
            "lr_factor": lr_factor,
            "training": Snapshot(self.model, self.optimizer, rng=False),
            "scheduler": None if self.scheduler is None else copy.deepcopy(
                self.scheduler.state_dict()),
        }

    def _loaded_snapshot(self, fn: str, saved: Any) -> dict[str, Any]:
        """The snapshot ``state_dict(snapshot=True)`` saved, checked to load into the model
        and optimizer (a state that does not fit raises, naming it, and changes nothing)."""
        if not isinstance(saved, dict):
            raise TypeError(f"{fn}: snapshot must be a dict (from state_dict(snapshot=True)), "
                            f"got {type(saved).__name__}")
        _require(fn, "snapshot", saved, ("step", "lr_factor", "model", "optimizer", "scheduler"))
        if (saved["scheduler"] is None) != (self.scheduler is None):
            held = "no" if saved["scheduler"] is None else "a"
            raise ValueError(f"{fn}: the snapshot holds {held} scheduler state, and this "
                             f"guard has {'none' if self.scheduler is None else 'a scheduler'}")
        step = C.nonnegative_int(fn, "snapshot step", saved["step"])
        lr_factor = C.positive(fn, "snapshot lr_factor", saved["lr_factor"])
        training = _SavedState(self.model, self.optimizer, saved["model"], saved["optimizer"])
        live = Snapshot(self.model, self.optimizer, rng=False)
        try:
            training.restore()
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"{fn}: the snapshot does not fit the model or optimizer: "
                             f"{exc}") from exc
        finally:
            live.restore()
        return {"step": step, "lr_factor": lr_factor, "training": training,
                "scheduler": copy.deepcopy(saved["scheduler"])}

    def _intervene(self, kind: str, loss: float, median: float) -> None:
        self._retries += 1
        snap = self._snapshot
        snap["training"].restore()
        if self.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
        self.lr_factor *= self.backoff
        scale_lr(self.optimizer, self.lr_factor / snap["lr_factor"], self.scheduler)
        event = GuardEvent(self.steps - 1, kind, loss, median, snap["step"], self.lr_factor)
        self.events.append(event)
        log.warning("%s", event.describe())
        self._since_snapshot = 0
        if self._retries > self.max_retries:
            raise DivergenceError(
                f"training kept diverging: {self._retries} interventions in a row without "
                f"recovering (max_retries={self.max_retries})\n{self.summary()}")


def _require(fn: str, what: str, d: dict, keys: tuple[str, ...]) -> None:
    """Refuse a saved dict that lacks any of ``keys``, naming them."""
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{fn}: {what} lacks {', '.join(map(repr, missing))}")


class _SavedState:
    """A snapshot loaded from a checkpoint: the model's and optimizer's state dicts,
    restored by their ``load_state_dict`` (gradients cleared: they were not saved)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 model_state: Any, optimizer_state: Any) -> None:
        self.model, self.optimizer = model, optimizer
        self.model_state = copy.deepcopy(model_state)
        self.optimizer_state = copy.deepcopy(optimizer_state)

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        self.optimizer.load_state_dict(copy.deepcopy(self.optimizer_state))
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                p.grad = None
