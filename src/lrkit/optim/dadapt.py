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

Implementations: the reference (``impl="reference"``) runs ``dadaptation``'s operations and
equals it bit for bit; lrkit's kernel (the default for dense CPU float32/float64 tensors)
runs the same elementwise arithmetic in one pass over the tensors (the update needs no new
:math:`d`: it reads only the moments) and takes the sums in float64, so :math:`d` equals
the reference's to its float32 rounding; ``"foreach"`` runs torch's multi-tensor ops with
one host sync per step (the default on GPUs). (A first step with decoupled weight decay,
or DAdaptSGD's first step, takes two passes: the reference skips the update when every
gradient so far is zero, which is known only after the sums.)

``effective_lr()``: DAdaptAdam's is :math:`\rho\,\eta_k / (\sqrt{v_{k+1}}+\epsilon)`
elementwise on the direction :math:`m_{k+1} / (\rho\,\eta_k)` (the momentum in gradient
units); DAdaptSGD's is :math:`(1-\mu)\,\eta_k` for every element, on the direction of the
dual-averaging step (the gradient plus the pull of the momentum toward the average).
"""
from __future__ import annotations

import logging
import math
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim import _lrfree as L
from lrkit.optim.base import Explained, scalar, uniform

logger = logging.getLogger("lrkit.optim")


class _DAdapt(L.SharedDOptimizer):
    """What DAdaptAdam and DAdaptSGD share: argument checks, the new d."""

    _checks = {
        "lr": L.lr_check, "eps": C.positive, "weight_decay": C.nonnegative,
        "d0": C.positive, "decouple": C.boolean, "use_bias_correction": C.boolean,
        "log_every": C.nonnegative_int, "layer_scale": C.positive, "betas": L.betas,
        "momentum": lambda f, n, v: C.in_range(f, n, v, 0.0, 1.0, high_open=True),
        "growth_rate": L.growth_rate,
    }

    @staticmethod
    def _new_d(fn: str, d: float, d_hat: float, growth: float) -> float:
        if not math.isfinite(d_hat):
            raise L.not_finite(fn, str(d_hat))
        return max(d, min(d_hat, d * growth))


# ------------------------------------------------------------------------------- Adam
class DAdaptAdam(_DAdapt):
    """Adam with D-Adaptation's estimated step size; the constructor of
    ``dadaptation.DAdaptAdam``.

    ``opt.estimated_lr()`` gives ``d * lr * layer_scale`` per group (the Adam learning rate
    D-Adaptation has arrived at). If ``d`` still equals ``d0`` after ``d_stall_steps`` steps a
    ``DEstimateWarning`` says why (``None`` turns the check off). ``fsdp_in_use=True`` is
    ``sharded=True`` (see :mod:`lrkit.optim._lrfree`). A group may set ``layer_scale`` (a
    factor on its step, as in ``dadaptation``).
    """

    lr_free = True
    recommended_lr = 1.0
    recommended_family = "cosine"  # the authors: lr=1 with cosine annealing
    kernel = "dadapt_adam"
    grad_power = 2  # exp_avg_sq holds the squared gradient

    def __init__(self, params: Any, lr: float | Tensor = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, log_every: int = 0, decouple: bool = False,
                 use_bias_correction: bool = False, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 nonfinite: str = "raise", impl: str = "auto",
                 d_stall_steps: int | None = 1000, sharded: Any = False) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, layer_scale=1.0,
                        log_every=log_every, growth_rate=growth_rate,
                        use_bias_correction=use_bias_correction, decouple=decouple, d0=d0,
                        fsdp_in_use=fsdp_in_use, d=d0, k=0, numerator_weighted=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps, sharded=sharded,
                         fsdp_in_use=fsdp_in_use)

    def estimated_lr(self) -> list[float]:
        """``d * lr * layer_scale`` for each param group (before bias correction)."""
        return [g["d"] * float(scalar(g["lr"])) * g["layer_scale"] for g in self.param_groups]

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        zeros = [torch.zeros_like(p, memory_format=torch.preserve_format) for _ in range(3)]
        return {"step": 0, "s": zeros[0], "exp_avg": zeros[1], "exp_avg_sq": zeros[2]}

    def _adapt(self, work: list[L.Work]) -> None:
        fn = "DAdaptAdam.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        beta1, beta2 = (float(scalar(b)) for b in L.shared_value(fn, groups, "betas"))
        growth, decouple, use_bc, log_every = (L.shared_value(fn, groups, key) for key in (
            "growth_rate", "decouple", "use_bias_correction", "log_every"))
        first = groups[0]
        k, d = first["k"], first["d"]
        bias_correction = (((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
                           if use_bc else 1)
        dlr = d * lr * bias_correction
        sqrt_beta2 = beta2 ** 0.5
        # one pass, unless the reference could still skip the update of a decoupled decay
        fused = k > 0 or not (decouple and any(g["weight_decay"] != 0 for g in groups))

        active = self._active(work)
        dots, l1s, pending = [], [], []
        for w in active:
            group = w.group
            decay, scale, eps = group["weight_decay"], group["layer_scale"], group["eps"]
            coupled = decay != 0 and not decouple
            ndec = -decay * dlr if decay != 0 and decouple else 0.0
            sums: dict[int, Any] = {}
            flags = (K.F_ACC | K.F_UPD * fused | K.F_WD * (decay != 0)
                     | K.F_DECOUPLED * bool(decouple))
            hp = [eps, beta1, beta2, sqrt_beta2, scale * dlr * (1 - beta1), 1 - beta2,
                  dlr * (1 - sqrt_beta2), decay if coupled else 0.0, ndec]
            for b in w.batches:
                cols = K.state_columns(self, b, ("s", "exp_avg", "exp_avg_sq"), w.group)
                flat = K.call(self, b, cols, hp, flags, nout=2, writes_params=fused)
                if not fused:
                    pending.append((b, cols, hp, flags & ~K.F_ACC | K.F_UPD | K.F_FORWARD))
                if w.single is not None:  # the group's tensors, in order
                    dots.extend(zip(repeat(scale * dlr), flat[0::2]))
                    l1s.extend(zip(repeat(scale), flat[1::2]))
                else:
                    sums.update(L.kernel_sums(b, flat, 2))
            if w.single is not None:
                continue
            if w.rest:
                grads = [g.add(p, alpha=decay) if coupled else g
                         for p, g in zip(w.rest, w.rest_grads)]
                ms, vs, ss = ([self.state[p][key] for p in w.rest]
                              for key in ("exp_avg", "exp_avg_sq", "s"))
                ref = self._path(w.rest) == "reference"
                dot, l1 = (_adam_accumulate_reference if ref else _adam_accumulate_foreach)(
                    grads, ss, ms, vs, dlr=dlr, scale=scale, eps=eps, beta1=beta1,
                    beta2=beta2, sqrt_beta2=sqrt_beta2)
                sums.update((id(p), (a, b)) for p, a, b in zip(w.rest, dot, l1))
                pending.append((w.rest, ms, vs, eps, decay * dlr if ndec else 0.0, ref))
            for dot_l1 in w.ordered(sums):
                dots.append((scale * dlr, dot_l1[0]))
                l1s.append((scale, dot_l1[1]))

        numerator_acum, sk_l1 = adam_d_sums(dots, l1s, self._process_group())
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
        for item in pending:
            if isinstance(item[0], K.Batch):
                b, cols, hp, flags = item
                K.call(self, b, cols, hp, flags, nout=2, writes_params=True)
            else:
                params, ms, vs, eps, decay, ref = item
                (_adam_update_reference if ref else _adam_update_foreach)(
                    params, ms, vs, eps=eps, decay=decay)
        for w in active:
            for st in w.states(self):
                st["step"] += 1
        for group in groups:
            group["k"] = k + 1

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        beta1, beta2 = hp["betas"]
        k, d, lr = hp["k"], hp["d"], hp["lr"]
        bc = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) \
            if hp["use_bias_correction"] else 1
        dlr = d * lr * bc
        step = hp["layer_scale"] * dlr
        eta = step / (state["exp_avg_sq"].sqrt() + hp["eps"])
        direction = state["exp_avg"] / step
        wd = hp["weight_decay"]
        if wd != 0 and hp["decouple"]:
            decay = dlr * wd * (p.detach() + eta * direction) / (1 - dlr * wd)
            return Explained(eta, direction, decay, -eta * direction - decay)
        return Explained(eta, direction, 0.0, -eta * direction)


def adam_d_sums(dots: list, l1s: list, group: Any = None) -> tuple[float, float]:
    """DAdaptAdam's two global sums over every tensor, in dadaptation's order of rounding:
    of ``layer_scale * dlr * <g, s / (sqrt(v) + eps)>`` and of ``layer_scale * ||s||_1``.
    Each argument lists (coefficient, per-tensor value) pairs; all-reduced over ``group``
    when the parameters are sharded."""
    values = L.to_host([v for _, v in dots], [v for _, v in l1s])
    numerator = L.ordered_sum(c * x for (c, _), x in zip(dots, values[0]))
    l1 = L.ordered_sum(c * x for (c, _), x in zip(l1s, values[1]))
    return tuple(L.global_sums([numerator, l1], group))


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


def _adam_accumulate_foreach(grads, ss, ms, vs, *, dlr, scale, eps, beta1, beta2,
                             sqrt_beta2) -> tuple[list, list]:
    """Pass 1 with in-place multi-tensor updates and no host sync; the per-tensor sums use
    the reference's reduction kernels."""
    dots = [torch.dot(g.flatten(), s.div(v.sqrt().add_(eps)).flatten())
            for g, s, v in zip(grads, ss, vs)]
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, grads, alpha=scale * dlr * (1 - beta1))
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1 - beta2)
    torch._foreach_mul_(ss, sqrt_beta2)
    torch._foreach_add_(ss, grads, alpha=dlr * (1 - sqrt_beta2))
    return dots, [s.abs().sum() for s in ss]


