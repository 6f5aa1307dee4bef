"""Adaptive per-parameter learning rates from squared-gradient statistics: Adagrad,
Adadelta, RMSprop."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.adadelta import adadelta as _torch_adadelta
from torch.optim.adagrad import adagrad as _torch_adagrad
from torch.optim.rmsprop import rmsprop as _torch_rmsprop

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim.base import (
    Explained,
    LrkitOptimizer,
    add_,
    addcdiv_,
    check_lr,
    functional_lr,
    scalar,
    step_tensor,
    value,
)


def _zeros(p: Tensor) -> Tensor:
    return torch.zeros_like(p, memory_format=torch.preserve_format)


class Adagrad(LrkitOptimizer):
    r"""Adagrad (Duchi, Hazan & Singer, 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization"), as ``torch.optim.Adagrad`` (state ``step``,
    ``sum``, created at construction as torch does)::

        g_t = grad + lambda * w_{t-1}
        s_t = s_{t-1} + g_t^2                       (s_0 = initial_accumulator_value)
        w_t = w_{t-1} - lr / (1 + (t - 1) lr_decay) * g_t / (sqrt(s_t) + eps)

    ``effective_lr()`` is ``lr / (1 + (t - 1) lr_decay) / (sqrt(s_t) + eps)`` on the
    direction ``g_t`` (``explain()`` reads ``p.grad``).
    """

    torch_name = "Adagrad"
    torch_fused = True
    kernel = "adagrad"
    supports_sparse = True
    grad_power = 2
    dtensor = "elementwise"

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, lr_decay: float = 0,
                 weight_decay: float = 0, initial_accumulator_value: float = 0,
                 eps: float = 1e-10, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, fused: bool | None = None,
                 nonfinite: str = "raise", impl: str = "auto") -> None:
        fn = "Adagrad()"
        check_lr(fn, lr)
        C.nonnegative(fn, "lr_decay", lr_decay)
        C.nonnegative(fn, "weight_decay", weight_decay)
        C.nonnegative(fn, "initial_accumulator_value", initial_accumulator_value)
        C.positive(fn, "eps", eps)
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].update(self._init_state(group, p))

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        init = group["initial_accumulator_value"]
        init = complex(init, init) if torch.is_complex(p) else init
        return {"step": step_tensor(group, p),
                "sum": torch.full_like(p, init, memory_format=torch.preserve_format)}

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, wd = scalar(group["lr"]), group["weight_decay"]
        state["step"] += 1
        step = value(state["step"])
        if group["maximize"]:
            grad = -grad
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        clr = lr / (1 + (step - 1) * group["lr_decay"])
        state["sum"].addcmul_(grad, grad, value=1)
        std = state["sum"].sqrt().add_(group["eps"])
        addcdiv_(p, grad, std, -clr)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        flags.pop("capturable", None)
        _torch_adagrad(
            params, grads, [self.state[p]["sum"] for p in params],
            [self.state[p]["step"] for p in params],
            has_complex=any(map(torch.is_complex, params)), lr=functional_lr(group, flags),
            weight_decay=group["weight_decay"], lr_decay=group["lr_decay"], eps=group["eps"],
            maximize=group["maximize"], **flags)

    def _kernel_args(self, group: dict[str, Any]):
        wd = group["weight_decay"]
        return (("sum", None, None), ("step", None),
                [scalar(group["lr"]), group["lr_decay"], wd, group["eps"]],
                K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0))

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        t = state["step"].item()
        clr = hp["lr"] / (1 + (t - 1) * hp["lr_decay"])
        eta = clr / (state["sum"].sqrt() + hp["eps"])
        return _coupled(eta, self._grad(p, hp), p.detach(), hp["weight_decay"])


def _coupled(eta: Tensor, g: Tensor, w: Tensor, wd: float) -> Explained:
    """``w = prev - eta (g + wd prev)``: the direction with the decay of the weight before."""
    d = g + wd * ((w + eta * g) / (1 - eta * wd)) if wd != 0 else g
    return Explained(eta, d, 0.0, -eta * d)


class Adadelta(LrkitOptimizer):
    r"""Adadelta (Zeiler, 2012, "ADADELTA: An Adaptive Learning Rate Method"), as
    ``torch.optim.Adadelta`` (state ``step``, ``square_avg``, ``acc_delta``)::

        g_t = grad + lambda * w_{t-1}
        v_t = rho v_{t-1} + (1 - rho) g_t^2
        dx_t = sqrt(u_{t-1} + eps) / sqrt(v_t + eps) * g_t
        u_t = rho u_{t-1} + (1 - rho) dx_t^2
        w_t = w_{t-1} - lr dx_t

    ``effective_lr()`` is ``lr sqrt(u_{t-1} + eps) / sqrt(v_t + eps)`` on the direction
    ``g_t``; ``u_{t-1}`` is recovered from ``u_t`` (``explain()`` reads ``p.grad``).
    """

    torch_name = "Adadelta"
    kernel = "adadelta"
    grad_power = 2
    dtensor = "elementwise"

    def __init__(self, params: Any, lr: float | Tensor = 1.0, rho: float = 0.9,
                 eps: float = 1e-6, weight_decay: float = 0, foreach: bool | None = None, *,
                 capturable: bool = False, maximize: bool = False,
                 differentiable: bool = False, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        fn = "Adadelta()"
        check_lr(fn, lr)
        C.in_range(fn, "rho", rho, 0.0, 1.0)
        C.positive(fn, "eps", eps)
        C.nonnegative(fn, "weight_decay", weight_decay)
        defaults = dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                        maximize=maximize, capturable=capturable, foreach=foreach,
                        differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"step": step_tensor(group, p), "square_avg": _zeros(p),
                "acc_delta": _zeros(p)}

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, rho, eps, wd = scalar(group["lr"]), group["rho"], group["eps"], \
            group["weight_decay"]
        state["step"] += 1
        if group["maximize"]:
            grad = -grad
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        square_avg, acc_delta = state["square_avg"], state["acc_delta"]
        square_avg.mul_(rho).addcmul_(grad, grad, value=1 - rho)
        std = square_avg.add(eps).sqrt_()
        delta = acc_delta.add(eps).sqrt_()
        delta.div_(std).mul_(grad)
        acc_delta.mul_(rho).addcmul_(delta, delta, value=1 - rho)
        add_(p, delta, -lr)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        _torch_adadelta(
            params, grads, [self.state[p]["square_avg"] for p in params],
            [self.state[p]["acc_delta"] for p in params],
            [self.state[p]["step"] for p in params],
            has_complex=any(map(torch.is_complex, params)), lr=functional_lr(group, flags),
            rho=group["rho"], eps=group["eps"], weight_decay=group["weight_decay"],
            maximize=group["maximize"], **flags)

    def _kernel_args(self, group: dict[str, Any]):
        wd = group["weight_decay"]
        return (("square_avg", "acc_delta", None), ("step", None),
                [scalar(group["lr"]), group["rho"], group["eps"], wd],
                K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0))

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        lr, rho, eps, wd = hp["lr"], hp["rho"], hp["eps"], hp["weight_decay"]
        g, w = self._grad(p, hp), p.detach()
        s, u = state["square_avg"] + eps, state["acc_delta"]
        prev = w
        for _ in range(4 if wd != 0 else 1):  # the decay needs w_{t-1}: a fixed point
            d = g + wd * prev
            r = d * d / s
            den = rho + (1 - rho) * r
            u_prev = torch.where(den > 0, (u - (1 - rho) * eps * r) / den, u).clamp_(min=0)
            eta = lr * (u_prev + eps).sqrt() / s.sqrt()
            prev = w + eta * d
        return Explained(eta, d, 0.0, -eta * d)


class RMSprop(LrkitOptimizer):
    r"""RMSprop (Hinton, 2012, Coursera lecture 6e; centered: Graves, 2013, "Generating
    Sequences With Recurrent Neural Networks"), as ``torch.optim.RMSprop`` (state
    ``step``, ``square_avg``, ``momentum_buffer`` when momentum > 0, ``grad_avg`` when
    centered)::

        g_t = grad + lambda * w_{t-1}
        v_t = alpha v_{t-1} + (1 - alpha) g_t^2
        a_t = sqrt(v_t - gbar_t^2) + eps,  gbar_t = alpha gbar_{t-1} + (1 - alpha) g_t
                                           (centered; else a_t = sqrt(v_t) + eps)
        b_t = mu b_{t-1} + g_t / a_t,  w_t = w_{t-1} - lr b_t     (momentum mu > 0)
        w_t = w_{t-1} - lr g_t / a_t                               (otherwise)

    ``effective_lr()`` is ``lr / a_t``: the multiplier on ``g_t``; with momentum the
    direction is ``a_t b_t`` (so ``effective_lr * direction = lr b_t``).
    """

    torch_name = "RMSprop"
    kernel = "rmsprop"
    grad_power = 2
    dtensor = "elementwise"

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0, momentum: float = 0,
                 centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False,
                 differentiable: bool = False, *, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        fn = "RMSprop()"
        check_lr(fn, lr)
        C.in_range(fn, "alpha", alpha, 0.0, 1.0)
        C.positive(fn, "eps", eps)
        C.nonnegative(fn, "weight_decay", weight_decay)
        C.nonnegative(fn, "momentum", momentum)
        defaults = dict(lr=lr, momentum=momentum, alpha=alpha, eps=eps, centered=centered,
                        weight_decay=weight_decay, capturable=capturable, foreach=foreach,
                        maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        state = {"step": step_tensor(group, p), "square_avg": _zeros(p)}
        if group["momentum"] > 0:
            state["momentum_buffer"] = _zeros(p)
        if group["centered"]:
            state["grad_avg"] = _zeros(p)
        return state

    def _buffers(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Buffers a scheduled momentum or a later ``centered=True`` needs (torch: KeyError)."""
        for p in params:
            state = self.state[p]
            if group["momentum"] > 0 and "momentum_buffer" not in state:
                state["momentum_buffer"] = _zeros(p)
            if group["centered"] and "grad_avg" not in state:
                state["grad_avg"] = _zeros(p)

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, alpha, wd, mu = scalar(group["lr"]), group["alpha"], group["weight_decay"], \
            group["momentum"]
        if group["maximize"]:
            grad = -grad
        state["step"] += 1
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        square_avg = state["square_avg"]
        square_avg.mul_(alpha).addcmul_(grad, grad, value=1 - alpha)
        if group["centered"]:
            grad_avg = state.setdefault("grad_avg", torch.zeros_like(square_avg))
            grad_avg.lerp_(grad, 1 - alpha)
            avg = square_avg.addcmul(grad_avg, grad_avg, value=-1).sqrt_()
        else:
            avg = square_avg.sqrt()
        avg = avg.add_(group["eps"])
        if mu > 0:
            buf = state.setdefault("momentum_buffer", torch.zeros_like(square_avg))
            buf.mul_(mu).addcdiv_(grad, avg)
            add_(p, buf, -lr)
        else:
            addcdiv_(p, grad, avg, -lr)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        self._buffers(group, params)
        st = [self.state[p] for p in params]
        _torch_rmsprop(
            params, grads, [s["square_avg"] for s in st],
            [s["grad_avg"] for s in st] if group["centered"] else [],
            [s["momentum_buffer"] for s in st] if group["momentum"] > 0 else [],
            [s["step"] for s in st], has_complex=any(map(torch.is_complex, params)),
            maximize=group["maximize"], lr=functional_lr(group, flags), alpha=group["alpha"],
            eps=group["eps"], weight_decay=group["weight_decay"], momentum=group["momentum"],
            centered=group["centered"], **flags)

    def _kernel_args(self, group: dict[str, Any]):
        wd, mu = group["weight_decay"], group["momentum"]
        flags = (K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0)
                 | K.F_MOMENTUM * (mu > 0) | K.F_CENTERED * group["centered"])
        return (("square_avg", "momentum_buffer" if mu > 0 else None,
                 "grad_avg" if group["centered"] else None), ("step", None),
                [scalar(group["lr"]), group["alpha"], group["eps"], wd, mu], flags)

    def _kernel_prepare(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._buffers(group, params)
        return None

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        v = state["square_avg"]
        if hp["centered"]:
            v = v.addcmul(state["grad_avg"], state["grad_avg"], value=-1)
        avg = v.sqrt() + hp["eps"]
        eta = hp["lr"] / avg
        if hp["momentum"] > 0:
            d = avg * state["momentum_buffer"]
            return Explained(eta, d, 0.0, -hp["lr"] * state["momentum_buffer"])
        return _coupled(eta, self._grad(p, hp), p.detach(), hp["weight_decay"])
