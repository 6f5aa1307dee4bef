"""The kept kernel split (``lrkit.optim._kernel.GroupPlan``): a step that reuses last
step's pointer tables and state columns gives bit for bit what a step that builds them
again gives, whatever changed in between (a parameter or its storage replaced, a
gradient replaced, state loaded or replaced, a param group added, parameters frozen and
unfrozen, a dtype or layout change)."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lrkit._snapshot import Snapshot
from lrkit.optim import _kernel
from optim_helpers import INFOS, batches, loss_of, make_model, make_opt

pytestmark = pytest.mark.skipif(not _kernel.available(), reason="no C++ compiler")

KERNEL_INFOS = [i for i in INFOS if i.cls.kernel is not None and "needs_closure" not in i.tags]


def _new_storage(model, opt, k):
    """Every parameter's storage replaced (``p.data = ...``), values kept."""
    if k == 3:
        for p in model.parameters():
            p.data = p.data.clone()


def _new_values(model, opt, k):
    """A parameter replaced in place by other values at another address."""
    if k == 3:
        p = next(model.parameters())
        p.data = torch.randn_like(p) * 0.1


def _grad_replaced(model, opt, k):
    """Gradients replaced after backward: a new tensor, a new storage under the same one."""
    ps = list(model.parameters())
    if k % 2:
        ps[0].grad = ps[0].grad.clone() * 0.5
    else:
        ps[1].grad.data = ps[1].grad.data.clone() * 2.0


def _frozen(model, opt, k):
    """Parameters without a gradient on some steps (frozen, unused), then back."""
    ps = list(model.parameters())
    if 2 <= k < 4:
        ps[0].grad = None
    if k == 5:
        ps[2].grad = None


def _state_loaded(model, opt, k):
    """The state replaced by load_state_dict (another optimizer's copy)."""
    if k == 3:
        other = copy.deepcopy(opt.state_dict())
        for v in other["state"].values():
            for t in v.values():
                if torch.is_tensor(t) and t.dim() > 0 and t.is_floating_point():
                    t.mul_(0.5)
        opt.load_state_dict(other)


def _state_tensor_replaced(model, opt, k):
    """One state tensor replaced in its dict; another parameter's state reset."""
    ps = list(model.parameters())
    if k == 3:
        st = opt.state[ps[0]]
        for name, t in list(st.items()):
            if torch.is_tensor(t) and t.dim() > 0:
                st[name] = t.clone() * 0.5
                break
    if k == 4:
        opt.state[ps[1]] = {}
    if k == 5:
        opt.state[ps[2]].clear()


def _snapshot_restored(model, opt, k):
    """lrkit's Snapshot restored (as the autopilot rolls back): the optimizer's state is
    cleared and refilled with new dicts, holding the saved tensor objects (values copied
    back in place); a snapshot taken before the first step leaves no state at all."""
    if k in (0, 2):
        opt.__dict__[f"_snapshot_{k}"] = Snapshot(model, opt, rng=False)
    if k == 3:  # before the first step: every state dict gone
        opt.__dict__["_snapshot_0"].restore()
    if k == 5:  # state dicts anew, holding the tensors of step 2 (replaced at step 3)
        opt.__dict__["_snapshot_2"].restore()


def _dtype_change(model, opt, k):
    """The model moved to float64 (new storage, another dtype), the state following it
    through load_state_dict (which casts it to the parameters' dtype)."""
    if k == 3:
        model.double()
        opt.load_state_dict(opt.state_dict())


def _layout_change(model, opt, k):
    """A parameter made non-contiguous at another address: it leaves the kernel."""
    if k == 3:
        p = list(model.parameters())[3]
        p.data = p.data.t().contiguous().t()


def _group_added(model, opt, k):
    """A param group added mid-run (the model's last layer, held apart until then)."""
    if k == 3:
        opt.add_param_group({"params": list(model[-1].parameters())})


SCENARIOS = [_new_storage, _new_values, _grad_replaced, _frozen, _state_loaded,
             _state_tensor_replaced, _snapshot_restored, _dtype_change, _layout_change,
             _group_added]


def _run(info, scenario, keep: bool, steps: int = 8, cfg=None) -> list[torch.Tensor]:
    model = make_model(torch.float32)
    params = list(model.parameters())
    if scenario is _group_added:
        params = [p for p in params if all(p is not q for q in model[-1].parameters())]
    opt = make_opt(info.cls, params, **(cfg or {}))
    data = batches(torch.float32)
    for k in range(steps):
        opt.zero_grad()
        x, y = data[k % len(data)]
        dtype = next(model.parameters()).dtype
        loss_of(model, (x.to(dtype), y.to(dtype))).backward()
        scenario(model, opt, k)
        if not keep:
            opt._kplans.clear()
        opt.step()
    out = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        for v in opt.state.get(p, {}).values():
            if torch.is_tensor(v):
                out.append(v.detach().clone())
    return out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__[1:] for s in SCENARIOS])
@pytest.mark.parametrize("info", KERNEL_INFOS, ids=[i.name for i in KERNEL_INFOS])
def test_kept_split_equals_a_fresh_one(info, scenario):
    kept = _run(info, scenario, keep=True)
    fresh = _run(info, scenario, keep=False)
    assert len(kept) == len(fresh)
    for a, b in zip(kept, fresh):
        assert a.dtype == b.dtype and torch.equal(a, b)


SNAPSHOT_CASES = [(info, cfg) for info in KERNEL_INFOS for cfg in info.configs]


@pytest.mark.parametrize("info, cfg", SNAPSHOT_CASES,
                         ids=[f"{i.name}-{cfg}" for i, cfg in SNAPSHOT_CASES])
def test_kept_split_equals_a_fresh_one_after_a_snapshot_restore(info, cfg):
    """Every configuration of the registry (SGD with momentum among them: its kept plan
    crashed on the state dicts a restore had removed)."""
    kept = _run(info, _snapshot_restored, keep=True, cfg=cfg)
    fresh = _run(info, _snapshot_restored, keep=False, cfg=cfg)
    assert len(kept) == len(fresh)
    for a, b in zip(kept, fresh):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_plan_is_kept_and_rebuilt_when_a_parameter_moves():
    model = nn.Linear(4, 3)
    opt = make_opt(next(i for i in INFOS if i.name == "Adam").cls, model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    plan = opt._kplans[0]
    opt.step()
    assert opt._kplans[0] is plan  # nothing changed: kept
    model.weight.data = model.weight.data.clone()
    opt.step()
    assert opt._kplans[0] is not plan  # the weight moved: split again


def test_plan_is_not_copied():
    model = nn.Linear(4, 3)
    opt = make_opt(next(i for i in INFOS if i.name == "Adam").cls, model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert opt._kplans
    assert "_kernel_plans" not in copy.deepcopy(opt).__dict__
    assert "_kernel_plans" not in opt.__getstate__()
