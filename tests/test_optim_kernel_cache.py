"""The kept kernel split (``lrkit.optim._kernel.GroupPlan``): a step that reuses last
step's pointer tables and state columns gives bit for bit what a step that builds them
again gives, whatever changed in between (a parameter or its storage replaced, a
gradient replaced, state loaded or replaced, a param group added, parameters frozen and
unfrozen, a dtype or layout change), with the native extension reading the kept plan
(``lrkit.optim._native``) and with the Python code it stands in for."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lrkit._snapshot import Snapshot
from lrkit.optim import _kernel, _native
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


def _state_reordered(model, opt, k):
    """A state entry taken out and put back (the state's keys in another order)."""
    p = next(model.parameters())
    if k == 3 and p in opt.state:
        opt.state[p] = opt.state.pop(p)


def _grad_not_contiguous(model, opt, k):
    """A gradient replaced by a non-contiguous one (same values), then a contiguous one."""
    p = list(model.parameters())[0]
    if k in (3, 4) and p.grad is not None and p.grad.dim() == 2:
        p.grad = p.grad.t().contiguous().t()


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
             _state_tensor_replaced, _snapshot_restored, _state_reordered,
             _grad_not_contiguous, _dtype_change, _layout_change, _group_added]


@pytest.fixture(params=["native", "python"])
def native(request, monkeypatch):
    """Kept plans read by the native extension, or by the Python code (as without it)."""
    if request.param == "python":
        monkeypatch.setitem(_native._state, "mod", None)
    elif _native.module() is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    return request.param


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
def test_kept_split_equals_a_fresh_one(info, scenario, native):
    kept = _run(info, scenario, keep=True)
    fresh = _run(info, scenario, keep=False)
    assert len(kept) == len(fresh)
    for a, b in zip(kept, fresh):
        assert a.dtype == b.dtype and torch.equal(a, b)


SNAPSHOT_CASES = [(info, cfg) for info in KERNEL_INFOS for cfg in info.configs]


@pytest.mark.parametrize("info, cfg", SNAPSHOT_CASES,
                         ids=[f"{i.name}-{cfg}" for i, cfg in SNAPSHOT_CASES])
def test_kept_split_equals_a_fresh_one_after_a_snapshot_restore(info, cfg, native):
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


