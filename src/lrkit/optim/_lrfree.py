"""What the learning-rate-free, schedule-free and line-search optimizers share.

``StandInOptimizer`` is a stand-in for ``LrkitOptimizer`` (the optimizers issue), which will
own the ``step(closure)`` template, ``nonfinite=`` handling and the ``impl=`` switch. Moving
onto it means: derive ``SharedDOptimizer`` and the other optimizers from it, delete
``StandInOptimizer`` and ``handle_nonfinite``, and keep each subclass's ``_step`` /
``_adapt`` (and ``_can_step``) as they are.

The other helpers state the rules of a *shared* step size: Prodigy and D-Adaptation keep one
``d`` for all param groups (as their authors' packages do), so the hyperparameters that shape
``d`` must agree across groups, and a group's ``lr`` may only be the common value or 0.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

from lrkit import _checks as C

IMPLS = ("auto", "reference", "fast")
# The fast paths update state with in-place multi-tensor (_foreach_*) ops, and create each
# temporary one tensor at a time: a list of fresh full-size temporaries costs more than the
# arithmetic on a CPU (measured: _foreach_sqrt over 10 x 1M floats 42 ms, the same
# per tensor 8.6 ms: page faults), and keeps peak memory at one tensor's worth.
NONFINITE = ("raise", "skip", "zero")


class DEstimateWarning(UserWarning):
    """A learning-rate-free step-size estimate (``d``) has stalled.

    Turn it into an error with ``warnings.simplefilter("error", DEstimateWarning)``.
    """


class StandInOptimizer(torch.optim.Optimizer):
    """Minimal ``step(closure)`` template; replaced by ``LrkitOptimizer`` (issue 3).

    Subclasses implement ``_step()`` (runs under ``torch.no_grad()``), may override
    ``_can_step()`` to refuse a step before the closure runs, and list their argument checks
    in ``_checks`` (name -> check(fn, name, value) returning the canonical value); those run
    on the constructor's arguments and on every param group's own options.
    """

    _checks: dict[str, Callable[[str, str, Any], Any]] = {}

    def __init__(self, params, defaults: dict[str, Any], *, nonfinite: str, impl: str) -> None:
        fn = f"{type(self).__name__}()"
        self.nonfinite = C.choice(fn, "nonfinite", nonfinite, NONFINITE)
        self.impl = C.choice(fn, "impl", impl, IMPLS)
        defaults.update(self._validated(fn, defaults))
        super().__init__(params, defaults)

    @classmethod
    def _validated(cls, fn: str, values: dict[str, Any]) -> dict[str, Any]:
        return {k: cls._checks[k](fn, k, v) for k, v in values.items() if k in cls._checks}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        fn = f"{type(self).__name__}() param group {len(self.param_groups)}"
        param_group.update(self._validated(fn, param_group))
        super().add_param_group(param_group)

    @property
    def fast(self) -> bool:
        """True when the multi-tensor path runs (``impl`` "fast", or "auto")."""
        return self.impl != "reference"

    def _can_step(self) -> None:
        """Raise when a step is not allowed now (schedule-free optimizers in eval mode)."""

    def _step(self) -> None:
        raise NotImplementedError

    def step(self, closure: Callable[[], Any] | None = None):
        self._can_step()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if handle_nonfinite(type(self).__name__ + ".step()", self.nonfinite, grads):
            with torch.no_grad():
                self._step()
        return loss


class SharedDOptimizer(StandInOptimizer):
    """Prodigy and D-Adaptation: one estimate ``d`` for every param group, kept in each
    group (``d``, ``d0``, ``k``, ...) as the authors' packages do, and the stall guard: if
    ``d`` still equals ``d0`` after ``d_stall_steps`` calls of ``step()``, one
    ``DEstimateWarning`` says why (``None`` turns the check off).
    """

    def __init__(self, params, defaults: dict[str, Any], *, nonfinite: str, impl: str,
                 d_stall_steps: int | None) -> None:
        fn = f"{type(self).__name__}()"
        C.positive(fn, "lr", defaults["lr"])  # a group may have lr=0 (frozen); not all
        self.d_stall_steps = optional_steps(fn, "d_stall_steps", d_stall_steps)
        self._calls = 0
        self._stall_warned = False
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _adapt(self) -> None:
        """One step: the d sums, the new d, the parameter update."""
        raise NotImplementedError

    def _step(self) -> None:
        self._adapt()
        self._calls += 1
        group = self.param_groups[0]
        if self.d_stall_steps and not self._stall_warned \
                and self._calls >= self.d_stall_steps and group["d"] <= group["d0"]:
            self._stall_warned = True
            warnings.warn(stall_warning(f"{type(self).__name__}.step()", self._calls, group),
                          DEstimateWarning, stacklevel=4)

    def _fsdp_check(self, params: Iterable[torch.Tensor]) -> None:
        no_distributed(f"{type(self).__name__}.step()",
                       any(hasattr(p, "_fsdp_flattened") for p in params))


def handle_nonfinite(fn: str, policy: str, grads: Sequence[torch.Tensor]) -> bool:
    """Apply the ``nonfinite`` policy to the gradients; False means: skip this step.

    Temporary (one multi-tensor read of every gradient, one host sync per step): a norm is
    nan or inf when an entry is (or, for float32 and wider, when the gradient is so large
    that its norm overflows; half precision is measured in float32, where it cannot). The
    base class replaces it.
    """
    if not grads:
        return True
    half = (torch.float16, torch.bfloat16)
    if any(g.dtype in half for g in grads):
        norms = [g.norm(dtype=torch.float32) if g.dtype in half else g.norm() for g in grads]
    else:
        norms = torch._foreach_norm(grads, 2)
    devices = {n.device for n in norms}
    finite = torch.stack(norms if len(devices) == 1 else
                         [n.to(norms[0].device) for n in norms]).isfinite()
    if bool(finite.all()):
        return True
    if policy == "raise":
        bad = int((~finite).sum())
        raise FloatingPointError(
            f"{fn}: non-finite gradient (nan or inf) in {bad} of {len(grads)} parameter "
            "tensor(s); pass nonfinite='skip' to skip such steps or 'zero' to zero those entries")
    if policy == "zero":
        for g, ok in zip(grads, finite.tolist()):
            if not ok:
                g.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
        return True
    return False


# ----------------------------------------------------------------------- argument checks
def betas(fn: str, value: Any, name: str = "betas") -> tuple[float, float]:
    items = C.sequence(fn, name, value)
    if len(items) != 2:
        raise ValueError(f"{fn}: {name} must be a pair (beta1, beta2), got {value!r}")
    return tuple(C.in_range(fn, f"{name}[{i}]", b, 0.0, 1.0, high_open=True)
                 for i, b in enumerate(items))


def growth_rate(fn: str, value: Any) -> float:
    """A factor >= 1, or inf (no limit on the growth of d)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == math.inf:
        return math.inf
    v = C.real(fn, "growth_rate", value)
    if v < 1:
        raise ValueError(f"{fn}: growth_rate must be >= 1 (or inf), got {value!r}")
    return v


