"""state_dict round trips (bit for bit), torch.optim state_dicts in and out, named
parameters, closures."""
from __future__ import annotations

import pytest
import torch

from optim_helpers import (
    INFOS,
    batches,
    case_id,
    closure_for,
    make_model,
    make_opt,
    param_groups,
    rel_err,
    roundtrip,
    train,
)

EDGE = [(i, c) for i in INFOS for c in (i.configs[0], i.configs[-1])]
TORCH = [(i, c) for i, c in EDGE if i.reference and i.reference.startswith("torch.optim")]
ids = [f"{i.name}-{case_id(c)}" for i, c in EDGE]


def _fresh(info, cfg, src=None, cls=None, **extra):
    model = make_model()
    if src is not None:
        with torch.no_grad():
            for p, q in zip(model.parameters(), src):
                p.copy_(q)
    cls = cls or info.cls
    return model, make_opt(cls, param_groups(model, cfg, True, cls), **cfg, **extra)


@pytest.mark.parametrize("impl", ["auto", "reference"])
@pytest.mark.parametrize("info,cfg", EDGE, ids=ids)
def test_resume_mid_run_is_bit_exact(info, cfg, impl):
    data = batches()
    model, opt = _fresh(info, cfg, impl=impl)
    mid = train(opt, model, data, 6)
    saved = roundtrip(opt.state_dict())
    straight = train(opt, model, data, 6, start=6)
    model2, opt2 = _fresh(info, cfg, src=mid, impl=impl)
    opt2.load_state_dict(saved)
    resumed = train(opt2, model2, data, 6, start=6)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert opt2.state_dict()["skipped_steps"] == 0


@pytest.mark.parametrize("info,cfg", TORCH, ids=[f"{i.name}-{case_id(c)}" for i, c in TORCH])
def test_torch_state_dict_loads_into_ours_and_back(info, cfg):
    data = batches()
    model, theirs = _fresh(info, cfg, cls=info.reference_cls())
    mid = train(theirs, model, data, 6)
    sd = roundtrip(theirs.state_dict())
    expected = train(theirs, model, data, 6, start=6)
    # same state layout: the same keys per parameter
    model2, ours = _fresh(info, cfg, src=mid)
    ours.load_state_dict(roundtrip(sd))  # load_state_dict may alias the loaded tensors
    assert {k: set(v) for k, v in ours.state_dict()["state"].items()} == \
        {k: set(v) for k, v in sd["state"].items()}
    got = train(ours, model2, data, 6, start=6)
    assert rel_err(got, expected) <= 1e-6
    # and ours into a fresh torch optimizer
    model3, back = _fresh(info, cfg, src=mid, cls=info.reference_cls())
    model4, ours2 = _fresh(info, cfg, src=mid)
    ours2.load_state_dict(roundtrip(sd))
    back.load_state_dict(roundtrip(ours2.state_dict()))
    assert rel_err(train(back, model3, data, 6, start=6), expected) <= 1e-6


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_named_parameters_and_closure(info):
    cfg = info.configs[-1]
    data = batches()
    model = make_model()
    opt = info.cls(model.named_parameters(), **cfg)
    named = train(opt, model, data, 5, closure=True)
    assert opt.state_dict()["param_groups"][0]["param_names"][0] == "0.weight"
    model2 = make_model()
    opt2 = info.cls(model2.parameters(), **cfg)
    plain = train(opt2, model2, data, 5)
    assert all(torch.equal(a, b) for a, b in zip(named, plain))
    # step(closure) returns the closure's loss, computed with gradients enabled
    with torch.no_grad():
        loss = opt2.step(closure_for(opt2, model2, data[0]))
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_is_a_torch_optimizer_with_the_references_defaults(info):
    """Every argument the reference shares has its default; a torch namesake's arguments
    all exist."""
    import inspect
    assert issubclass(info.cls, torch.optim.Optimizer)
    if info.reference is None:
        pytest.skip(f"{info.name} has no reference implementation")
    pytest.importorskip(info.reference.partition(":")[0])
    ours = inspect.signature(info.cls.__init__).parameters
    theirs = inspect.signature(info.reference_cls().__init__).parameters
    for name, par in theirs.items():
        if info.reference.startswith("torch.optim"):
            assert name in ours, name
        # foreach/fused choose an implementation, not the algorithm (schedulefree's
        # foreach=True is lrkit's impl="foreach"; lrkit's default picks its kernel)
        if name in ours and name not in ("foreach", "fused"):
            assert ours[name].default == par.default, name
