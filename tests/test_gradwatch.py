"""The non-finite check of large gradients as backward produces them
(``lrkit.optim._gradwatch``, opt-in with ``LRKIT_CHECK_IN_BACKWARD=1``): the step's pass
skips them, and every other way of writing a gradient is still caught before anything
changes."""
from __future__ import annotations

import pytest
import torch

import lrkit
from lrkit.optim import _gradwatch, _kernel

pytestmark = pytest.mark.skipif(not _kernel.available(), reason="no C++ compiler")
BIG = _gradwatch.MIN_NUMEL


@pytest.fixture(autouse=True)
def hooks_on(monkeypatch):
    monkeypatch.setenv("LRKIT_CHECK_IN_BACKWARD", "1")


def test_off_by_default_and_the_switch_is_validated(monkeypatch):
    monkeypatch.delenv("LRKIT_CHECK_IN_BACKWARD")
    model, opt = setup()
    assert not model[0].weight._post_accumulate_grad_hooks and _gradwatch.of(opt) is None
    seen = passed(monkeypatch)
    backward(model)
    opt.step()  # the pass reads every gradient, the large one too
    assert any(g is model[0].weight.grad for g in seen)
    for value in ("0", ""):
        monkeypatch.setenv("LRKIT_CHECK_IN_BACKWARD", value)
        assert not setup()[0][0].weight._post_accumulate_grad_hooks
    monkeypatch.setenv("LRKIT_CHECK_IN_BACKWARD", "yes")
    with pytest.raises(ValueError, match="LRKIT_CHECK_IN_BACKWARD must be 1"):
        setup()
    # a bad value raises before a group is added: nothing half done
    with pytest.raises(ValueError, match="LRKIT_CHECK_IN_BACKWARD must be 1"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(3))]})
    assert len(opt.param_groups) == 1


def test_the_default_pass_sees_a_write_through_data(monkeypatch):
    """``.data`` has a version counter of its own: a NaN written through it after backward
    escapes the hooks' verdict (why they are opt-in), not the default pass."""
    monkeypatch.delenv("LRKIT_CHECK_IN_BACKWARD")
    model, opt = setup()
    backward(model)
    model[0].weight.grad.data[0, 0] = float("nan")
    before = snapshot(model, opt)
    with pytest.raises(lrkit.NonFiniteGradientError, match="nothing was changed"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before[0], snapshot(model, opt)[0]))


def setup(nonfinite="raise"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, BIG // 256), torch.nn.Linear(BIG // 256, 2))
    opt = lrkit.optim.Adam(model.parameters(), lr=1e-3, nonfinite=nonfinite)
    return model, opt


def backward(model, x=None):
    x = torch.randn(4, 256) if x is None else x
    model(x).square().sum().backward()


def passed(monkeypatch):
    """The gradients the step's own pass reads."""
    seen = []
    real = _kernel.first_nonfinite_in

    def spy(batches, power=1):
        seen.extend(g for b in batches for g in b.grads)
        return real(batches, power)

    monkeypatch.setattr(_kernel, "first_nonfinite_in", spy)
    return seen


def test_large_gradients_checked_by_backward_are_not_read_again(monkeypatch):
    model, opt = setup()
    seen = passed(monkeypatch)
    backward(model)
    opt.step()
    big = model[0].weight
    assert big.numel() >= BIG and not any(g is big.grad for g in seen)
    assert any(g is model[1].bias.grad for g in seen)  # small ones: the pass


def snapshot(model, opt):
    return [p.detach().clone() for p in model.parameters()], \
        {k: v.clone() for k, v in opt.state[model[0].weight].items()}


@pytest.mark.parametrize("how", ["backward", "in_place_after", "replaced", "accumulated"])
def test_a_nonfinite_gradient_raises_and_changes_nothing(how):
    model, opt = setup()
    backward(model)
    opt.step()  # a state to keep
    opt.zero_grad()
    before, state = snapshot(model, opt)
    w = model[0].weight
    if how == "backward":
        x = torch.randn(4, 256)
        x[0, 3] = float("inf")
        backward(model, x)
    elif how == "in_place_after":  # the hook saw a finite gradient, then it changed
        backward(model)
        w.grad[5, 7] = float("nan")
    elif how == "replaced":
        backward(model)
        g = w.grad.clone()
        g[1, 1] = float("nan")
        w.grad = g
    else:  # a second backward accumulates into the checked gradient: the hook runs again
        backward(model)
        x = torch.randn(4, 256)
        x[2, 0] = float("nan")
        backward(model, x)
    with pytest.raises(lrkit.NonFiniteGradientError, match="holds NaN or Inf"):
        opt.step()
    after, state_after = snapshot(model, opt)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(torch.equal(state[k], state_after[k]) for k in state)


def test_skip_counts_and_zero_needs_no_hook_verdict():
    model, opt = setup("skip")
    x = torch.randn(4, 256)
    x[0, 0] = float("nan")
    backward(model, x)
    opt.step()
    assert opt.skipped_steps == 1
    model2, opt2 = setup("zero")
    backward(model2, x)
    opt2.step()
    assert all(torch.isfinite(p).all() for p in model2.parameters())


def test_hooks_go_with_the_optimizer():
    model, opt = setup()
    w = model[0].weight
    assert len(w._post_accumulate_grad_hooks) == 1
    del opt
    import gc

    gc.collect()
    assert not w._post_accumulate_grad_hooks
