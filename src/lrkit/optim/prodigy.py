r"""Prodigy: Adam whose learning rate is estimated as it trains.

Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner" (ICML
2024), arXiv:2306.06101; step for step the authors' ``prodigyopt`` package (1.1.2). At step
:math:`k` (counting from 0), with the estimate :math:`d_k` (:math:`d_0` = ``d0``), the
learning-rate multiplier :math:`\gamma` = ``lr``, and
:math:`\eta_k = d_k\gamma\,\sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` (the bias correction
only with ``use_bias_correction``; otherwise :math:`\eta_k = d_k\gamma`):

.. math::

    m_{k+1} &= \beta_1 m_k + (1-\beta_1)\, d_k\, g_k \qquad
    v_{k+1} = \beta_2 v_k + (1-\beta_2)\, d_k^2\, g_k^2 \\
    r_{k+1} &= \beta_3 r_k + \tfrac{d_k}{d_0}\eta_k\,\langle g_k, x_0 - x_k\rangle \qquad
    s_{k+1} = \beta_3 s_k + \tfrac{d_k}{d_0}\eta_k\, g_k \\
    \hat d_{k+1} &= d_\mathrm{coef}\, r_{k+1} / \lVert s_{k+1}\rVert_1 \qquad
    d_{k+1} = \min\bigl(\max(d_0, \max_{i\le k+1}\hat d_i),\;
                        \mathrm{growth\_rate}\cdot d_k\bigr) \\
    x_{k+1} &= x_k - \eta_k\, m_{k+1} / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)
              \;[-\; \eta_k\lambda x_k \text{ with decoupled weight decay}]

(:math:`d` only grows; while :math:`d_k` still equals :math:`d_0`, the growth limit counts
from :math:`\max(d_0, \hat d_{k+1})` instead). ``beta3`` defaults to
:math:`\sqrt{\beta_2}`; with ``safeguard_warmup`` :math:`s` accumulates
:math:`\tfrac{d_k}{d_0} d_k g_k` instead (no :math:`\eta` in the denominator during warmup).
With ``beta1 = 0`` there is no :math:`m`:
:math:`x_{k+1} = x_k - \eta_k d_{k+1} g_k / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)`. ``slice_p``
above 1 computes :math:`r` and :math:`s` on every ``slice_p``-th entry only (an
approximation that saves memory). Coupled weight decay (``decouple=False``) adds
:math:`\lambda x_k` to the gradient first.

Param groups share one :math:`d` (as in ``prodigyopt``): the sums run over every group, and
the hyperparameters that shape :math:`d` (betas, beta3, d0, d_coef, growth_rate,
use_bias_correction, decouple) must agree across groups; a group's ``lr`` is the common
value or 0. Unlike ``prodigyopt``, a group with ``lr=0`` is frozen (``prodigyopt`` still
applies decoupled weight decay to it, and with ``beta1=0`` a full step), and ``p.grad`` is
never modified (``prodigyopt`` adds coupled weight decay into it).
"""
from __future__ import annotations

import math

import torch

from lrkit import _checks as C
from lrkit.optim import _lrfree as L


