"""The Adam family: Adam, AdamW, NAdam, RAdam, Adamax."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam
from torch.optim.adamax import adamax as _torch_adamax
from torch.optim.nadam import nadam as _torch_nadam
from torch.optim.radam import radam as _torch_radam

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim.base import (
    Explained,
    LrkitOptimizer,
    add_,
    addcdiv_,
    check_betas,
    check_lr,
    functional_lr,
    scalar,
    step_tensor,
    uniform,
    value,
)


class _AdamLike(LrkitOptimizer):
    """Shared by the family: argument checks, ``step``/``exp_avg``/``exp_avg_sq`` state."""

    second = "exp_avg_sq"   # name of the second-moment state
    grad_power = 2          # the squared gradient (Adamax: 1)
    dtensor = "elementwise"

    def _check(self, lr: Any, betas: Any, eps: Any, weight_decay: Any) -> tuple:
        fn = f"{type(self).__name__}()"
        check_lr(fn, lr)
        C.positive(fn, "eps", eps)
        C.nonnegative(fn, "weight_decay", weight_decay)
        return check_betas(fn, betas)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
        return {"step": step_tensor(group, p), "exp_avg": zeros,
                self.second: torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _moments(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                 state: dict[str, Any]) -> tuple:
        """The family's first half, as torch orders it: count the step, weight decay
        (coupled into the gradient or decoupled), first moment, and the second moment
        (Adamax's differs: it does its own). Returns lr, beta1, beta2, step, gradient."""
        lr, wd = scalar(group["lr"]), group["weight_decay"]
        beta1, beta2 = (scalar(b) for b in group["betas"])
        if group["maximize"]:
            grad = -grad
        state["step"] += 1
        if wd != 0:
            if group.get("decoupled_weight_decay"):
                p.mul_(1 - lr * wd)
            else:
                grad = grad.add(p, alpha=wd)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        if self.second == "exp_avg_sq":
            state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        return lr, beta1, beta2, value(state["step"]), grad

    def _lists(self, params: list[Tensor], *keys: str) -> list[list[Tensor]]:
        return [[self.state[p][k] for p in params] for k in keys]

    def _kernel_args(self, group: dict[str, Any]):
        b1, b2 = (scalar(b) for b in group["betas"])
        wd = group["weight_decay"]
        flags = (K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0)
                 | K.F_DECOUPLED * bool(group.get("decoupled_weight_decay"))
                 | K.F_AMSGRAD * bool(group.get("amsgrad")))
        keys = ("exp_avg", self.second, "max_exp_avg_sq" if group.get("amsgrad") else None)
        scal = ("step", "mu_product" if "momentum_decay" in group else None)
        hp = [scalar(group["lr"]), b1, b2, group["eps"], wd, group.get("momentum_decay", 0.0)]
        return keys, scal, hp, flags

    def _decoupled(self, hp: dict[str, Any], w: Tensor, eta: Tensor, d: Tensor) -> Explained:
        """``w = prev * (1 - lr wd) - eta d`` (decoupled decay), else ``w = prev - eta d``."""
        lr, wd = hp["lr"], hp["weight_decay"]
        if hp.get("decoupled_weight_decay") and wd != 0:
            decay = lr * wd * (w + eta * d) / (1 - lr * wd)
            return Explained(eta, d, decay, -eta * d - decay)
        return Explained(eta, d, 0.0, -eta * d)


