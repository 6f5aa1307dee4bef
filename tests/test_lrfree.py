"""Learning-rate-free optimizers beyond the generic suite (tests/test_optim_*.py, driven by
the registry): the reference paths equal the authors' packages bit for bit at their
defaults and at random arguments; the kernels' sums do not depend on the thread count;
param groups share d under clear rules; a stalled d warns; DoG's step sizes; iterate
averaging."""
from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch
from hypothesis import assume, given, settings

from lrfree_cases import (  # noqa: F401 (one_thread: an autouse fixture)
    CASES,
    one_thread,
    problem,
    relative_error,
    run,
    train,
)
from lrkit.optim import (
    SLS,
    DAdaptAdam,
    DAdaptSGD,
    DEstimateWarning,
    DoG,
    LDoG,
    Prodigy,
    ScheduleFreeAdamW,
    ScheduleFreeSGD,
    _kernel,
)

NAMES = list(CASES)
SHARED_D = [Prodigy, DAdaptAdam, DAdaptSGD]
# multipliers at which 100 steps on the test problem are well conditioned (see registry.py)
STABLE = {"Prodigy": {"lr": 0.3}, "DAdaptAdam": {"lr": 0.1}, "DAdaptSGD": {"lr": 0.5}}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_reference_path_equals_the_authors_package_bit_for_bit(name, dtype):
    """Drawn arguments, the packages' defaults among them (lr=1.0, where one ulp moved in
    one weight changes Prodigy's and D-Adaptation's 100-step result by up to 0.4: only
    the same operations in the same order agree there), with train/eval switches for the
    schedule-free ones (exact_switch=False switches as schedulefree does)."""
    case = CASES[name]
    extra = {"exact_switch": False} if case.switches else {}

    @settings(max_examples=4, deadline=None)
    @given(kwargs=case.kwargs)
    def check(kwargs):
        theirs, _ = run(lambda p: case.theirs(p, **kwargs), dtype, switches=case.switches)
        assume(all(t.isfinite().all() for t in theirs))  # the package itself diverged
        ours, _ = run(lambda p: case.ours(p, impl="reference", **kwargs, **extra), dtype,
                      switches=case.switches)
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), kwargs

    check()


@pytest.mark.parametrize("name", NAMES)
def test_param_group_options_equal_the_authors_package(name):
    """Options a group sets itself (layer_scale, eps, weight decay, lr per group where the
    package allows it), through the default path."""
    case, kw = CASES[name], STABLE.get(name, {})
    theirs, _ = run(lambda p: case.theirs(p, **kw), groups=case.group_options,
                    switches=case.switches)
    for impl in ("reference", "auto"):
        ours, _ = run(lambda p, impl=impl: case.ours(p, impl=impl, **kw),
                      groups=case.group_options, switches=case.switches)
        assert relative_error(ours, theirs) <= 1e-5


@pytest.mark.skipif(not _kernel.available(), reason="no C++ compiler: no kernel")
@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptSGD", "DoG", "LDoG",
                                  "ScheduleFreeAdamW"])
def test_kernel_sums_do_not_depend_on_threads_or_chunks(name):
    """Tensors across several chunks (16384 elements), odd sizes, slice_p: one thread or
    two, the kernel gives the same bits (its sums are added in a fixed order), and stays
    within rounding of the reference."""
    cls = CASES[name].ours
    kwargs = {"slice_p": 3, "lr": 0.3} if name == "Prodigy" else {}
    shapes = [(40001,), (3, 17001), (7,), (1,), (0,)] + [(5, 3)] * 20
    threads = torch.get_num_threads()
    out = {}
    try:
        for impl, nt in (("kernel", 1), ("kernel", 2), ("reference", 1)):
            torch.set_num_threads(nt)
            gen = torch.Generator().manual_seed(0)
            ps = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in shapes]
            opt = cls(ps, impl=impl, **kwargs)
            for s in range(4):
                for p in ps:
                    p.grad = torch.sin(3 * p.detach() + s) + 0.1
                opt.step()
            out[impl, nt] = [p.detach().clone() for p in ps]
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(out["kernel", 1], out["kernel", 2]))
    err = max(float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))
              for a, b in zip(out["kernel", 1], out["reference", 1]) if b.numel())
    assert err <= 1e-5


