"""Lion: the sign of an interpolated momentum."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _kernel as K
from lrkit.optim.base import Explained, LrkitOptimizer, add_, check_betas, check_lr, scalar, uniform


class Lion(LrkitOptimizer):
    r"""Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms"), with
    the decoupled weight decay of the paper (and of lucidrains' ``lion-pytorch``, its
    reference here)::

        c_t = beta1 m_{t-1} + (1 - beta1) g_t
        w_t = w_{t-1} (1 - lr lambda) - lr sign(c_t)
        m_t = beta2 m_{t-1} + (1 - beta2) g_t

    State: ``exp_avg`` (m). The paper suggests an lr 3-10x smaller than AdamW's and a
    weight decay 3-10x larger. ``effective_lr()`` is ``lr`` on the direction
    ``sign(c_t)``, recovered from ``m_t`` and ``p.grad`` (needs beta2 > 0).
    ``foreach=True`` selects lrkit's foreach path (there is no torch namesake).

    Complex parameters step by ``sgn(c_t) = c_t / |c_t|`` (a unit complex number), as
    lion-pytorch's ``sgn_()`` does, on every path.
    """

    has_foreach = True
    kernel = "lion"
    dtensor = "elementwise"
    complex_as_real = False

    def __init__(self, params: Any, lr: float | Tensor = 1e-4,
                 betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 maximize: bool = False, foreach: bool | None = None,
                 nonfinite: str = "raise", impl: str = "auto") -> None:
        fn = "Lion()"
        check_lr(fn, lr)
        betas = check_betas(fn, betas)
        C.nonnegative(fn, "weight_decay", weight_decay)
        defaults = dict(lr=lr, betas=betas, weight_decay=weight_decay, maximize=maximize,
                        foreach=foreach)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format)}

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        lr, wd = scalar(group["lr"]), group["weight_decay"]
        beta1, beta2 = (scalar(b) for b in group["betas"])
        if group["maximize"]:
            grad = -grad
        if wd != 0:
            p.mul_(1 - lr * wd)
        exp_avg = state["exp_avg"]
        update = exp_avg.clone().mul_(beta1).add(grad, alpha=1 - beta1).sgn_()
        add_(p, update, -lr)
        exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)

    def _foreach(self, group: dict[str, Any], params: list[Tensor],
                 grads: list[Tensor]) -> None:
        lr, wd = scalar(group["lr"]), group["weight_decay"]
        beta1, beta2 = (scalar(b) for b in group["betas"])
        exp_avgs = [self.state[p]["exp_avg"] for p in params]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if wd != 0:
            torch._foreach_mul_(params, 1 - lr * wd)
        update = torch._foreach_mul(exp_avgs, beta1)
        torch._foreach_add_(update, grads, alpha=1 - beta1)
        real = [u for u in update if not u.is_complex()]
        if real:
            torch._foreach_sign_(real)
        for u in update:  # torch has no foreach sgn
            if u.is_complex():
                u.sgn_()
        torch._foreach_add_(params, update, alpha=-lr)
        torch._foreach_mul_(exp_avgs, beta2)
        torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)

    def _kernel_args(self, group: dict[str, Any]):
        beta1, beta2 = (scalar(b) for b in group["betas"])
        wd = group["weight_decay"]
        return (("exp_avg", None, None), (None, None), [scalar(group["lr"]), beta1, beta2, wd],
                K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0))

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        lr, wd = hp["lr"], hp["weight_decay"]
        beta1, beta2 = hp["betas"]
        g, w, m = self._grad(p, hp), p.detach(), state["exp_avg"]
        m_prev = (m - (1 - beta2) * g) / beta2 if beta2 > 0 else torch.zeros_like(m)
        d = (beta1 * m_prev + (1 - beta1) * g).sgn()
        decay = lr * wd * (w + lr * d) / (1 - lr * wd) if wd != 0 else 0.0
        return Explained(uniform(lr, w), d, decay, -lr * d - decay)
