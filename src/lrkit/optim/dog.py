r"""DoG and LDoG: SGD whose step size is distance over gradients.

Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
Schedule" (ICML 2023), arXiv:2302.12022; step for step the authors' ``dog-optimizer`` package
(1.0.3). For each param group (DoG) or each tensor (LDoG, layer-wise), with :math:`c` = ``lr``:

.. math::

    \bar r_t = \max\Bigl(r_\epsilon,\ \max_{i\le t}\lVert x_i - x_0\rVert\Bigr), \qquad
    G_t = \epsilon + \sum_{i\le t}\lVert g_i\rVert^2, \qquad
    \eta_t = c\,\bar r_t / \sqrt{G_t}, \qquad x_{t+1} = x_t - \eta_t g_t

with :math:`r_\epsilon` = ``reps_rel`` :math:`\cdot (1 + \lVert x_0\rVert)`, or the first step
:math:`\eta_0` = ``init_eta`` when given (then :math:`r_\epsilon = 0`). Weight decay adds
:math:`\lambda x_t` to :math:`g_t` (also inside :math:`G_t`). Norms are over the whole group
(DoG) or the single tensor (LDoG). DoG needs iterate averaging for its best results:
:class:`PolynomialDecayAverager` (Shamir & Zhang 2013).

Differences from ``dog-optimizer``: ``p.grad`` is never modified (the package adds weight
decay into it); a parameter without a gradient is skipped (the package fails); a group added
later starts its own first step; ``x0`` lives in ``opt.state`` and ``rbar``, ``G``, ``eta``
(tensors) in each group; one host sync per step fetches every step size (the package syncs
once per tensor).
"""
from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

import torch

from lrkit import _checks as C
from lrkit.optim import _lrfree as L


class DoG(L.StandInOptimizer):
    """DoG with the constructor of ``dog.DoG``: one step size per param group.

    ``opt.estimated_lr()`` gives the last step size per group (None before the first step).
    """

    _layerwise = False

    _checks = {
        "reps_rel": C.nonnegative, "lr": C.positive, "weight_decay": C.nonnegative,
        "eps": C.nonnegative,
        "init_eta": lambda f, n, v: None if v is None else C.positive(f, n, v),
    }

    def __init__(self, params, reps_rel: float = 1e-6, lr: float = 1.0,
                 weight_decay: float = 0.0, eps: float = 1e-8, init_eta: float | None = None,
                 *, nonfinite: str = "raise", impl: str = "auto") -> None:
        defaults = dict(reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps,
                        init_eta=init_eta)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl)

    @classmethod
    def _validated(cls, fn: str, values: dict[str, Any]) -> dict[str, Any]:
        out = super()._validated(fn, values)
        if out.get("init_eta") is not None:
            out["reps_rel"] = 0.0  # the first step is init_eta; r_eps is then 0
        elif "reps_rel" in out and out["reps_rel"] == 0 and "init_eta" in values:
            raise ValueError(f"{fn}: reps_rel must be a positive number (> 0) unless init_eta "
                             f"is given, got {values['reps_rel']!r}")
        return out

    def estimated_lr(self) -> list:
        """The last step size: a float per group (DoG), a list of floats per group (LDoG,
        one per tensor); None for a group before its first step."""
        out = []
        for group in self.param_groups:
            eta = group.get("eta")
            out.append(None if eta is None else eta.tolist())
        return out

    def _step(self) -> None:
        fn = f"{type(self).__name__}.step()"
        work = []
        for group in self.param_groups:
            params = group["params"]
            first = "G" not in group
            if first:
                for p in params:
                    self.state[p]["x0"] = p.detach().clone()
            decay = group["weight_decay"]
            grads = [None if p.grad is None else p.grad if decay == 0 else
                     p.grad.add(p, alpha=decay) for p in params]
            norms = _stats(params, grads, [self.state[p]["x0"] for p in params], first=first)
            self._update_group(group, *group_reductions(norms, self._layerwise), first=first)
            work.append((group, params, grads))

        etas = _host_etas(fn, [group for group, *_ in work])
        update = _update_fast if self.fast else _update_reference
        for (_, params, grads), eta in zip(work, etas):
            eta = eta if self._layerwise else [eta] * len(params)
            live = [i for i, g in enumerate(grads) if g is not None]
            update([params[i] for i in live], [grads[i] for i in live], [eta[i] for i in live])

    def _update_group(self, group: dict, x_norm, dist, g_sq, *, first: bool) -> None:
        """rbar, G and eta of one group (0-dim tensors; LDoG: one entry per tensor)."""
        if first:
            group["rbar"] = group["reps_rel"] * (1 + x_norm)
            group["G"] = g_sq + group["eps"]
        else:
            group["rbar"] = torch.maximum(group["rbar"], dist)
            group["G"] = group["G"] + g_sq
        eta = group["lr"] * group["rbar"] / torch.sqrt(group["G"])
        if first and group["init_eta"] is not None:
            eta = eta * 0 + group["init_eta"]
        group["eta"] = eta

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # group tensors follow the parameters' device
            device = group["params"][0].device
            for key in ("rbar", "G", "eta"):
                if isinstance(group.get(key), torch.Tensor):
                    group[key] = group[key].to(device)