def optional_steps(fn: str, name: str, value: Any) -> int | None:
    return None if value is None else C.positive_int(fn, name, value)


def no_distributed(fn: str, fsdp_in_use: Any) -> bool:
    if C.boolean(fn, "fsdp_in_use", fsdp_in_use):
        raise NotImplementedError(
            f"{fn}: fsdp_in_use=True (a d estimate summed over sharded parameters) is not "
            "supported yet; lrkit adds distributed reductions with the distributed issue")
    return False


# ------------------------------------------------------------------- a shared step size
def shared_lr(fn: str, groups: Sequence[dict]) -> float:
    """The common lr of the groups sharing one d; each group's lr is it or 0 (frozen)."""
    lrs = [float(g["lr"]) for g in groups]
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


def global_sums(values: Sequence[float]) -> list[float]:
    """Sum per-process partial sums over all processes: the d estimate's global reduction.

    Single process today: the identity. The distributed issue adds one all-reduce here.
    """
    return [float(v) for v in values]


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


def to_host(*parts: list) -> list[list[float]]:
    """Per-tensor statistics (Python floats, or 0-dim tensors) as Python floats.

    One host sync for all of them. The caller then sums them in Python in the authors'
    order: the d estimates amplify rounding differences a millionfold over 100 steps, so
    the fast path must round exactly like the reference.
    """
    tensors = [v for part in parts for v in part if isinstance(v, torch.Tensor)]
    if not tensors:
        return [[float(v) for v in part] for part in parts]
    device = tensors[0].device
    values = iter(torch.stack([t.to(device=device, dtype=torch.float64)
                               for t in tensors]).tolist())
    return [[next(values) if isinstance(v, torch.Tensor) else float(v) for v in part]
            for part in parts]


def ordered_sum(values: Iterable[float], start: float = 0.0) -> float:
    """Left-to-right float sum, as the authors' ``x += ...`` loops round (Python 3.12's
    ``sum()`` compensates, so it would not)."""
    total = start
    for v in values:
        total += v
    return total


def params_with_grad(group: dict) -> list[torch.Tensor]:
    return [p for p in group["params"] if p.grad is not None]
