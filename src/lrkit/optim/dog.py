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

Implementations: the reference (``impl="reference"``) runs the package's operations and
equals it bit for bit; lrkit's kernel (the default for dense CPU float32/float64 tensors)
makes two passes (the per-tensor norms, in float64; then the step) and equals the
reference up to the rounding of those norms; the first pass, which only reads, is also
its NaN/Inf check where every tensor of the step has its state (one process, not
sharded), so ``nonfinite="raise"`` costs no pass of its own over the gradients there;
``"foreach"`` updates with torch's multi-tensor ops.
Sharded parameters (``sharded=``, see :mod:`lrkit.optim._lrfree`): DoG's group norms
are all-reduced as sums of squares; LDoG's are per tensor, whole on the process that owns
the tensor, and need no reduction.

``effective_lr()`` is the step size :math:`\eta_t` of the group (DoG) or the tensor
(LDoG), the same for every element, on the direction :math:`g_t + \lambda x_t`.
"""
from __future__ import annotations

import math
from copy import deepcopy
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.optim import _distributed as D
from lrkit.optim import _kernel as K
from lrkit.optim import _lrfree as L
from lrkit.optim.base import Explained, scalar, uniform


class DoG(L.GlobalStepOptimizer):
    """DoG with the constructor of ``dog.DoG``: one step size per param group.

    ``opt.estimated_lr()`` gives the last step size per group (None before the first step).
    """

    lr_free = True
    recommended_lr = 1.0
    recommended_family = "constant"  # the authors: no schedule
    kernel = "dog"
    kernel_exact = False  # the norms are taken in float64
    _layerwise = False

    _checks = {
        "reps_rel": C.nonnegative, "lr": L.lr_check, "weight_decay": C.nonnegative,
        "eps": C.nonnegative,
        "init_eta": lambda f, n, v: None if v is None else C.positive(f, n, v),
    }

    def __init__(self, params: Any, reps_rel: float = 1e-6, lr: float | Tensor = 1.0,
                 weight_decay: float = 0.0, eps: float = 1e-8, init_eta: float | None = None,
                 *, nonfinite: str = "raise", impl: str = "auto",
                 sharded: Any = False) -> None:
        defaults = dict(reps_rel=reps_rel, lr=lr, weight_decay=weight_decay, eps=eps,
                        init_eta=init_eta)
        super().__init__(params, defaults, nonfinite=nonfinite, impl=impl, sharded=sharded)

    @classmethod
    def _validated(cls, fn: str, values: dict[str, Any], group: bool = False) -> dict[str, Any]:
        out = super()._validated(fn, values, group)
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

    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        return {"x0": p.detach().clone()}

    def _checked_by_first_pass(self, plans: list) -> list:
        """The kernel batches whose NaN/Inf check is the first pass's sum of squares of the
        gradient (with weight decay added: NaN or Inf in g still makes it non-finite; a
        false alarm, Inf from finite entries, only costs the exact check, which then runs):
        a sum over every entry in double precision, read-only, before anything is written,
        so "nothing changed when it raises" holds without a pass of its own over the
        gradients. Only where every tensor of the step has its state (a raise must not
        leave a new ``x0`` behind) and the decision is this process's alone (not sharded,
        no agreement across ranks)."""
        if self.grad_power != 1 or self.sharded is not False or (
                self.agree_across_ranks and D.world_size() > 1):
            return []
        batches = [b for _, _, bs, _, _ in plans for b in bs]
        state = self.state
        if not (all(K.states_exist(self, b) for b in batches)
                and all(state.get(p) for plan in plans for p in plan[3])):
            return []
        return batches

    def _global_step(self, plans: list) -> None:
        fn = f"{type(self).__name__}.step()"
        work = [L.Work(plan) for plan in plans]
        fused, last = self.__dict__.pop("_fused_check", ([], None))
        stats = []
        for w in work:
            decay = w.group["weight_decay"]
            firsts = self._firsts(w)
            first = firsts[0] if all(firsts) or not any(firsts) else None  # None: mixed
            first_of = dict(zip(map(id, w.params), firsts)) if first is None else {}
            sums: dict[int, Any] = {}
            single: tuple | None = None
            for b in w.batches:
                x0s: Any = K.state_columns(self, b, ("x0",), w.group)
                fb = first
                if first is None:
                    fbs = [first_of[id(p)] for p in b.params]
                    fb = all(fbs)
                    if any(fbs) and not fb:  # tensors started later: ||x - 0|| is ||x||
                        x0s = [[torch.zeros_like(p) if f else x0
                                for p, f, x0 in zip(b.params, fbs, x0s.tensors[0])]]
                flat = K.call(self, b, x0s, [decay],
                              K.F_ACC | K.F_WD * (decay != 0) | K.F_FIRST * fb, nout=2)
                if any(b is f for f in fused) and not all(map(math.isfinite, flat[1::2])):
                    found = K.first_nonfinite_in([b], self.grad_power)
                    if found is not None:  # nothing is written yet
                        self._nonfinite_after_prepare(found[0].params[found[1]], last)
                        return
                if w.single is not None:  # the group's tensors, in order
                    single = (list(map(math.sqrt, flat[0::2])), flat[1::2])
                    continue
                sums.update((key, (math.sqrt(v[0]), v[1]))
                            for key, v in L.kernel_sums(b, flat, 2).items())
            ref = w.params[0]
            if single is not None:
                stats.append((_stack(single[0], ref), _stack(single[1], ref), firsts))
                continue
            if w.rest:
                grads = [g.add(p, alpha=decay) if decay != 0 else g
                         for p, g in zip(w.rest, w.rest_grads)]
                norms, g_sqs = _stats(w.rest, grads, [self.state[p]["x0"] for p in w.rest],
                                      [first] * len(w.rest) if first is not None
                                      else [first_of[id(p)] for p in w.rest])
                sums.update((id(p), (n, s)) for p, n, s in zip(w.rest, norms, g_sqs))
            norms, g_sqs = zip(*w.ordered(sums))
            stats.append((_stack(norms, ref), _stack(g_sqs, ref), firsts))
        reduce_over = self._process_group() if not self._layerwise else None
        reduced = self._reduce(work, stats, reduce_over)
        stepped = [self._update(w, norm, g_sq, firsts)
                   for w, (norm, g_sq, firsts) in zip(work, reduced)]
        try:
            etas = _host_etas(fn, stepped)
        except ValueError:  # no step taken: LDoG's entries whose G is 0 have not started
            self.__dict__.pop("_started", None)
            raise
        for w, eta in zip(work, etas):
            eta = eta if self._layerwise else [eta] * len(w.params)
            eta_of = dict(zip(map(id, w.params), eta))
            decay = w.group["weight_decay"]
            for b in w.batches:
                K.call(self, b, [None], [decay], K.F_UPD | K.F_FORWARD | K.F_WD * (decay != 0),
                       values=eta if w.single is not None else [eta_of[id(p)] for p in b.params],
                       writes_params=True)
            if w.rest:
                grads = [g.add(p, alpha=decay) if decay != 0 else g
                         for p, g in zip(w.rest, w.rest_grads)]
                update = _update_reference if self._path(w.rest) == "reference" \
                    else _update_foreach
                update(w.rest, grads, [eta_of[id(p)] for p in w.rest])
            self._last[w.index]["eta_of"] = eta_of

    def _firsts(self, w: L.Work) -> list[bool]:
        """Per tensor of the step (``w.params``): whether it takes its first step (DoG: the
        group's first step, for all of them)."""
        return [True] * len(w.params) if "G" not in w.group else [False] * len(w.params)

    def _update(self, w: L.Work, norm: Tensor, g_sq: Tensor, firsts: list[bool]) -> Tensor:
        """The group's rbar, G and eta after this step (DoG); returns the step size."""
        self._update_group(w.group, norm, g_sq, first=firsts[0])
        return w.group["eta"]

    def _reduce(self, work: list, stats: list, group: Any) -> list:
        """The group's norms (DoG: one; LDoG: per tensor), as dog-optimizer reduces them:
        ||x|| and ||x - x0|| as norms of the per-tensor norms, ||g||^2 as a sum. With
        sharded parameters (DoG), all-reduced as sums of squares over the processes."""
        if self._layerwise:
            return stats
        if group is None:
            return [(norms.norm(), g_sqs.sum(), first) for norms, g_sqs, first in stats]
        # every process adds the same vector: two sums for each param group
        by_index = {w.index: s for w, s in zip(work, stats)}
        local = []
        for i in range(len(self.param_groups)):
            norms, g_sqs, _ = by_index.get(i, (None, None, None))
            local += [0.0, 0.0] if norms is None else \
                [float(norms.double().square().sum()), float(g_sqs.double().sum())]
        total = L.global_sums(local, group)
        out = []
        for w, (norms, _, first) in zip(work, stats):
            sq, gs = total[2 * w.index], total[2 * w.index + 1]
            out.append((norms.new_tensor(math.sqrt(sq)), norms.new_tensor(gs), first))
        return out

    def _update_group(self, group: dict, norm: Tensor, g_sq: Tensor, *, first: bool) -> None:
        """rbar, G and eta of one group (0-dim tensors; LDoG: one entry per tensor)."""
        group["rbar"], group["G"] = _started(group, norm, g_sq) if first else \
            _continued(group["rbar"], group["G"], norm, g_sq)
        eta = _eta(group, group["rbar"], group["G"])
        group["eta"] = _initial_eta(group, eta) if first else eta

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        if id(p) not in hp.get("eta_of", {}):
            raise ValueError(f"{type(self).__name__}.explain(): the last step (since the "
                             "optimizer was built or loaded) did not update this parameter "
                             "(it had no gradient); call it after a step that updated it, "
                             "before zero_grad()")
        eta, wd = hp["eta_of"][id(p)], hp["weight_decay"]
        g, w = self._grad(p, hp), p.detach()
        d = g + wd * ((w + eta * g) / (1 - eta * wd)) if wd != 0 else g
        return Explained(uniform(eta, w), d, 0.0, -eta * d)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.__dict__.pop("_started", None)
        for group in self.param_groups:  # group tensors follow the parameters' device
            device = group["params"][0].device
            for key in ("rbar", "G", "eta"):
                if isinstance(group.get(key), torch.Tensor):
                    group[key] = group[key].to(device)


class LDoG(DoG):
    r"""Layer-wise DoG with the constructor of ``dog.LDoG``: one step size per tensor.

    ``rbar``, ``G`` and ``eta`` in each group hold one entry per tensor of
    ``group["params"]``. A tensor without a gradient at a step is skipped: its entries stay
    as they were. A tensor's entries start (:math:`r_\epsilon`, :math:`G_0`, ``init_eta``)
    at its first step with a gradient; until then they are 0 (a started tensor's ``G`` is
    :math:`\epsilon + \sum\lVert g_i\rVert^2 > 0`; where that is 0 the step raises
    and moves nothing, and the tensor starts again at its next step).

    ``opt.estimated_lr()`` gives, per group, the last step size of each tensor (None for a
    tensor that has not taken a step yet).
    """

    _layerwise = True
    _transient = ("_started",)

    def estimated_lr(self) -> list:
        out = []
        for i, group in enumerate(self.param_groups):
            eta = group.get("eta")
            if eta is None:
                out.append(None)
                continue
            started = self._started_of(i, group)
            out.append([e if s else None for e, s in zip(eta.tolist(), started)])
        return out

    def _started_of(self, index: int, group: dict) -> list[bool]:
        """Per tensor of the group: whether its entries have started. Kept on the host
        beside the group's ``G`` it describes; read from ``G`` (nonzero) when that was
        replaced (a loaded state_dict)."""
        n = len(group["params"])
        G = group.get("G")
        if G is None:
            return [False] * n
        kept = self.__dict__.setdefault("_started", {}).get(index)
        if kept is not None and kept[0] is G and len(kept[1]) == n:
            return kept[1]
        if G.dim() != 1 or G.numel() != n:
            raise ValueError(
                f"{type(self).__name__}.step(): param group {index} holds G with shape "
                f"{tuple(G.shape)}; LDoG keeps one entry per tensor of the group ({n}), by "
                "position: a tensor added to or removed from group['params'] by hand has "
                "none (add tensors with add_param_group)")
        started = G.ne(0).tolist()
        self._started[index] = (G, started)
        return started

    def _firsts(self, w: L.Work) -> list[bool]:
        started = self._started_of(w.index, w.group)
        if all(started):
            return [False] * len(w.params)
        at = {id(p): j for j, p in enumerate(w.group["params"])}
        return [not started[at[id(p)]] for p in w.params]

    def _update(self, w: L.Work, norm: Tensor, g_sq: Tensor, firsts: list[bool]) -> Tensor:
        """rbar, G and eta of the tensors of the step, by their index in the group (the
        others' entries unchanged); returns their step sizes (in ``w.params``' order)."""
        group, params = w.group, w.group["params"]
        n = len(params)
        if len(w.params) == n and (all(firsts) or not any(firsts)):
            # every tensor, all at once: dog-optimizer's vector operations
            self._update_group(group, norm, g_sq, first=firsts[0])
            eta = group["eta"]
            started = [True] * n
        else:
            at = {id(p): j for j, p in enumerate(params)}
            js = [at[id(p)] for p in w.params]
            started = list(self._started_of(w.index, group))
            for j in js:
                started[j] = True
            idx = torch.tensor(js, device=norm.device)
            if "G" not in group:
                for key in ("rbar", "G", "eta"):
                    group[key] = norm.new_zeros(n)
            first = torch.tensor(firsts, device=norm.device)
            (r_new, G_new) = _started(group, norm, g_sq)
            (r_on, G_on) = _continued(group["rbar"][idx], group["G"][idx], norm, g_sq)
            rbar, G = torch.where(first, r_new, r_on), torch.where(first, G_new, G_on)
            eta = _eta(group, rbar, G)
            eta = torch.where(first, _initial_eta(group, eta), eta)
            for key, value in (("rbar", rbar), ("G", G), ("eta", eta)):
                group[key] = group[key].index_put((idx,), value)
        self.__dict__.setdefault("_started", {})[w.index] = (group["G"], started)
        return eta


# ---------------------------------------------------------------- DoG's recursion
# (Ivgi et al. 2023): rbar_t = max(rbar_{t-1}, ||x_t - x_0||), G_t = G_{t-1} + ||g_t||^2,
# eta_t = lr rbar_t / sqrt(G_t); at a first step rbar = r_eps (1 + ||x_0||),
# G = eps + ||g_0||^2 and eta = init_eta where given. Per group (DoG) or per entry (LDoG).
def _started(group: dict, norm: Tensor, g_sq: Tensor) -> tuple[Tensor, Tensor]:
    """rbar and G at a first step."""
    return group["reps_rel"] * (1 + norm), g_sq + group["eps"]


def _continued(rbar: Tensor, G: Tensor, norm: Tensor, g_sq: Tensor) -> tuple[Tensor, Tensor]:
    """rbar and G at a later step."""
    return torch.maximum(rbar, norm), G + g_sq


def _eta(group: dict, rbar: Tensor, G: Tensor) -> Tensor:
    return scalar(group["lr"]) * rbar / torch.sqrt(G)


def _initial_eta(group: dict, eta: Tensor) -> Tensor:
    """A first step's eta: ``init_eta`` where given (dog-optimizer's ``eta * 0 + init``)."""
    return eta if group["init_eta"] is None else eta * 0 + group["init_eta"]


def _stack(values: tuple, like: Tensor) -> Tensor:
    """Per-tensor values (0-dim tensors, or floats from the kernel) as one tensor."""
    if not any(isinstance(v, Tensor) for v in values):
        return torch.tensor(values, dtype=like.dtype, device=like.device)
    return torch.stack([v.to(like.device) if isinstance(v, Tensor) else
                        torch.tensor(v, dtype=like.dtype, device=like.device) for v in values])


def _host_etas(fn: str, etas: list[Tensor]) -> list:
    """Every group's step size(s) of this step as Python floats, in one host sync."""
    if not etas:
        return []
    flat = torch.cat([e.reshape(-1).to("cpu", torch.float64) for e in etas]).tolist()
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
def _stats(params, grads, x0s, firsts) -> tuple[list, list]:
    """Per-tensor ||x|| (the tensor's first step) or ||x - x0|| (later steps) and ||g||^2,
    with dog-optimizer's operations (0-dim tensors)."""
    norms = [p.detach().norm() if first else torch.norm(p.detach() - x0)
             for p, x0, first in zip(params, x0s, firsts)]
    return norms, [(g ** 2).sum() for g in grads]


# ----------------------------------------------------------------------------- update
def _update_reference(params, grads, etas) -> None:
    for p, g, eta in zip(params, grads, etas):
        p.add_(g, alpha=-eta)


def _update_foreach(params, grads, etas) -> None:
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
        self.model = C.module("PolynomialDecayAverager()", "model", model)
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
