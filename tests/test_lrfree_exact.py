"""Every learning-rate-free and schedule-free optimizer equals its authors' package over
100 steps, its fast path equals its reference path, and it resumes exactly."""
from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import assume, given, settings

from lrfree_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    CASES,
    TOLERANCE,
    fork,
    one_thread,
    problem,
    relative_error,
    run,
    train,
)

NAMES = list(CASES)
DTYPES = [torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_equal_to_the_authors_package_and_fast_equals_reference(name, dtype):
    case = CASES[name]

    @settings(max_examples=6)
    @given(kwargs=case.kwargs)
    def check(kwargs):
        theirs, _ = run(lambda p: case.theirs(p, **kwargs), dtype, switches=case.switches)
        assume(all(t.isfinite().all() for t in theirs))  # the package itself diverged
        reference, _ = run(lambda p: case.ours(p, impl="reference", **kwargs), dtype,
                           switches=case.switches)
        fast, _ = run(lambda p: case.ours(p, impl="fast", **kwargs), dtype,
                      switches=case.switches)
        assert relative_error(reference, theirs) <= TOLERANCE[dtype], kwargs
        assert all(torch.equal(a, b) for a, b in zip(fast, reference)), kwargs

    check()


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_equal_the_authors_package(name):
    case = CASES[name]
    theirs, _ = run(lambda p: case.theirs(p), groups=case.group_options,
                    switches=case.switches)
    for impl in ("reference", "fast"):
        ours, _ = run(lambda p, impl=impl: case.ours(p, impl=impl), groups=case.group_options,
                      switches=case.switches)
        assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_mid_run_continues_bit_for_bit(name, impl):
    case = CASES[name]
    model, x, y = problem()
    opt = case.ours(model.parameters(), impl=impl)
    train(model, opt, x, y, 50, switches=case.switches)
    model2, opt2 = fork(model, opt, lambda p: case.ours(p, impl=impl))
    for m, o in ((model, opt), (model2, opt2)):
        train(m, o, x, y, 50, start=50, switches=case.switches)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt.estimated_lr() == opt2.estimated_lr()


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptSGD"])
def test_estimated_lr_is_d_times_lr(name):
    case = CASES[name]
    _, opt = run(lambda p: case.ours(p, lr=0.5), steps=20)
    group = opt.param_groups[0]
    expected = group["d"] * 0.5 / (group["g0_norm"] if name == "DAdaptSGD" else 1.0)
    assert opt.estimated_lr() == [pytest.approx(expected, rel=1e-12)]
    assert group["d"] > group["d0"]


def test_dog_reports_one_step_size_per_group_and_ldog_one_per_tensor():
    _, dog_opt = run(lambda p: CASES["DoG"].ours(p), steps=5)
    _, ldog_opt = run(lambda p: CASES["LDoG"].ours(p), steps=5)
    (eta,) = dog_opt.estimated_lr()
    assert isinstance(eta, float) and eta > 0
    (etas,) = ldog_opt.estimated_lr()
    assert len(etas) == 4 and len(set(etas)) == 4
    model, *_ = problem()
    assert CASES["DoG"].ours(model.parameters()).estimated_lr() == [None]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_polynomial_decay_averager_equals_the_package(dtype):
    import dog

    from lrkit.optim.dog import PolynomialDecayAverager

    model, x, y = problem(dtype)
    model = torch.nn.Sequential(model, torch.nn.BatchNorm1d(3).to(dtype))
    ours, theirs = PolynomialDecayAverager(model, gamma=4.0), \
        dog.PolynomialDecayAverager(model, gamma=4.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for i in range(30):
        train(model, opt, x, y, 1, start=i)
        ours.step()
        theirs.step()
    a, b = ours.averaged_model.state_dict(), theirs.averaged_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["1.num_batches_tracked"]) == 30
    restored = PolynomialDecayAverager(model, gamma=4.0)
    restored.load_state_dict(copy.deepcopy(ours.state_dict()))
    assert restored.t == 31
    ours.reset()
    ours.step()  # t = 1: a plain copy of the model
    assert all(torch.equal(p, q) for p, q in zip(ours.averaged_model.parameters(),
                                                  model.parameters()))
