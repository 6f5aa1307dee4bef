r"""D-Adaptation: Adam and SGD whose learning rate is estimated as they train.

Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation" (ICML 2023),
arXiv:2301.07733; step for step the authors' ``dadaptation`` package (3.2). Both keep a lower
bound :math:`d` on the distance :math:`\lVert x_0 - x_*\rVert`, which only grows, and take
steps of size :math:`\eta_k` proportional to it.

**DAdaptAdam**, with :math:`\gamma` = ``lr``, :math:`\rho` = the group's ``layer_scale``,
:math:`\eta_k = d_k\gamma\sqrt{1-\beta_2^{k+1}}/(1-\beta_1^{k+1})` (bias correction only with
``use_bias_correction``) and :math:`\sqrt{\beta_2}` as the weight of the d statistics:

.. math::

    r_{k+1} &= \sqrt{\beta_2}\, r_k + (1-\sqrt{\beta_2})\,
        \textstyle\sum \rho\,\eta_k \langle g_k, s_k / (\sqrt{v_k} + \epsilon)\rangle \\
    m_{k+1} &= \beta_1 m_k + (1-\beta_1)\rho\,\eta_k g_k \qquad
    v_{k+1} = \beta_2 v_k + (1-\beta_2) g_k^2 \qquad
    s_{k+1} = \sqrt{\beta_2}\, s_k + (1-\sqrt{\beta_2})\,\eta_k g_k \\
    \hat d_{k+1} &= r_{k+1} / \bigl((1-\sqrt{\beta_2})
        \textstyle\sum\rho\lVert s_{k+1}\rVert_1\bigr) \\
    d_{k+1} &= \max\bigl(d_k, \min(\hat d_{k+1}, d_k\cdot\mathrm{growth\_rate})\bigr) \\
    x_{k+1} &= x_k - m_{k+1} / (\sqrt{v_{k+1}} + \epsilon)
        \;[-\;\eta_k\lambda x_k \text{ with decoupled weight decay}]

**DAdaptSGD** (dual averaging with momentum :math:`\mu`), with
:math:`\eta_k = d_k\gamma / \lVert g_0\rVert`:

.. math::

    r_{k+1} &= r_k + \eta_k\langle g_k, s_k\rangle \qquad s_{k+1} = s_k + \eta_k g_k \qquad
    \hat d_{k+1} = 2 r_{k+1} / \lVert s_{k+1}\rVert_2 \\
    d_{k+1} &= \max\bigl(d_k, \min(\hat d_{k+1}, d_k\cdot\mathrm{growth\_rate})\bigr) \qquad
    x_{k+1} = \mu x_k + (1-\mu)(x_0 - s_{k+1})

Weight decay is coupled for DAdaptSGD (and for DAdaptAdam unless ``decouple``): it adds
:math:`\lambda x_k` to the gradient (not to :math:`\lVert g_0\rVert`).

Param groups share one :math:`d` (as in ``dadaptation``): the sums run over every group, the
hyperparameters that shape :math:`d` must agree across groups, and a group's ``lr`` is the
common value or 0. Differences from ``dadaptation``: a group with ``lr=0`` is frozen
(``dadaptation`` still applies decoupled weight decay to it); ``p.grad`` is never modified;
DAdaptSGD honours each group's ``weight_decay`` and ``momentum`` (``dadaptation`` applies the
first group's to all); DAdaptSGD does not keep the redundant ``z = x0 - s`` buffer; a step
whose gradients are all zero is skipped (``dadaptation`` divides by zero).
"""
from __future__ import annotations

import logging
import math

import torch

from lrkit import _checks as C
from lrkit.optim import _lrfree as L

logger = logging.getLogger("lrkit.optim")


class _DAdapt(L.SharedDOptimizer):
    """What DAdaptAdam and DAdaptSGD share: argument checks, active groups, the new d."""

    _checks = {
        "lr": C.nonnegative, "eps": C.positive, "weight_decay": C.nonnegative,
        "d0": C.positive, "decouple": C.boolean, "use_bias_correction": C.boolean,
        "log_every": C.nonnegative_int, "layer_scale": C.positive,
        "betas": lambda f, n, v: L.betas(f, v, n),
        "momentum": lambda f, n, v: C.in_range(f, n, v, 0.0, 1.0, high_open=True),
        "growth_rate": lambda f, n, v: L.growth_rate(f, v),
        "fsdp_in_use": lambda f, n, v: L.no_distributed(f, v),
    }

    def _active(self):
        """(group, params with a gradient) for each group with a nonzero lr."""
        for group in self.param_groups:
            params = L.params_with_grad(group) if group["lr"] > 0 else []
            if params:
                self._fsdp_check(params)
                yield group, params

    @staticmethod
    def _new_d(fn: str, d: float, d_hat: float, growth: float) -> float:
        if not math.isfinite(d_hat):
            raise FloatingPointError(
                f"{fn}: the d estimate is not finite ({d_hat}); the optimizer state has "
                "overflowed")
        return max(d, min(d_hat, d * growth))