class Prodigy(L.SharedDOptimizer):
    """Adam with Prodigy's estimated step size; the constructor of ``prodigyopt.Prodigy``.

    ``opt.estimated_lr()`` gives ``d * lr`` per group (the Adam learning rate Prodigy has
    arrived at). If ``d`` still equals ``d0`` after ``d_stall_steps`` steps a
    ``DEstimateWarning`` says why (``None`` turns the check off).
    """

    _checks = {
        "lr": C.nonnegative, "eps": C.positive, "weight_decay": C.nonnegative,
        "d0": C.positive, "d_coef": C.positive, "slice_p": C.positive_int,
        "decouple": C.boolean, "use_bias_correction": C.boolean,
        "safeguard_warmup": C.boolean,
        "betas": lambda f, n, v: L.betas(f, v, n),
        "beta3": lambda f, n, v: None if v is None else C.in_range(f, n, v, 0.0, 1.0),
        "growth_rate": lambda f, n, v: L.growth_rate(f, v),
        "fsdp_in_use": lambda f, n, v: L.no_distributed(f, v),
    }

    def __init__(self, params, lr: float = 1.0, betas=(0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = math.inf,
                 fsdp_in_use: bool = False, slice_p: int = 1, *, nonfinite: str = "raise",
                 impl: str = "auto", d_stall_steps: int | None = 1000) -> None:
        defaults = dict(
            lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d0=d0,
            d_coef=d_coef, growth_rate=growth_rate, use_bias_correction=use_bias_correction,
            decouple=decouple, safeguard_warmup=safeguard_warmup, fsdp_in_use=fsdp_in_use,
            slice_p=slice_p, d=d0, d_max=d0, d_numerator=0.0, k=0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps)

    def estimated_lr(self) -> list[float]:
        """``d * lr`` for each param group (the step size of the next step, before bias
        correction)."""
        return [g["d"] * float(g["lr"]) for g in self.param_groups]

    def _adapt(self) -> None:
        fn = "Prodigy.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        beta1, beta2 = L.shared_value(fn, groups, "betas")
        beta3 = L.shared_value(fn, groups, "beta3")
        beta3 = math.sqrt(beta2) if beta3 is None else beta3
        d0, d_coef, growth, decouple, use_bc = (L.shared_value(fn, groups, key) for key in (
            "d0", "d_coef", "growth_rate", "decouple", "use_bias_correction"))
        first = groups[0]
        k, d, d_max = first["k"], first["d"], first["d_max"]
        bias_correction = (math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
                           if use_bc else 1.0)
        dlr = d * lr * bias_correction
        accumulate, update = (_accumulate_fast, _update_fast) if self.fast else \
            (_accumulate_reference, _update_reference)

        work, dots, l1s = [], [], []
        for group in groups:
            params = L.params_with_grad(group) if group["lr"] > 0 else []
            if not params:
                continue
            slice_p, decay = group["slice_p"], group["weight_decay"]
            grads = [p.grad for p in params]
            if decay != 0 and not decouple:
                grads = [g.add(p, alpha=decay) for g, p in zip(grads, params)]
            states = [self._state(p, slice_p, beta1) for p in params]
            s_scale = (d / d0) * (d if group["safeguard_warmup"] else dlr)
            dot, l1 = accumulate(
                params, grads, [s["p0"] for s in states], [s["s"] for s in states],
                [s.get("exp_avg") for s in states], [s["exp_avg_sq"] for s in states],
                d=d, s_scale=s_scale, beta1=beta1, beta2=beta2, beta3=beta3, slice_p=slice_p)
            dots += dot
            l1s += l1
            work.append((group, params, grads, states))

        delta, denom = d_sums(dots, l1s, (d / d0) * dlr)
        if denom == 0:  # no gradient signal yet (prodigyopt returns here too)
            return
        numerator = first["d_numerator"] * beta3 + delta
        d_hat = d_coef * numerator / denom
        if not math.isfinite(d_hat):
            raise FloatingPointError(
                f"{fn}: the d estimate is not finite (numerator {numerator:.3g}, "
                f"denominator {denom:.3g}); the optimizer state has overflowed")
        if d == d0:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = min(d_max, d * growth)
        for group in groups:
            group.update(d_numerator=numerator, d_denom=denom, d=d, d_max=d_max, d_hat=d_hat)

        for group, params, grads, states in work:
            update(params, grads, [s.get("exp_avg") for s in states],
                   [s["exp_avg_sq"] for s in states], dlr=dlr, d=d, eps=group["eps"],
                   decay=group["weight_decay"] if decouple else 0.0, beta1=beta1)
            for s in states:
                s["step"] += 1
        for group in groups:
            group["k"] = k + 1

    def _state(self, p: torch.Tensor, slice_p: int, beta1: float) -> dict:
        state = self.state[p]
        if "step" not in state:
            self._fsdp_check([p])
            state["step"] = 0
            sliced = p.flatten()[::slice_p]
            state["s"] = torch.zeros_like(sliced)
            # an all-zero tensor keeps a 0-dim p0 (as prodigyopt does, to save memory)
            state["p0"] = sliced.clone() if p.any() else torch.zeros((), dtype=p.dtype,
                                                                      device=p.device)
            state["exp_avg_sq"] = torch.zeros_like(p)
        if beta1 > 0 and "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(p)
        return state


# ------------------------------------------------------------------ the global reduction
def d_sums(dots: list, l1s: list, coef: float) -> tuple[float, float]:
    """Prodigy's two global sums over every tensor: of ``coef * <g, x0 - x>`` (``coef`` is
    ``d / d0 * dlr``) and of ``||s||_1``, in prodigyopt's order of rounding.

    The one place where a distributed run must all-reduce (one host sync per step).
    """
    dots, l1s = L.to_host(dots, l1s)
    return tuple(L.global_sums([L.ordered_sum(coef * v for v in dots), L.ordered_sum(l1s)]))


# --------------------------------------------------------- reference: one tensor at a time
def _accumulate_reference(params, grads, p0s, ss, exp_avgs, exp_avg_sqs, *, d, s_scale, beta1,
                          beta2, beta3, slice_p) -> tuple[list[float], list[float]]:
    """Pass 1: the moments, s, and each tensor's terms of the d sums (readable spec)."""
    dots, l1s = [], []
    for p, g, p0, s, m, v in zip(params, grads, p0s, ss, exp_avgs, exp_avg_sqs):
        sliced_g = g.flatten()[::slice_p]
        dots.append(torch.dot(sliced_g, p0 - p.flatten()[::slice_p]).item())
        if beta1 > 0:
            m.mul_(beta1).add_(g, alpha=d * (1 - beta1))
        v.mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
        s.mul_(beta3).add_(sliced_g, alpha=s_scale)
        l1s.append(s.abs().sum().item())
    return dots, l1s


def _update_reference(params, grads, exp_avgs, exp_avg_sqs, *, dlr, d, eps, decay,
                      beta1) -> None:
    """Pass 2: the parameter step, once the new d is known."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        denom = v.sqrt().add_(d * eps)
        if decay != 0:
            p.add_(p, alpha=-decay * dlr)
        if beta1 > 0:
            p.addcdiv_(m, denom, value=-dlr)
        else:
            p.addcdiv_(g, denom, value=-dlr * d)


# ----------------------------------------------------------- fast: all tensors at once
def _accumulate_fast(params, grads, p0s, ss, exp_avgs, exp_avg_sqs, *, d, s_scale, beta1,
                     beta2, beta3, slice_p) -> tuple[list, list]:
    """Pass 1 with in-place multi-tensor updates and no host sync: the per-tensor sums stay
    on the device, computed by the reference's reduction kernels (d amplifies rounding)."""
    sliced_g = [g.flatten()[::slice_p] for g in grads]
    dots = [torch.dot(g, p0 - p.flatten()[::slice_p])
            for g, p0, p in zip(sliced_g, p0s, params)]
    if beta1 > 0:
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=d * (1 - beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=d * d * (1 - beta2))
    torch._foreach_mul_(ss, beta3)
    torch._foreach_add_(ss, sliced_g, alpha=s_scale)
    return dots, [s.abs().sum() for s in ss]


def _update_fast(params, grads, exp_avgs, exp_avg_sqs, *, dlr, d, eps, decay, beta1) -> None:
    if decay != 0:
        torch._foreach_add_(params, params, alpha=-decay * dlr)
    numerators, scale = (exp_avgs, -dlr) if beta1 > 0 else (grads, -dlr * d)
    for p, num, v in zip(params, numerators, exp_avg_sqs):
        p.addcdiv_(num, v.sqrt().add_(d * eps), value=scale)
