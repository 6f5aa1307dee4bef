"""What the learning-rate-free, schedule-free and line-search optimizers share.

:class:`GlobalStepOptimizer` is an ``LrkitOptimizer`` whose step is not one update per
param group: Prodigy, D-Adaptation and DoG need sums over every parameter (a global ``d``
or step size) before they may move any weight, schedule-free keeps a step counter per
group, and all of them read those quantities on the host every step (so ``torch.compile``
runs their step eagerly). The base class still screens the gradients (``nonfinite=``),
initialises the state and records the hyperparameters of the step; the subclass's
``_global_step(plans)`` does the rest, choosing per tensor between lrkit's kernel (dense
CPU float32/float64), the readable reference and a multi-tensor ``foreach`` path.

**Sharded parameters** (``sharded=``). With ``torch.distributed`` initialised, the sums
are all-reduced (a sum of per-process partial sums, one collective per step) when the
optimizer holds only part of the parameters: under
``ZeroRedundancyOptimizer(params, optimizer_class=lrkit.optim.Prodigy, sharded=True)``
each process owns a subset of the tensors, and every process then computes the ``d`` a
single process would. Under plain DDP the parameters and gradients are replicated, the
local sums already are the global ones, and ``sharded=False`` (the default) must stay:
reducing would count every tensor once per process. ``sharded=True`` reduces over the
default process group, ``sharded=<ProcessGroup>`` over that group (the one given to
ZeroRedundancyOptimizer). Non-finite gradients are then agreed on across processes (one
more small collective), so that every process skips, or raises in, the same step.
"""
from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.errors import NonFiniteGradientError, user_stacklevel
from lrkit.optim import _kernel
from lrkit.optim.base import LrkitOptimizer, check_betas, check_lr, scalar


class DEstimateWarning(UserWarning):
    """A learning-rate-free step-size estimate (``d``) has stalled.

    Turn it into an error with ``warnings.simplefilter("error", DEstimateWarning)``.
    """