# ------------------------------------------------------------------------------- Adam
class DAdaptAdam(_DAdapt):
    """Adam with D-Adaptation's estimated step size; the constructor of
    ``dadaptation.DAdaptAdam``.

    ``opt.estimated_lr()`` gives ``d * lr * layer_scale`` per group (the Adam learning rate
    D-Adaptation has arrived at). If ``d`` still equals ``d0`` after ``d_stall_steps`` steps a
    ``DEstimateWarning`` says why (``None`` turns the check off).
    """

    def __init__(self, params, lr: float = 1.0, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, log_every: int = 0, decouple: bool = False,
                 use_bias_correction: bool = False, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 nonfinite: str = "raise", impl: str = "auto",
                 d_stall_steps: int | None = 1000) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, layer_scale=1.0,
                        log_every=log_every, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple, d0=d0,
                        fsdp_in_use=fsdp_in_use, d=d0, k=0, numerator_weighted=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps)

    def estimated_lr(self) -> list[float]:
        """``d * lr * layer_scale`` for each param group (before bias correction)."""
        return [g["d"] * float(g["lr"]) * g["layer_scale"] for g in self.param_groups]

    def _adapt(self) -> None:
        fn = "DAdaptAdam.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        beta1, beta2 = L.shared_value(fn, groups, "betas")
        growth, decouple, use_bc, log_every = (L.shared_value(fn, groups, key) for key in (
            "growth_rate", "decouple", "use_bias_correction", "log_every"))
        first = groups[0]
        k, d = first["k"], first["d"]
        bias_correction = (math.sqrt(1 - beta2 ** (k + 1)) / (1 - beta1 ** (k + 1))
                           if use_bc else 1.0)
        dlr = d * lr * bias_correction
        sqrt_beta2 = beta2 ** 0.5
        accumulate, update = (_adam_accumulate_fast, _adam_update_fast) if self.fast else \
            (_adam_accumulate_reference, _adam_update_reference)

        work, dots, l1s = [], [], []
        for group, params in self._active():
            decay, scale = group["weight_decay"], group["layer_scale"]
            grads = [p.grad for p in params]
            if decay != 0 and not decouple:
                grads = [g.add(p, alpha=decay) for g, p in zip(grads, params)]
            states = [self._state(p) for p in params]
            ms, vs, ss = ([s[key] for s in states] for key in ("exp_avg", "exp_avg_sq", "s"))
            dot, l1 = accumulate(grads, ss, ms, vs, dlr=dlr, scale=scale, eps=group["eps"],
                                 beta1=beta1, beta2=beta2, sqrt_beta2=sqrt_beta2)
            dots.append((scale * dlr, dot))
            l1s.append((scale, l1))
            work.append((group, params, states, ms, vs))

        numerator_acum, sk_l1 = adam_d_sums(dots, l1s)
        numerator = sqrt_beta2 * first["numerator_weighted"] + (1 - sqrt_beta2) * numerator_acum
        if sk_l1 == 0:  # no gradient signal yet (dadaptation returns here too)
            return
        d_hat = numerator / ((1 - sqrt_beta2) * sk_l1)
        d = self._new_d(fn, d, d_hat, growth)
        if log_every > 0 and k % log_every == 0:
            logger.info("DAdaptAdam k=%d lr=%g dlr=%g d_hat=%g d=%g sk_l1=%.1e numerator=%.1e",
                        k, lr, dlr, d_hat, d, sk_l1, numerator)
        for group in groups:
            group.update(numerator_weighted=numerator, d=d, d_hat=d_hat)
        for group, params, states, ms, vs in work:
            update(params, ms, vs, eps=group["eps"],
                   decay=group["weight_decay"] * dlr if decouple else 0.0)
            for s in states:
                s["step"] += 1
        for group in groups:
            group["k"] = k + 1

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
            for key in ("s", "exp_avg", "exp_avg_sq"):
                state[key] = torch.zeros_like(p)
        return state