# ------------------------------------------------------------------ arguments
def params():
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize("cls, kwargs, name", [  # (the registry lists the common ones)
    (Prodigy, {"betas": (0.9,)}, "betas"), (Prodigy, {"d_stall_steps": 0}, "d_stall_steps"),
    (Prodigy, {"impl": "cuda"}, "impl"), (Prodigy, {"nonfinite": "ignore"}, "nonfinite"),
    (DoG, {"reps_rel": 0}, "reps_rel"), (SLS, {"init_lr": 0}, "init_lr"),
])
def test_invalid_arguments_raise_a_value_error_naming_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}(): {name} must be")):
        cls(params(), **kwargs)


def test_a_param_group_option_is_checked_too():
    with pytest.raises(ValueError, match=r"Prodigy\(\) param group 1: eps must be"):
        Prodigy([{"params": [params()[0]]}, {"params": [params()[1]], "eps": -1.0}])


# -------------------------------------------------------------------- the shared d
def two_groups(**second):
    model, x, y = problem()
    layers = list(model.parameters())
    return model, x, y, [{"params": layers[:2]}, {"params": layers[2:], **second}]


@pytest.mark.parametrize("cls", SHARED_D)
def test_groups_with_different_lrs_cannot_share_d(cls):
    model, x, y, groups = two_groups(lr=0.5)
    opt = cls(groups)
    with pytest.raises(ValueError, match=r"share one d estimate.*lr=\[1.0, 0.5\]"):
        train(model, opt, x, y, 1)


@pytest.mark.parametrize("cls, key, value", [
    (Prodigy, "betas", (0.8, 0.999)), (Prodigy, "d0", 1e-3), (DAdaptAdam, "growth_rate", 1.1),
    (DAdaptAdam, "decouple", True), (DAdaptSGD, "growth_rate", 2.0)])
def test_groups_that_disagree_on_what_shapes_d_are_refused(cls, key, value):
    model, x, y, groups = two_groups(**{key: value})
    with pytest.raises(ValueError, match=rf"share one d estimate, so {key} must be the same"):
        train(model, cls(groups), x, y, 1)


@pytest.mark.parametrize("cls", SHARED_D)
def test_a_group_with_lr_zero_is_frozen_while_the_others_adapt_d(cls):
    model, x, y, groups = two_groups(lr=0.0, weight_decay=0.1)
    frozen = [p.detach().clone() for p in groups[1]["params"]]
    opt = cls(groups)
    train(model, opt, x, y, 30)
    assert all(torch.equal(p, q) for p, q in zip(groups[1]["params"], frozen))
    assert opt.param_groups[0]["d"] > opt.param_groups[0]["d0"]
    assert opt.estimated_lr()[1] == 0.0 and opt.estimated_lr()[0] > 0


@pytest.mark.parametrize("name", ["Prodigy", "DAdaptAdam", "DAdaptSGD"])
def test_estimated_lr_is_d_times_lr(name):
    case = CASES[name]
    _, opt = run(lambda p: case.ours(p, lr=0.5), steps=20)
    group = opt.param_groups[0]
    expected = group["d"] * 0.5 / (group["g0_norm"] if name == "DAdaptSGD" else 1.0)
    assert opt.estimated_lr() == [pytest.approx(expected, rel=1e-12)]
    assert group["d"] > group["d0"]


# ------------------------------------------------------------------- stalled d
def linear_loss_steps(opt, w, steps, sign=lambda i: 1.0):
    direction = torch.linspace(-1, 1, w.numel())
    for i in range(steps):
        opt.zero_grad()
        (sign(i) * (w * direction).sum()).backward()
        opt.step()


