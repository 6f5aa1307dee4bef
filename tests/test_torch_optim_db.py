"""torch's own optimizer test configurations, run over lrkit's classes.

``torch.testing._internal.common_optimizers.optim_db`` lists every sample configuration
torch's test_optim.py checks (with the foreach/differentiable variants torch adds); each
test below draws some of them per run (hypothesis: the full product is over a thousand
runs) and checks a property torch's suite checks: values equal to torch's single-tensor
optimizer in float32, float64 and complex, state_dicts loaded both ways, copies, sparse
gradients, closures, maximize, add_param_group, torch's schedulers (chained, sequential)
over lrkit's optimizers. Then the schedule adapters (``s.optax()``, ``s.keras()``)
against the numpy path, at steps up to 10**12.
"""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import ChainedScheduler, ReduceLROnPlateau, SequentialLR

import lrkit
from lrkit import schedules as S
from optim_helpers import parity_rtol, rel_err
from optim_registry import REGISTRY
from strategies import any_schedule

common = pytest.importorskip("torch.testing._internal.common_optimizers")

# L-BFGS steps only with a closure (several evaluations per step): tests/test_lbfgs.py runs
# torch's optim_db samples for it, closure and all
DB = [info for info in common.optim_db
      if info.name in REGISTRY and "needs_closure" not in REGISTRY[info.name].tags]
# (differentiable=True steps non-leaf tensors inside a graph: torch's own suite tests it
# apart, with gradcheck; fused is CUDA's)
CASES = [(info, inp.kwargs) for info in DB
         for inp in common._get_optim_inputs_including_global_cliquey_kwargs(
             "cpu", torch.float32, info, skip=("fused", "differentiable"))]
SETTINGS = settings(max_examples=12, deadline=None, derandomize=False,
                    suppress_health_check=[HealthCheck.too_slow])
STEPS = 12
cases = st.sampled_from(CASES)


def _ids(case):
    info, kwargs = case
    return f"{info.name}({kwargs})"


# -- a small problem: real or complex parameters of 1, 2 and 3 dims ---------------------
def _params(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (3,), (2, 2, 3)]
    real = dtype.to_real() if dtype.is_complex else dtype
    out = []
    for s in shapes:
        t = torch.randn(s, generator=g, dtype=torch.float64)
        if dtype.is_complex:
            t = torch.complex(t, torch.randn(s, generator=g, dtype=torch.float64))
        out.append(torch.nn.Parameter(t.to(dtype if dtype.is_complex else real)))
    return out


def _loss(params, k=0, sign=1.0):
    """A smooth loss whose gradient changes from step to step (sign=-1: its negative)."""
    total = 0
    for i, p in enumerate(params):
        x = torch.view_as_real(p) if p.is_complex() else p
        total = total + (torch.sin(x * (1.0 + 0.1 * i) + 0.3 * k) * x).sum() + 0.1 * (x * x).sum()
    return sign * total


def _closure(opt, params, k, sign=1.0):
    def fn():
        opt.zero_grad()
        loss = _loss(params, k, sign)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return fn


def _make(module, info, params, kwargs):
    kwargs = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
    return getattr(module, info.name)(params, **kwargs)


def _train(opt, params, steps, start=0, sign=1.0, closure=False):
    for k in range(start, start + steps):
        if closure:
            opt.step(_closure(opt, params, k, sign))
        else:
            _closure(opt, params, k, sign)()
            opt.step()
    return [p.detach().clone() for p in params]


def _tol(info, dtype, steps):
    real = dtype.to_real() if dtype.is_complex else dtype
    return parity_rtol(REGISTRY[info.name], real, steps, numel=54)


