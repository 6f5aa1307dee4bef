"""``torch.compile(opt.step, fullgraph=True)`` on the default path: the NaN/Inf check stays
in the graph (no host sync), raises before anything changes, and ``nonfinite="zero"``
too; the compiled steps equal the eager ones."""
from __future__ import annotations

import os

import pytest
import torch

from optim_helpers import batches, loss_of, make_model, rel_err
from optim_registry import REGISTRY

# the optimizers whose step has no host read (the lr-free ones read d on the host)
GRAPHED = [i for i in REGISTRY.values() if not {"eager_step", "needs_closure"} & i.tags
           and (not os.environ.get("CI") or i.name in ("SGD", "Adam", "Adafactor"))]


def grads_of(model, batch):
    model.zero_grad()
    loss_of(model, batch).backward()


@pytest.mark.parametrize("info", GRAPHED, ids=[i.name for i in GRAPHED])
def test_default_step_compiles_in_one_graph_and_raises_before_changing(info):
    torch._dynamo.reset()
    model = make_model()
    opt = info.cls(model.parameters(), **info.configs[0])
    data = batches()
    grads_of(model, data[0])
    opt.step()  # the state exists: the traced step is the steady one
    step = torch.compile(opt.step, backend="eager", fullgraph=True)  # a break would raise
    grads_of(model, data[1])
    step()
    grads_of(model, data[2])
    w = next(model.parameters())
    w.grad.view(-1)[0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    state = [v.clone() for p in model.parameters() for v in opt.state[p].values()
             if torch.is_tensor(v)]
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert all(torch.equal(a, v) for a, v in zip(
        state, [v for p in model.parameters() for v in opt.state[p].values()
                if torch.is_tensor(v)]))
    opt.nonfinite = "zero"  # in the graph too (torch.where): the step goes on
    torch._dynamo.reset()
    torch.compile(opt.step, backend="eager", fullgraph=True)()
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.skipif(bool(os.environ.get("CI")), reason="inductor compiles for ~30 s")
def test_inductor_compiled_adam_equals_eager_and_raises_before_changing():
    torch._dynamo.reset()
    out = []
    for compiled in (True, False):
        model = make_model()
        opt = REGISTRY["Adam"].cls(model.parameters(), lr=1e-2)
        step = torch.compile(opt.step, fullgraph=True) if compiled else opt.step
        data = batches()
        for i in range(5):
            grads_of(model, data[i % 4])
            step()
        out.append([p.detach().clone() for p in model.parameters()])
    assert rel_err(out[0], out[1]) <= 1e-5  # inductor's own kernels: rounding differs
    grads_of(model := make_model(), data[0])
    opt = REGISTRY["Adam"].cls(model.parameters(), lr=1e-2)
    opt.step()
    step = torch.compile(opt.step, fullgraph=True)
    grads_of(model, data[1])
    next(model.parameters()).grad.view(-1)[3] = float("inf")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


SKIPPERS = [REGISTRY[n] for n in ("SGD", "Adam")] if os.environ.get("CI") else GRAPHED[:4]


@pytest.mark.parametrize("info", SKIPPERS, ids=[i.name for i in SKIPPERS])
def test_skip_breaks_the_graph_once_and_skips_as_the_eager_step(info):
    """``nonfinite="skip"`` decides on the host whether the step changes anything: in one
    graph (``fullgraph=True``) dynamo refuses it; compiled with its break, a step with a
    NaN changes nothing and is counted, and the other steps equal the eager ones."""
    out = []
    for compiled in (True, False):
        torch._dynamo.reset()
        model = make_model()
        opt = info.cls(model.parameters(), **info.configs[0], nonfinite="skip")
        data = batches()
        if compiled:
            grads_of(model, data[0])
            with pytest.raises(Exception, match="(?i)graph break|unsupported|data-dependent"):
                torch.compile(opt.step, backend="eager", fullgraph=True)()
            torch._dynamo.reset()
            model = make_model()
            opt = info.cls(model.parameters(), **info.configs[0], nonfinite="skip")
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        for i in range(6):
            grads_of(model, data[i % 4])
            if i == 3:
                next(model.parameters()).grad.view(-1)[0] = float("nan")
                before = [p.detach().clone() for p in model.parameters()]
                state = [v.clone() for p in model.parameters()
                         for v in opt.state[p].values() if torch.is_tensor(v)]
            step()
            if i == 3:
                assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
                assert all(torch.equal(a, v) for a, v in zip(state, [
                    v for p in model.parameters() for v in opt.state[p].values()
                    if torch.is_tensor(v)]))
        assert opt.skipped_steps == 1
        out.append([p.detach().clone() for p in model.parameters()])
    # the traced step runs the reference path, the eager one the kernel: rounding apart
    assert rel_err(out[0], out[1]) <= 1e-5
