"""SLS: the stochastic Armijo line search converges on a strongly convex quadratic from any
initial step size, every accepted step satisfies the Armijo condition, and it reports what
it did."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrfree_cases import fork, one_thread, problem  # noqa: F401
from lrkit import NonFiniteGradientError
from lrkit.optim import SLS


def quadratic(seed: int, n: int = 12, condition: float = 30.0):
    """f(w) = w'Aw/2 - b'w with eigenvalues of A from 1 to ``condition``; its minimizer."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, math.log10(condition), n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    return a, b, torch.linalg.solve(a, b)


def armijo_run(opt, w, loss, steps):
    """Run SLS and check every accepted step; returns the accepted step sizes."""
    c = opt.param_groups[0]["c"]
    accepted = []
    for _ in range(steps):
        before = w.detach().clone()
        f0 = float(opt.step(loss).detach())
        g = w.grad
        eta = opt.last_step_size
        if eta > 0:
            assert torch.equal(w.detach(), torch.add(before, g, alpha=-eta))
            with torch.no_grad():
                assert float(loss()) <= f0 - c * eta * float((g * g).sum())
            accepted.append(eta)
        else:
            assert torch.equal(w.detach(), before)
    return accepted


@pytest.mark.filterwarnings("ignore:SLS.step.*rounding in the loss:RuntimeWarning")
@settings(max_examples=12, deadline=None)
@given(log_lr=st.floats(-3, 3), seed=st.integers(0, 3))
def test_converges_on_a_strongly_convex_quadratic_from_any_init_lr(log_lr, seed):
    a, b, w_star = quadratic(seed)
    w = torch.zeros_like(b, requires_grad=True)
    opt = SLS([w], init_lr=10.0 ** log_lr, batches_per_epoch=1)

    def loss():
        return 0.5 * w @ a @ w - b @ w

    accepted = armijo_run(opt, w, loss, 250)
    assert float((w.detach() - w_star).norm()) <= 1e-6 * float(w_star.norm())
    assert len(accepted) >= 200
    assert opt.total_function_evals >= 250 + len(accepted)


@pytest.mark.parametrize("reset", ["increase", "keep", "init"])
def test_reset_rules_set_where_each_search_starts(reset):
    a, b, _ = quadratic(0)
    w = torch.zeros_like(b, requires_grad=True)
    opt = SLS([w], init_lr=5.0, beta=0.5, gamma=4.0, reset=reset, batches_per_epoch=2)

    def loss():
        return 0.5 * w @ a @ w - b @ w

    previous = None
    for _ in range(30):
        opt.step(loss)
        eta, backtracks = opt.last_step_size, opt.function_evals - 2
        start = {"init": 5.0, "keep": previous, "increase": previous and previous * 2.0}[reset]
        assert eta == pytest.approx((start or 5.0) * 0.5 ** backtracks, rel=1e-12)
        assert opt.param_groups[0]["lr"] == eta
        previous = eta


def test_zero_gradient_takes_no_step_and_one_evaluation():
    w = torch.ones(3, requires_grad=True)
    opt = SLS([w])
    opt.step(lambda: (w * 0).sum())
    assert opt.last_step_size == 0.0 and opt.function_evals == 1
    assert torch.equal(w.detach(), torch.ones(3))


def test_a_failed_search_leaves_the_parameters_and_warns_once():
    a, b, _ = quadratic(1)
    w = torch.zeros_like(b, requires_grad=True)
    opt = SLS([w], init_lr=1e6, max_backtracks=3, batches_per_epoch=1)

    def loss():
        return 0.5 * w @ a @ w - b @ w

    with pytest.warns(RuntimeWarning, match="left unchanged") as record:
        opt.step(loss)
        opt.step(loss)
    assert len(record) == 1 and opt.failed_searches == 2 and opt.function_evals == 5
    assert torch.equal(w.detach(), torch.zeros_like(b))
    assert opt.param_groups[0]["step_size"] == pytest.approx(1e6 * 0.9 ** 6 * 2.0, rel=1e-12)


def mlp_closure(model, x, y, step):
    idx = torch.arange(step * 32, step * 32 + 32) % len(x)

    def closure():
        return torch.nn.functional.mse_loss(model(x[idx]), y[idx])
    return closure


def run_mlp(make, steps=30):
    model, x, y = problem()
    opt = make(model.parameters())
    for i in range(steps):
        opt.step(mlp_closure(model, x, y, i))
    return model, opt


def test_fast_path_equals_reference_and_groups_share_one_search():
    def two_groups(params):
        params = list(params)
        return SLS([{"params": params[:2]}, {"params": params[2:]}], init_lr=3.0)

    reference, _ = run_mlp(lambda p: SLS(p, impl="reference", init_lr=3.0))
    fast, opt = run_mlp(lambda p: SLS(p, impl="foreach", init_lr=3.0))
    grouped, _ = run_mlp(two_groups)
    for m in (fast, grouped):
        assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), m.parameters()))
    assert opt.total_function_evals > 60 and opt.failed_searches == 0


def test_state_dict_round_trip_continues_bit_for_bit():
    model, x, y = problem()
    opt = SLS(model.parameters())
    for i in range(15):
        opt.step(mlp_closure(model, x, y, i))
    model2, opt2 = fork(model, opt, SLS)
    for m, o in ((model, opt), (model2, opt2)):
        for i in range(15, 30):
            o.step(mlp_closure(m, x, y, i))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))
    assert opt.total_function_evals == opt2.total_function_evals


