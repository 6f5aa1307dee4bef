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
* ``p.grad`` is never modified (``schedulefree`` normalizes it in place);
* ``opt.bind(model)`` ties the optimizer's mode to the model's (``model.eval()`` then a
  forward evaluates the averaged weights :math:`x`); unbound, a forward of a module in
  eval mode without gradients while the optimizer holds the training weights :math:`y`
  warns once (``ScheduleFreeModeWarning``): the usual sign of ``model.eval()`` without
  ``opt.eval()``, which silently scores the wrong weights.

``exact_switch=False`` recomputes :math:`y = (1-\beta) z + \beta x` on ``train()``, as
``schedulefree`` does: no extra memory in eval mode, a rounding error at every switch.

Implementations: the reference runs ``schedulefree``'s single-tensor operations, lrkit's
kernel (dense CPU float32/float64) the same arithmetic in one pass over all tensors of a
group, bit for bit on x86-64 (no sums are involved); ``"foreach"`` is torch's multi-tensor
ops (``foreach=`` maps onto ``impl``).

``effective_lr()`` describes the training weights :math:`y` (train mode only): the
multiplier on the gradient, :math:`\gamma_t (1 - \beta (1 - c_{t+1}))`, over
:math:`\sqrt{v_{t+1}/(1-\beta_2^{t+1})}+\epsilon` for AdamW; the direction is the step
over it (the gradient, the weight decay, and the pull of :math:`y` toward :math:`z`).
"""
from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim import _lrfree as L
from lrkit.optim.base import Explained, scalar


class ScheduleFreeModeWarning(UserWarning):
    """A module evaluated (eval mode, no gradients) with a schedule-free optimizer's
    training weights y in its parameters: ``opt.eval()`` (or ``opt.bind(model)``) missing."""


_LIVE: weakref.WeakSet = weakref.WeakSet()  # schedule-free optimizers the check watches
_HOOK: list = []  # the one global forward pre-hook, registered with the first optimizer


def _check_mode(module: torch.nn.Module, args: Any) -> None:
    """Global forward pre-hook: warn once per optimizer when an eval-mode forward without
    gradients reads parameters that an unbound optimizer in train mode has stepped."""
    if module.training or torch.is_grad_enabled() or not _LIVE:
        return
    p = next(iter(module._parameters.values()), None)  # one of its own parameters tells
    if p is None:
        return
    for opt in list(_LIVE):
        if (not opt._mode_warned and opt._bound == 0 and id(p) in opt._param_ids
                and opt.training and opt.param_groups[0]["k"] > 0):
            opt._mode_warned = True
            warnings.warn(
                f"{type(module).__name__} is evaluated (eval mode, no gradients) while "
                f"{type(opt).__name__} is in train mode, so its parameters hold the training "
                "weights y, not the averaged weights x that schedule-free methods evaluate; "
                "call opt.eval() before evaluating and opt.train() after, or opt.bind(model) "
                "once to make the optimizer follow model.train()/model.eval()",
                ScheduleFreeModeWarning, stacklevel=_callers_level())


def _callers_level() -> int:
    """The ``stacklevel`` of the first frame outside torch and lrkit (the user's forward
    call, however deep the module sits in the model)."""
    import os
    import sys

    inside = (os.path.dirname(torch.__file__), os.path.dirname(os.path.dirname(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class _ScheduleFree(L.GlobalStepOptimizer):
    """What both share: the average's weights, train/eval switching, the mode guard."""

    _beta_key = ""
    _bound = 0
    _mode_warned = False

    def __init__(self, params: Any, defaults: dict[str, Any], *, exact_switch: bool,
                 nonfinite: str, impl: str) -> None:
        fn = f"{type(self).__name__}()"
        if defaults.get("foreach") is not None:  # schedulefree's switch, for drop-in use
            C.boolean(fn, "foreach", defaults["foreach"])
        self.exact_switch = C.boolean(fn, "exact_switch", exact_switch)
        defaults.update(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)
        _LIVE.add(self)
        if not _HOOK:
            _HOOK.append(torch.nn.modules.module.register_module_forward_pre_hook(_check_mode))

    def bind(self, model: torch.nn.Module) -> Any:
        """Make this optimizer's mode follow ``model``'s: before each forward of ``model``,
        ``model.training`` decides (train: the training weights y; eval: the averaged
        weights x), so ``model.eval()`` then evaluating scores the right weights, and
        ``model.train()`` then training steps from y. The switch happens at the next
        forward: to export x without one, call ``opt.eval()``. Returns torch's
        ``RemovableHandle``; ``handle.remove()`` unbinds."""
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{type(self).__name__}.bind(): model must be a torch.nn.Module, "
                            f"got {type(model).__name__}")
        opt_ref = weakref.ref(self)

        def follow(module: torch.nn.Module, args: Any) -> None:
            opt = opt_ref()
            if opt is not None and opt.training != module.training:
                opt.train() if module.training else opt.eval()

        handle = model.register_forward_pre_hook(follow)
        self._bound += 1
        unbind = handle.remove

        def remove() -> None:
            if handle.id in model._forward_pre_hooks:
                self._bound -= 1
            unbind()
        handle.remove = remove  # type: ignore[method-assign]
        return handle

    _checks: dict = {
        "lr": lambda f, n, v: L.check_lr(f, v) if isinstance(v, Tensor) else
        C.nonnegative(f, n, v),
        "eps": C.positive, "weight_decay": C.nonnegative,
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
        ids = self.__dict__.setdefault("_param_ids", set())  # for the mode check
        ids.update(id(p) for p in self.param_groups[-1]["params"])

    def _beta(self, group: dict) -> float:
        return float(scalar(group["betas"][0] if self._beta_key == "betas"
                            else group["momentum"]))

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

    def _state_shapes(self, group: dict[str, Any], p: Tensor) -> dict[str, tuple]:
        """A group saved in eval mode may keep the training weights ``y`` (exact_switch),
        shaped like the parameter; in train mode there is no ``y``."""
        return {} if group.get("train_mode", True) else {"y": (tuple(p.shape),)}

    def _check_can_step(self) -> None:
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
        lr = float(scalar(group["lr"])) * sched
        group["scheduled_lr"] = lr
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        try:
            weight = ((k + 1) ** group["r"]) * (lr_max ** group["weight_lr_power"])
        except OverflowError:
            raise FloatingPointError(
                f"{type(self).__name__}.step(): the averaging weight (k + 1)**r * "
                f"lr_max**weight_lr_power overflows float64 at k={k} (r={group['r']!r}, "
                f"weight_lr_power={group['weight_lr_power']!r}, lr_max={lr_max!r}); lower "
                "r or weight_lr_power") from None
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        ckp1 = weight / weight_sum if weight_sum != 0 else 0
        return lr, ckp1

    def _global_step(self, plans: list) -> None:
        work = {plan[0]: L.Work(plan) for plan in plans}
        for i, group in enumerate(self.param_groups):
            lr, ckp1 = self._schedule(group)
            w = work.get(i)
            if w is not None:
                self._update_group(w, lr, ckp1)
                self._last[i].update(step_lr=lr, ckp1=ckp1)
            group["k"] += 1

    def estimated_lr(self) -> list[float]:
        """The lr of the last step per group (with warmup)."""
        return [g["scheduled_lr"] for g in self.param_groups]

    def _explained(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any], denom: Any,
                   beta: float) -> Explained:
        """eta on the gradient (over ``denom``) and the step of y over it."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]) and not group["train_mode"]:
                raise ValueError(f"{type(self).__name__}.explain(): the optimizer is in eval "
                                 "mode; call train() first (explain() describes the "
                                 "training weights y)")
        lr, c, wd = hp["step_lr"], hp["ckp1"], hp["weight_decay"]
        g, y, z = self._grad(p, hp), p.detach(), state["z"]
        gd = g / denom
        a = -lr * (1 - beta) * (1 - c)  # y = (1 - c) y_prev + c z + a (gd + wd y_prev)
        if c == 1:  # the first step: y_prev was z_prev = z + lr (gd + wd y_prev)
            prev = (z + lr * gd) / (1 - lr * wd)
        else:
            prev = (y - c * z - a * gd) / (1 - c + a * wd)
        eta = lr * (1 - beta * (1 - c)) / denom if isinstance(denom, Tensor) else \
            torch.full_like(y, lr * (1 - beta * (1 - c)))
        update = y - prev
        return Explained(eta, -update / eta, 0.0, update)


def _schedulefree_betas(fn: str, value: Any, name: str) -> tuple:
    b1, b2 = L.betas(fn, name, value)
    if scalar(b1) == 0:
        raise ValueError(f"{fn}: {name}[0] must be in (0, 1) for schedule-free averaging "
                         f"(eval() divides by it), got {value!r}")
    return b1, b2


# ------------------------------------------------------------------------------ AdamW
class ScheduleFreeAdamW(_ScheduleFree):
    """Schedule-free AdamW with the constructor of ``schedulefree.AdamWScheduleFree``
    (plus ``exact_switch``; ``foreach`` maps onto ``impl``). State per tensor: ``z``,
    ``exp_avg_sq`` (and ``y`` in eval mode with ``exact_switch``)."""

    _beta_key = "betas"
    lr_free = True
    recommended_lr = 2.5e-3  # the schedulefree package's default
    recommended_family = "constant"  # it replaces the schedule
    aliases = ("schedulefree",)
    kernel = "sf_adamw"
    grad_power = 2  # exp_avg_sq holds the squared gradient

    def __init__(self, params: Any, lr: float | Tensor = 0.0025,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 exact_switch: bool = True, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        foreach=foreach)
        super().__init__(params, defaults, exact_switch=exact_switch, nonfinite=nonfinite,
                         impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"z": torch.clone(p.detach(), memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _update_group(self, w: L.Work, lr: float, ckp1: float) -> None:
        group = w.group
        beta1, beta2 = (float(scalar(b)) for b in group["betas"])
        bias_correction2 = 1 - beta2 ** (group["k"] + 1)
        eps, decay = group["eps"], group["weight_decay"]
        for b in w.batches:
            cols = K.state_columns(self, b, ("z", "exp_avg_sq"), group)
            K.call(self, b, cols, [beta2, 1 - beta2, bias_correction2, eps, decay, ckp1,
                                   lr * (beta1 * (1 - ckp1) - 1), lr],
                   K.F_WD * (decay != 0), writes_params=True)
        if w.rest:
            (_adamw_reference if self._path(w.rest) == "reference" else _adamw_foreach)(
                w.rest, w.rest_grads, [self.state[p]["z"] for p in w.rest],
                [self.state[p]["exp_avg_sq"] for p in w.rest], lr=lr, ckp1=ckp1, beta1=beta1,
                beta2=beta2, bias_correction2=bias_correction2, eps=eps, decay=decay)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        beta1, beta2 = hp["betas"]
        denom = (state["exp_avg_sq"] / (1 - beta2 ** (hp["k"] + 1))).sqrt() + hp["eps"]
        return self._explained(hp, p, state, denom, beta1)


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


def _adamw_foreach(ys, grads, zs, vs, *, lr, ckp1, beta1, beta2, bias_correction2, eps,
                   decay) -> None:
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    g_hats = []
    for y, g, v in zip(ys, grads, vs):  # one temporary at a time (see benchmarks/README.md)
        g_hat = g.div(v.div(bias_correction2).sqrt_().add_(eps))
        if decay != 0:
            g_hat.add_(y, alpha=decay)  # weight decay at y, before the interpolation
        g_hats.append(g_hat)
    torch._foreach_lerp_(ys, zs, ckp1)
    torch._foreach_add_(ys, g_hats, alpha=lr * (beta1 * (1 - ckp1) - 1))
    torch._foreach_sub_(zs, g_hats, alpha=lr)


# -------------------------------------------------------------------------------- SGD
class ScheduleFreeSGD(_ScheduleFree):
    """Schedule-free SGD with the constructor of ``schedulefree.SGDScheduleFree`` (plus
    ``exact_switch``; ``foreach`` maps onto ``impl``). State per tensor: ``z`` (and ``y``
    in eval mode with ``exact_switch``)."""

    _beta_key = "momentum"
    lr_free = True
    recommended_lr = 1.0
    recommended_family = "constant"  # it replaces the schedule
    kernel = "sf_sgd"

    def __init__(self, params: Any, lr: float | Tensor = 1.0, momentum: float = 0.9,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0, foreach: bool | None = None, *,
                 exact_switch: bool = True, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        defaults = dict(lr=lr, momentum=momentum, r=r, warmup_steps=warmup_steps,
                        weight_lr_power=weight_lr_power, weight_decay=weight_decay,
                        foreach=foreach)
        super().__init__(params, defaults, exact_switch=exact_switch, nonfinite=nonfinite,
                         impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"z": torch.clone(p.detach(), memory_format=torch.preserve_format)}

    def _update_group(self, w: L.Work, lr: float, ckp1: float) -> None:
        group = w.group
        momentum, decay = self._beta(group), group["weight_decay"]
        for b in w.batches:
            K.call(self, b, K.state_columns(self, b, ("z",), group),
                   [decay, ckp1, lr * (momentum * (1 - ckp1) - 1), lr],
                   K.F_WD * (decay != 0), writes_params=True)
        if w.rest:
            (_sgd_reference if self._path(w.rest) == "reference" else _sgd_foreach)(
                w.rest, w.rest_grads, [self.state[p]["z"] for p in w.rest], lr=lr,
                ckp1=ckp1, momentum=momentum, decay=decay)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        return self._explained(hp, p, state, 1.0, hp["momentum"])


def _sgd_reference(ys, grads, zs, *, lr, ckp1, momentum, decay) -> None:
    """One tensor at a time, in schedulefree's order of operations (readable spec)."""
    for y, g, z in zip(ys, grads, zs):
        if decay != 0:
            g = g.add(y, alpha=decay)
        y.lerp_(z, ckp1)
        y.add_(g, alpha=lr * (momentum * (1 - ckp1) - 1))
        z.sub_(g, alpha=lr)


def _sgd_foreach(ys, grads, zs, *, lr, ckp1, momentum, decay) -> None:
    if decay != 0:  # decay is taken at y before the interpolation
        grads = torch._foreach_add(grads, ys, alpha=decay)
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
    C.module(fn, "model", model)
    C.iterable(fn, "batches", batches)
    C.optional_callable(fn, "forward", forward)
    if optimizer is not None and not callable(getattr(optimizer, "eval", None)):
        raise TypeError(f"{fn}: optimizer must be a schedule-free optimizer (with eval()) or "
                        f"None, got {type(optimizer).__name__}")
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
