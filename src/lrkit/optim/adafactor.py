"""Adafactor: factored second moments, relative step sizes, update clipping."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim._adafactor import adafactor as _torch_adafactor

from lrkit import _checks as C
from lrkit.optim import _distributed as D
from lrkit.optim import _kernel as K
from lrkit.optim.base import (
    Explained,
    LrkitOptimizer,
    add_,
    check_lr,
    functional_lr,
    scalar,
    step_tensor,
    value,
)


class Adafactor(LrkitOptimizer):
    r"""Adafactor (Shazeer & Stern, 2018, "Adafactor: Adaptive Learning Rates with
    Sublinear Memory Cost"), as ``torch.optim.Adafactor`` (state ``step``, and
    ``row_var``/``col_var`` for tensors of 2+ dims, else ``variance``)::

        beta2_t = 1 - t^beta2_decay,   rho_t = min(lr, 1 / sqrt(t))
        alpha_t = max(eps2, RMS(w_{t-1})) rho_t
        w <- w_{t-1} (1 - lr lambda)
        R_t = beta2_t R_{t-1} + (1 - beta2_t) mean_cols(g^2),  C_t likewise over rows,
        V_t = R_t C_t / max(mean(R_t), eps1)             (2+ dims; else the full EMA)
        U_t = g / sqrt(max(V_t, eps1^2)),  w_t = w - alpha_t U_t / max(1, RMS(U_t) / d)

    ``effective_lr()`` is ``alpha_t / max(1, RMS(U_t)/d) / sqrt(max(V_t, eps1^2))`` on
    the direction ``g_t`` (``explain()`` reads ``p.grad``). lrkit's kernel gives each
    tensor to one thread, which makes its three reductions while the tensor is in cache
    (sums in double precision, so it equals the reference to rounding, not bit for bit).
    """

    torch_name = "Adafactor"
    kernel = "adafactor"
    kernel_exact = False  # its reductions differ from torch's in rounding
    grad_power = 4
    dtensor = "reference"  # norms and row/column means are summed across shards

    def __init__(self, params: Any, lr: float | Tensor = 1e-2, beta2_decay: float = -0.8,
                 eps: tuple[float | None, float] = (None, 1e-3), d: float = 1.0,
                 weight_decay: float = 0.0, *, foreach: bool | None = None,
                 maximize: bool = False, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        fn = "Adafactor()"
        check_lr(fn, lr)
        if C.real(fn, "beta2_decay", beta2_decay) > 0:
            raise ValueError(f"{fn}: beta2_decay must be <= 0, got {beta2_decay!r}")
        eps = tuple(C.sequence(fn, "eps", eps))
        if len(eps) != 2:
            raise ValueError(f"{fn}: eps must be a pair (eps1, eps2), got {eps!r}")
        if eps[0] is not None:
            C.positive(fn, "eps[0]", eps[0])
        C.positive(fn, "eps[1]", eps[1])
        if C.real(fn, "d", d) < 1:
            raise ValueError(f"{fn}: d must be >= 1, got {d!r}")
        C.nonnegative(fn, "weight_decay", weight_decay)
        defaults = dict(lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                        weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        if torch.is_complex(p):
            raise RuntimeError("Adafactor does not support complex parameters")
        state: dict[str, Any] = {"step": step_tensor(group, p)}
        if p.dim() > 1:
            state["row_var"] = p.new_zeros((*p.shape[:-1], 1))
            state["col_var"] = p.new_zeros((*p.shape[:-2], 1, p.shape[-1]))
        else:
            state["variance"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @staticmethod
    def _variance(state: dict[str, Any], eps1: float) -> Tensor:
        if "row_var" in state:
            row_var = state["row_var"]
            return (row_var @ state["col_var"]).div_(
                row_var.mean(dim=-2, keepdim=True).clamp_(min=eps1))
        return state["variance"].clone()

    @staticmethod
    def _begin(group: dict[str, Any], p: Tensor, grad: Tensor, state: dict[str, Any]) -> tuple:
        """The settings, the signed gradient, the new step count and 1 - beta2_t."""
        eps1, eps2 = group["eps"]
        if eps1 is None:
            eps1 = torch.finfo(p.dtype).eps
        if group["maximize"]:
            grad = -grad
        state["step"] += 1
        step = value(state["step"])
        return (scalar(group["lr"]), group["weight_decay"], eps1, eps2, grad, step,
                step ** group["beta2_decay"])

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        shard = self._shards.get(id(p))
        if shard is not None:
            self._shard_step(group, p, grad, state, shard)
            return
        lr, wd, eps1, eps2, grad, step, one_minus_beta2_t = self._begin(group, p, grad, state)
        if p.numel() == 0:  # nothing to update (torch's Adafactor divides 0 by 0 here)
            return
        compiling = isinstance(step, Tensor)  # while torch.compile traces: no .item()
        if compiling:
            rho_t = torch.minimum(torch.as_tensor(lr), 1 / step.sqrt())
            alpha = (p.norm(2) / (p.numel() ** 0.5)).clamp(min=eps2) * rho_t
        else:
            rho_t = min(lr, 1 / (step**0.5))
            alpha = max(eps2, p.norm(2).item() / (p.numel() ** 0.5)) * rho_t
        if wd != 0:
            p.mul_(1 - lr * wd)
        if grad.dim() > 1:
            row_mean = torch.norm(grad, dim=-1, keepdim=True).square_().div_(grad.size(-1))
            state["row_var"].lerp_(row_mean, one_minus_beta2_t)
            col_mean = torch.norm(grad, dim=-2, keepdim=True).square_().div_(grad.size(-2))
            state["col_var"].lerp_(col_mean, one_minus_beta2_t)
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2_t)
        update = self._variance(state, eps1).clamp_(min=eps1 * eps1).rsqrt_()
        update.mul_(grad)
        size = (update.numel() ** 0.5) * group["d"]
        denom = ((update.norm(2) / size).clamp(min=1.0) if compiling
                 else max(1.0, update.norm(2).item() / size))
        add_(p, update, -alpha / denom)

    def _shard_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                    state: dict[str, Any], shard: D.Shard) -> None:
        """The reference on one rank's shard of a DTensor (FSDP2): the same formulas, each
        mean and norm a local partial sum added up across the ranks (``shard_sum``), so it
        equals the unsharded step to rounding (the sums run in another order)."""
        lr, wd, eps1, eps2, grad, step, one_minus_beta2_t = self._begin(group, p, grad, state)
        n = shard.numel()
        w2 = D.shard_sum(shard, torch.linalg.vector_norm(p).square().reshape(1)).item()
        alpha = max(eps2, w2**0.5 / (n**0.5)) * min(lr, 1 / (step**0.5))
        if wd != 0:
            p.mul_(1 - lr * wd)
        if grad.dim() > 1:
            rows, cols = shard.shape[-2], shard.shape[-1]
            g2 = grad * grad
            row_mean = D.shard_sum(shard, g2.sum(-1, keepdim=True), (-1,)).div_(cols)
            state["row_var"].lerp_(row_mean, one_minus_beta2_t)
            col_mean = D.shard_sum(shard, g2.sum(-2, keepdim=True), (-2,)).div_(rows)
            state["col_var"].lerp_(col_mean, one_minus_beta2_t)
            row_var = state["row_var"]
            mean = D.shard_sum(shard, row_var.sum(-2, keepdim=True), (-2,)).div_(rows)
            var = (row_var @ state["col_var"]).div_(mean.clamp_(min=eps1))
        else:
            state["variance"].lerp_(grad * grad, one_minus_beta2_t)
            var = state["variance"].clone()
        update = var.clamp_(min=eps1 * eps1).rsqrt_().mul_(grad)
        u2 = D.shard_sum(shard, torch.linalg.vector_norm(update).square().reshape(1)).item()
        denom = max(1.0, u2**0.5 / ((n**0.5) * group["d"]))
        add_(p, update, -alpha / denom)

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        if any(p.numel() == 0 for p in params):  # torch's divides 0 by 0: only their step
            for p in params:
                if p.numel() == 0:
                    self.state[p]["step"] += 1
            keep = [(p, g) for p, g in zip(params, grads) if p.numel() != 0]
            if not keep:
                return
            params, grads = map(list, zip(*keep))
        st = [self.state[p] for p in params]
        eps1, eps2 = group["eps"]
        _torch_adafactor(
            params, grads, [s.get("row_var") for s in st], [s.get("col_var") for s in st],
            [s.get("variance") for s in st], [s["step"] for s in st],
            foreach=flags.get("foreach", False), d=group["d"], lr=functional_lr(group, flags),
            beta2_decay=group["beta2_decay"], weight_decay=group["weight_decay"], eps1=eps1,
            eps2=eps2, maximize=group["maximize"])

    def _kernel_shapes(self, group: dict[str, Any], p: Tensor, key: str) -> tuple | None:
        """The factored second moments: a row factor per row, a column factor per column
        (of every matrix of a batch of them)."""
        if p.dim() > 1 and key == "row_var":
            return ((*p.shape[:-1], 1),)
        if p.dim() > 1 and key == "col_var":
            return ((*p.shape[:-2], 1, p.shape[-1]),)
        return super()._kernel_shapes(group, p, key)

    def _kernel_args(self, group: dict[str, Any]):
        eps1, eps2 = group["eps"]
        wd = group["weight_decay"]
        hp = [scalar(group["lr"]), group["beta2_decay"], -1.0 if eps1 is None else eps1, eps2,
              group["d"], wd]
        return ((("row_var", "variance"), ("col_var",), None), ("step", None),
                hp, K.F_MAXIMIZE * group["maximize"] | K.F_WD * (wd != 0))

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        lr, wd = hp["lr"], hp["weight_decay"]
        eps1, eps2 = hp["eps"]
        if eps1 is None:
            eps1 = torch.finfo(p.dtype).eps
        t = state["step"].item()
        g, w = self._grad(p, hp), p.detach()
        u = self._variance(state, eps1).clamp_(min=eps1 * eps1).rsqrt_()
        denom = max(1.0, (u * g).norm(2).item() / ((g.numel() ** 0.5) * hp["d"]))
        rho_t = min(lr, 1 / (t**0.5))
        prev = w
        for _ in range(6):  # alpha needs RMS(w_{t-1}): a fixed point
            alpha = max(eps2, prev.norm(2).item() / (p.numel() ** 0.5)) * rho_t
            eta = (alpha / denom) * u
            prev = (w + eta * g) / (1 - lr * wd)
        decay = lr * wd * prev if wd != 0 else 0.0
        return Explained(eta, g, decay, -eta * g - decay)