def test_a_kept_plan_is_read_natively(monkeypatch):
    """With the extension, a step of an unchanged group neither splits it again nor reads
    any gradient from Python; a change sends it back to the Python path."""
    if _native.module() is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = make_opt(next(i for i in INFOS if i.name == "Adam").cls, model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    calls = []
    real = _kernel.plan_group
    monkeypatch.setattr(_kernel, "plan_group", lambda *a: calls.append(1) or real(*a))
    opt.step()
    opt.step()
    assert calls == []
    model[0].bias.grad = None  # the group's gradients changed: the Python path decides
    opt.step()
    assert calls == [1]


class _Sub(torch.Tensor):
    pass


def _gather(params, kept, none, pp, shapes=None):
    sizes = _kernel.array("q", [p.numel() for p, skip in zip(params, none) if not skip])
    gp = _kernel.array("Q", bytes(8 * (len(params) - sum(none))))
    if shapes is None:
        shapes = [p.shape for p, skip in zip(params, none) if not skip]
    return _native.module().gather(params, kept, bytes(none), pp, sizes, gp, 4, shapes), gp


_SAME_ADDRESS = {  # the same address, entries and dtype; another layout or shape
    "not contiguous": lambda p: setattr(p, "data", p.data.as_strided((3, 2), (1, 3))),
    "reshaped": lambda p: setattr(p, "data", p.data.view(2, 3)),
    "flattened": lambda p: setattr(p, "data", p.data.view(6)),
    "grad in its parameter's memory": lambda p: setattr(p, "grad", p.detach()),
}


@pytest.mark.parametrize("how", list(_SAME_ADDRESS))
def test_gather_and_the_python_checks_refuse_a_changed_layout_or_an_aliasing_grad(how):
    """A parameter given another layout or shape at its address (``p.data =
    p.data.as_strided(...)``), or a gradient in its parameter's memory: the kernel took
    the first as the contiguous tensor it was built for (moving the wrong entries) and
    read the second through pointers it assumes apart. Both checks now refuse them."""
    if _native.module() is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    params = [nn.Parameter(torch.randn(3, 2)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn(3, 2)
    b = _kernel.split(params, [p.grad for p in params])[0][0]
    none = [False] * 3
    assert _gather(params, list(params), none, b.pp)[0] is not None
    assert b.with_grads([p.grad for p in params]) is not None
    _SAME_ADDRESS[how](params[1])
    assert params[1].data_ptr() == b.pp[1]
    assert _gather(params, list(params), none, b.pp, b.shapes)[0] is None
    assert b.with_grads([p.grad for p in params]) is None
    params[1].grad = torch.empty(12)[6:].view(params[1].shape)  # memory of its own
    if how == "grad in its parameter's memory":
        assert _gather(params, list(params), none, b.pp, b.shapes)[0] is not None
        assert b.with_grads([p.grad for p in params]) is not None


@pytest.mark.parametrize("seed", range(8))
def test_gather_answers_as_the_python_checks(seed):
    """``gather`` against the checks it replaces (``GroupPlan.reuse``), on random groups
    with one thing changed after the plan was made: None for every change to a parameter
    in the batch (one with a gradient) or to which parameters have one; a parameter
    without a gradient may move (neither path reads it); nothing changed: the same."""
    if _native.module() is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(2, 12, (), generator=gen))
    params = [nn.Parameter(torch.randn(3, 2, generator=gen)) for _ in range(n)]
    none = [bool(torch.rand((), generator=gen) < 0.3) for _ in range(n)]
    none[0], none[-1] = False, True  # at least one of each
    for p, skip in zip(params, none):
        if not skip:
            p.grad = torch.randn(3, 2, generator=gen)
    kept = list(params)
    pp = _kernel.array("Q", [p.data_ptr() for p, skip in zip(params, none) if not skip])
    shapes = [p.shape for p, skip in zip(params, none) if not skip]
    grads, gp = _gather(params, kept, none, pp, shapes)
    assert grads is not None and len(grads) == len(pp)
    with_grad = [p for p, skip in zip(params, none) if not skip]
    assert all(g is p.grad for g, p in zip(grads, with_grad))
    assert list(gp) == [p.grad.data_ptr() for p in with_grad]
    j = [i for i in range(n) if not none[i]][int(torch.randint(0, n - sum(none), (),
                                                               generator=gen))]
    k = [i for i in range(n) if none[i]][int(torch.randint(0, sum(none), (), generator=gen))]
    p, q = params[j], params[k]
    changes = [
        ("another object", lambda: params.__setitem__(j, nn.Parameter(p.detach().clone()))),
        ("another object, no grad", lambda: params.__setitem__(k, nn.Parameter(q.detach()))),
        ("moved", lambda: setattr(p, "data", p.data.clone())),
        ("grad gone", lambda: setattr(p, "grad", None)),
        ("grad new", lambda: setattr(q, "grad", torch.zeros_like(q))),
        ("not contiguous", lambda: setattr(p, "grad", torch.randn(2, 3).t())),
        ("subclass grad", lambda: setattr(p, "grad", torch.zeros(3, 2).as_subclass(_Sub))),
        ("list shorter", lambda: params.pop()),
    ]
    for what, change in changes:
        state = (list(params), [x.data for x in params], [x.grad for x in params])
        change()
        assert _gather(params, kept, none, pp, shapes)[0] is None, what
        params[:] = state[0]
        for x, data, grad in zip(params, *state[1:]):
            x.data, x.grad = data, grad
        assert _gather(params, kept, none, pp, shapes)[0] is not None, what
    q.data = q.data.clone()  # a parameter without a gradient moved: not read by either path
    assert _gather(params, kept, none, pp, shapes)[0] is not None
    # a parameter (and its gradient) of another size than the plan's, at the same address
    sizes = _kernel.array("q", [x.numel() for x, skip in zip(params, none) if not skip])
    sizes[-1] += 1
    gp = _kernel.array("Q", bytes(8 * len(sizes)))
    gather = _native.module().gather
    assert gather(params, kept, bytes(none), pp, sizes, gp, 4, shapes) is None
    sizes[-1] -= 1
    assert gather(params, kept, bytes(none), pp, sizes, gp, 4, shapes) is not None
    assert gather(params, kept, bytes(none), pp, sizes, gp, 8, shapes) is None
    assert gather(params, kept, bytes(none), pp, sizes, gp, 4, shapes[:-1]) is None
    assert gather(params, kept, bytes(none), pp, sizes, gp, 4) is None  # an older caller
    # a gradient given another dtype in place (p.grad.data = ..., past torch's checks)
    with_grad = [x for x, skip in zip(params, none) if not skip]
    g = with_grad[0].grad
    g.data = torch.zeros(g.shape, dtype=torch.bfloat16)
    assert _native.module().gather(params, kept, bytes(none), pp, sizes, gp, 4) is None


def test_still_and_bump():
    nat = _native.module()
    if nat is None:
        pytest.skip(f"the native extension could not be built: {_native.error()}")
    a, b, c = torch.zeros(2), torch.ones(2), torch.zeros(())
    sts = [{"m": a, "step": c}, {"m": b}]
    flat = [a, c, b, None]
    marks = _kernel._marks(flat)
    assert nat.still(sts, ("m", "step"), flat, marks)
    assert not nat.still(sts, ("m", "step"), [a, c, a, None], marks)  # another tensor
    assert not nat.still([sts[0], None], ("m", "step"), flat, marks)  # a state dict gone
    assert not nat.still(sts, ("m", "step"), flat[:3], marks)
    assert not nat.still(sts, ("m", "step"), flat, marks[:-2])  # marks of another length
    assert nat.still([], (), [], _kernel.array("Q")) and nat.still(sts, (), [], marks[:0])
    # a tuple of alternatives: the first name the dict holds (as _kernel._column reads it)
    assert nat.still(sts, (("v", "m"), "step"), flat, marks)
    assert nat.still(sts, (("m", "step"), "step"), flat, marks)
    assert not nat.still(sts, (("step", "m"), "step"), flat, marks)
    assert nat.still(sts, (("x", "y"),), [None, None], _kernel._marks([None, None]))
    # the same tensor objects, changed in place: their addresses or sizes are not the marks'
    for change, undo in [
            (lambda: setattr(a, "data", a.data.clone()), None),
            (lambda: b.set_(torch.ones(2)), None),
            (lambda: a.resize_(1), lambda: a.resize_(2)),
            (lambda: c.resize_(4), None),
            # the same storage, address and number of entries, another dtype
            (lambda: setattr(b, "data", torch.empty(0, dtype=torch.bfloat16).set_(
                b.untyped_storage(), 0, (2,))), lambda: setattr(b, "data", torch.ones(2))),
            # the storage shrunk under the tensor
            (lambda: a.untyped_storage().resize_(4), lambda: setattr(a, "data", torch.zeros(2)))]:
        change()
        assert not nat.still(sts, ("m", "step"), flat, marks)
        assert not _kernel._holds(sts, [("m", [a, b]), ("step", [c, None])],
                                  (None, flat, marks))  # the Python check alike
        if undo is not None:
            undo()
        marks = _kernel._marks(flat)
        assert nat.still(sts, ("m", "step"), flat, marks)
    p, q, r = torch.zeros(1), torch.zeros(1), torch.zeros(1)
    state = {r: {"x": 1}, p: sts[0], q: sts[1]}
    assert nat.states(state, 1, [p, q], sts)
    assert nat.states(state, 0, [r, p], [state[r], sts[0]])
    assert not nat.states(state, 0, [p, q], sts)  # not where they stand
    assert not nat.states(state, 1, [p, q], [sts[0], dict(sts[1])])  # a new dict
    assert not nat.states(state, 2, [p, q], sts)  # past the end
    state[q] = {}
    assert not nat.states(state, 1, [p, q], [sts[0], state[q]])  # an empty state
    versions = [t._version for t in (a, b)]
    nat.bump([a, b])
    assert [t._version for t in (a, b)] == [v + 1 for v in versions]
    with torch.inference_mode():
        inf = torch.ones(2)
    nat.bump([inf, a])  # inference tensors have no version counter: skipped, as torch does
    torch.autograd.graph.increment_version([inf])
    assert a._version == versions[0] + 2
    with pytest.raises(TypeError):
        nat.bump([a, 1])
    with pytest.raises(TypeError):
        nat.bump((a,))


def test_native_switched_off(tmp_path):
    import subprocess
    import sys

    code = ("from lrkit.optim import _native; import sys; "
            "sys.exit(0 if _native.module() is None else 1)")
    env = {**__import__("os").environ, "LRKIT_NO_NATIVE": "1"}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@pytest.mark.parametrize("steps", [1, 3])
def test_plan_keeps_no_gradient(steps):
    """After zero_grad(set_to_none=True) no gradient of any step so far stays alive through
    the kept plan: backward's next gradients can take their memory (a plan that held the
    gradients of the step that built it, the first, kept one gradient's worth of memory
    for the whole run)."""
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    opt = make_opt(next(i for i in INFOS if i.name == "Adam").cls, model.parameters())
    refs = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        model(torch.randn(2, 4)).sum().backward()
        refs += [weakref.ref(p.grad) for p in model.parameters()]
        opt.step()
    opt.zero_grad(set_to_none=True)
    gc.collect()
    assert opt._kplans and all(r() is None for r in refs)