@pytest.mark.parametrize("cls", SHARED_D)
def test_zero_gradients_leave_d_at_d0_and_warn_once(cls):
    w = torch.nn.Parameter(torch.ones(5))
    opt = cls([w], d_stall_steps=10)
    with pytest.warns(DEstimateWarning, match="has not grown from d0.*no estimate yet") as rec:
        linear_loss_steps(opt, w, 25, sign=lambda i: 0.0)
    assert len(rec) == 1 and rec[0].filename == __file__
    assert opt.param_groups[0]["d"] == opt.param_groups[0]["d0"]


@pytest.mark.parametrize("cls", SHARED_D)
def test_gradients_that_oscillate_give_a_negative_estimate_and_a_warning(cls):
    w = torch.nn.Parameter(torch.ones(5))
    opt = cls([w], d_stall_steps=10)
    with pytest.warns(DEstimateWarning, match="negative"):
        linear_loss_steps(opt, w, 10, sign=lambda i: 1.0 if i == 0 else 2.0 * (-1.0) ** i)
    assert opt.param_groups[0]["d_hat"] < 0


@pytest.mark.parametrize("cls", SHARED_D)
def test_a_growing_d_never_warns_and_the_check_can_be_turned_off(cls):
    model, x, y = problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DEstimateWarning)
        train(model, cls(model.parameters(), d_stall_steps=5), x, y, 10)
        w = torch.nn.Parameter(torch.ones(5))
        linear_loss_steps(cls([w], d_stall_steps=None), w, 10, sign=lambda i: 0.0)


def test_dadapt_sgd_waits_for_a_nonzero_first_gradient():
    w = torch.nn.Parameter(torch.ones(5))
    opt = DAdaptSGD([w])
    linear_loss_steps(opt, w, 3, sign=lambda i: 0.0)  # dadaptation divides by zero here
    assert opt.param_groups[0]["k"] == 0 and torch.equal(w, torch.ones(5))
    linear_loss_steps(opt, w, 1)
    assert opt.param_groups[0]["k"] == 1 and opt.estimated_lr()[0] > 0


# -------------------------------------------------------------------------- DoG
@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_dog_with_zero_gradients_and_no_eps_says_why_it_cannot_step(cls):
    w = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match="sum of squared gradients"):
        linear_loss_steps(cls([w], eps=0.0), w, 1, sign=lambda i: 0.0)


def test_dog_reports_one_step_size_per_group_and_ldog_one_per_tensor():
    _, dog_opt = run(lambda p: DoG(p), steps=5)
    _, ldog_opt = run(lambda p: LDoG(p), steps=5)
    (eta,) = dog_opt.estimated_lr()
    assert isinstance(eta, float) and eta > 0
    (etas,) = ldog_opt.estimated_lr()
    assert len(etas) == 4 and len(set(etas)) == 4
    model, *_ = problem()
    assert DoG(model.parameters()).estimated_lr() == [None]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_polynomial_decay_averager_equals_the_package(dtype):
    import dog

    from lrkit.optim import PolynomialDecayAverager

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


def test_everything_is_exported_from_lrkit_optim():
    import lrkit.optim as O
    for name in ("Prodigy", "DAdaptAdam", "DAdaptSGD", "DoG", "LDoG", "PolynomialDecayAverager",
                 "ScheduleFreeAdamW", "ScheduleFreeSGD", "reestimate_batchnorm", "SLS",
                 "DEstimateWarning"):
        assert name in O.__all__ and hasattr(O, name)
    assert ScheduleFreeSGD.__module__ == ScheduleFreeAdamW.__module__ == \
        "lrkit.optim.schedulefree"
    assert math.isinf(Prodigy([torch.nn.Parameter(torch.ones(1))]).defaults["growth_rate"])


# ------------------------------------------------- LDoG: tensors without a gradient
SHAPES = [(5, 3), (7,), (4, 4), (2,), (3, 2, 2)]
STEPS = 8


