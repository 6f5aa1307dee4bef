"""effective_lr()/explain() reproduce the update the last step made; lr_stats() sums it up."""
from __future__ import annotations

import math

import pytest
import torch

from optim_helpers import (
    CASES,
    batches,
    case_id,
    closure_for,
    loss_of,
    make_model,
    param_groups,
    tags_of,
    train,
)


def _last_step(info, cfg):
    if "inner_iterations" in tags_of(info.cls):  # (explain(): a step's last iteration)
        cfg = {**cfg, "max_iter": 1, "max_eval": max(cfg.get("max_eval", 25), 25)}
    model = make_model(torch.float64)
    opt = info.cls(param_groups(model, cfg, True, info.cls), **cfg)
    data = batches(torch.float64)
    train(opt, model, data, 7)
    before = [p.detach().clone() for p in model.parameters()]
    if "needs_closure" in tags_of(info.cls):
        opt.step(closure_for(opt, model, data[3]))
    else:
        opt.zero_grad()
        loss_of(model, data[3]).backward()
        before = [p.detach().clone() for p in model.parameters()]
        opt.step()
    for group in opt.param_groups:  # a Scheduler moving on must not change the answer
        group["lr"] = group["lr"] * 0.5
    return model, opt, before


@pytest.mark.parametrize("info,cfg", CASES, ids=[f"{i.name}-{case_id(c)}" for i, c in CASES])
def test_explain_reproduces_the_update(info, cfg):
    model, opt, before = _last_step(info, cfg)
    for p, b in zip(model.parameters(), before):
        actual = p.detach() - b
        # the update, or the rounding of the weights where it is below their precision
        scale = actual.abs().max().item() + 1e-7 * b.abs().max().item() or 1.0
        e = opt.explain(p)
        assert e.eta.shape == p.shape and (e.eta >= 0).all()
        assert (e.update - actual).abs().max().item() <= 1e-8 * scale
        rebuilt = -(e.eta * e.direction) - e.decay
        assert (rebuilt - actual).abs().max().item() <= 1e-8 * scale
        assert torch.equal(opt.effective_lr(p), e.eta)


@pytest.mark.parametrize("info,cfg", CASES[::3], ids=[f"{i.name}-{case_id(c)}"
                                                       for i, c in CASES[::3]])
def test_lr_stats(info, cfg):
    model, opt, before = _last_step(info, cfg)
    stats = opt.lr_stats()
    assert len(stats) == len(opt.param_groups) == (1 if "single_group" in info.tags else 2)
    nested = opt.effective_lr()
    params = list(model.parameters())
    for k, (group, s) in enumerate(zip(opt.param_groups, stats)):
        etas = torch.cat([e.reshape(-1) for e in nested[k]])
        assert s["min"] == pytest.approx(etas.min().item())
        assert s["max"] == pytest.approx(etas.max().item())
        assert s["min"] <= s["median"] <= s["max"]
        idx = [i for i, p in enumerate(params) if any(p is q for q in group["params"])]
        upd = math.sqrt(sum(float((params[i].detach() - before[i]).square().sum())
                            for i in idx))
        w = math.sqrt(sum(float(params[i].detach().square().sum()) for i in idx))
        assert s["update_ratio"] == pytest.approx(upd / w, rel=1e-6)


def test_sgd_effective_lr_is_lr_and_adam_is_elementwise():
    from lrkit.optim import SGD, Adam
    model, opt, _ = _last_step(type("I", (), {"cls": SGD})(), {"lr": 0.05, "momentum": 0.9})
    w = model[0].weight
    assert torch.equal(opt.effective_lr(w), torch.full_like(w, 0.05))
    assert opt.lr_stats()[0]["min"] == opt.lr_stats()[0]["max"] == 0.05
    model, opt, _ = _last_step(type("I", (), {"cls": Adam})(), {"lr": 0.01})
    eta = opt.effective_lr(model[0].weight)
    st = opt.state[model[0].weight]
    t = st["step"].item()
    expected = 0.01 / (1 - 0.9**t) / ((st["exp_avg_sq"] / (1 - 0.999**t)).sqrt() + 1e-8)
    torch.testing.assert_close(eta, expected)
    assert eta.min() < eta.max()


def test_explain_before_any_step_says_so():
    from lrkit.optim import Adam
    model = make_model()
    opt = Adam(model.parameters())
    with pytest.raises(ValueError, match="not been updated"):
        opt.explain(model[0].weight)
    assert opt.effective_lr()[0][0] is None
    assert math.isnan(opt.lr_stats()[0]["median"])


@pytest.mark.parametrize("info,cfg", CASES, ids=[f"{i.name}-{case_id(c)}" for i, c in CASES])
def test_frozen_and_unused_parameters_are_skipped(info, cfg):
    """Fine-tuning passes frozen layers through model.parameters(): the group steps while
    they never get a gradient; effective_lr()/lr_stats() report them as not stepped."""
    model = make_model(torch.float64)
    frozen = model[0].weight.requires_grad_(False)
    unused = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))  # never in the loss
    opt = info.cls([{"params": [*model.parameters(), unused]}], **cfg)
    train(opt, model, batches(torch.float64), 3)
    nested = opt.effective_lr()
    params = opt.param_groups[0]["params"]
    for p, eta in zip(params, nested[0]):
        if p is frozen or p is unused:
            assert eta is None
            with pytest.raises(ValueError, match="not been updated"):
                opt.explain(p)
        else:
            assert eta is not None and eta.shape == p.shape
    stats = opt.lr_stats()[0]
    assert all(math.isfinite(v) for v in stats.values()), stats