# -- values ---------------------------------------------------------------------------------
@SETTINGS
@given(case=cases, dtype=st.sampled_from([torch.float32, torch.float64, torch.complex64]))
def test_every_sample_configuration_matches_torch(case, dtype):
    info, kwargs = case
    if dtype.is_complex and not info.supports_complex:
        return
    ours = _train(_make(lrkit.optim, info, ps := _params(dtype), kwargs), ps, STEPS)
    ref = _train(_make(torch.optim, info, qs := _params(dtype), kwargs), qs, STEPS)
    as_real = [torch.view_as_real(t) if t.is_complex() else t for t in ours]
    ref_real = [torch.view_as_real(t) if t.is_complex() else t for t in ref]
    assert rel_err(as_real, ref_real) <= _tol(info, dtype, STEPS), _ids(case)


@SETTINGS
@given(case=cases)
def test_state_dicts_load_both_ways(case):
    """A state_dict saved by torch's optimizer after some steps loads into lrkit's (and
    lrkit's into torch's), which then continues as torch's does from the same dict (torch
    casts some loaded state, NAdam's mu_product, to the parameters' dtype)."""
    info, kwargs = case
    for src in (torch.optim, lrkit.optim):
        ps = _params(torch.float64)
        first = _make(src, info, ps, kwargs)
        _train(first, ps, 4)
        out = []
        for dst in (torch.optim, lrkit.optim):
            qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
            second = _make(dst, info, qs, kwargs)
            second.load_state_dict(copy.deepcopy(first.state_dict()))
            out.append(_train(second, qs, 5, start=4))
        assert rel_err(out[1], out[0]) <= _tol(info, torch.float64, 9), (_ids(case), src)


@SETTINGS
@given(case=cases, how=st.sampled_from(["deepcopy", "pickle"]))
def test_copies_step_as_the_original(case, how):
    info, kwargs = case
    ps = _params(torch.float32)
    opt = _make(lrkit.optim, info, ps, kwargs)
    _train(opt, ps, 3)
    twin = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    qs = [p for g in twin.param_groups for p in g["params"]]
    assert all(torch.equal(p, q) and p is not q for p, q in zip(ps, qs))
    assert (twin.impl, twin.nonfinite, twin.skipped_steps) == (opt.impl, opt.nonfinite, 0)
    assert all(torch.equal(a, b) for a, b in zip(_train(opt, ps, 3, 3), _train(twin, qs, 3, 3)))


@SETTINGS
@given(case=cases)
def test_a_closure_step_returns_the_loss_and_moves_as_torch(case):
    info, kwargs = case
    out = []
    for module in (lrkit.optim, torch.optim):
        ps = _params(torch.float64)
        opt = _make(module, info, ps, kwargs)
        loss = opt.step(_closure(opt, ps, 0))
        assert float(loss) == pytest.approx(float(_loss(_params(torch.float64))), rel=1e-12)
        out.append(_train(opt, ps, 4, 1, closure=True))
    assert rel_err(*out) <= _tol(info, torch.float64, 5), _ids(case)


@SETTINGS
@given(case=cases)
def test_maximize_is_minimising_the_negative(case):
    info, kwargs = case
    if "maximize" in kwargs:
        return
    runs = []
    for maximize, sign in ((True, -1.0), (False, 1.0)):
        ps = _params(torch.float64)
        runs.append(_train(_make(lrkit.optim, info, ps, {**kwargs, "maximize": maximize}), ps,
                           STEPS, sign=sign))
    assert rel_err(*runs) <= _tol(info, torch.float64, STEPS), _ids(case)


@SETTINGS
@given(case=cases)
def test_add_param_group_midway_as_torch(case):
    info, kwargs = case
    out = []
    for module in (lrkit.optim, torch.optim):
        ps = _params(torch.float64)
        opt = _make(module, info, ps[:2], kwargs)
        _train(opt, ps, 3)
        opt.add_param_group({"params": [ps[2]], "lr": 0.003})
        assert opt.param_groups[1]["lr"] == 0.003
        out.append(_train(opt, ps, 4, 3))
    assert rel_err(*out) <= _tol(info, torch.float64, 7), _ids(case)


