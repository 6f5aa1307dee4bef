"""``lrkit.loop``: the one training step (and loop) that every driver uses.

The range test (``find_lr``), the autopilot (its probes and its run), the arena
(``lrkit.bench.train``) and the tuning objectives all make their updates here, so that
closures, schedule-free eval switching, accumulation, AMP and the divergence guard are
written once:

- ``Step(model, optimizer, compute)``: one update on the mean gradient of a list of
  micro-batches (gradient accumulation). ``compute(model, batch)`` is the loss of a batch:
  a user's ``step_fn``, or ``batch_loss(loss_fn)`` for ``(inputs, targets)`` batches.

  *Plain* (``closure=False``): forward (and backward) every micro-batch, then check the
  mean loss (the guard, then finiteness: no update at a non-finite loss), then
  ``optimizer.step()``. *Closure* (``closure=True``, for optimizers that re-evaluate the
  loss, such as SLS or L-BFGS, and for any torch optimizer): ``optimizer.step(closure)``,
  the closure computing the mean loss and, where gradients are enabled, clearing and
  computing the gradients (a line search re-evaluates it under ``torch.no_grad()``); the
  guard checks its first evaluation, before the optimizer moves. With a
  ``torch.amp.GradScaler`` the backward passes are scaled and the update goes through
  ``scaler.step``/``scaler.update`` (a scaler refuses closures, so the closure is called
  once, then the scaler steps). ``autocast=torch.bfloat16`` (or float16) runs each
  forward under ``torch.autocast``; ``device`` moves every batch there.
- ``Loop(step, scheduler)``: runs steps from an endless batch stream, advancing the
  ``lrkit.Scheduler`` (the one writer of param-group learning rates) after each update,
  recording every step's loss and learning rate, resuming from the restored step when the
  guard rolls back, and stopping at a non-finite loss or when ``on_step`` says so.
- ``averaged(optimizer)``: a schedule-free optimizer's averaged weights in place (its
  ``eval()``), switched back after; ``evaluating(model)``: eval mode without gradients.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from lrkit import _checks as C

Compute = Callable[[torch.nn.Module, Any], torch.Tensor]


class Guard(Protocol):
    """What a step needs of ``lrkit.DivergenceGuard``: ``check(loss)`` is False after a
    rollback (the state restored, the learning rate backed off)."""

    def check(self, loss: torch.Tensor | float) -> bool: ...


class _RolledBack(Exception):
    """The guard restored an earlier state while the optimizer evaluated its closure."""


# -- the loss of a batch ---------------------------------------------------------------
def batch_loss(loss_fn: Callable[[Any, Any], torch.Tensor], fn: str = "train") -> Compute:
    """``compute(model, batch) = loss_fn(model(inputs), targets)`` for a batch ``(inputs,
    targets)``; any other batch raises a TypeError naming ``fn`` and ``step_fn``."""
    if not callable(loss_fn):
        raise TypeError(f"batch_loss(): loss_fn must be a function (outputs, targets) -> "
                        f"loss, got {type(loss_fn).__name__}")
    fn = C.text("batch_loss()", "fn", fn)

    def compute(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        inputs, targets = C.batch_pair(fn, batch)
        return loss_fn(model(inputs), targets)

    return compute


def _to_device(batch: Any, device: torch.device | None) -> Any:
    """``batch`` (a tensor, or dicts, lists and tuples of them) moved to ``device``."""
    if device is None:
        return batch
    if torch.is_tensor(batch):
        return batch.to(device)
    if isinstance(batch, dict):
        return type(batch)((k, _to_device(v, device)) for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        items = [_to_device(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)
    return batch


def endless(loader: Iterable[Any], fn: str = "train") -> Iterator[Any]:
    """The batches of ``loader`` for ever, re-iterating it when it runs out (an empty one
    raises a ValueError naming ``fn``)."""
    C.iterable("endless()", "loader", loader)
    return _endless(loader, C.text("endless()", "fn", fn))


#: a split holds batches out only where the rest keeps at least this many times as many
HELD_OUT_RATIO = 8


def held_indices(size: int, n: int, batch_size: int,
                 seed: int = 0) -> tuple[list[list[int]], list[int]] | None:
    """``n`` batches of ``batch_size`` example indices out of ``size``, drawn at random
    (``seed``), and the other indices in order; None where those would be fewer than
    ``HELD_OUT_RATIO`` times the held ones (a small dataset is better used whole)."""
    fn = "held_indices()"
    size = C.nonnegative_int(fn, "size", size)
    n, batch_size = C.positive_int(fn, "n", n), C.positive_int(fn, "batch_size", batch_size)
    seed = C.nonnegative_int(fn, "seed", seed)
    need = n * batch_size
    if size - need < HELD_OUT_RATIO * need:
        return None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    return ([order[j * batch_size:(j + 1) * batch_size] for j in range(n)],
            sorted(order[need:]))


def split_held(loader: Iterable[Any], n: int,
               seed: int = 0) -> tuple[list[Any], Iterable[Any]] | None:
    """``n`` batches of ``loader``'s data and a loader over the rest of it (a search can
    train on the rest and score on the held batches, which it then has never seen), or
    None where that cannot be done without changing what the loader is:

    - a ``torch.utils.data.DataLoader`` over a map-style dataset with automatic batching,
      a random or sequential sampler: ``n * batch_size`` examples drawn at random
      (``seed``) are collated into the held batches, and the rest is loaded as ``loader``
      loads (same batch size, shuffling and the sampler's generator, collate_fn, workers,
      drop_last, the loader's generator);
    - a list or tuple of batches: the last ``n`` are held;
    - an object with a ``split_held(n, seed)`` method (``lrkit.bench``'s streams): its
      answer.

    None too where the rest would be less than ``HELD_OUT_RATIO`` times the held part
    (a small dataset is better used whole), and for every other iterable (a generator, an
    iterable dataset, a custom sampler): their held batches can only come from the stream
    itself."""
    fn = "split_held()"
    C.iterable(fn, "loader", loader)
    n = C.positive_int(fn, "n", n)
    seed = C.nonnegative_int(fn, "seed", seed)
    from torch.utils.data import (
        BatchSampler,
        DataLoader,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
        Subset,
    )

    if isinstance(loader, DataLoader):
        ds, bs = loader.dataset, loader.batch_size
        if (isinstance(ds, IterableDataset) or bs is None or not hasattr(ds, "__len__")
                or type(loader.sampler) not in (RandomSampler, SequentialSampler)
                or type(loader.batch_sampler) is not BatchSampler
                or getattr(loader.sampler, "replacement", False)
                or getattr(loader.sampler, "num_samples", len(ds)) != len(ds)):
            return None
        picked = held_indices(len(ds), n, bs, seed)
        if picked is None:
            return None
        held = [loader.collate_fn([ds[i] for i in batch]) for batch in picked[0]]
        extra = {"prefetch_factor": loader.prefetch_factor} if loader.num_workers else {}
        extra.update({k: getattr(loader, k) for k in ("in_order", "pin_memory_device")
                      if hasattr(loader, k)})  # newer torch's arguments
        kept = Subset(ds, picked[1])
        sampler = RandomSampler(kept, generator=loader.sampler.generator) \
            if isinstance(loader.sampler, RandomSampler) else SequentialSampler(kept)
        rest = DataLoader(
            kept, batch_size=bs, sampler=sampler, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
            drop_last=loader.drop_last, timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn, generator=loader.generator,
            persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context, **extra)
        return held, rest
    if isinstance(loader, (list, tuple)):
        if len(loader) - n < HELD_OUT_RATIO * n:
            return None
        return list(loader[len(loader) - n:]), list(loader[:len(loader) - n])
    split = getattr(loader, "split_held", None)
    return split(n, seed) if callable(split) else None


def _endless(loader: Iterable[Any], fn: str) -> Iterator[Any]:
    seen = 0
    while True:
        empty = True
        for batch in loader:
            empty = False
            seen += 1
            yield batch
        if empty and seen:
            raise ValueError(f"{fn}: loader can be iterated only once (it yielded {seen} "
                             "batches, then none when iterated again, as a generator does): "
                             "pass a list or a DataLoader")
        if empty:
            raise ValueError(f"{fn}: loader yields no batches")


# -- eval mode ---------------------------------------------------------------------------
def has_modes(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` keeps two sets of weights behind ``train()``/``eval()``
    (schedule-free)."""
    _optimizer("has_modes()", optimizer)
    return callable(getattr(optimizer, "eval", None)) and \
        callable(getattr(optimizer, "train", None))


def averaged(optimizer: torch.optim.Optimizer) -> contextlib.AbstractContextManager[None]:
    """A schedule-free optimizer's evaluation weights in place (``optimizer.eval()``),
    its training weights back after (``optimizer.train()``); nothing for other optimizers."""
    return _averaged(_optimizer("averaged()", optimizer))


@contextlib.contextmanager
def _averaged(optimizer: Any) -> Iterator[None]:
    if not has_modes(optimizer):
        yield
        return
    optimizer.eval()
    try:
        yield
    finally:
        optimizer.train()


def evaluating(model: torch.nn.Module) -> contextlib.AbstractContextManager[None]:
    """Eval mode without gradients; every module's train/eval flag restored after."""
    return _evaluating(C.module("evaluating()", "model", model))


@contextlib.contextmanager
def _evaluating(model: torch.nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in modes:
            m.training = flag


def _optimizer(fn: str, optimizer: Any) -> torch.optim.Optimizer:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{fn}: optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    return optimizer


# -- one step ------------------------------------------------------------------------------
@dataclass
class Step:
    """One optimizer update; ``step([batch, ...])`` returns the mean loss before it (a
    float; not finite: a plain step made no update) or None when the guard rolled back.
    See the module docstring for the plain and closure variants."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    compute: Compute
    closure: bool = False
    scaler: torch.amp.GradScaler | None = None
    autocast: torch.dtype | None = None
    device: torch.device | None = None
    guard: Guard | None = None
    name: str = "train"  # the caller, named in error messages

    def __post_init__(self) -> None:
        fn = "Step()"
        C.module(fn, "model", self.model)
        _optimizer(fn, self.optimizer)
        if not callable(self.compute):
            raise TypeError(f"{fn}: compute must be a function (model, batch) -> loss, got "
                            f"{type(self.compute).__name__}")
        C.boolean(fn, "closure", self.closure)
        if self.scaler is not None and not isinstance(self.scaler, torch.amp.GradScaler):
            raise TypeError(f"{fn}: scaler must be a torch.amp.GradScaler or None, got "
                            f"{type(self.scaler).__name__}")
        if self.scaler is not None and (getattr(self.optimizer, "needs_closure", False)
                                        or isinstance(self.optimizer, torch.optim.LBFGS)):
            raise ValueError(
                f"{fn}: scaler cannot be used with {type(self.optimizer).__name__}, which "
                "re-evaluates the loss through a closure (GradScaler.step passes none): pass "
                "scaler=None (autocast=torch.bfloat16 needs no scaler)")
        if self.autocast is not None and self.autocast not in (torch.bfloat16, torch.float16):
            raise (TypeError if not isinstance(self.autocast, torch.dtype) else ValueError)(
                f"{fn}: autocast must be torch.bfloat16, torch.float16 or None, got "
                f"{self.autocast!r}")
        if self.device is not None and not isinstance(self.device, torch.device):
            raise TypeError(f"{fn}: device must be a torch.device or None, got "
                            f"{type(self.device).__name__}")
        if self.guard is not None and not callable(getattr(self.guard, "check", None)):
            raise TypeError(f"{fn}: guard must have check(loss) (a DivergenceGuard) or be "
                            f"None, got {type(self.guard).__name__}")
        C.text(fn, "name", self.name)

    def loss(self, batch: Any) -> torch.Tensor:
        """The loss of one batch (moved to ``device``, under autocast when set), checked to
        be one number."""
        batch = _to_device(batch, self.device)
        if self.autocast is None:
            loss = self.compute(self.model, batch)
        else:
            with torch.autocast(self._device_type(), dtype=self.autocast):
                loss = self.compute(self.model, batch)
        if not torch.is_tensor(loss) or loss.numel() != 1:
            raise TypeError(f"{self.name}: the loss must be a tensor with one element, got "
                            f"{type(loss).__name__}"
                            + (f" of shape {tuple(loss.shape)}" if torch.is_tensor(loss)
                               else ""))
        return loss.reshape(())

    def __call__(self, batches: Sequence[Any]) -> float | None:
        if not batches:
            raise ValueError(f"{self.name}: a step needs at least one batch, got none")
        self.optimizer.zero_grad(set_to_none=True)
        if self.closure:
            return self._closure_step(batches)
        return self._plain_step(batches)

    # -- the two variants --
    def _plain_step(self, batches: Sequence[Any]) -> float | None:
        if len(batches) == 1:  # backward only once the loss passed its checks
            loss = pending = self.loss(batches[0])
        else:  # backward as it goes (one graph at a time), then the checks
            loss, pending = self._accumulate(batches, backward=True), None
        if self.guard is not None and not self.guard.check(loss):
            return None
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        if pending is not None:
            self._backward(pending)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return value

    def _closure_step(self, batches: Sequence[Any]) -> float | None:
        first: list[float] = []

        def closure() -> torch.Tensor:
            grad = torch.is_grad_enabled()
            if grad:
                self.optimizer.zero_grad(set_to_none=True)
            loss = self._accumulate(batches, backward=grad)
            if not first:
                first.append(float(loss.detach()))
                if self.guard is not None and not self.guard.check(loss):
                    raise _RolledBack
            return loss

        try:
            if self.scaler is None:
                returned = self.optimizer.step(closure)
            else:  # GradScaler refuses closures
                returned = closure()
                self.scaler.step(self.optimizer)
                self.scaler.update()
        except _RolledBack:
            return None
        if first:
            return first[0]
        return float(returned.detach() if torch.is_tensor(returned) else returned)

    # -- helpers --
    def _accumulate(self, batches: Sequence[Any], backward: bool) -> torch.Tensor:
        """The mean loss of ``batches``: the loss itself for one batch (its graph kept),
        else the detached sum of ``loss / len(batches)``, each part's backward done."""
        if len(batches) == 1:
            loss = self.loss(batches[0])
            if backward:
                self._backward(loss)
            return loss
        total: torch.Tensor | None = None
        for batch in batches:
            part = self.loss(batch) / len(batches)
            if backward:
                self._backward(part)
            part = part.detach()
            part = part.to(torch.promote_types(part.dtype, torch.float32))
            total = part if total is None else total + part
        assert total is not None
        return total

    def _backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def _device_type(self) -> str:
        if self.device is not None:
            return self.device.type
        for p in self.model.parameters():
            return p.device.type
        return "cpu"


# -- the loop ------------------------------------------------------------------------------
OnStep = Callable[[int, float, float], Any]


@dataclass
class Loop:
    """Steps from a batch stream with a schedule: ``loop.run(batches, steps, on_step)``.

    ``scheduler`` (an ``lrkit.Scheduler``, or None: the optimizer's own learning rate)
    steps after every update; the position is its step count, so a guard rollback (which
    restores the scheduler) resumes from the restored step, the record being cut back to
    it. ``accumulate`` batches make one update. ``losses`` holds the loss of every step
    (with the non-finite one that stopped the run), ``lrs`` the learning rate of group 0
    each update used, ``updates`` the updates made (those rolled back later included).
    ``nonfinite_errors``: exceptions of a step that count as a non-finite loss (an
    optimizer refusing one: ``FloatingPointError``).
    """

    step: Step
    scheduler: Any = None
    accumulate: int = 1
    nonfinite_errors: tuple[type[BaseException], ...] = ()
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    updates: int = field(default=0, init=False)
    diverged: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        fn = "Loop()"
        if not isinstance(self.step, Step):
            raise TypeError(f"{fn}: step must be an lrkit.loop.Step, got "
                            f"{type(self.step).__name__}")
        if self.scheduler is not None and not (
                callable(getattr(self.scheduler, "step", None))
                and hasattr(self.scheduler, "last_epoch")):
            raise TypeError(f"{fn}: scheduler must be an lrkit.Scheduler or None, got "
                            f"{type(self.scheduler).__name__}")
        self.accumulate = C.positive_int(fn, "accumulate", self.accumulate)
        if not isinstance(self.nonfinite_errors, tuple) or not all(
                isinstance(e, type) and issubclass(e, BaseException)
                for e in self.nonfinite_errors):
            raise TypeError(f"{fn}: nonfinite_errors must be a tuple of exception classes, "
                            f"got {self.nonfinite_errors!r:.60}")
        for name in ("losses", "lrs"):
            if not isinstance(getattr(self, name), list):
                raise TypeError(f"{fn}: {name} must be a list (it is appended to), got "
                                f"{type(getattr(self, name)).__name__}")

    @property
    def position(self) -> int:
        """Steps done: the scheduler's count, else the recorded losses."""
        if self.scheduler is not None:
            return int(self.scheduler.last_epoch)
        return len(self.lrs)

    def lr(self) -> float:
        """The learning rate of param group 0 now."""
        if self.scheduler is not None:
            return float(self.scheduler.get_last_lr()[0])
        value = self.step.optimizer.param_groups[0]["lr"]
        return float(value.item() if torch.is_tensor(value) else value)

    def run(self, batches: Iterator[Any], steps: int,
            on_step: OnStep | None = None) -> bool:
        """Step until ``steps`` steps are done (True), a loss is not finite (False,
        ``diverged``) or ``on_step(step, loss, lr)`` returns False (False)."""
        while self.position < steps:
            lr = self.lr()
            micro = [next(batches) for _ in range(self.accumulate)]
            try:
                value = self.step(micro)
            except self.nonfinite_errors:
                value = math.nan
            if value is None:  # rolled back: the record resumes from the restored step
                del self.losses[self.position:], self.lrs[self.position:]
                continue
            self.losses.append(value)
            if not math.isfinite(value):
                self.diverged = True
                return False
            self.updates += 1
            if self.scheduler is not None:
                self.scheduler.step()
            self.lrs.append(lr)
            if on_step is not None and on_step(self.position, value, lr) is False:
                return False
        return True