class Adam(_AdamLike):
    r"""Adam (Kingma & Ba, 2015, "Adam: A Method for Stochastic Optimization"), as
    ``torch.optim.Adam``: same arguments, defaults and state (``step``, ``exp_avg``,
    ``exp_avg_sq``, ``max_exp_avg_sq`` with amsgrad)::

        g_t = grad + lambda * w_{t-1}                 (weight_decay, unless decoupled)
        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        v_t = beta2 * v_{t-1} + (1 - beta2) * g_t^2
        v_max = max(v_max, v_t)                        (amsgrad: Reddi et al., 2018)
        w_t = w_{t-1} (1 - lr lambda)                  (decoupled_weight_decay)
            - lr / (1 - beta1^t) * m_t / (sqrt(v_t / (1 - beta2^t)) + eps)

    ``effective_lr()`` is ``lr / (1 - beta1^t) / (sqrt(v_hat_t) + eps)`` elementwise,
    the multiplier on the direction ``m_t``.
    """

    recommended_lr = 1e-3  # Kingma & Ba 2015, and torch's default
    torch_name = "Adam"
    torch_fused = True
    kernel = "adam"

    def __init__(self, params: Any, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False,
                 nonfinite: str = "raise", impl: str = "auto") -> None:
        betas = self._check(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        state = super()._init_state(group, p)
        if group["amsgrad"]:
            state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, beta1, beta2, step, grad = self._moments(group, p, grad, state)
        exp_avg, exp_avg_sq, eps = state["exp_avg"], state["exp_avg_sq"], group["eps"]
        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        if group["amsgrad"]:
            v = state.setdefault("max_exp_avg_sq", torch.zeros_like(exp_avg_sq))
            torch.maximum(v, exp_avg_sq, out=v)
        else:
            v = exp_avg_sq
        denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
        addcdiv_(p, exp_avg, denom, -step_size)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        m, v, steps = self._lists(params, "exp_avg", "exp_avg_sq", "step")
        vmax = self._lists(params, "max_exp_avg_sq")[0] if group["amsgrad"] else []
        _torch_adam(
            params, grads, m, v, vmax, steps, has_complex=any(map(torch.is_complex, params)),
            decoupled_weight_decay=group["decoupled_weight_decay"], amsgrad=group["amsgrad"],
            beta1=group["betas"][0], beta2=group["betas"][1], lr=functional_lr(group, flags),
            weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
            **flags)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        t = state["step"].item()
        beta1, beta2 = hp["betas"]
        v = state["max_exp_avg_sq"] if hp["amsgrad"] else state["exp_avg_sq"]
        denom = v.sqrt() / math.sqrt(1 - beta2**t) + hp["eps"]
        eta = (hp["lr"] / (1 - beta1**t)) / denom
        return self._decoupled(hp, p.detach(), eta, state["exp_avg"])


class AdamW(Adam):
    r"""AdamW (Loshchilov & Hutter, 2019, "Decoupled Weight Decay Regularization"), as
    ``torch.optim.AdamW``: Adam with ``decoupled_weight_decay=True`` and
    ``weight_decay=1e-2``; the decay ``w <- w (1 - lr lambda)`` happens before the Adam
    update and stays out of the moments. ``effective_lr()`` as Adam's; ``explain()``
    reports the decay as ``decay``.
    """

    torch_name = "AdamW"

    def __init__(self, params: Any, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, foreach: bool | None = None,
                 capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, nonfinite=nonfinite, impl=impl)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # as torch's AdamW: a loaded Adam state_dict (decoupled_weight_decay=False) still
        # runs as AdamW
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True


class NAdam(_AdamLike):
    r"""NAdam (Dozat, 2016, "Incorporating Nesterov Momentum into Adam"), as
    ``torch.optim.NAdam`` (state ``step``, ``mu_product``, ``exp_avg``, ``exp_avg_sq``)::

        mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)),  P_t = prod_{i<=t} mu_i
        m_t, v_t as Adam (weight decay coupled, or decoupled as AdamW when
                          decoupled_weight_decay: "NAdamW")
        w_t = w_{t-1} - lr / (sqrt(v_t / (1 - beta2^t)) + eps)
                        * ((1 - mu_t) / (1 - P_t) g_t + mu_{t+1} / (1 - P_t mu_{t+1}) m_t)

    ``effective_lr()`` is ``lr / (sqrt(v_hat_t) + eps)``; the direction is the bracket
    (it holds the gradient, so ``explain()`` reads ``p.grad``).
    """

    _scalar_state = ("step", "mu_product")

    torch_name = "NAdam"
    kernel = "nadam"

    def __init__(self, params: Any, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        betas = self._check(lr, betas, eps, weight_decay)
        C.nonnegative("NAdam()", "momentum_decay", momentum_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        momentum_decay=momentum_decay,
                        decoupled_weight_decay=decoupled_weight_decay, maximize=maximize,
                        foreach=foreach, capturable=capturable, differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        state = super()._init_state(group, p)
        one = step_tensor(group, p).fill_(1.0)
        return {"step": state["step"], "mu_product": one, "exp_avg": state["exp_avg"],
                "exp_avg_sq": state["exp_avg_sq"]}

    @staticmethod
    def _mus(hp: dict[str, Any], step: Any) -> tuple[Any, Any]:
        beta1, md = hp["betas"][0], hp["momentum_decay"]
        return (beta1 * (1.0 - 0.5 * (0.96 ** (step * md))),
                beta1 * (1.0 - 0.5 * (0.96 ** ((step + 1) * md))))

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, beta1, beta2, step, grad = self._moments(group, p, grad, state)
        exp_avg, exp_avg_sq, eps = state["exp_avg"], state["exp_avg_sq"], group["eps"]
        bias_correction2 = 1 - beta2**step
        mu, mu_next = self._mus({"betas": (beta1, beta2),
                                 "momentum_decay": group["momentum_decay"]}, step)
        state["mu_product"] *= mu
        denom = exp_avg_sq.div(bias_correction2).sqrt()
        mu_product = value(state["mu_product"])
        mu_product_next = mu_product * mu_next
        denom.add_(eps)
        addcdiv_(p, grad, denom, -lr * (1.0 - mu) / (1.0 - mu_product))
        addcdiv_(p, exp_avg, denom, (-lr * mu_next) / (1.0 - mu_product_next))

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        m, v, mp, steps = self._lists(params, "exp_avg", "exp_avg_sq", "mu_product", "step")
        _torch_nadam(
            params, grads, m, v, mp, steps,
            decoupled_weight_decay=group["decoupled_weight_decay"],
            has_complex=any(map(torch.is_complex, params)), maximize=group["maximize"],
            beta1=group["betas"][0], beta2=group["betas"][1], lr=functional_lr(group, flags),
            weight_decay=group["weight_decay"], momentum_decay=group["momentum_decay"],
            eps=group["eps"], **flags)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        t = state["step"].item()
        lr, wd, beta2 = hp["lr"], hp["weight_decay"], hp["betas"][1]
        mu, mu_next = self._mus(hp, t)
        prod = state["mu_product"].item()
        cg, cm = (1 - mu) / (1 - prod), mu_next / (1 - prod * mu_next)
        eta = lr / ((state["exp_avg_sq"] / (1 - beta2**t)).sqrt() + hp["eps"])
        g, w, m = self._grad(p, hp), p.detach(), state["exp_avg"]
        if wd != 0 and not hp["decoupled_weight_decay"]:
            prev = (w + eta * (cg * g + cm * m)) / (1 - eta * cg * wd)
            g = g + wd * prev
        return self._decoupled(hp, w, eta, cg * g + cm * m)


class RAdam(_AdamLike):
    r"""RAdam (Liu et al., 2020, "On the Variance of the Adaptive Learning Rate and
    Beyond"), as ``torch.optim.RAdam`` (state ``step``, ``exp_avg``, ``exp_avg_sq``)::

        m_t, v_t as Adam (decay coupled, or decoupled as AdamW)
        rho_inf = 2 / (1 - beta2) - 1,  rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t)
        r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        w_t = w_{t-1} - lr m_t / (1 - beta1^t) * r_t sqrt(1 - beta2^t) / (sqrt(v_t) + eps)
                                                            (rho_t > 5)
        w_t = w_{t-1} - lr m_t / (1 - beta1^t)              (otherwise: SGD with momentum)

    ``effective_lr()`` is the factor in front of ``m_t`` (one number while rho_t <= 5).
    """

    torch_name = "RAdam"
    kernel = "radam"

    def __init__(self, params: Any, lr: float | Tensor = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False,
                 nonfinite: str = "raise", impl: str = "auto") -> None:
        betas = self._check(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, foreach=foreach, capturable=capturable,
                        decoupled_weight_decay=decoupled_weight_decay,
                        differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    @staticmethod
    def _rect(beta2: float, step: float) -> float | None:
        """The variance rectification r_t, or None while rho_t <= 5."""
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
        if not rho_t > 5.0:
            return None
        return ((rho_t - 4) * (rho_t - 2) * rho_inf
                / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, beta1, beta2, step, grad = self._moments(group, p, grad, state)
        exp_avg, exp_avg_sq, eps = state["exp_avg"], state["exp_avg_sq"], group["eps"]
        bias_corrected_exp_avg = exp_avg / (1 - beta1**step)
        if isinstance(step, Tensor):  # while compiling: no data-dependent branch
            rho_inf = 2 / (1 - beta2) - 1
            rho_t = rho_inf - 2 * step * (beta2**step) / (1 - beta2**step)
            rect = ((rho_t - 4) * (rho_t - 2) * rho_inf
                    / ((rho_inf - 4) * (rho_inf - 2) * rho_t)).clamp(min=0).sqrt()
            adaptive = (1 - beta2**step).sqrt() / exp_avg_sq.sqrt().add_(eps)
            update = torch.where(rho_t > 5.0, rect * adaptive, 1.0)
            add_(p, bias_corrected_exp_avg * lr * update, -1.0)
            return
        rect = self._rect(beta2, step)
        if rect is not None:
            adaptive = (1 - beta2**step) ** 0.5 / exp_avg_sq.sqrt().add_(eps)
            add_(p, bias_corrected_exp_avg * lr * adaptive * rect, -1.0)
        else:
            add_(p, bias_corrected_exp_avg * lr, -1.0)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        m, v, steps = self._lists(params, "exp_avg", "exp_avg_sq", "step")
        _torch_radam(
            params, grads, m, v, steps, decoupled_weight_decay=group["decoupled_weight_decay"],
            has_complex=any(map(torch.is_complex, params)), maximize=group["maximize"],
            beta1=group["betas"][0], beta2=group["betas"][1], lr=functional_lr(group, flags),
            weight_decay=group["weight_decay"], eps=group["eps"], **flags)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        t = state["step"].item()
        beta1, beta2 = hp["betas"]
        scale = hp["lr"] / (1 - beta1**t)
        rect = self._rect(beta2, t)
        m = state["exp_avg"]
        if rect is None:
            eta = uniform(scale, m)
        else:
            eta = scale * rect * (1 - beta2**t) ** 0.5 / (state["exp_avg_sq"].sqrt() + hp["eps"])
        return self._decoupled(hp, p.detach(), eta, m)


class Adamax(_AdamLike):
    r"""Adamax (Kingma & Ba, 2015, section 7.1), as ``torch.optim.Adamax`` (state
    ``step``, ``exp_avg``, ``exp_inf``)::

        g_t = grad + lambda * w_{t-1}
        m_t = beta1 * m_{t-1} + (1 - beta1) * g_t
        u_t = max(beta2 * u_{t-1}, |g_t| + eps)
        w_t = w_{t-1} - lr / (1 - beta1^t) * m_t / u_t

    ``effective_lr()`` is ``lr / (1 - beta1^t) / u_t`` on the direction ``m_t``.
    """

    torch_name = "Adamax"
    kernel = "adamax"
    grad_power = 1  # a running max of |g|, no square
    second = "exp_inf"

    def __init__(self, params: Any, lr: float | Tensor = 2e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False,
                 capturable: bool = False, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        betas = self._check(lr, betas, eps, weight_decay)
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                        foreach=foreach, maximize=maximize, differentiable=differentiable,
                        capturable=capturable)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, beta1, beta2, step, grad = self._moments(group, p, grad, state)
        exp_avg, exp_inf = state["exp_avg"], state["exp_inf"]
        torch.maximum(exp_inf.mul_(beta2), grad.abs().add_(group["eps"]), out=exp_inf)
        clr = lr / (1 - beta1**step)
        addcdiv_(p, exp_avg, exp_inf, -clr)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        m, u, steps = self._lists(params, "exp_avg", "exp_inf", "step")
        _torch_adamax(
            params, grads, m, u, steps, maximize=group["maximize"],
            has_complex=any(map(torch.is_complex, params)), eps=group["eps"],
            beta1=group["betas"][0], beta2=group["betas"][1], lr=functional_lr(group, flags),
            weight_decay=group["weight_decay"], **flags)

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        t = state["step"].item()
        eta = (hp["lr"] / (1 - hp["betas"][0] ** t)) / state["exp_inf"]
        return Explained(eta, state["exp_avg"], 0.0, -eta * state["exp_avg"])
