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


@pytest.mark.parametrize("mode", ["raise", "skip", "zero"])
@pytest.mark.parametrize("info,impl", CASES, ids=ids)
def test_a_finite_gradient_whose_square_overflows_never_reaches_the_state(info, impl, mode):
    """1e30 is finite in float32, but its square is not: an algorithm that keeps the squared
    gradient (``grad_power`` 2, Adafactor's products 4) treats such an entry as non-finite
    (as NaN would be: raise, skip or zero); the others take it as it is. Either way, no Inf
    or NaN enters the state or the parameters."""
    model, opt = _setup(info, impl, nonfinite=mode)
    model[3].weight.grad[1, 2] = 1e30
    before = _snapshot(opt)
    power = info.cls.grad_power
    if mode == "raise" and power > 1:
        with pytest.raises(NonFiniteGradientError, match="square overflows|fourth power"):
            opt.step()
        assert _unchanged(opt, before)
        return
    opt.step()
    if mode == "skip" and power > 1:
        assert _unchanged(opt, before) and opt.skipped_steps == 1
        return
    for p in model.parameters():
        assert torch.isfinite(p).all()
    for state in opt.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                assert torch.isfinite(v).all()
    if mode == "zero" and power > 1:  # as if that entry were 0
        model2, opt2 = _setup(info, impl, nonfinite=mode)
        model2[3].weight.grad[1, 2] = 0.0
        opt2.step()
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))


def test_overflow_bounds():
    from lrkit.optim import _kernel
    assert _kernel.bound(torch.float32, 1) == math.inf
    assert _kernel.bound(torch.float32, 2) == 2.0**64
    assert _kernel.bound(torch.float32, 4) == 2.0**32
    assert _kernel.bound(torch.float64, 2) == 2.0**512
    assert _kernel.bound(torch.float16, 2) == 2.0**8
    assert _kernel.bound(torch.bfloat16, 2) == 2.0**64
    # the check, on every path, flags exactly the entries at or above the bound
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        for power in (1, 2, 4):
            b = _kernel.bound(dtype, power)
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
            at = torch.tensor([b], dtype=dtype)  # inf for power 1
            below = (at.view(bits) - 1).view(dtype)[0]  # the next value towards zero
            ok = torch.zeros(40, dtype=dtype)
            ok[3] = -below
            bad = ok.clone()
            bad[7] = -math.inf if power == 1 else -b
            for grads, want in (([ok], -1), ([ok, bad], 1), ([bad, ok], 0)):
                assert _kernel.first_nonfinite(grads, power) == want, (dtype, power)
                slow = [g.view(8, 5).t() for g in grads]  # not contiguous: the torch path
                assert _kernel.first_nonfinite(slow, power) == want, (dtype, power)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(33, 40), (1025, 1028)], ids=["copied", "above CLEAN_MAX"])
def test_adafactor_kernel_masked_reads_equal_the_plain_path(shape, dtype):
    """Adafactor's kernel reads a masked gradient (nonfinite="zero", maximize) from one
    cleaned copy where the tensor is small enough (``CLEAN_MAX`` entries), else on each of
    its three reads: both give, bit for bit, the plain path on the cleaned gradient."""
    from lrkit.optim import Adafactor, _kernel
    if _kernel.library("adafactor") is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    gen = torch.Generator().manual_seed(sum(shape))

    def run(maximize, nonfinite, dirty):
        w = torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
        opt = Adafactor([w, v := torch.ones(7, dtype=dtype)], maximize=maximize,
                        nonfinite=nonfinite, weight_decay=0.01, impl="kernel")
        for g in grads:
            w.grad, v.grad = (dirty(g[0]), dirty(g[1]))
            opt.step()
        return [w, v] + [t for st in opt.state.values() for t in st.values()]

    grads = [(torch.randn(shape, dtype=dtype, generator=gen),
              torch.randn(7, dtype=dtype, generator=gen)) for _ in range(3)]
    bad = torch.rand(shape, generator=gen) < 0.01
    bad_v = torch.tensor([False, True] * 3 + [False])

    def nonfinite(g):
        g = g.clone()
        g[bad if g.shape == bad.shape else bad_v] = math.nan
        g.view(-1)[0] = math.inf
        return g

    def zeroed(g):
        return nonfinite(g).nan_to_num(0.0, 0.0, 0.0)

    plain = run(False, "raise", zeroed)
    for got in (run(False, "zero", nonfinite), run(True, "zero", lambda g: -nonfinite(g))):
        assert all(torch.equal(a, b) for a, b in zip(got, plain))