@pytest.mark.parametrize("info", [i for i in DB if i.supports_sparse], ids=lambda i: i.name)
def test_sparse_gradients_with_torchs_sparse_settings(info):
    kwargs, _ = info.metadata_for_sparse
    out = []
    for module in (lrkit.optim, torch.optim):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20, 4, sparse=True, dtype=torch.float64)
        opt = getattr(module, info.name)(emb.parameters(), **kwargs)
        for k in range(6):
            opt.zero_grad()
            (emb(torch.tensor([k, 3, 3, 7 + k])) ** 2).sum().backward()
            assert emb.weight.grad.is_sparse
            opt.step()
        out.append(emb.weight.detach().clone())
    assert torch.equal(*out)


# -- torch's schedulers over lrkit's optimizers ----------------------------------------------
@settings(max_examples=8, deadline=None)
@given(case=st.sampled_from([(i, k) for i, k in CASES if i.scheduler_inputs]),
       which=st.integers(0, 10))
def test_torch_schedulers_chained_over_lrkit_optimizers_as_over_torchs(case, which):
    """optim_db's scheduler lists, chained (ChainedScheduler; ReduceLROnPlateau steps on
    the loss), drive lrkit's optimizer as torch's."""
    info, kwargs = case
    makers = info.scheduler_inputs[which % len(info.scheduler_inputs)]
    out = []
    for module in (lrkit.optim, torch.optim):
        ps = _params(torch.float64)
        opt = _make(module, info, ps, kwargs)
        scheds = [m(opt) for m in makers]
        plain = [s for s in scheds if not isinstance(s, ReduceLROnPlateau)]
        chain = ChainedScheduler(plain, optimizer=opt) if plain else None
        for k in range(8):
            loss = _closure(opt, ps, k)()
            opt.step()
            if chain is not None:
                chain.step()
            for s in scheds:
                if isinstance(s, ReduceLROnPlateau):
                    s.step(float(loss))
        out.append(([p.detach().clone() for p in ps], [g["lr"] for g in opt.param_groups]))
    assert [float(x) for x in out[0][1]] == pytest.approx([float(x) for x in out[1][1]])
    assert rel_err(out[0][0], out[1][0]) <= _tol(info, torch.float64, 8), _ids(case)