def _adam_update_foreach(params, ms, vs, *, eps, decay) -> None:
    if decay != 0:
        torch._foreach_add_(params, params, alpha=-decay)
    for p, m, v in zip(params, ms, vs):  # one temporary at a time
        p.addcdiv_(m, v.sqrt().add_(eps), value=-1)


# -------------------------------------------------------------------------------- SGD
class DAdaptSGD(_DAdapt):
    """SGD (dual averaging with momentum) with D-Adaptation's estimated step size; the
    constructor of ``dadaptation.DAdaptSGD``.

    ``opt.estimated_lr()`` gives ``d * lr / ||g_0||`` per group: the SGD learning rate
    D-Adaptation has arrived at (0 before the first step). If ``d`` still equals ``d0``
    after ``d_stall_steps`` steps a ``DEstimateWarning`` says why. State per tensor: ``s``
    and ``x0``.
    """

    lr_free = True
    recommended_lr = 1.0
    recommended_family = "cosine"  # the authors: lr=1 with cosine annealing
    kernel = "dadapt_sgd"

    def __init__(self, params: Any, lr: float | Tensor = 1.0, momentum: float = 0.0,
                 weight_decay: float = 0.0, log_every: int = 0, d0: float = 1e-6,
                 growth_rate: float = math.inf, fsdp_in_use: bool = False, *,
                 nonfinite: str = "raise", impl: str = "auto",
                 d_stall_steps: int | None = 1000, sharded: Any = False) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                        log_every=log_every, d0=d0, growth_rate=growth_rate,
                        fsdp_in_use=fsdp_in_use, d=d0, k=0, numerator_weighted=0.0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps, sharded=sharded,
                         fsdp_in_use=fsdp_in_use)

    def estimated_lr(self) -> list[float]:
        """``d * lr / ||g_0||`` for each param group (0 before the first step)."""
        return [g["d"] * float(scalar(g["lr"])) / g["g0_norm"] if g.get("g0_norm") else 0.0
                for g in self.param_groups]

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"s": torch.zeros_like(p, memory_format=torch.preserve_format),
                "x0": p.detach().clone()}

    def _adapt(self, work: list[L.Work]) -> None:
        fn = "DAdaptSGD.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        growth, log_every = (L.shared_value(fn, groups, key) for key in
                             ("growth_rate", "log_every"))
        first = groups[0]
        k, d = first["k"], first["d"]
        active = self._active(work)
        reduce_over = self._process_group()
        if k == 0:
            sqs = []
            for w in active:
                sums = {}
                for b in w.batches:
                    sums.update(L.kernel_sums(b, K.call(self, b, [None, None], [0.0] * 4,
                                                        K.F_GSQ, nout=2), 2))
                sums.update((id(p), ((g * g).sum(), 0.0)) for p, g in
                            zip(w.rest, w.rest_grads))
                sqs += [v[0] for v in w.ordered(sums)]
            (g_sq,) = L.global_sums([L.ordered_sum(L.to_host(sqs)[0])], reduce_over)
            if g_sq == 0:  # nothing to scale the step by yet; try again next step
                return
            for group in groups:
                group["g0_norm"] = math.sqrt(g_sq)
        g0_norm = first["g0_norm"]
        dlr = d * lr / g0_norm
        fused = k > 0  # the first step's update waits for ||s|| > 0

        dots, sqs, pending = [], [], []
        for w in active:
            decay, momentum = w.group["weight_decay"], w.group["momentum"]
            ck = 1 - momentum
            sums: dict[int, Any] = {}
            hp = [dlr, decay, ck, 1 - ck]
            flags = K.F_ACC | K.F_UPD * fused | K.F_WD * (decay != 0)
            for b in w.batches:
                cols = K.state_columns(self, b, ("s", "x0"), w.group)
                flat = K.call(self, b, cols, hp, flags, nout=2, writes_params=fused)
                if not fused:
                    pending.append((b, cols, hp, K.F_UPD | K.F_FORWARD))
                if w.single is not None:  # the group's tensors, in order
                    dots += flat[0::2]
                    sqs += flat[1::2]
                else:
                    sums.update(L.kernel_sums(b, flat, 2))
            if w.single is not None:
                continue
            if w.rest:
                grads = [g.add(p, alpha=decay) if decay != 0 else g
                         for p, g in zip(w.rest, w.rest_grads)]
                ss = [self.state[p]["s"] for p in w.rest]
                ref = self._path(w.rest) == "reference"
                dot, sq = (_sgd_accumulate_reference if ref else _sgd_accumulate_foreach)(
                    grads, ss, dlr=dlr)
                sums.update((id(p), (a, b)) for p, a, b in zip(w.rest, dot, sq))
                pending.append((w.rest, [self.state[p]["x0"] for p in w.rest], ss, momentum,
                                ref))
            for dot_sq in w.ordered(sums):
                dots.append(dot_sq[0])
                sqs.append(dot_sq[1])

        numerator, sk_sq = sgd_d_sums(dots, sqs, dlr, first["numerator_weighted"],
                                      reduce_over)
        if sk_sq == 0:
            return
        d_hat = 2 * numerator / math.sqrt(sk_sq)
        d = self._new_d(fn, d, d_hat, growth)
        if log_every > 0 and k % log_every == 0:
            logger.info("DAdaptSGD k=%d dlr=%g d_hat=%g d=%g sk_norm=%g numerator=%g g0=%g",
                        k, dlr, d_hat, d, math.sqrt(sk_sq), numerator, g0_norm)
        for group in groups:
            group.update(numerator_weighted=numerator, d=d, d_hat=d_hat)
        for item in pending:
            if isinstance(item[0], K.Batch):
                b, cols, hp, flags = item
                K.call(self, b, cols, hp, flags, writes_params=True)
            else:
                params, x0s, ss, momentum, ref = item
                (_sgd_update_reference if ref else _sgd_update_foreach)(
                    params, x0s, ss, momentum=momentum)
        for w in active:
            self._last[w.index]["g0_norm"] = g0_norm
        for group in groups:
            group["k"] = k + 1

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        """eta = (1 - momentum) dlr, uniform; the direction is the step over eta."""
        dlr = hp["d"] * hp["lr"] / hp["g0_norm"]
        mom, wd = hp["momentum"], hp["weight_decay"]
        ck = 1 - mom
        w, x0, s = p.detach(), state["x0"], state["s"]
        if mom > 0:  # w = mom w_prev + ck (x0 - s)
            prev = (w - ck * (x0 - s)) / mom
        else:  # w_prev = x0 - s_prev, s = s_prev + dlr (g + wd w_prev)
            prev = (x0 - s + dlr * self._grad(p, hp)) / (1 - dlr * wd)
        eta = ck * dlr
        update = w - prev
        return Explained(uniform(eta, w), -update / eta, 0.0, update)


