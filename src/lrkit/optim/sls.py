r"""SLS: SGD whose step length is found at each step by a stochastic Armijo line search.

Vaswani, Mishkin, Laradji, Schmidt, Gidel & Lacoste-Julien, "Painless Stochastic Gradient:
Interpolation, Line-Search, and Convergence Rates" (NeurIPS 2019), arXiv:1905.09997. At each
step, on one minibatch with loss :math:`f` and gradient :math:`g` at :math:`w`, the step
size :math:`\eta` starts from a guess and is multiplied by ``beta`` until the Armijo
condition holds on that same minibatch:

.. math::

    f(w - \eta g) \le f(w) - c\,\eta\,\lVert g\rVert^2, \qquad w \leftarrow w - \eta g.

The next step's guess depends on ``reset``:

* ``"increase"`` (the paper's default): the last accepted :math:`\eta` times
  ``gamma ** (1 / batches_per_epoch)``, so the step size can grow again by a factor
  ``gamma`` per epoch;
* ``"keep"``: the last accepted :math:`\eta` (the step size never grows: fewest evaluations);
* ``"init"``: ``init_lr`` at every step (classic backtracking; most evaluations).

The first step starts from ``init_lr``. At most ``max_backtracks`` reductions are tried
(``max_backtracks + 1`` trial points). If none satisfies the condition the parameters are
left unchanged, ``failed_searches`` counts it, and the next guess continues from the last
(smallest) trial. A zero gradient takes no step. If the closure raises during the search,
the parameters and the random state are put back where the step started (the gradient
left in ``p.grad``) and the step counts nothing before the error propagates, so a caller
may retry it.

The closure computes and returns the minibatch loss; it need not call ``backward()``
(SLS computes the gradient itself and leaves it in ``p.grad``); a closure that does call
``backward()`` works for the first evaluation, but the trial evaluations run under
``torch.no_grad()``, so guard it with ``if torch.is_grad_enabled():``. Every evaluation
sees the same random numbers (dropout masks), and the random stream afterwards is as if the
closure had run once. Modules that change state in a forward pass (BatchNorm's running
statistics) see every trial evaluation.

Non-finite gradients follow ``nonfinite=`` as in every lrkit optimizer (checked after the
first evaluation, before any trial); a non-finite loss raises ``FloatingPointError`` with
``nonfinite="raise"`` and skips the step otherwise (counted in ``skipped_steps``).
``effective_lr()`` is the accepted step size, the same for every element, on the gradient.
SLS does not support sharded parameters (ZeroRedundancyOptimizer, FSDP): the trial points
must move every parameter of the model before the closure re-evaluates it (DTensor
parameters raise NotImplementedError). Under DDP each rank evaluates its part of the batch:
the losses are averaged over the ranks (one all-reduce per evaluation), so every rank
accepts the same step size, as one process would on the whole batch
(``agree_across_ranks = False`` turns this off).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _lrfree as L
from lrkit.optim._distributed import world_size
from lrkit.optim.base import Explained, uniform

RESETS = ("increase", "keep", "init")
_SHARED = ("init_lr", "c", "beta", "gamma", "max_backtracks", "reset", "batches_per_epoch")


class SLS(L.GlobalStepOptimizer):
    """Stochastic Armijo line search (SGD direction).

    After each step: ``last_step_size`` (the accepted step size, 0.0 if none was),
    ``function_evals`` (closure calls in that step), ``total_function_evals`` and
    ``failed_searches``. ``group["lr"]`` mirrors the current step size (SLS writes it; a
    Scheduler writing it has no effect). Param groups share one line search. Non-finite
    gradients follow ``nonfinite``; a non-finite loss raises (``nonfinite="raise"``) or skips
    the step (otherwise).
    """

    needs_closure = True
    lr_free = True  # its step size is ``init_lr``, searched by the line search
    kernel_exact = True

    _checks = {
        "init_lr": C.positive,
        "c": lambda f, n, v: C.in_range(f, n, v, 0.0, 1.0, low_open=True, high_open=True),
        "beta": lambda f, n, v: C.in_range(f, n, v, 0.0, 1.0, low_open=True, high_open=True),
        "gamma": lambda f, n, v: C.in_range(f, n, v, 1.0, math.inf),
        "max_backtracks": C.nonnegative_int, "batches_per_epoch": C.positive_int,
        "reset": lambda f, n, v: C.choice(f, n, v, RESETS),
    }

    def __init__(self, params, init_lr: float = 1.0, c: float = 0.1, beta: float = 0.9,
                 gamma: float = 2.0, max_backtracks: int = 100, reset: str = "increase",
                 batches_per_epoch: int = 500, *, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        init_lr = C.positive("SLS()", "init_lr", init_lr)
        defaults = dict(init_lr=init_lr, c=c, beta=beta, gamma=gamma,
                        max_backtracks=max_backtracks, reset=reset,
                        batches_per_epoch=batches_per_epoch, lr=init_lr, step_size=init_lr, k=0,
                        last_step_size=0.0, function_evals=0, total_function_evals=0,
                        failed_searches=0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)
        self._warned = False

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {}

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        eta, g = hp["accepted"], self._grad(p, hp)
        return Explained(uniform(eta, p.detach()), g, 0.0, -eta * g)

    # ------------------------------------------------------------------- reporting
    @property
    def last_step_size(self) -> float:
        return self.param_groups[0]["last_step_size"]

    @property
    def function_evals(self) -> int:
        return self.param_groups[0]["function_evals"]

    @property
    def total_function_evals(self) -> int:
        return self.param_groups[0]["total_function_evals"]

    @property
    def failed_searches(self) -> int:
        return self.param_groups[0]["failed_searches"]

    def estimated_lr(self) -> list[float]:
        """The last accepted step size, for each param group."""
        return [g["last_step_size"] for g in self.param_groups]

    # ------------------------------------------------------------------------ step
    def _agreed_loss(self, loss: Tensor) -> float:
        """The loss as a number; in a multi-process run (DDP: each rank evaluates its part
        of the batch) the mean over the ranks, in the loss's dtype, so that every rank
        takes the same Armijo decisions, as one process would on the whole batch."""
        loss = loss.detach()
        n = _ranks(self)
        if n == 1:
            return float(loss)
        total = loss.reshape(1).clone()
        torch.distributed.all_reduce(total)
        return float(total / n)

    def _agreed_norm(self, g_sq: float) -> float:
        """||g||^2, the same on every rank (under DDP the gradients are replicated, so it
        already is; the all-reduce keeps the ranks' searches in step regardless)."""
        if _ranks(self) == 1:
            return g_sq
        return _global_max(g_sq)

    @torch._disable_dynamo
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        fn = "SLS.step()"
        self._check_dtensor_supported()  # (its own step: the base class's check is skipped)
        if closure is None:
            raise ValueError(f"{fn}: closure must be a function that re-evaluates the "
                             "minibatch loss, got None")
        groups = self.param_groups
        h = {key: L.shared_value(fn, groups, key) for key in _SHARED}
        first = groups[0]
        params = [p for g in groups for p in g["params"] if p.requires_grad]
        rng = _RandomState(params)

        loss, _ = _loss_and_grads(fn, closure, params)
        rng_after = _RandomState(params)
        f0 = self._agreed_loss(loss)
        if not math.isfinite(f0):
            if self.nonfinite == "raise":
                raise FloatingPointError(f"{fn}: the closure's loss is not finite ({f0}); "
                                         "pass nonfinite='skip' to skip such steps")
            self.skipped_steps += 1
            return loss
        plans = self._prepare()  # the gradients screened for NaN/Inf (raise, skip, zero)
        if plans is None:
            return loss
        params = [p for plan in plans for p in plan[3]]
        grads = [g for plan in plans for g in plan[4]]
        (g_sq,) = L.to_host([(g * g).sum() for g in grads])
        g_sq = self._agreed_norm(L.ordered_sum(g_sq))

        eta = _first_guess(h, first)
        evals, accepted = 1, 0.0
        if g_sq > 0:
            place = _place_reference if self._path(params) == "reference" else _place_foreach
            w0 = [p.detach().clone() for p in params]
            with torch.no_grad():
                try:
                    for trial in range(h["max_backtracks"] + 1):
                        place(params, w0, grads, eta)
                        rng.restore()
                        f = self._agreed_loss(_evaluate(fn, closure))
                        evals += 1
                        if f <= f0 - h["c"] * eta * g_sq:  # Armijo
                            accepted = eta
                            break
                        if trial < h["max_backtracks"]:
                            eta *= h["beta"]
                except BaseException:  # the closure raised: the step never happened
                    torch._foreach_copy_(params, w0)
                    for p, g in zip(params, grads):
                        p.grad = g
                    rng.restore()
                    raise
                if not accepted:
                    torch._foreach_copy_(params, w0)
            for p, g in zip(params, grads):  # a closure may have dropped p.grad
                p.grad = g
            rng_after.restore()
            if not accepted and not self._warned:
                self._warned = True
                warnings.warn(
                    f"{fn}: no step size down to {eta:.3g} satisfied the Armijo condition in "
                    f"{h['max_backtracks']} backtracks, so the parameters were left unchanged "
                    "(counted in failed_searches; warned once). Near a minimum this is "
                    "rounding in the loss; early on, init_lr is far too large",
                    RuntimeWarning, stacklevel=L.user_stacklevel())
        step_size = eta if g_sq > 0 else first["step_size"]
        for group in groups:
            group.update(
                step_size=step_size, lr=step_size,
                last_step_size=accepted, function_evals=evals,
                total_function_evals=group["total_function_evals"] + evals,
                failed_searches=group["failed_searches"] + (g_sq > 0 and not accepted),
                k=group["k"] + 1)
        for plan in plans:
            self._last[plan[0]]["accepted"] = accepted
        return loss


def _ranks(opt: SLS) -> int:
    """The processes whose line searches must agree (1: no communication)."""
    if not opt.agree_across_ranks or torch.compiler.is_compiling():
        return 1
    return world_size()


def _first_guess(h: dict, group: dict) -> float:
    """Where this step's search starts, by the ``reset`` rule."""
    if group["k"] == 0 or h["reset"] == "init":
        return h["init_lr"]
    if h["reset"] == "keep":
        return group["step_size"]
    return group["step_size"] * h["gamma"] ** (1 / h["batches_per_epoch"])


def _loss_and_grads(fn: str, closure, params: list[torch.Tensor]):
    """The loss at w and its gradient, whether or not the closure calls backward()."""
    for p in params:
        p.grad = None
    with torch.enable_grad():
        loss = closure()
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise TypeError(f"{fn}: the closure must return the loss as a one-element tensor, "
                        f"got {type(loss).__name__}")
    if any(p.grad is not None for p in params):  # the closure called backward() itself
        return loss, [p.grad for p in params]
    if not loss.requires_grad:
        raise ValueError(f"{fn}: the closure's loss does not depend on the parameters (it "
                         "has no gradient); compute it from the model inside the closure")
    try:
        grads = torch.autograd.grad(loss, params, allow_unused=True)
    except RuntimeError as err:
        raise RuntimeError(f"{fn}: could not differentiate the closure's loss ({err}); "
                           "return the loss without calling backward() on it") from err
    for p, g in zip(params, grads):
        p.grad = g
    return loss, list(grads)


def _global_max(value: float) -> float:
    """``value`` max-reduced over the processes of the default group (float64)."""
    dist = torch.distributed
    device = "cpu"
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _evaluate(fn: str, closure) -> Tensor:
    """The closure's loss under no_grad (a trial point)."""
    try:
        return closure()
    except RuntimeError as err:
        if "does not require grad" in str(err):
            raise RuntimeError(
                f"{fn}: the closure called backward() while SLS re-evaluated the loss under "
                "torch.no_grad(); let it only return the loss, or guard backward() with "
                "`if torch.is_grad_enabled():`") from err
        raise


class _RandomState:
    """The CPU and CUDA random states, so every trial sees the same dropout masks."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        self.devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.devices, self.cuda):
            torch.cuda.set_rng_state(state, d)


def _place_reference(params, w0s, grads, eta: float) -> None:
    """Put the trial point w0 - eta * g into the parameters, one tensor at a time."""
    for p, w0, g in zip(params, w0s, grads):
        p.copy_(w0).add_(g, alpha=-eta)


def _place_foreach(params, w0s, grads, eta: float) -> None:
    torch._foreach_copy_(params, w0s)
    torch._foreach_add_(params, grads, alpha=-eta)