def test_a_closure_that_calls_backward_gives_the_same_steps():
    def make_guarded(model, x, y, step):
        inner = mlp_closure(model, x, y, step)

        def closure():
            loss = inner()
            if torch.is_grad_enabled():
                loss.backward()
            return loss
        return closure

    plain, _ = run_mlp(SLS, steps=10)
    model, x, y = problem()
    opt = SLS(model.parameters())
    for i in range(10):
        opt.step(make_guarded(model, x, y, i))
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), model.parameters()))

    def unguarded():
        loss = mlp_closure(model, x, y, 0)()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"closure called backward\(\).*is_grad_enabled"):
        opt.step(unguarded)


def test_every_evaluation_sees_the_same_random_numbers():
    w = torch.nn.Parameter(torch.ones(4))
    opt = SLS([w], init_lr=100.0)
    draws = []

    def closure():  # a dropout-like random mask
        mask = (torch.rand(4) > 0.3).float()
        draws.append(mask)
        return ((w * mask) ** 2).sum()

    torch.manual_seed(0)
    opt.step(closure)
    after = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(4)
    assert opt.function_evals > 2 and all(torch.equal(d, draws[0]) for d in draws)
    assert torch.equal(after, torch.rand(1))  # the stream moved as if evaluated once


def test_bad_closures_and_nonfinite_losses_are_refused_clearly():
    w = torch.nn.Parameter(torch.ones(2))
    opt = SLS([w])
    with pytest.raises(ValueError, match="closure must be a function"):
        opt.step()
    with pytest.raises(TypeError, match="one-element tensor"):
        opt.step(lambda: 1.0)
    with pytest.raises(ValueError, match="does not depend on the parameters"):
        opt.step(lambda: torch.tensor(1.0))
    with pytest.raises(FloatingPointError, match="not finite"):
        opt.step(lambda: (w * float("nan")).sum())
    skipping = SLS([w], nonfinite="skip")
    skipping.step(lambda: (w * float("inf")).sum())
    assert torch.equal(w.detach(), torch.ones(2)) and skipping.function_evals == 0
    assert skipping.skipped_steps == 1


class _NaNGrad(torch.autograd.Function):
    """sum(w) whose gradient has NaN in entry 0."""

    @staticmethod
    def forward(ctx, w):
        return w.sum()

    @staticmethod
    def backward(ctx, grad):
        g = grad.expand(2).clone()
        g[0] = float("nan")
        return g


@pytest.mark.parametrize("mode", ["raise", "skip", "zero"])
def test_nonfinite_gradients_follow_the_nonfinite_mode(mode):
    w = torch.nn.Parameter(torch.ones(2))
    opt = SLS([w], nonfinite=mode)
    closure = lambda: _NaNGrad.apply(w) + (w * w).sum()  # noqa: E731
    if mode == "raise":
        with pytest.raises(NonFiniteGradientError, match=r"param_groups\[0\]\['params'\]\[0\]"):
            opt.step(closure)
        assert torch.equal(w.detach(), torch.ones(2))
    elif mode == "skip":
        opt.step(closure)
        assert torch.equal(w.detach(), torch.ones(2)) and opt.skipped_steps == 1
    else:  # the line search runs along the gradient with the NaN entry as zero
        opt.step(closure)
        assert w.detach()[0] == 1.0 and w.detach()[1] < 1.0 and opt.last_step_size > 0


def test_a_loss_that_never_decreases_enough_is_a_failed_search_not_a_step():
    w = torch.nn.Parameter(torch.ones(2))
    opt = SLS([w], max_backtracks=2)
    losses = iter([1.0, 5.0, 5.0, 5.0])

    def closure():  # the reported loss does not follow the gradient
        return (w.sum() * 0 + next(losses)) + w.sum() - w.sum().detach()

    with pytest.warns(RuntimeWarning):
        opt.step(closure)
    assert opt.failed_searches == 1 and opt.last_step_size == 0.0
    state = copy.deepcopy(opt.state_dict())
    assert state["param_groups"][0]["failed_searches"] == 1


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("fail_at", [2, 4])
def test_a_closure_raising_in_the_search_puts_everything_back(impl, fail_at):
    """The weights and the random state are back where the step started, nothing is
    counted, and a retry takes the step the failing call would have taken."""
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0, 1.0]))
    opt = SLS([w], init_lr=100.0, impl=impl)
    calls = []

    def closure(fail=None):
        calls.append(torch.rand(1))  # a random draw, as dropout makes
        if len(calls) == fail:
            raise RuntimeError("transient failure")
        return (w ** 2).sum()

    torch.manual_seed(0)
    before, counters = w.detach().clone(), dict(opt.param_groups[0])
    with pytest.raises(RuntimeError, match="transient failure"):
        opt.step(lambda: closure(fail_at))
    assert torch.equal(w.detach(), before) and opt.param_groups[0] == counters
    after_failure = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(after_failure, torch.rand(1))  # the stream as at the step's start
    torch.manual_seed(0)
    calls.clear()
    opt.step(closure)  # the retry
    twin = torch.nn.Parameter(before.clone())
    twin_opt = SLS([twin], init_lr=100.0, impl=impl)
    torch.manual_seed(0)
    twin_opt.step(lambda: (torch.rand(1), (twin ** 2).sum())[1])
    assert torch.equal(w.detach(), twin.detach()) and opt.last_step_size > 0