def sgd_d_sums(dots: list, sqs: list, dlr: float, numerator: float,
               group: Any = None) -> tuple[float, float]:
    """DAdaptSGD's global sums over every tensor, in dadaptation's order of rounding: the
    numerator ``numerator + sum of dlr * <g, s>`` and ``||s||^2``, all-reduced over
    ``group`` when the parameters are sharded (the running numerator is global already:
    only this step's terms are reduced)."""
    dots, sqs = L.to_host(dots, sqs)
    step_terms, sk_sq = L.global_sums([L.ordered_sum(dlr * v for v in dots),
                                       L.ordered_sum(sqs)], group)
    if group is None:  # as dadaptation adds: term by term onto the running numerator
        return L.ordered_sum((dlr * v for v in dots), start=numerator), sk_sq
    return numerator + step_terms, sk_sq


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


def _sgd_accumulate_foreach(grads, ss, *, dlr) -> tuple[list, list]:
    dots = [torch.dot(g.flatten(), s.flatten()) for g, s in zip(grads, ss)]
    torch._foreach_add_(ss, grads, alpha=dlr)
    return dots, [(s * s).sum() for s in ss]


def _sgd_update_foreach(params, x0s, ss, *, momentum) -> None:
    ck = 1 - momentum
    torch._foreach_mul_(params, 1 - ck)
    for p, x0, s in zip(params, x0s, ss):
        p.add_(x0 - s, alpha=ck)