class GlobalStepOptimizer(LrkitOptimizer):
    """Base of the optimizers whose step needs quantities over all param groups."""

    has_foreach = True  # ``_global_step`` runs a "foreach" path of its own

    #: argument checks, name -> check(fn, name, value) returning the canonical value: run
    #: on the constructor's arguments and on the options a param group sets itself
    _checks: ClassVar[dict[str, Callable[[str, str, Any], Any]]] = {}
    #: where a param group's own option is checked differently (a group's lr may be 0)
    _group_checks: ClassVar[dict[str, Callable[[str, str, Any], Any]]] = {}

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: str, impl: str,
                 sharded: Any = False) -> None:
        fn = f"{type(self).__name__}()"
        self.sharded = _check_sharded(fn, sharded)
        defaults.update(self._validated(fn, defaults))
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    @classmethod
    def _validated(cls, fn: str, values: dict[str, Any], group: bool = False) -> dict[str, Any]:
        checks = {**cls._checks, **cls._group_checks} if group else cls._checks
        return {k: checks[k](fn, k, v) for k, v in values.items() if k in checks}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        fn = f"{type(self).__name__}() param group {len(self.param_groups)}"
        param_group.update(self._validated(fn, param_group, group=True))
        super().add_param_group(param_group)

    @torch._disable_dynamo
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update; ``closure`` (re-evaluating the loss) runs with gradients enabled."""
        self._check_can_step()
        return super().step(closure)

    def _check_can_step(self) -> None:
        """Raise when a step is not allowed now (schedule-free optimizers in eval mode)."""

    def _step(self) -> None:
        try:
            plans, error = self._prepare(), None
        except NonFiniteGradientError as exc:
            plans, error = None, exc
        group = self._process_group()
        if group is not None and self.nonfinite != "zero":
            found = global_sums([float(plans is None)], group)[0] > 0
            if found and plans is not None:  # another process's gradient
                if self.nonfinite == "raise":
                    raise NonFiniteGradientError(
                        f"{type(self).__name__}.step(): a gradient on another process holds "
                        "NaN or Inf; nothing was changed")
                self.skipped_steps += 1
                return
        if error is not None:
            raise error
        if plans is not None:
            self._global_step(plans)

    def _global_step(self, plans: list) -> None:
        raise NotImplementedError

    def _process_group(self) -> Any:
        """The process group the sums are reduced over, or None (no reduction)."""
        if self.sharded is False:
            return None
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise RuntimeError(
                f"{type(self).__name__}.step(): sharded={self.sharded!r} needs "
                "torch.distributed to be initialised (init_process_group)")
        return torch.distributed.group.WORLD if self.sharded is True else self.sharded

    def _path(self, params: list[Tensor]) -> str:
        """"reference" or "foreach" for tensors the kernel does not take (or all, with
        impl="reference"/"foreach"): as torch, single-tensor on CPU, foreach elsewhere."""
        impl = self.impl
        if torch.compiler.is_compiling():
            return "reference"
        if impl == "kernel":
            return "foreach"
        if impl == "auto":
            return "foreach" if params and all(not p.is_cpu for p in params) else "reference"
        return impl

    def __setstate__(self, state: dict[str, Any]) -> None:
        # the authors' packages count ``step`` in Python ints: keep them as they are
        torch.optim.Optimizer.__setstate__(self, state)
        for group in self.param_groups:
            for k, v in getattr(self, "defaults", {}).items():
                group.setdefault(k, v)


def _check_sharded(fn: str, sharded: Any) -> Any:
    if isinstance(sharded, bool):
        return sharded
    if sharded is not None and type(sharded).__name__ in ("ProcessGroup",
                                                          "ProcessGroupGloo",
                                                          "ProcessGroupNCCL"):
        return sharded
    raise TypeError(f"{fn}: sharded must be True, False or a torch.distributed "
                    f"ProcessGroup, got {sharded!r}")


# ------------------------------------------------------------------ the global sums
def global_sums(values: Sequence[float], group: Any = None) -> list[float]:
    """Per-process partial sums added over the processes of ``group`` (one all-reduce of
    a float64 vector); without a group, the values themselves. Every process must call it
    the same number of times per step: the optimizers call it once, even with nothing to
    add."""
    values = [float(v) for v in values]
    if group is None:
        return values
    import torch.distributed as dist
    device = "cpu"
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    buf = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=group)
    return buf.tolist()


def to_host(*parts: list) -> list[list[float]]:
    """Per-tensor statistics (Python floats, or 0-dim tensors) as Python floats.

    One host sync for all of them. The caller then adds them in Python in the authors'
    order: the d estimates amplify rounding, so every path must add the same per-tensor
    values the same way.
    """
    if all(set(map(type, part)) <= {float} for part in parts):  # the kernel's floats
        return [list(part) for part in parts]
    tensors = [v for part in parts for v in part if isinstance(v, Tensor)]
    if not tensors:
        return [[float(v) for v in part] for part in parts]
    device = tensors[0].device
    values = iter(torch.stack([t.to(device=device, dtype=torch.float64)
                               for t in tensors]).tolist())
    return [[next(values) if isinstance(v, Tensor) else float(v) for v in part]
            for part in parts]


def ordered_sum(values: Iterable[float], start: float = 0.0) -> float:
    """Left-to-right float sum, as the authors' ``x += ...`` loops round (Python 3.12's
    ``sum()`` compensates, so it would not)."""
    total = start
    for v in values:
        total += v
    return total


# ------------------------------------------------------------------- plans, in order
class Work:
    """One param group's tensors of this step, in the group's order, split by path:
    kernel batches (dense CPU float32/float64) and the rest (reference or foreach)."""

    __slots__ = ("index", "group", "params", "grads", "batches", "rest", "rest_grads",
                 "single")

    def __init__(self, plan: tuple) -> None:
        self.index, self.group, self.batches, self.rest, self.rest_grads = plan
        # one kernel batch holding every tensor with a gradient: it is in the group's order
        # (split keeps it), and per-tensor results need no reordering
        self.single = self.batches[0] if len(self.batches) == 1 and not self.rest else None
        if self.single is not None:
            self.params, self.grads = self.single.params, self.single.grads
            return
        in_batches = {id(p): g for b in self.batches for p, g in zip(b.params, b.grads)}
        in_rest = {id(p): g for p, g in zip(self.rest, self.rest_grads)}
        self.params = [p for p in self.group["params"]
                       if id(p) in in_batches or id(p) in in_rest]
        self.grads = [in_batches.get(id(p), in_rest.get(id(p))) for p in self.params]

    def ordered(self, values: dict[int, Any]) -> list[Any]:
        """Per-tensor values (keyed by ``id(param)``) in the group's order."""
        return [values[id(p)] for p in self.params]

    def states(self, opt: Any) -> list[dict]:
        """The state dicts of ``params``, in order (those the kernel batch's memo holds,
        where there is one: no tensor hashed)."""
        if self.single is not None:
            m = self.single.memo
            if m is not None and m.sts is not None:
                return m.sts
        state = opt.state
        return [state[p] for p in self.params]


def kernel_sums(batch: _kernel.Batch, flat: list[float], nout: int) -> dict[int, tuple]:
    """The flat per-tensor sums a kernel pass returned, keyed by ``id(param)``."""
    return {id(p): tuple(flat[nout * i:nout * i + nout]) for i, p in enumerate(batch.params)}


# ------------------------------------------------------------------ argument checks
def lr_check(fn: str, name: str, lr: Any) -> Any:
    """A positive lr: a 1-element tensor (kept as given) or a number (as a float: a
    Fraction or a numpy scalar does not meet tensors in the step's arithmetic)."""
    lr = check_lr(fn, lr)
    C.positive(fn, name, float(lr.detach().reshape(())) if isinstance(lr, Tensor) else lr)
    return lr


def group_lr_check(fn: str, name: str, lr: Any) -> Any:
    """A param group's lr: >= 0 (0 freezes the group)."""
    return check_lr(fn, lr)


def betas(fn: str, name: str, value: Any) -> tuple:
    return tuple(check_betas(fn, value))


