"""nonfinite="raise" | "skip" | "zero": no NaN or Inf from a gradient ever reaches the
parameters or the state, whatever the implementation."""
from __future__ import annotations

import math

import pytest
import torch

from lrkit import NonFiniteGradientError
from optim_helpers import INFOS, batches, loss_of, make_model, roundtrip, same_state, train

# (SLS computes its gradients inside step(closure): tests/test_lrfree.py covers it)
CASES = [(i, impl) for i in INFOS for impl in ("auto", "reference", *i.impls())
         if "needs_closure" not in i.tags]
ids = [f"{i.name}-{impl}" for i, impl in CASES]


def _setup(info, impl, named=True, **extra):
    model = make_model()
    params = model.named_parameters() if named else model.parameters()
    opt = info.cls(params, **info.configs[-1], impl=impl, **extra)
    data = batches()
    train(opt, model, data, 3)
    opt.zero_grad()
    loss_of(model, data[3]).backward()
    return model, opt


def _unchanged(opt, before):
    sd, params = before
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    return same_state({k: v for k, v in opt.state_dict().items() if k != "skipped_steps"},
                      {k: v for k, v in sd.items() if k != "skipped_steps"}) and all(
        torch.equal(a, b) for a, b in zip(now, params))


def _snapshot(opt):
    import copy
    return copy.deepcopy(opt.state_dict()), [
        p.detach().clone() for g in opt.param_groups for p in g["params"]]


@pytest.mark.parametrize("info,impl", CASES, ids=ids)
def test_raise_names_the_parameter_before_changing_anything(info, impl):
    model, opt = _setup(info, impl)
    model[3].weight.grad[2, 5] = math.nan
    before = _snapshot(opt)
    with pytest.raises(NonFiniteGradientError, match=r"'3\.weight'"):
        opt.step()
    assert _unchanged(opt, before)
    # without names: the group, the index and the shape
    model, opt = _setup(info, impl, named=False)
    model[5].bias.grad[0] = -math.inf
    with pytest.raises(NonFiniteGradientError,
                       match=r"param_groups\[0\]\['params'\]\[5\] of shape \(1,\)"):
        opt.step()


@pytest.mark.parametrize("info,impl", CASES, ids=ids)
def test_skip_leaves_everything_untouched_and_counts(info, impl):
    model, opt = _setup(info, impl, nonfinite="skip")
    model[0].weight.grad[1, 0, 2] = math.inf
    before = _snapshot(opt)
    opt.step()
    assert _unchanged(opt, before)
    assert opt.skipped_steps == 1 and opt.state_dict()["skipped_steps"] == 1
    fresh = info.cls(make_model().parameters(), **info.configs[-1], nonfinite="skip")
    fresh.load_state_dict(roundtrip(opt.state_dict()))
    assert fresh.skipped_steps == 1


@pytest.mark.parametrize("info,impl", CASES, ids=ids)
def test_zero_treats_nonfinite_entries_as_zero(info, impl):
    model, opt = _setup(info, impl, nonfinite="zero")
    model2, opt2 = _setup(info, impl, nonfinite="zero")
    grad = model[3].weight.grad
    grad[0, :3] = torch.tensor([math.nan, math.inf, -math.inf])
    model2[3].weight.grad[0, :3] = 0.0
    opt.step()
    opt2.step()
    assert torch.isnan(grad[0, 0])  # the user's gradient is left as it was
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                assert torch.isfinite(v).all()


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        INFOS[0].cls(make_model().parameters(), nonfinite="ignore")