def adam_d_sums(dots: list, l1s: list) -> tuple[float, float]:
    """DAdaptAdam's two global sums over every tensor, in dadaptation's order of rounding:
    of ``layer_scale * dlr * <g, s / (sqrt(v) + eps)>`` and of ``layer_scale * ||s||_1``.
    Each argument lists (coefficient, per-tensor values) per group. Where a distributed run
    must all-reduce."""
    values = L.to_host(*(v for _, v in dots), *(v for _, v in l1s))
    n = len(dots)
    numerator = L.ordered_sum(c * x for (c, _), vals in zip(dots, values[:n]) for x in vals)
    l1 = L.ordered_sum(c * x for (c, _), vals in zip(l1s, values[n:]) for x in vals)
    return tuple(L.global_sums([numerator, l1]))


def _adam_accumulate_reference(grads, ss, ms, vs, *, dlr, scale, eps, beta1, beta2,
                               sqrt_beta2) -> tuple[list[float], list[float]]:
    """Pass 1 (readable spec): each tensor's terms of the d sums, then the moments and s."""
    dots, l1s = [], []
    for g, s, m, v in zip(grads, ss, ms, vs):
        denom = v.sqrt().add_(eps)
        dots.append(torch.dot(g.flatten(), s.div(denom).flatten()).item())
        m.mul_(beta1).add_(g, alpha=scale * dlr * (1 - beta1))
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        s.mul_(sqrt_beta2).add_(g, alpha=dlr * (1 - sqrt_beta2))
        l1s.append(s.abs().sum().item())
    return dots, l1s


def _adam_update_reference(params, ms, vs, *, eps, decay) -> None:
    """Pass 2: the parameter step (``decay`` is weight_decay * dlr, decoupled, or 0)."""
    for p, m, v in zip(params, ms, vs):
        denom = v.sqrt().add_(eps)
        if decay != 0:
            p.add_(p, alpha=-decay)
        p.addcdiv_(m, denom, value=-1)


def _adam_accumulate_fast(grads, ss, ms, vs, *, dlr, scale, eps, beta1, beta2,
                          sqrt_beta2) -> tuple[list, list]:
    """Pass 1 with in-place multi-tensor updates and no host sync. The per-tensor sums use
    the reference's reduction kernels (``d`` is sensitive to their rounding)."""
    dots = [torch.dot(g.flatten(), s.div(v.sqrt().add_(eps)).flatten())
            for g, s, v in zip(grads, ss, vs)]
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, grads, alpha=scale * dlr * (1 - beta1))
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    torch._foreach_mul_(ss, sqrt_beta2)
    torch._foreach_add_(ss, grads, alpha=dlr * (1 - sqrt_beta2))
    return dots, [s.abs().sum() for s in ss]


def _adam_update_fast(params, ms, vs, *, eps, decay) -> None:
    if decay != 0:
        torch._foreach_add_(params, params, alpha=-decay)
    for p, m, v in zip(params, ms, vs):
        p.addcdiv_(m, v.sqrt().add_(eps), value=-1)