def has_grad(j: int, s: int) -> bool:
    """Tensor 1 has no gradient before step 3 (it starts late, beside tensors at their
    later steps, and misses the group's first step); tensor 2 none at steps 4 and 5."""
    return not ((j == 1 and s < 3) or (j == 2 and s in (4, 5)))


def grad_of(p: torch.Tensor, s: int) -> torch.Tensor:
    return torch.sin(3 * p.detach() + s) + 0.1


def ldog_params():
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in SHAPES]


def ldog_run(make, steps=STEPS, grads=has_grad, each=None):
    """``make(params)`` stepped with ``grad_of`` where ``grads(j, s)``; ``each(opt, ps, s)``
    after every step. The final weights and the group's rbar, G and eta."""
    ps = ldog_params()
    opt = make(ps)
    for s in range(steps):
        for j, p in enumerate(ps):
            p.grad = grad_of(p, s) if grads(j, s) else None
        opt.step()
        if each is not None:
            each(opt, ps, s)
    group = opt.param_groups[0]  # (dog-optimizer keeps eta as a list of 0-dim tensors)
    return [p.detach().clone() for p in ps] + [torch.stack(list(group[k])).clone()
                                               for k in ("rbar", "G", "eta")]


def ldog_by_hand(steps=STEPS, grads=has_grad, reps_rel=1e-6, lr=1.0, weight_decay=0.0,
                 eps=1e-8, init_eta=None):
    """DoG's formulas for each tensor alone, from its first step with a gradient:
    r_eps = reps_rel (1 + ||x||), G = ||g||^2 + eps (eta = init_eta where given) at it,
    then rbar = max(rbar, ||x - x0||), G += ||g||^2; x -= eta g, g with weight decay."""
    ps = [p.detach().clone() for p in ldog_params()]
    x0, rbar, G, eta = [None] * len(ps), [0.0] * len(ps), [0.0] * len(ps), [0.0] * len(ps)
    if init_eta is not None:
        reps_rel = 0.0
    for s in range(steps):
        for j, p in enumerate(ps):
            if not grads(j, s):
                continue
            g = grad_of(p, s)
            if weight_decay:
                g = g.add(p, alpha=weight_decay)
            if x0[j] is None:
                x0[j] = p.clone()
                rbar[j] = reps_rel * (1 + p.norm())
                G[j] = (g ** 2).sum() + eps
                eta[j] = lr * rbar[j] / torch.sqrt(G[j])
                if init_eta is not None:
                    eta[j] = eta[j] * 0 + init_eta
            else:
                rbar[j] = torch.maximum(rbar[j], torch.norm(p - x0[j]))
                G[j] = G[j] + (g ** 2).sum()
                eta[j] = lr * rbar[j] / torch.sqrt(G[j])
            p.add_(g, alpha=-float(eta[j]))
    return ps + [torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in vec])
                 for vec in (rbar, G, eta)]


LDOG_OPTIONS = [{}, {"weight_decay": 0.01, "lr": 0.5}, {"init_eta": 1e-3},
                {"reps_rel": 1e-4, "eps": 1e-4}]


@pytest.mark.parametrize("kw", LDOG_OPTIONS, ids=str)
def test_ldog_skips_a_tensor_without_a_gradient_and_starts_one_late(kw):
    """Every path equals DoG's formulas per tensor: reference and foreach bit for bit,
    the kernel (norms in float64) within float32 rounding; a skipped tensor's entries
    stay as they were, and one not started yet has no step size."""
    expected = ldog_by_hand(**kw)
    seen = {}

    def check(opt, ps, s):
        group = opt.param_groups[0]
        etas = opt.estimated_lr()[0]
        assert (etas[1] is None) == (s < 3) and all(e is not None for j, e in
                                                    enumerate(etas) if j != 1)
        if s in (4, 5):  # tensor 2 skipped: its entries unchanged
            assert all(torch.equal(group[k][2], seen[k]) for k in ("rbar", "G", "eta"))
            with pytest.raises(ValueError, match="did not update this parameter"):
                opt.explain(ps[2])
            assert opt.effective_lr()[0][2] is None
        seen.update((k, group[k][2].clone()) for k in ("rbar", "G", "eta"))
        assert torch.equal(opt.effective_lr(ps[0]), torch.full_like(ps[0], etas[0]))

    for impl in ("reference", "foreach"):
        ours = ldog_run(lambda p, impl=impl: LDoG(p, impl=impl, **kw), each=check)
        assert all(torch.equal(a, b) for a, b in zip(ours, expected)), impl
    if _kernel.available():
        ours = ldog_run(lambda p: LDoG(p, **kw), each=check)
        assert relative_error(ours, expected) <= 1e-5


