"""Shared by the optimizer tests: a small real model, its data, and training loops."""
from __future__ import annotations

import copy
import io
import math
from typing import Any

import torch
from torch import nn

from optim_registry import REGISTRY

# tiny tensors: one thread is fastest, and pytest -n 2 must not oversubscribe two cores
torch.set_num_threads(1)

CASES = [(info, cfg) for info in REGISTRY.values() for cfg in info.configs]
INFOS = list(REGISTRY.values())


def info_of(cls: type) -> Any:
    """The registry entry of an lrkit optimizer or of its reference (by class name), or
    None."""
    for info in INFOS:
        if cls.__name__ == info.name or (
                info.reference and info.reference.endswith(":" + cls.__name__)):
            return info
    return None


def tags_of(cls: type) -> frozenset:
    info = info_of(cls)
    return info.tags if info is not None else frozenset()


def make_opt(cls: type, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    """``cls(params, **kwargs)`` (a reference with its registry entry's
    ``reference_kwargs``), in train mode (schedulefree's optimizers start in eval mode;
    lrkit's in train mode)."""
    info = info_of(cls)
    if info is not None and cls.__name__ != info.name:
        kwargs = {**info.reference_kwargs, **kwargs}
    opt = cls(params, **kwargs)
    if "schedule_free" in tags_of(cls):
        opt.train()
    return opt


def case_id(case: Any) -> str:
    if isinstance(case, dict):
        return ",".join(f"{k}={v}" for k, v in case.items()) or "defaults"
    return getattr(case, "name", str(case))


def make_model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """Conv (3-d weight) + MLP: ~300 parameters in 6 tensors of 1, 2 and 3 dims."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(24, 8),
                          nn.Tanh(), nn.Linear(8, 1))
    return model.to(dtype)


def batches(dtype: torch.dtype = torch.float32, n: int = 4, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, 2, 8, generator=g)
    w = torch.randn(16, generator=g)
    y = torch.tanh(x.flatten(2) @ w).unsqueeze(-1) + 0.1 * torch.randn(n, 16, 1, generator=g)
    return [(a.to(dtype), b.to(dtype)) for a, b in zip(x, y)]


def param_groups(model: nn.Module, cfg: dict[str, Any], groups: bool,
                 cls: type | None = None) -> Any:
    """One group, or two with different lrs (the same lr where the groups share one step
    size estimate, and none for SLS, whose groups share one line search; always one for
    the "single_group" optimizers, L-BFGS)."""
    tags = tags_of(cls) if cls is not None else frozenset()
    if not groups or "single_group" in tags:  # (L-BFGS: one history, one group)
        return model.parameters()
    params = list(model.parameters())
    if "needs_closure" in tags:
        return [{"params": params[:2]}, {"params": params[2:]}]
    lr = cfg.get("lr", 1e-3)
    return [{"params": params[:2], "lr": lr},
            {"params": params[2:], "lr": lr if "shared_lr" in tags else lr * 0.3}]


def loss_of(model: nn.Module, batch: tuple) -> torch.Tensor:
    x, y = batch
    return (model(x) - y).pow(2).mean()


def closure_for(opt: torch.optim.Optimizer, model: nn.Module, batch: tuple):
    """A closure that re-evaluates the loss (and its gradient where gradients are on: a
    line search re-evaluates it under no_grad)."""
    def fn():
        opt.zero_grad()
        loss = loss_of(model, batch)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return fn


def train(opt: torch.optim.Optimizer, model: nn.Module, data: list, steps: int,
          start: int = 0, closure: bool = False) -> list[torch.Tensor]:
    closure = closure or "needs_closure" in tags_of(type(opt))
    for i in range(start, start + steps):
        batch = data[i % len(data)]
        if closure:
            opt.step(closure_for(opt, model, batch))
        else:
            opt.zero_grad()
            loss_of(model, batch).backward()
            opt.step()
    return [p.detach().clone() for p in model.parameters()]


def run(cls: type, cfg: dict[str, Any], dtype: torch.dtype = torch.float32,
        groups: bool = False, steps: int = 100, **extra: Any) -> list[torch.Tensor]:
    model = make_model(dtype)
    opt = make_opt(cls, param_groups(model, cfg, groups, cls), **cfg, **extra)
    return train(opt, model, batches(dtype), steps)


# -- how far two correct implementations may drift apart ---------------------------------
#: roundings per parameter entry per step that two implementations may do differently:
#: the longest chain of elementwise operations of a step (Adam with weight decay and
#: amsgrad: decay, two moment updates of two operations each, two bias corrections, the
#: square root, eps, the division and the final multiply-add), each rounded once or,
#: where one side fuses a multiply-add (FMA on AVX2/AVX-512, not on x86-64-v2), twice
OPS_PER_STEP = 12


def reduces(info: Any) -> bool:
    """Whether a step scales the update by a sum over many entries (the learning-rate-
    free d estimates and gradient norms, SLS's gradient norm, Adafactor's row and column
    means): its rounding depends on the summation order, which differs per CPU (vector
    width) and per implementation."""
    return "lr_free" in info.tags or info.name == "Adafactor"


def parity_rtol(info: Any, dtype: torch.dtype, steps: int, numel: int | None = None) -> float:
    """The relative tolerance (``rel_err``) between two correct implementations of one
    algorithm after ``steps`` steps: what their rounding can do, on any CPU.

    Per step each entry goes through ``OPS_PER_STEP`` roundings, each at most half an ulp
    (``u``) and possibly taken differently (another operation order, FMA or not, another
    square root): ``OPS_PER_STEP * u`` relative. Where the step is scaled by a sum over
    ``numel`` entries, that sum's rounding error is about ``sqrt(numel) * u`` relative for
    rounding errors of random sign (``numel * u`` in the worst case; Higham, "Accuracy and
    Stability of Numerical Algorithms", ch. 4), whatever the summation order a CPU's
    vector width picks. Both add up over the steps (a well-conditioned run: the registry's
    configurations are chosen so; chaotic ones are compared by properties)::

        rtol = steps * u * (OPS_PER_STEP + sqrt(numel) [if the step reduces])

    With float32, 100 steps and the test model (237 entries): 7.2e-5, or 1.6e-4 with
    reductions; float64: 1.3e-13 and 3.0e-13.
    """
    u = torch.finfo(dtype).eps / 2
    n = numel if numel is not None else sum(p.numel() for p in make_model().parameters())
    return steps * u * (OPS_PER_STEP + (math.sqrt(n) if reduces(info) else 0.0))


def rel_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """max over tensors of max|a - b| / max|b|."""
    out = 0.0
    for x, y in zip(a, b):
        x, y = x.detach().double(), y.detach().double()
        out = max(out, float((x - y).abs().max() / y.abs().max().clamp(min=1e-30)))
    return out


def roundtrip(sd: dict) -> dict:
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def snapshot(opt: torch.optim.Optimizer) -> tuple:
    return copy.deepcopy(opt.state_dict()), [
        p.detach().clone() for g in opt.param_groups for p in g["params"]]


def same_state(a: dict, b: dict) -> bool:
    """Bit-for-bit equal optimizer state dicts (tensors by torch.equal)."""
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, dict):
            if not isinstance(y, dict) or not same_state(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                return False
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y) or not all(
                    same_state({0: u}, {0: v}) for u, v in zip(x, y)):
                return False
        elif x != y and not (x != x and y != y):
            return False
    return True