# -------------------------------------------------------------------------------- SGD
class DAdaptSGD(_DAdapt):
    """SGD (dual averaging with momentum) with D-Adaptation's estimated step size; the
    constructor of ``dadaptation.DAdaptSGD``.

    ``opt.estimated_lr()`` gives ``d * lr / ||g_0||`` per group: the SGD learning rate
    D-Adaptation has arrived at (0 before the first step). If ``d`` still equals ``d0``
    after ``d_stall_steps`` steps a ``DEstimateWarning`` says why.
    """

    def __init__(self, params, lr: float = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, log_every: int = 0, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 nonfinite: str = "raise", impl: str = "auto",
                 d_stall_steps: int | None = 1000) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        log_every=log_every, d0=d0, growth_rate=growth_rate,
                        fsdp_in_use=fsdp_in_use, d=d0, k=0, numerator_weighted=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps)

    def estimated_lr(self) -> list[float]:
        """``d * lr / ||g_0||`` for each param group (0 before the first step)."""
        return [g["d"] * float(g["lr"]) / g["g0_norm"] if g.get("g0_norm") else 0.0
                for g in self.param_groups]

    def _adapt(self) -> None:
        fn = "DAdaptSGD.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        growth, log_every = (L.shared_value(fn, groups, key) for key in
                             ("growth_rate", "log_every"))
        first = groups[0]
        k, d = first["k"], first["d"]
        active = list(self._active())
        if k == 0:
            (g_sq,) = L.global_sums([L.ordered_sum(L.to_host(
                [(p.grad * p.grad).sum() for _, params in active for p in params])[0])])
            if g_sq == 0:  # nothing to scale the step by yet; try again next step
                return
            for group in groups:
                group["g0_norm"] = math.sqrt(g_sq)
        g0_norm = first["g0_norm"]
        dlr = d * lr / g0_norm
        accumulate = _sgd_accumulate_fast if self.fast else _sgd_accumulate_reference

        work, dots, sqs = [], [], []
        for group, params in active:
            decay = group["weight_decay"]
            grads = [p.grad for p in params]
            if decay != 0:
                grads = [g.add(p, alpha=decay) for g, p in zip(grads, params)]
            states = [self._state(p) for p in params]
            ss = [s["s"] for s in states]
            dot, sq = accumulate(grads, ss, dlr=dlr)
            dots += dot
            sqs += sq
            work.append((group, params, states, ss))

        numerator, sk_sq = sgd_d_sums(dots, sqs, dlr, first["numerator_weighted"])
        if sk_sq == 0:
            return
        d_hat = 2 * numerator / math.sqrt(sk_sq)
        d = self._new_d(fn, d, d_hat, growth)
        if log_every > 0 and k % log_every == 0:
            logger.info("DAdaptSGD k=%d dlr=%g d_hat=%g d=%g sk_norm=%g numerator=%g g0=%g",
                        k, dlr, d_hat, d, math.sqrt(sk_sq), numerator, g0_norm)
        update = _sgd_update_fast if self.fast else _sgd_update_reference
        for group in groups:
            group.update(numerator_weighted=numerator, d=d, d_hat=d_hat)
        for group, params, states, ss in work:
            update(params, [s["x0"] for s in states], ss, momentum=group["momentum"])
        for group in groups:
            group["k"] = k + 1

    def _state(self, p: torch.Tensor) -> dict:
        state = self.state[p]
        if "s" not in state:
            state["s"] = torch.zeros_like(p)
            state["x0"] = p.detach().clone()
        return state


def sgd_d_sums(dots: list, sqs: list, dlr: float, numerator: float) -> tuple[float, float]:
    """DAdaptSGD's global sums over every tensor, in dadaptation's order of rounding: the
    numerator ``numerator + sum of dlr * <g, s>`` and ``||s||^2``. Where a distributed run
    must all-reduce (and the first step's ``||g_0||^2``)."""
    dots, sqs = L.to_host(dots, sqs)
    numerator = L.ordered_sum((dlr * v for v in dots), start=numerator)
    return tuple(L.global_sums([numerator, L.ordered_sum(sqs)]))


def _sgd_accumulate_reference(grads, ss, *, dlr) -> tuple[list[float], list[float]]:
    """Pass 1 (readable spec): each tensor's <g, s>, then s and its squared norm."""
    dots, sqs = [], []
    for g, s in zip(grads, ss):
        dots.append(torch.dot(g.flatten(), s.flatten()).item())
        s.add_(g, alpha=dlr)
        sqs.append((s * s).sum().item())
    return dots, sqs


def _sgd_update_reference(params, x0s, ss, *, momentum) -> None:
    """Pass 2: x <- momentum x + (1 - momentum) (x0 - s), in dadaptation's operation order."""
    ck = 1 - momentum
    for p, x0, s in zip(params, x0s, ss):
        p.mul_(1 - ck).add_(x0 - s, alpha=ck)


def _sgd_accumulate_fast(grads, ss, *, dlr) -> tuple[list, list]:
    dots = [torch.dot(g.flatten(), s.flatten()) for g, s in zip(grads, ss)]
    torch._foreach_add_(ss, grads, alpha=dlr)
    return dots, [(s * s).sum() for s in ss]


def _sgd_update_fast(params, x0s, ss, *, momentum) -> None:
    ck = 1 - momentum
    torch._foreach_mul_(params, 1 - ck)
    for p, x0, s in zip(params, x0s, ss):
        p.add_(x0 - s, alpha=ck)