@pytest.mark.parametrize("impl", ["reference", "foreach", "auto"])
def test_ldog_with_every_gradient_still_equals_the_package(impl):
    """The vectors kept per tensor change nothing when every tensor has a gradient at
    every step: dog-optimizer's LDoG, bit for bit (the kernel within rounding)."""
    import dog

    def every(j, s):
        return True

    theirs = ldog_run(lambda p: dog.LDoG(p, weight_decay=0.01), grads=every)
    ours = ldog_run(lambda p: LDoG(p, weight_decay=0.01, impl=impl), grads=every)
    assert ours[-1].shape == (len(SHAPES),)
    if impl == "auto" and _kernel.available():
        assert relative_error(ours, theirs) <= 1e-5
    else:
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("impl", ["reference", "auto"])
def test_ldog_resumes_before_a_tensor_has_started(impl):
    """A state_dict saved while tensor 1 has not started (its entries 0) loads into a
    fresh optimizer, and the run goes on bit for bit as the uninterrupted one."""
    whole = ldog_run(lambda p: LDoG(p, impl=impl))
    ps = ldog_params()
    opt = LDoG(ps, impl=impl)
    for s in range(STEPS):
        for j, p in enumerate(ps):
            p.grad = grad_of(p, s) if has_grad(j, s) else None
        opt.step()
        if s == 1:
            saved = copy.deepcopy(opt.state_dict())
            assert saved["param_groups"][0]["G"][1] == 0
            opt = LDoG(ps, impl=impl)
            opt.load_state_dict(saved)
            assert opt.estimated_lr()[0][1] is None
    group = opt.param_groups[0]
    resumed = [p.detach().clone() for p in ps] + [group[k] for k in ("rbar", "G", "eta")]
    assert all(torch.equal(a, b) for a, b in zip(resumed, whole))


