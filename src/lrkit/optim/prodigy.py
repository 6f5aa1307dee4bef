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

Implementations: the reference (``impl="reference"``) runs ``prodigyopt``'s operations and
equals it bit for bit; lrkit's kernel (the default for dense CPU float32/float64 tensors)
makes two passes (the moments, :math:`s` and the per-tensor sums; then, with the new
:math:`d`, the weights), runs the same elementwise arithmetic and takes the sums in float64,
so :math:`d` equals the reference's to its float32 rounding; ``"foreach"`` runs torch's
multi-tensor ops with one host sync per step (the default on GPUs).

``effective_lr()`` is :math:`\eta_k d_k / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)` elementwise,
the multiplier on the direction :math:`m_{k+1} / d_k` (the moments carry :math:`d` and
:math:`d^2`: this is the momentum in gradient units, and the multiplier compares with
Adam's ``lr / (sqrt(v) + eps)``); with ``beta1 = 0``,
:math:`\eta_k d_{k+1} / (\sqrt{v_{k+1}} + d_{k+1}\epsilon)` on the gradient.
"""
from __future__ import annotations

import math
import operator
from itertools import repeat
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim import _lrfree as L
from lrkit.optim.base import Explained, scalar


def _start_momentum(state: dict, p: Tensor) -> None:
    """``exp_avg`` made (zeros) where it is missing: beta1 scheduled up from 0."""
    if "exp_avg" not in state:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class Prodigy(L.SharedDOptimizer):
    """Adam with Prodigy's estimated step size; the constructor of ``prodigyopt.Prodigy``.

    ``opt.estimated_lr()`` gives ``d * lr`` per group (the Adam learning rate Prodigy has
    arrived at). If ``d`` still equals ``d0`` after ``d_stall_steps`` steps a
    ``DEstimateWarning`` says why (``None`` turns the check off). ``fsdp_in_use=True``
    (``prodigyopt``'s switch) is ``sharded=True``: see :mod:`lrkit.optim._lrfree`.
    State per tensor: ``step``, ``s``, ``p0``, ``exp_avg_sq``, ``exp_avg`` (beta1 > 0), as
    ``prodigyopt``; ``d``, ``d_max``, ``d_numerator``, ``k``... in each param group.
    """

    lr_free = True
    recommended_lr = 1.0
    recommended_family = "cosine"  # the authors: lr=1 with cosine annealing
    kernel = "prodigy"
    grad_power = 2  # exp_avg_sq holds d^2 g^2
    _checks = {
        "lr": L.lr_check, "eps": C.positive, "weight_decay": C.nonnegative,
        "d0": C.positive, "d_coef": C.positive, "slice_p": C.positive_int,
        "decouple": C.boolean, "use_bias_correction": C.boolean,
        "safeguard_warmup": C.boolean, "betas": L.betas,
        "beta3": lambda f, n, v: None if v is None else C.in_range(f, n, v, 0.0, 1.0),
        "growth_rate": L.growth_rate,
    }

    def __init__(self, params: Any, lr: float | Tensor = 1.0,
                 betas: tuple[float, float] = (0.9, 0.999), beta3: float | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                 use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = math.inf,
                 fsdp_in_use: bool = False, slice_p: int = 1, *, nonfinite: str = "raise",
                 impl: str = "auto", d_stall_steps: int | None = 1000,
                 sharded: Any = False) -> None:
        defaults = dict(
            lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, d0=d0,
            d_coef=d_coef, growth_rate=growth_rate, use_bias_correction=use_bias_correction,
            decouple=decouple, safeguard_warmup=safeguard_warmup, fsdp_in_use=fsdp_in_use,
            slice_p=slice_p, d=d0, d_max=d0, d_numerator=0.0, k=0)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl,
                         d_stall_steps=d_stall_steps, sharded=sharded,
                         fsdp_in_use=fsdp_in_use)

    def estimated_lr(self) -> list[float]:
        """``d * lr`` for each param group (the step size of the next step, before bias
        correction)."""
        return [g["d"] * float(scalar(g["lr"])) for g in self.param_groups]

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        sliced = p.detach().flatten()[::group["slice_p"]]
        # an all-zero tensor keeps a 0-dim p0 (as prodigyopt does, to save memory)
        p0 = sliced.clone() if p.any() else torch.zeros((), dtype=p.dtype, device=p.device)
        state = {"step": 0, "s": torch.zeros_like(sliced), "p0": p0,
                 "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}
        if scalar(group["betas"][0]) > 0:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _state_shapes(self, group: dict[str, Any], p: Tensor) -> dict[str, tuple]:
        """``s`` and ``p0`` hold every ``slice_p``-th entry of the flattened parameter
        (``p0`` is 0-dim for a parameter that was all zeros at the first step)."""
        n = len(range(0, p.numel(), group["slice_p"]))
        return {"s": ((n,),), "p0": ((n,), ())}

    def _adapt(self, work: list[L.Work]) -> None:
        fn = "Prodigy.step()"
        groups = self.param_groups
        lr = L.shared_lr(fn, groups)
        beta1, beta2 = (float(scalar(b)) for b in L.shared_value(fn, groups, "betas"))
        beta3 = L.shared_value(fn, groups, "beta3")
        beta3 = math.sqrt(beta2) if beta3 is None else beta3
        d0, d_coef, growth, decouple, use_bc = (L.shared_value(fn, groups, key) for key in (
            "d0", "d_coef", "growth_rate", "decouple", "use_bias_correction"))
        first = groups[0]
        k, d, d_max = first["k"], first["d"], first["d_max"]
        bias_correction = (((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))
                           if use_bc else 1)
        dlr = d * lr * bias_correction

        active = self._active(work)
        dots, l1s, grads_of = [], [], {}
        columns = {}  # id(batch) -> its state columns, read and checked once a step
        for w in active:
            group = w.group
            decay, slice_p = group["weight_decay"], group["slice_p"]
            coupled = decay != 0 and not decouple
            sts = w.states(self)
            if beta1 > 0 and not all(map(operator.contains, sts, repeat("exp_avg"))):
                for p, st in zip(w.params, sts):
                    _start_momentum(st, p)
            s_scale = (d / d0) * (d if group["safeguard_warmup"] else dlr)
            sums: dict[int, Any] = {}
            for b in w.batches:
                cols = K.state_columns(self, b, ("p0", "s", "exp_avg" if beta1 > 0 else None,
                                                 "exp_avg_sq"), w.group)
                if cols.derived is None:  # a 0-dim p0: the parameter was all zeros
                    cols.derived = [int(t.dim() == 0) for t in cols.tensors[0]]
                columns[id(b)] = cols
                flat = K.call(
                    self, b, cols,
                    [beta1, beta2, beta3, d * (1 - beta1), d * d * (1 - beta2), s_scale,
                     decay if coupled else 0.0],
                    K.F_ACC | K.F_WD * coupled | K.F_MOMENTUM * (beta1 > 0), nout=2,
                    first=cols.derived, ival=slice_p)
                if w.single is not None:
                    dots += flat[0::2]
                    l1s += flat[1::2]
                    continue
                sums.update(L.kernel_sums(b, flat, 2))
            if w.single is not None:
                continue
            if w.rest:
                grads = [g.add(p, alpha=decay) if coupled else g
                         for p, g in zip(w.rest, w.rest_grads)]
                grads_of.update((id(p), g) for p, g in zip(w.rest, grads))
                sts = [self._state(p, beta1) for p in w.rest]
                accumulate = (_accumulate_reference if self._path(w.rest) == "reference"
                              else _accumulate_foreach)
                dot, l1 = accumulate(
                    w.rest, grads, [s["p0"] for s in sts], [s["s"] for s in sts],
                    [s.get("exp_avg") for s in sts], [s["exp_avg_sq"] for s in sts],
                    d=d, s_scale=s_scale, beta1=beta1, beta2=beta2, beta3=beta3,
                    slice_p=slice_p)
                sums.update((id(p), (a, b)) for p, a, b in zip(w.rest, dot, l1))
            for dot_l1 in w.ordered(sums):
                dots.append(dot_l1[0])
                l1s.append(dot_l1[1])

        delta, denom = d_sums(dots, l1s, (d / d0) * dlr, self._process_group())
        if denom == 0:  # no gradient signal yet (prodigyopt returns here too)
            return
        numerator = first["d_numerator"] * beta3 + delta
        d_hat = d_coef * numerator / denom
        if not math.isfinite(d_hat):
            raise L.not_finite(fn, f"numerator {numerator:.3g}, denominator {denom:.3g}")
        if d == d0:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d = min(d_max, d * growth)
        for group in groups:
            group.update(d_numerator=numerator, d_denom=denom, d=d, d_max=d_max, d_hat=d_hat)

        for w in active:
            group = w.group
            decay, eps = group["weight_decay"], group["eps"]
            coupled = decay != 0 and not decouple
            ndec = -decay * dlr if decay != 0 and decouple else 0.0
            for b in w.batches:
                # the first pass's columns: nothing but this step has run since they were
                # checked against the state
                kept = columns.get(id(b))
                cols = [None, None, *kept.arrays[2:]] if kept is not None else K.state_columns(
                    self, b, (None, None, "exp_avg" if beta1 > 0 else None, "exp_avg_sq"),
                    w.group)
                K.call(self, b, cols,
                       [-dlr if beta1 > 0 else -dlr * d, d * eps, ndec,
                        decay if coupled else 0.0],
                       K.F_UPD | K.F_FORWARD | K.F_MOMENTUM * (beta1 > 0)
                       | K.F_WD * (decay != 0) | K.F_DECOUPLED * bool(decouple),
                       writes_params=True)
            if w.rest:
                sts = [self.state[p] for p in w.rest]
                update = (_update_reference if self._path(w.rest) == "reference"
                          else _update_foreach)
                update(w.rest, [grads_of[id(p)] for p in w.rest],
                       [s.get("exp_avg") for s in sts], [s["exp_avg_sq"] for s in sts],
                       dlr=dlr, d=d, eps=eps, decay=decay if ndec else 0.0,
                       beta1=beta1)
            for st in w.states(self):
                st["step"] += 1
            self._last[w.index]["d_next"] = d
        for group in groups:
            group["k"] = k + 1

    def _state(self, p: Tensor, beta1: float) -> dict:
        state = self.state[p]
        if beta1 > 0:
            _start_momentum(state, p)
        return state

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        """eta = dlr d / (sqrt(v) + d' eps) on exp_avg / d, the momentum in gradient units
        (``dlr`` = d lr [bias correction] of the step, d' the d after it; Prodigy's moments
        carry d and d^2); with beta1 = 0, dlr d' / (sqrt(v) + d' eps) on the gradient."""
        beta1, beta2 = hp["betas"]
        k, d, lr = hp["k"], hp["d"], hp["lr"]
        d_next = hp.get("d_next", d)
        bc = ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1)) \
            if hp["use_bias_correction"] else 1
        dlr = d * lr * bc
        w = p.detach()
        eta = dlr / (state["exp_avg_sq"].sqrt() + d_next * hp["eps"])
        wd = hp["weight_decay"]
        if beta1 > 0:
            eta = eta * d
            direction = state["exp_avg"] / d
        else:
            eta = eta * d_next
            g = self._grad(p, hp)
            if wd != 0 and not hp["decouple"]:  # the decay of the weight before the step
                direction = g + wd * ((w + eta * g) / (1 - eta * wd))
            else:
                direction = g
        if wd != 0 and hp["decouple"]:
            decay = dlr * wd * (w + eta * direction) / (1 - dlr * wd)
            return Explained(eta, direction, decay, -eta * direction - decay)
        return Explained(eta, direction, 0.0, -eta * direction)


# ------------------------------------------------------------------ the global reduction
def d_sums(dots: list, l1s: list, coef: float, group: Any = None) -> tuple[float, float]:
    """Prodigy's two global sums over every tensor: of ``coef * <g, x0 - x>`` (``coef`` is
    ``d / d0 * dlr``) and of ``||s||_1``, in prodigyopt's order of rounding; all-reduced
    over ``group`` when the parameters are sharded (one host sync per step)."""
    dots, l1s = L.to_host(dots, l1s)
    return tuple(L.global_sums([L.ordered_sum(coef * v for v in dots), L.ordered_sum(l1s)],
                               group))


# --------------------------------------------------------- reference: one tensor at a time
def _accumulate_reference(params, grads, p0s, ss, exp_avgs, exp_avg_sqs, *, d, s_scale, beta1,
                          beta2, beta3, slice_p) -> tuple[list[float], list[float]]:
    """Pass 1: the moments, s, and each tensor's terms of the d sums (readable spec)."""
    dots, l1s = [], []
    for p, g, p0, s, m, v in zip(params, grads, p0s, ss, exp_avgs, exp_avg_sqs):
        sliced_g = g.flatten()[::slice_p]
        dots.append(torch.dot(sliced_g, p0 - p.detach().flatten()[::slice_p]).item())
        if beta1 > 0:
            m.mul_(beta1).add_(g, alpha=d * (1 - beta1))
        v.mul_(beta2).addcmul_(g, g, value=d * d * (1 - beta2))
        s.mul_(beta3).add_(sliced_g, alpha=s_scale)
        l1s.append(s.abs().sum().item())
    return dots, l1s


def _update_reference(params, grads, exp_avgs, exp_avg_sqs, *, dlr, d, eps, decay,
                      beta1) -> None:
    """Pass 2: the parameter step, once the new d is known (``decay``: decoupled, or 0)."""
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        denom = v.sqrt().add_(d * eps)
        if decay != 0:
            p.add_(p, alpha=-decay * dlr)
        if beta1 > 0:
            p.addcdiv_(m, denom, value=-dlr)
        else:
            p.addcdiv_(g, denom, value=-dlr * d)


# -------------------------------------------------------- foreach: all tensors at once
def _accumulate_foreach(params, grads, p0s, ss, exp_avgs, exp_avg_sqs, *, d, s_scale, beta1,
                        beta2, beta3, slice_p) -> tuple[list, list]:
    """Pass 1 with in-place multi-tensor updates and no host sync: the per-tensor sums stay
    on the device, computed by the reference's reduction kernels."""
    sliced_g = [g.flatten()[::slice_p] for g in grads]
    dots = [torch.dot(g, p0 - p.detach().flatten()[::slice_p])
            for g, p0, p in zip(sliced_g, p0s, params)]
    if beta1 > 0:
        torch._foreach_mul_(exp_avgs, beta1)
        torch._foreach_add_(exp_avgs, grads, alpha=d * (1 - beta1))
    torch._foreach_mul_(exp_avg_sqs, beta2)
    torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=d * d * (1 - beta2))
    torch._foreach_mul_(ss, beta3)
    torch._foreach_add_(ss, sliced_g, alpha=s_scale)
    return dots, [s.abs().sum() for s in ss]


def _update_foreach(params, grads, exp_avgs, exp_avg_sqs, *, dlr, d, eps, decay,
                    beta1) -> None:
    if decay != 0:
        torch._foreach_add_(params, params, alpha=-decay * dlr)
    numerators, scale = (exp_avgs, -dlr) if beta1 > 0 else (grads, -dlr * d)
    for p, num, v in zip(params, numerators, exp_avg_sqs):  # one temporary at a time
        p.addcdiv_(num, v.sqrt().add_(d * eps), value=scale)
