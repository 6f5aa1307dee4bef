"""The exactness contract of every fast path (lrkit's kernel, torch's foreach and fused):
one step from the same parameters, state and gradients lands within 1 ulp per operation of
torch's single-tensor result (the reference path), on any CPU.

A step computes each new value (a weight, a moment) through a chain of at most ``OPS``
elementwise operations (NAdam's is the longest: 12); each may round differently on
another path (a correctly rounded square root against MKL's, an FMA against a multiply
and an add, a reciprocal times a number against a division), by at most one unit in the
last place of its result. So the two results differ by at most ``OPS`` ulps of the
magnitudes the chain goes through, bounded by ``|old| + |new - old|`` (the value before
the step and the change). Algorithms that also sum over all entries (the learning-rate-
free step sizes, Adafactor's means and norms) add the rounding of a sum of N terms, at
most N - 1 operations. One step only: over many steps chaotic configurations amplify one
ulp into anything, and other tests (test_optim_paths.py) hold runs of many steps.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch

from lrkit.optim import _kernel
from optim_helpers import CASES, batches, case_id, loss_of, make_model, train

OPS = 16
# CI: each optimizer's last configuration (its richest) on every path; locally all of them
PATHS = [(i, c, impl) for i, c in CASES for impl in i.impls()
         if not os.environ.get("CI") or c is i.configs[-1]]


def one_step(info, cfg, dtype, impl, start):
    """(params, state tensors) after one step with ``impl`` from ``start``."""
    model, sd, grads = copy.deepcopy(start)
    params = list(model.parameters())
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt = info.cls(params, **cfg, impl=impl)
    if "schedule_free" in info.tags:
        opt.train()
    opt.load_state_dict(sd)
    opt.step()
    state = [v.detach().clone() for p in params for k, v in sorted(opt.state[p].items())
             if torch.is_tensor(v) and v.dim()]
    group = [float(v) for g in opt.param_groups for k, v in sorted(g.items())
             if k in ("d", "d_max", "d_numerator", "k") and isinstance(v, (int, float))]
    return [p.detach().clone() for p in params], state, group


def within_contract(new, ref, old, ops, eps):
    for a, b, o in zip(new, ref, old):
        a, b, o = a.double(), b.double(), o.double()
        scale = o.abs() + (b - o).abs()
        bound = ops * eps * scale + torch.finfo(torch.float64).tiny
        if not bool(((a - b).abs() <= bound).all()):
            return float(((a - b).abs() / scale.clamp(min=1e-300)).max() / eps)
    return None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info,cfg,impl", PATHS,
                         ids=[f"{i.name}-{case_id(c)}-{m}" for i, c, m in PATHS])
def test_one_step_within_one_ulp_per_operation(info, cfg, impl, dtype):
    if impl == "kernel" and not _kernel.available():
        pytest.skip("no C++ compiler: the kernel is not built")
    if "needs_closure" in info.tags:
        pytest.skip("a line search: its steps are closures' forward passes")
    model = make_model(dtype)
    warm = info.cls(model.parameters(), **cfg, impl="reference")
    if "schedule_free" in info.tags:
        warm.train()
    data = batches(dtype)
    train(warm, model, data, 3)  # a state that is not all zeros
    warm.zero_grad()
    loss_of(model, data[3]).backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    old = [p.detach().clone() for p in model.parameters()]
    old_state = [v.detach().clone() for p in model.parameters()
                 for k, v in sorted(warm.state[p].items()) if torch.is_tensor(v) and v.dim()]
    for p in model.parameters():
        p.grad = None
    start = (model, warm.state_dict(), grads)
    ref = one_step(info, cfg, dtype, "reference", start)
    new = one_step(info, cfg, dtype, impl, start)
    n = sum(p.numel() for p in model.parameters())
    ops = OPS if info.cls.kernel_exact and info.cls.kernel is not None else OPS + n
    eps = torch.finfo(dtype).eps
    bad = within_contract(new[0], ref[0], old, ops, eps)
    assert bad is None, f"weights differ by {bad:.1f} ulps of |old| + |change|"
    if len(old_state) == len(ref[1]):  # the state existed before the step
        bad = within_contract(new[1], ref[1], old_state, ops, eps)
        assert bad is None, f"state differs by {bad:.1f} ulps"
    for a, b in zip(new[2], ref[2]):
        assert abs(a - b) <= ops * eps * abs(b)
