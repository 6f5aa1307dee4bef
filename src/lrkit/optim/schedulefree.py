r"""Schedule-free AdamW and SGD: no learning-rate schedule, the average is the model.

Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled" (NeurIPS
2024), arXiv:2405.15682; step for step the authors' ``schedulefree`` package (1.4.1,
``AdamWScheduleFree`` and ``SGDScheduleFree``). Three sequences: the SGD/Adam iterate
:math:`z`, the average :math:`x` (the weights to evaluate) and the point :math:`y` where
gradients are taken, with :math:`\beta` = ``betas[0]`` (AdamW) or ``momentum`` (SGD):

.. math::

    y_t &= (1-\beta)\, z_t + \beta\, x_t \\
    z_{t+1} &= z_t - \gamma_t\, \hat g_t \qquad
    x_{t+1} = (1 - c_{t+1})\, x_t + c_{t+1}\, z_{t+1}, \qquad
    c_{t+1} = \frac{w_{t+1}}{\sum_{i\le t+1} w_i},\quad
    w_t = t^{\,r}\, \bigl(\max_{i \le t}\gamma_i\bigr)^{\mathrm{weight\_lr\_power}}

with :math:`\gamma_t` = ``lr`` times a linear warmup over ``warmup_steps``. SGD takes
:math:`\hat g_t = g_t + \lambda y_t`; AdamW takes
:math:`\hat g_t = g_t / (\sqrt{v_{t+1}/(1-\beta_2^{t+1})} + \epsilon) + \lambda y_t` with
:math:`v_{t+1} = \beta_2 v_t + (1-\beta_2) g_t^2`. Only :math:`y` (in the parameters while
training) and :math:`z` (in the state) are stored; :math:`x` is recovered on ``eval()``.

The traps of ``schedulefree`` are closed here:

* the optimizer starts in train mode, ``step()`` in eval mode raises a clear error, and
  ``train()`` / ``eval()`` are idempotent;
* ``eval()`` keeps the training weights :math:`y` (``exact_switch=True``, the default), so
  ``train()`` restores them bit for bit: evaluating during training does not perturb it, and
  a state_dict taken in eval mode resumes exactly like one taken in train mode (the copy is
  part of that state_dict; ``train()`` uses it only if the parameters still hold the ``x``
  that ``eval()`` put there, and otherwise recomputes :math:`y` from them);
* :func:`reestimate_batchnorm` recomputes BatchNorm statistics for the averaged weights;
* ``p.grad`` is never modified (``schedulefree`` normalizes it in place).

``exact_switch=False`` recomputes :math:`y = (1-\beta) z + \beta x` on ``train()``, as
``schedulefree`` does: no extra memory in eval mode, a rounding error at every switch.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lrkit import _checks as C
from lrkit.optim import _lrfree as L


class _ScheduleFree(L.StandInOptimizer):
    """What both share: the average's weights, train/eval switching, the mode guard."""

    _beta_key = ""

    def __init__(self, params, defaults: dict[str, Any], *, foreach: bool | None,
                 exact_switch: bool, nonfinite: str, impl: str) -> None:
        fn = f"{type(self).__name__}()"
        if foreach is not None:  # schedulefree's switch, for drop-in use
            C.boolean(fn, "foreach", foreach)
            if impl == "auto":
                impl = "fast" if foreach else "reference"
        self.exact_switch = C.boolean(fn, "exact_switch", exact_switch)
        defaults.update(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    _checks: dict = {
        "lr": C.nonnegative, "eps": C.positive, "weight_decay": C.nonnegative,
        "warmup_steps": C.nonnegative_int, "r": C.nonnegative,
        "weight_lr_power": C.nonnegative,
        "betas": lambda f, n, v: _schedulefree_betas(f, v, n),
        "momentum": lambda f, n, v: C.in_range(f, n, v, 0.0, 1.0, low_open=True,
                                               high_open=True),
    }

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:  # a group added later starts in the optimizer's mode
            param_group.setdefault("train_mode", self.param_groups[0]["train_mode"])
        super().add_param_group(param_group)

    def _beta(self, group: dict) -> float:
        return group["betas"][0] if self._beta_key == "betas" else group["momentum"]

    @property
    def training(self) -> bool:
        """True in train mode (parameters hold y), False in eval mode (they hold x)."""
        return all(g["train_mode"] for g in self.param_groups)

    @torch.no_grad()
    def eval(self) -> None:
        """Put the averaged weights x into the parameters, for evaluation or export."""
        for group in self.param_groups:
            if not group["train_mode"]:
                continue
            weight = 1 - 1 / self._beta(group)
            for p in group["params"]:
                state = self.state[p]
                if "z" in state:
                    if self.exact_switch:
                        state["y"] = p.detach().clone()
                    p.lerp_(state["z"].to(p.device), weight)
            group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Put the training weights y back into the parameters."""
        for group in self.param_groups:
            if group["train_mode"]:
                continue
            beta = self._beta(group)
            for p in group["params"]:
                state = self.state[p]
                y = state.pop("y", None)
                if "z" not in state:
                    continue
                z = state["z"].to(p.device)
                if y is not None and torch.equal(p, torch.lerp(y.to(p.device), z, 1 - 1 / beta)):
                    p.copy_(y)  # untouched since eval(): restore y bit for bit
                else:
                    p.lerp_(z, 1 - beta)
            group["train_mode"] = True

    def _can_step(self) -> None:
        if not self.training:
            raise RuntimeError(
                f"{type(self).__name__}.step(): the optimizer is in eval mode (the parameters "
                "hold the averaged weights x); call optimizer.train() before training steps "
                "and optimizer.eval() before evaluating or saving weights to deploy")

    def _schedule(self, group: dict) -> tuple[float, float]:
        """This step's lr (with warmup) and the averaging weight c_{t+1}; updates the group's
        running sums as schedulefree does."""
        k, warmup = group["k"], group["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = float(group["lr"]) * sched
        group["scheduled_lr"] = lr
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
        return lr, ckp1

    def estimated_lr(self) -> list[float]:
        """The lr of the last step per group (with warmup)."""
        return [g["scheduled_lr"] for g in self.param_groups]


def _schedulefree_betas(fn: str, value: Any, name: str) -> tuple[float, float]:
    b1, b2 = L.betas(fn, value, name)
    if b1 == 0:
        raise ValueError(f"{fn}: {name}[0] must be in (0, 1) for schedule-free averaging "
                         f"(eval() divides by it), got {value!r}")
    return b1, b2


# ------------------------------------------------------------------------------ AdamW
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW with the constructor of ``schedulefree.AdamWScheduleFree``
    (plus ``exact_switch``; ``foreach`` maps onto ``impl``)."""

    _beta_key = "betas"

    def __init__(self, params, lr: float = 0.0025, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 exact_switch: bool = True, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay)
        super().__init__(params, defaults, foreach=foreach, exact_switch=exact_switch,
                         nonfinite=nonfinite, impl=impl)

    def _step(self) -> None:
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            bias_correction2 = 1 - beta2 ** (group["k"] + 1)
            lr, ckp1 = self._schedule(group)
            params = L.params_with_grad(group)
            for p in params:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = p.detach().clone()
                    self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
            if params:
                (_adamw_fast if self.fast else _adamw_reference)(
                    params, [p.grad for p in params], [self.state[p]["z"] for p in params],
                    [self.state[p]["exp_avg_sq"] for p in params], lr=lr, ckp1=ckp1,
                    beta1=beta1, beta2=beta2, bias_correction2=bias_correction2,
                    eps=group["eps"], decay=group["weight_decay"])
            group["k"] += 1


def _adamw_reference(ys, grads, zs, vs, *, lr, ckp1, beta1, beta2, bias_correction2, eps,
                     decay) -> None:
    """One tensor at a time, in schedulefree's order of operations (readable spec)."""
    for y, g, z, v in zip(ys, grads, zs, vs):
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = v.div(bias_correction2).sqrt_().add_(eps)
        g_hat = g.div(denom)
        if decay != 0:
            g_hat.add_(y, alpha=decay)  # weight decay at y
        y.lerp_(z, ckp1)  # y <- (1 - c) y + c z ...
        y.add_(g_hat, alpha=lr * (beta1 * (1 - ckp1) - 1))  # ... then the gradient step
        z.sub_(g_hat, alpha=lr)


def _adamw_fast(ys, grads, zs, vs, *, lr, ckp1, beta1, beta2, bias_correction2, eps,
                decay) -> None:
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    if decay != 0:  # decay is taken at y before the interpolation: one tensor at a time
        _adamw_reference_moved(ys, grads, zs, vs, lr=lr, ckp1=ckp1, beta1=beta1,
                               bias_correction2=bias_correction2, eps=eps, decay=decay)
        return
    torch._foreach_lerp_(ys, zs, ckp1)
    for y, g, z, v in zip(ys, grads, zs, vs):
        g_hat = g.div(v.div(bias_correction2).sqrt_().add_(eps))
        y.add_(g_hat, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z.sub_(g_hat, alpha=lr)


def _adamw_reference_moved(ys, grads, zs, vs, *, lr, ckp1, beta1, bias_correction2, eps,
                           decay) -> None:
    """The reference step after the second moment has been updated."""
    for y, g, z, v in zip(ys, grads, zs, vs):
        g_hat = g.div(v.div(bias_correction2).sqrt_().add_(eps)).add_(y, alpha=decay)
        y.lerp_(z, ckp1)
        y.add_(g_hat, alpha=lr * (beta1 * (1 - ckp1) - 1))
        z.sub_(g_hat, alpha=lr)


# -------------------------------------------------------------------------------- SGD
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD with the constructor of ``schedulefree.SGDScheduleFree`` (plus
    ``exact_switch``; ``foreach`` maps onto ``impl``)."""

    _beta_key = "momentum"

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 exact_switch: bool = True, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        defaults = dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay)
        super().__init__(params, defaults, foreach=foreach, exact_switch=exact_switch,
                         nonfinite=nonfinite, impl=impl)

    def _step(self) -> None:
        for group in self.param_groups:
            lr, ckp1 = self._schedule(group)
            params = L.params_with_grad(group)
            for p in params:
                if "z" not in self.state[p]:
                    self.state[p]["z"] = p.detach().clone()
            if params:
                (_sgd_fast if self.fast else _sgd_reference)(
                    params, [p.grad for p in params], [self.state[p]["z"] for p in params],
                    lr=lr, ckp1=ckp1, momentum=group["momentum"],
                    decay=group["weight_decay"])
            group["k"] += 1


def _sgd_reference(ys, grads, zs, *, lr, ckp1, momentum, decay) -> None:
    """One tensor at a time, in schedulefree's order of operations (readable spec)."""
    for y, g, z in zip(ys, grads, zs):
        if decay != 0:
            g = g.add(y, alpha=decay)
        y.lerp_(z, ckp1)
        y.add_(g, alpha=lr * (momentum * (1 - ckp1) - 1))
        z.sub_(g, alpha=lr)


def _sgd_fast(ys, grads, zs, *, lr, ckp1, momentum, decay) -> None:
    if decay != 0:  # decay is taken at y before the interpolation: one tensor at a time
        _sgd_reference(ys, grads, zs, lr=lr, ckp1=ckp1, momentum=momentum, decay=decay)
        return
    torch._foreach_lerp_(ys, zs, ckp1)
    torch._foreach_add_(ys, grads, alpha=lr * (momentum * (1 - ckp1) - 1))
    torch._foreach_sub_(zs, grads, alpha=lr)


# ----------------------------------------------------------------- BatchNorm statistics
@torch.no_grad()
def reestimate_batchnorm(model: torch.nn.Module, batches: Iterable, optimizer=None, *,
                         num_batches: int | None = None,
                         forward: Callable[[torch.nn.Module, Any], Any] | None = None):
    """Recompute the BatchNorm running statistics for the weights the model holds now.

    BatchNorm's running mean and variance were collected along the training weights; the
    averaged weights of a schedule-free optimizer (or of :class:`PolynomialDecayAverager`'s
    model, or SWA) need their own. Pass the schedule-free optimizer as ``optimizer``: it is
    put in eval mode first (and left there, since the statistics belong to those weights).
    Each batch is fed to ``forward(model, batch)``, by default ``model(batch)``, or
    ``model(batch[0])`` for a tuple or list (an ``(inputs, targets)`` pair), moved to the
    model's device; at most ``num_batches`` batches. The statistics are the exact average
    over the batches (momentum ``None``), as ``torch.optim.swa_utils.update_bn`` computes.
    The model's train/eval mode is restored. Returns the model.
    """
    fn = "reestimate_batchnorm()"
    if num_batches is not None:
        num_batches = C.positive_int(fn, "num_batches", num_batches)
    if optimizer is not None:
        optimizer.eval()
    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    momenta = {}
    for m in norms:
        m.reset_running_stats()
        momenta[m] = m.momentum
        m.momentum = None
    device = next(model.parameters()).device
    was_training = model.training
    model.train()
    try:
        seen = 0
        for batch in batches:
            if num_batches is not None and seen >= num_batches:
                break
            if forward is not None:
                forward(model, batch)
            else:
                inputs = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(inputs.to(device) if isinstance(inputs, torch.Tensor) else inputs)
            seen += 1
        if seen == 0:
            raise ValueError(f"{fn}: batches must yield at least one batch, got none")
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        model.train(was_training)
    return model