@pytest.mark.parametrize("cls", [DoG, LDoG])
@pytest.mark.parametrize("mode", ["raise", "skip"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_dog_checks_gradients_in_its_first_pass(cls, mode, bad, monkeypatch):
    """DoG's first kernel pass (||g||^2, read-only) is its NaN/Inf check: the step makes no
    pass of its own over those gradients, and a non-finite one still raises (naming the
    parameter) or skips before anything changes, explain() included; at a first step (no
    state yet) the separate pass runs as before."""
    from lrkit import NonFiniteGradientError
    from lrkit.optim import _kernel
    from optim_helpers import same_state
    if _kernel.library("dog") is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    read = []
    real = _kernel.first_nonfinite_in

    def spy(batches, power=1):
        if batches:  # a pass over gradients
            read.append(len(batches))
        return real(batches, power)
    monkeypatch.setattr(_kernel, "first_nonfinite_in", spy)
    gen = torch.Generator().manual_seed(3)

    def grads(ps, poison=None):
        for p in ps:
            p.grad = torch.randn(p.shape, generator=gen)
        if poison is not None:
            ps[poison].grad.view(-1)[7] = bad

    for decay, steps in ((0.0, 2), (1e-3, 2), (0.0, 0)):
        ps = [torch.randn(40, 30, generator=gen), torch.randn(300, generator=gen)]
        opt = cls(ps, weight_decay=decay, nonfinite=mode)
        for _ in range(steps):
            grads(ps)
            opt.step()
        read.clear()
        grads(ps)
        if steps:  # clean: the sums check, no pass
            opt.step()
            assert read == []
            explained = opt.explain(ps[0]).eta
        before = ([p.clone() for p in ps], copy.deepcopy(opt.state_dict()))
        grads(ps, poison=1)
        if mode == "raise":
            with pytest.raises(NonFiniteGradientError,
                               match=r"param_groups\[0\]\['params'\]\[1\] of shape \(300,\)"):
                opt.step()
        else:
            opt.step()
            assert opt.skipped_steps == 1
        assert all(torch.equal(a, b) for a, b in zip(before[0], ps))
        after = {k: v for k, v in opt.state_dict().items() if k != "skipped_steps"}
        # (and no x0 left behind by a first step)
        assert same_state(after, {k: v for k, v in before[1].items() if k != "skipped_steps"})
        assert read, "the exact check names the parameter"
        if steps:  # explain() still describes the last step taken
            assert torch.equal(opt.explain(ps[0]).eta, explained)


@pytest.mark.parametrize("cls", [DoG, LDoG])
@pytest.mark.parametrize("mode", ["raise", "skip"])
def test_dog_first_pass_check_leaves_no_new_state_behind(cls, mode):
    """A tensor taking its first gradient in a step whose other gradient is NaN: the check
    is the separate pass then (before state is made), so no x0 appears (two batches, by
    dtype; and a group added later)."""
    from lrkit import NonFiniteGradientError
    from optim_helpers import same_state
    for late in ("float64", "group"):
        a, b = torch.randn(30, 20), torch.randn(9, dtype=torch.float64)
        opt = cls([a] if late == "group" else [a, b], nonfinite=mode)
        a.grad = torch.randn_like(a)
        opt.step()
        if late == "group":
            opt.add_param_group({"params": [b]})
        before = copy.deepcopy(opt.state_dict())
        a.grad = torch.randn_like(a)
        a.grad[0, 0] = math.nan
        b.grad = torch.randn_like(b)
        if mode == "raise":
            with pytest.raises(NonFiniteGradientError, match=r"\['params'\]\[0\]"):
                opt.step()
        else:
            opt.step()
        after = {k: v for k, v in opt.state_dict().items() if k != "skipped_steps"}
        assert same_state(after, {k: v for k, v in before.items() if k != "skipped_steps"})
        assert b not in opt.state or not opt.state[b]


def test_dog_first_pass_check_lets_a_large_finite_gradient_through():
    """A float64 gradient whose square overflows double makes the sum Inf: the exact check
    then finds nothing non-finite and the step goes on, as the reference's (G = Inf: a
    step of 0)."""
    out = []
    for impl in ("auto", "reference"):
        ps = [torch.ones(5, dtype=torch.float64)]
        opt = DoG(ps, impl=impl)
        ps[0].grad = torch.ones(5, dtype=torch.float64)
        opt.step()
        ps[0].grad = torch.full((5,), 1e300, dtype=torch.float64)
        opt.step()
        out.append((ps[0].clone(), opt.param_groups[0]["G"].item()))
    assert torch.equal(out[0][0], out[1][0]) and out[0][1] == out[1][1] == math.inf


@pytest.mark.parametrize("impl", ["auto", "reference"])
def test_ldog_refuses_a_tensor_appended_to_its_group_by_hand(impl):
    """LDoG keeps one rbar/G entry per tensor of a group, by position: a tensor appended
    to ``group["params"]`` by hand has none, and the step raised torch's broadcasting
    error from inside the recursion. Now a ValueError saying what to do."""
    from lrkit.optim import LDoG
    a, b = torch.randn(3, 4, requires_grad=True), torch.randn(5, requires_grad=True)
    opt = LDoG([a, b], impl=impl)
    for p in (a, b):
        p.grad = torch.randn_like(p)
    opt.step()
    q = torch.randn(4, requires_grad=True)
    opt.param_groups[0]["params"].append(q)
    for p in (a, b, q):
        p.grad = torch.randn_like(p)
    with pytest.raises(ValueError, match=r"entry per tensor of the group \(3\).*add_param_group"):
        opt.step()
