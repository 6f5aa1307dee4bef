"""Bad hyperparameters raise ValueError naming the argument; torch's switches map onto impl."""
from __future__ import annotations

import re

import pytest
import torch

import lrkit
from optim_helpers import INFOS

BAD = [(i, kw, name) for i in INFOS for kw, name in i.invalid]


def _param():
    return [torch.nn.Parameter(torch.zeros(3))]


@pytest.mark.parametrize("info,kwargs,name", BAD,
                         ids=[f"{i.name}-{n}-{list(k.values())[0]}" for i, k, n in BAD])
def test_invalid_hyperparameter_names_the_argument(info, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"{info.name}(): {name} must")):
        info.cls(_param(), **kwargs)


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_every_optimizer_refuses_the_common_bad_values(info):
    """The issue's list: negative lr, betas outside [0, 1), eps <= 0."""
    names = {n for _, n in info.invalid}
    import inspect
    params = inspect.signature(info.cls.__init__).parameters
    lr = "lr" if "lr" in params else "init_lr"  # SLS: the first trial step
    assert lr in names
    if "betas" in params:
        assert {"betas[0]", "betas[1]"} <= names
    if "eps" in params:
        assert "eps" in names or "eps[1]" in names
    with pytest.raises((ValueError, TypeError), match=f"{lr} must"):
        info.cls(_param(), **{lr: torch.tensor([0.1, 0.2])})
    with pytest.raises(ValueError, match="impl must be one of"):
        info.cls(_param(), impl="fastest")


def test_torch_switches_map_onto_impl():
    Adam, NAdam = lrkit.optim.Adam, lrkit.optim.NAdam
    assert Adam(_param(), fused=True).impl == "fused"
    assert Adam(_param(), foreach=True).impl == "foreach"
    assert Adam(_param(), foreach=False).impl == "reference"
    assert Adam(_param()).impl == "auto"
    with pytest.raises(ValueError, match="cannot be used together"):
        Adam(_param(), fused=True, foreach=True)
    with pytest.raises(ValueError, match="impl must be one of"):
        NAdam(_param(), impl="fused")


def test_differentiable_runs_torchs_functional_under_autograd():
    """differentiable=True: the step is part of the graph, as with torch."""
    grads = []
    for cls in (lrkit.optim.Adam, torch.optim.Adam):
        w = torch.randn(4, generator=torch.Generator().manual_seed(0), requires_grad=True)
        p = w.clone()  # a non-leaf parameter, as torch's differentiable tests use
        p.grad = torch.linspace(-1, 1, 4)
        cls([p], lr=0.1, differentiable=True).step()
        p.square().sum().backward()
        grads.append(w.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_import_lrkit_stays_light():
    import os
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, lrkit; assert 'torch' not in sys.modules; "
            "lrkit.optim.Adam; assert 'lion_pytorch' not in sys.modules")
    src = str(Path(__file__).resolve().parents[1] / "src")
    subprocess.run([sys.executable, "-c", code], check=True,
                   env={**os.environ, "PYTHONPATH": src})


# (one param group only: L-BFGS refuses any added group; a group's lr of 0 is a frozen
# group where the optimizers with one shared step size refuse lr=0 in the constructor)
GROUP_BAD = [(i, kw, name) for i, kw, name in BAD
             if "single_group" not in i.tags and kw != {"lr": 0.0}
             and all(k in i.cls(_param(), **i.configs[0]).defaults for k in kw)]


@pytest.mark.parametrize("info,kwargs,name", GROUP_BAD,
                         ids=[f"{i.name}-{n}-{list(k.values())[0]}" for i, k, n in GROUP_BAD])
