"""Stochastic gradient descent with momentum (heavy ball, Nesterov)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.sgd import sgd as _torch_sgd

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim.base import (
    Explained,
    LrkitOptimizer,
    add_,
    check_lr,
    functional_lr,
    scalar,
    uniform,
)


class SGD(LrkitOptimizer):
    r"""SGD with momentum, as ``torch.optim.SGD`` (same arguments, defaults and state).

    With gradient :math:`g_t` (negated when ``maximize``), weight decay :math:`\lambda`,
    momentum :math:`\mu` and dampening :math:`\tau`::

        d_t = g_t + lambda * w_{t-1}
        b_t = d_t                                   (t = 1)
        b_t = mu * b_{t-1} + (1 - tau) * d_t        (t > 1)
        w_t = w_{t-1} - lr * (d_t + mu * b_t)       (nesterov)
        w_t = w_{t-1} - lr * b_t                    (momentum, else d_t)

    Heavy-ball momentum: Polyak (1964), "Some methods of speeding up the convergence of
    iteration methods"; Nesterov momentum in the form of Sutskever et al. (2013), "On the
    importance of initialization and momentum in deep learning".

    ``effective_lr()`` is ``lr`` for every element; the direction is the momentum
    buffer ``b_t`` (``d_t + mu * b_t`` with nesterov, ``d_t`` without momentum).
    State: ``momentum_buffer`` (only when momentum != 0). ``foreach``/``fused``/
    ``differentiable`` choose torch's implementations (see :class:`LrkitOptimizer`).
    """

    torch_name = "SGD"
    torch_fused = True
    kernel = "sgd"
    supports_sparse = True
    dtensor = "elementwise"

    def __init__(self, params: Any, lr: float | Tensor = 1e-3, momentum: float = 0,
                 dampening: float = 0, weight_decay: float | Tensor = 0,
                 nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False,
                 fused: bool | None = None, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        fn = "SGD()"
        check_lr(fn, lr)
        C.nonnegative(fn, "momentum", momentum)
        C.real(fn, "dampening", dampening)
        C.nonnegative(fn, "weight_decay", scalar(weight_decay))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{fn}: nesterov must be False unless momentum > 0 and dampening "
                             f"= 0, got nesterov=True with momentum={momentum!r}, "
                             f"dampening={dampening!r}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {}

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, wd, mu = scalar(group["lr"]), scalar(group["weight_decay"]), group["momentum"]
        if group["maximize"]:
            grad = -grad
        if wd != 0:
            grad = grad.add(p, alpha=wd)
        if mu != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(mu).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=mu) if group["nesterov"] else buf
        add_(p, grad, -lr)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        mom = group["momentum"] != 0
        bufs = [self.state[p].get("momentum_buffer") for p in params] if mom else []
        _torch_sgd(
            params, grads, bufs, weight_decay=scalar(group["weight_decay"]),
            momentum=group["momentum"], lr=functional_lr(group, flags),
            dampening=group["dampening"], nesterov=group["nesterov"],
            maximize=group["maximize"], foreach=flags.get("foreach"),
            fused=flags.get("fused"))
        if mom:
            for p, b in zip(params, bufs):
                self.state[p]["momentum_buffer"] = b

    def _kernel_args(self, group: dict[str, Any]):
        mom = group["momentum"] != 0
        wd = scalar(group["weight_decay"])
        flags = (K.F_MAXIMIZE * group["maximize"] | K.F_NESTEROV * group["nesterov"]
                 | K.F_MOMENTUM * mom | K.F_WD * (wd != 0))
        return (("momentum_buffer" if mom else None, None, None), (None, None),
                [scalar(group["lr"]), group["momentum"], group["dampening"], wd], flags)

    def _kernel_prepare(self, group: dict[str, Any], params: list[Tensor]) -> list[int] | None:
        if group["momentum"] == 0:
            return None
        first = []
        for p in params:
            state = self.state[p]
            first.append(int(state.get("momentum_buffer") is None))
            if first[-1]:
                state["momentum_buffer"] = torch.empty_like(p)
        return first

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        lr, wd, mu = hp["lr"], hp["weight_decay"], hp["momentum"]
        w = p.detach()
        if mu != 0 and not hp["nesterov"]:
            d = state["momentum_buffer"]
        else:
            g = self._grad(p, hp)
            extra = mu * state["momentum_buffer"] if mu != 0 else 0
            prev = (w + lr * (g + extra)) / (1 - lr * wd)   # w before the step
            d = g + wd * prev + extra
        return Explained(uniform(lr, w), d, 0.0, -lr * d)