def growth_rate(fn: str, name: str, value: Any) -> float:
    """A factor >= 1, or inf (no limit on the growth of d)."""
    v = value.item() if hasattr(value, "item") and getattr(value, "ndim", None) == 0 else value
    if isinstance(v, numbers.Real) and not isinstance(v, bool) and v == math.inf:
        return math.inf  # (also numpy's and a 0-dim tensor's inf)
    v = C.real(fn, "growth_rate", value)
    if v < 1:
        raise ValueError(f"{fn}: growth_rate must be >= 1 (or inf), got {value!r}")
    return v


def optional_steps(fn: str, name: str, value: Any) -> int | None:
    return None if value is None else C.positive_int(fn, name, value)


# ------------------------------------------------------------------- a shared step size
class SharedDOptimizer(GlobalStepOptimizer):
    """Prodigy and D-Adaptation: one estimate ``d`` for every param group, kept in each
    group (``d``, ``d0``, ``k``, ...) as the authors' packages do, and the stall guard: if
    ``d`` still equals ``d0`` after ``d_stall_steps`` calls of ``step()``, one
    ``DEstimateWarning`` says why (``None`` turns the check off).

    Param groups: the sums run over every group; the hyperparameters that shape ``d``
    must agree across groups (checked at each step, with a message naming the key); a
    group's ``lr`` is the common value or 0 (a frozen group: no update at all).
    """

    kernel_exact = False  # the sums are taken in float64: d equal to rounding
    supports_complex = False  # nor do the authors' packages
    _group_checks = {"lr": group_lr_check}

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: str, impl: str,
                 d_stall_steps: int | None, sharded: Any, fsdp_in_use: Any) -> None:
        fn = f"{type(self).__name__}()"
        if C.boolean(fn, "fsdp_in_use", fsdp_in_use) and sharded is False:
            sharded = True  # the authors' switch: reduce over the default process group
        self.d_stall_steps = optional_steps(fn, "d_stall_steps", d_stall_steps)
        self._calls = 0
        self._stall_warned = False
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl, sharded=sharded)

    def _global_step(self, plans: list) -> None:
        self._adapt([Work(plan) for plan in plans])
        self._calls += 1
        group = self.param_groups[0]
        if self.d_stall_steps and not self._stall_warned \
                and self._calls >= self.d_stall_steps and group["d"] <= group["d0"]:
            self._stall_warned = True
            warnings.warn(stall_warning(f"{type(self).__name__}.step()", self._calls, group),
                          DEstimateWarning, stacklevel=user_stacklevel())

    def _adapt(self, work: list[Work]) -> None:
        """One step: the d sums, the new d, the parameter update."""
        raise NotImplementedError

    def _active(self, work: list[Work]) -> list[Work]:
        """The groups that take part in this step (lr > 0)."""
        return [w for w in work if scalar(w.group["lr"]) > 0]

    def _record(self, **values: Any) -> None:
        """What ``explain()`` needs from after the step (the new d), beside the
        hyperparameters the step used."""
        for last in self._last.values():
            last.update(values)

    def estimated_lr(self) -> list[float]:
        raise NotImplementedError


def shared_lr(fn: str, groups: Sequence[dict]) -> float:
    """The common lr of the groups sharing one d; each group's lr is it or 0 (frozen)."""
    lrs = [float(scalar(g["lr"])) for g in groups]
    lr = max(lrs)
    if any(v not in (lr, 0.0) for v in lrs):
        raise ValueError(
            f"{fn}: all param groups share one d estimate, so each group's lr must be the "
            f"common value or 0 (a frozen group), got lr={lrs}; to scale one group's step "
            "use layer_scale (DAdaptAdam) or a separate optimizer")
    return lr


def shared_value(fn: str, groups: Sequence[dict], key: str) -> Any:
    """A hyperparameter that shapes the shared d: the same in every group."""
    values = [g[key] for g in groups]
    if any(v != values[0] for v in values[1:]):
        raise ValueError(
            f"{fn}: all param groups share one d estimate, so {key} must be the same in "
            f"every group, got {key}={values}")
    return values[0]


def stall_warning(fn: str, steps: int, group: dict) -> str:
    d, d0, d_hat = group["d"], group["d0"], group.get("d_hat")
    if d_hat is None:
        why = "no estimate yet: every gradient so far was zero, or every lr was 0"
    elif d_hat < 0:
        why = (f"the last estimate d_hat={d_hat:.3g} is negative: the gradients point away "
               "from the starting point on average")
    else:
        why = f"the last estimate d_hat={d_hat:.3g} is not above d0"
    return (f"{fn}: the step-size estimate d={d:.3g} has not grown from d0={d0:.3g} in "
            f"{steps} steps ({why}). Usual causes: zero or vanishing gradients, d0 so small "
            "that the first updates underflow, or an lr of 0. Raise d0 if it is tiny; if d0 "
            "is a deliberate estimate, pass d_stall_steps=None")


def not_finite(fn: str, what: str) -> FloatingPointError:
    return FloatingPointError(f"{fn}: the d estimate is not finite ({what}); the optimizer "
                              "state has overflowed")