def test_a_param_group_with_a_bad_value_is_refused_when_added(info, kwargs, name):
    """A value the constructor refuses is refused in ``add_param_group`` too (torch
    checks none there: a NaN or negative eps, lr or decay went silently into the
    weights), before the group is added; the same in the constructor's list of groups."""
    opt = info.cls(_param(), **info.configs[0])
    groups = len(opt.param_groups)
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        opt.add_param_group({"params": _param(), **kwargs})
    assert len(opt.param_groups) == groups
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        info.cls([{"params": _param()}, {"params": _param(), **kwargs}], **info.configs[0])


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_a_param_group_with_its_own_valid_values_is_added(info):
    """No false alarm: a group that sets every value to the constructor's (new objects of
    the same values) is added and steps."""
    opt = info.cls(_param(), **info.configs[0])
    own = {k: (tuple(v) if isinstance(v, tuple) else v) for k, v in opt.defaults.items()
           if k not in ("params", "param_names")}
    try:
        opt.add_param_group({"params": _param(), **own})
    except ValueError as exc:
        assert "one param group" in str(exc) or "must agree" in str(exc), exc
        return
    assert len(opt.param_groups) == 2


def test_betas_of_a_tensor_of_two_entries_is_a_value_error():
    for cls in (lrkit.optim.Adam, lrkit.optim.Lion, lrkit.optim.ScheduleFreeAdamW,
                lrkit.optim.DAdaptAdam):
        with pytest.raises(ValueError, match=r"betas\[0\] must be a number or a one-element"):
            cls(_param(), betas=(torch.tensor([0.9, 0.8]), 0.99))


def test_lbfgs_history_size_beyond_a_list_is_refused():
    with pytest.raises(ValueError, match="history_size must be at most"):
        lrkit.optim.LBFGS(_param(), history_size=10**30)


def test_schedule_free_weight_overflow_is_a_clear_error():
    p = torch.nn.Parameter(torch.ones(3))
    opt = lrkit.optim.ScheduleFreeAdamW([p], r=1e30)
    p.grad = torch.ones(3)
    opt.step()  # k = 0: 1**r
    p.grad = torch.ones(3)
    with pytest.raises(FloatingPointError, match="averaging weight .* overflows float64"):
        opt.step()


@pytest.mark.parametrize("make", [
    lambda ps: lrkit.optim.DoG(ps, lr=__import__("fractions").Fraction(1, 2)),
    lambda ps: lrkit.optim.LDoG(ps, lr=__import__("numpy").float32(1.0)),
    lambda ps: lrkit.optim.Prodigy(ps, growth_rate=__import__("numpy").float32("inf")),
    lambda ps: lrkit.optim.DAdaptAdam(ps, growth_rate=torch.tensor(float("inf"))),
], ids=["DoG-Fraction-lr", "LDoG-numpy-lr", "Prodigy-numpy-inf", "DAdaptAdam-tensor-inf"])
def test_numbers_of_other_numeric_types_are_taken(make):
    """A Fraction or numpy lr, and numpy's or a 0-dim tensor's inf for growth_rate, are
    numbers like any other (a Fraction lr met a tensor in DoG's step: TypeError; numpy's
    inf was refused as not finite)."""
    p = torch.nn.Parameter(torch.randn(5))
    opt = make([p])
    for _ in range(3):
        p.grad = torch.randn(5)
        opt.step()
    assert torch.isfinite(p).all()


def test_a_group_valid_for_the_step_is_not_refused_by_a_rule_tying_arguments():
    """SGD's constructor refuses nesterov without momentum; a group of momentum 0 beside
    the optimizer's nesterov=True is valid (the step skips the buffer, as torch's does)."""
    a, b = _param(), _param()
    opt = lrkit.optim.SGD([{"params": a}, {"params": b, "momentum": 0.0}], lr=0.1,
                          momentum=0.9, nesterov=True)
    ref = torch.optim.SGD([{"params": [x.detach().clone().requires_grad_() for x in a]},
                           {"params": [x.detach().clone().requires_grad_() for x in b],
                            "momentum": 0.0}], lr=0.1, momentum=0.9, nesterov=True)
    ours = [p for g in opt.param_groups for p in g["params"]]
    theirs = [p for g in ref.param_groups for p in g["params"]]
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.ones(3)
            q.grad = torch.ones(3)
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="eps"):  # a value refused on its own still is
        lrkit.optim.Adam([{"params": _param()}, {"params": _param(), "eps": -1.0}])