class LDoG(DoG):
    """Layer-wise DoG with the constructor of ``dog.LDoG``: one step size per tensor.

    ``opt.estimated_lr()`` gives, per group, the last step size of each tensor.
    """

    _layerwise = True


def group_reductions(norms, layerwise: bool):
    """The per-tensor norms reduced to the group's (DoG) or kept per tensor (LDoG), as
    dog-optimizer does: ||x|| and ||x - x0|| as norms of the stacked norms, ||g||^2 as a sum.
    Where a run with sharded parameters must all-reduce (sum of squares)."""
    x_norm, dist, g_sq = norms
    if layerwise:
        return x_norm, dist, g_sq
    return (None if x_norm is None else x_norm.norm(), None if dist is None else dist.norm(),
            g_sq.sum())


def _host_etas(fn: str, groups: list[dict]) -> list:
    """Every group's step size(s) as Python floats, in one host sync."""
    etas = [g["eta"] for g in groups]
    flat = torch.cat([e.reshape(-1).to(torch.float64) for e in etas]).tolist()
    if not all(math.isfinite(v) for v in flat):
        raise ValueError(
            f"{fn}: the step size is not finite: the sum of squared gradients (plus eps) is 0 "
            "(all gradients of a group or tensor are zero and eps=0) or has overflowed")
    out, i = [], 0
    for e in etas:
        n = e.numel()
        out.append(flat[i:i + n] if e.dim() else flat[i])
        i += n
    return out


# ------------------------------------------------------------------------------ stats
def _stats(params, grads, x0s, *, first: bool):
    """Per-tensor ||x|| (first step), ||x - x0|| (later steps) and ||g||^2, stacked, with
    dog-optimizer's operations; a tensor without a gradient adds 0. Both paths use it: these
    are per-tensor reductions already, and the d sums must round as the reference's."""
    x_norm = torch.stack([p.norm() for p in params]) if first else None
    dist = None if first else torch.stack([torch.norm(p - x0) for p, x0 in zip(params, x0s)])
    g_sq = torch.stack([(g ** 2).sum() if g is not None else p.new_zeros(())
                        for p, g in zip(params, grads)])
    return x_norm, dist, g_sq


# ----------------------------------------------------------------------------- update
def _update_reference(params, grads, etas) -> None:
    for p, g, eta in zip(params, grads, etas):
        p.add_(g, alpha=-eta)


def _update_fast(params, grads, etas) -> None:
    if len(set(etas)) == 1:
        torch._foreach_add_(params, grads, alpha=-etas[0])
    else:  # LDoG: one step size per tensor (add_ with alpha rounds once, as the reference)
        _update_reference(params, grads, etas)


# -------------------------------------------------------------------- iterate averaging
class PolynomialDecayAverager:
    r"""Polynomial-decay averaging of a model's weights (Shamir & Zhang, ICML 2013), the
    averaging DoG needs; step for step ``dog.PolynomialDecayAverager``.

    After the t-th call of ``step()`` (t = 1, 2, ...), every floating-point entry of the
    model's ``state_dict`` (parameters and buffers) is averaged as

    .. math:: \bar x_t = \Bigl(1 - \tfrac{1+\gamma}{t+\gamma}\Bigr)\bar x_{t-1}
              + \tfrac{1+\gamma}{t+\gamma}\, x_t

    (so :math:`\bar x_1 = x_1`; :math:`\gamma = 0` is the uniform average); integer buffers
    (BatchNorm's batch counter) are copied. The average lives in ``averaged_model``, a copy
    of the model; evaluate that one.
    """

    def __init__(self, model: torch.nn.Module, gamma: float = 8.0) -> None:
        self.gamma = C.nonnegative("PolynomialDecayAverager()", "gamma", gamma)
        self.model = model
        self.av_model = deepcopy(model)
        self.t = 1
        self._matched_devices = False

    @property
    def averaged_model(self) -> torch.nn.Module:
        return self.av_model

    @property
    def base_model(self) -> torch.nn.Module:
        return self.model

    @torch.no_grad()
    def step(self) -> None:
        """Fold the model's current weights into the average."""
        if not self._matched_devices:
            ref = next(self.model.parameters(), None)
            if ref is not None:
                self.av_model.to(ref.device)
            self._matched_devices = True
        weight = (self.gamma + 1) / (self.gamma + self.t)
        model_sd, av_sd = self.model.state_dict(), self.av_model.state_dict()
        by_kind: dict[tuple, tuple[list, list]] = {}
        for key, value in model_sd.items():
            av = av_sd[key]
            if not av.is_floating_point():  # e.g. BatchNorm's num_batches_tracked
                av.copy_(value)
                continue
            avs, xs = by_kind.setdefault((av.device, av.dtype), ([], []))
            avs.append(av)
            xs.append(value)
        for avs, xs in by_kind.values():
            torch._foreach_mul_(avs, 1 - weight)
            torch._foreach_add_(avs, xs, alpha=weight)
        self.t += 1

    def reset(self) -> None:
        """Start a new average: the next ``step()`` copies the model."""
        self.t = 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "av_model": self.av_model.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.t = state_dict["t"]
        self.av_model.load_state_dict(state_dict["av_model"])