@settings(max_examples=15, deadline=None)
@given(a=any_schedule, b=any_schedule, milestone=st.integers(1, 30))
def test_sequential_lr_of_schedulers_is_join(a, b, milestone):
    """SequentialLR([Scheduler(a), Scheduler(b)], [m]) runs a, then b from its step 0:
    lrkit's ``join([a, b], [m])``; saved and loaded at any step it continues alike."""
    def build():
        w = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=1.0)
        seq = SequentialLR(opt, [lrkit.Scheduler(opt, lr=a), lrkit.Scheduler(opt, lr=b)],
                           milestones=[milestone])
        return opt, seq

    joined = S.join([a, b], [milestone])
    opt, seq = build()
    lrs, saved = [opt.param_groups[0]["lr"]], None
    for n in range(1, milestone + 6):
        opt.step()
        seq.step()
        lrs.append(opt.param_groups[0]["lr"])
        if n == max(1, milestone // 2):
            saved = copy.deepcopy(seq.state_dict()), n
    np.testing.assert_allclose(lrs, joined(np.arange(len(lrs))), rtol=1e-12, atol=0)
    opt2, seq2 = build()
    seq2.load_state_dict(saved[0])
    for n in range(saved[1] + 1, len(lrs)):
        opt2.step()
        seq2.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(lrs[n], rel=1e-12, abs=0)


# -- the schedule adapters at any step ------------------------------------------------------
def _pow2_steps(k):
    """Integers exactly representable in float32 (24 significant bits) around 2**k."""
    return st.integers(1, 2**23 - 1).map(lambda m: m << max(k - 23, 0))


@st.composite
def large_schedules(draw):
    """Schedules whose integer arguments reach 2**31 and beyond (up to ~10**12), with
    values float32 represents exactly, and a step in the same range."""
    k = draw(st.integers(24, 39))
    big = _pow2_steps(k)
    lr = draw(st.floats(1e-4, 1.0))
    total = draw(big)
    family = draw(st.sampled_from(["cosine", "linear", "polynomial", "inverse_sqrt",
                                   "warmup_cosine", "exponential_decay", "wsd"]))
    s = {"cosine": lambda: S.cosine(lr, total=total),
         "linear": lambda: S.linear(lr, lr / 10, total=total),
         "polynomial": lambda: S.polynomial(lr, total=total, power=2.0),
         "inverse_sqrt": lambda: S.inverse_sqrt(lr, warmup=total),
         "warmup_cosine": lambda: S.warmup(S.cosine(lr, total=total), steps=total >> 4),
         "exponential_decay": lambda: S.exponential_decay(lr, 0.5, every=total),
         "wsd": lambda: S.wsd(lr, total=total, warmup=total >> 3)}[family]()
    return s, lr, draw(st.sampled_from([total, total >> 1, total + (total >> 2), total >> 3,
                                        draw(big)]))


@settings(max_examples=12, deadline=None)
@given(case=large_schedules())
def test_optax_and_keras_schedules_match_numpy_at_large_integer_steps(case):
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    s, lr, n = case
    expected = s(n)
    # float32 (jax and keras default): a few ulps of each of the ~10 operations, relative
    # to the value, or to the peak lr where the value is near zero (1 - n/total rounded)
    tol = dict(rel=1e-5, abs=1e-6 * lr)
    assert float(s.optax()(n)) == pytest.approx(expected, **tol)
    assert float(keras.ops.convert_to_numpy(s.keras()(n))) == pytest.approx(expected, **tol)


def test_optax_and_keras_wsd_with_two_to_the_31_decay_steps():
    # found by the test above: the decay's length reached jax's jitted ops as an int32
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    s = S.wsd(1.0, total=10 * 2**30, warmup=2**30 + 2**28)  # round(0.2 total) = 2**31
    for n in (10 * 2**30, 9 * 2**30, 2**33 - 2**9, 5):  # 0, 0.5, 1, 3.7e-9 (float32: exact)
        assert float(s.optax()(n)) == pytest.approx(s(n), rel=1e-5, abs=1e-12)
        assert float(keras.ops.convert_to_numpy(s.keras()(n))) == pytest.approx(
            s(n), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("make", [
    lambda: S.multistep(1.0, [2**31, 3 * 2**31], 0.5),
    lambda: S.join([S.constant(1.0), S.cosine(0.5, total=2**32)], [2**31 + 2**20]),
    lambda: S.piecewise([2**31, 3 * 2**31], [1.0, 0.5, 0.25]),
], ids=["multistep", "join", "piecewise"])
def test_optax_and_keras_take_milestones_and_boundaries_from_two_to_the_31(make):
    # integers inside lists entered jax's jitted ops as int32 and overflowed
    pytest.importorskip("jax")
    keras = pytest.importorskip("keras")
    s = make()
    for n in (2**30, 2**31, 2**31 + 2**21, 3 * 2**31, 2**33):  # float32 holds each exactly
        assert float(s.optax()(n)) == pytest.approx(s(n), rel=1e-5, abs=1e-6)
        assert float(keras.ops.convert_to_numpy(s.keras()(n))) == pytest.approx(
            s(n), rel=1e-5, abs=1e-6)


def test_optax_cosine_at_a_billion_steps_as_optax():
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    s = S.cosine(1000.0, total=10**10)
    assert float(s.optax()(10**9)) == pytest.approx(975.5282581475768, rel=1e-6)
    assert float(jax.jit(s.optax())(jax.numpy.asarray(10**9))) == pytest.approx(975.528, rel=1e-6)
    assert float(s.optax()(10**9)) == pytest.approx(
        float(optax.cosine_decay_schedule(1000.0, 10**10)(10**9)), rel=1e-6)
