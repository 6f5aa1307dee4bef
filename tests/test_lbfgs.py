"""lrkit.optim.LBFGS: equal to torch.optim.LBFGS on torch's own sample configurations
(``optim_db``) and over 20 steps of a random model; torch's state_dict layout both ways;
exact resume; SciPy's L-BFGS-B optimum within 1e-6 relative in at most 1.5x its function
evaluations (Rosenbrock, logistic regression); the step length it reports; bad arguments
and non-finite losses refused."""
from __future__ import annotations

import copy
import io
import math
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.testing._internal.common_optimizers import optim_db

from lrkit.errors import NonFiniteGradientError
from lrkit.optim import LBFGS, QuasiNewtonStep

torch.set_num_threads(1)
STEPS = 6 if os.environ.get("CI") else 20  # torch's samples: 20 steps (fewer in CI)
TORCH_INFO = next(i for i in optim_db if i.optim_cls is torch.optim.LBFGS)
SEARCHES = ("strong_wolfe", "armijo", "hager_zhang")


def _model(dtype=torch.float32, seed=0, complex_=False) -> nn.Module:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 1)).to(dtype)
    if complex_:
        m[0].weight.data = torch.complex(m[0].weight.data, 0.3 * m[0].weight.data)
    return m


def _data(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 6, generator=g).to(dtype)
    return x, torch.sin(x.sum(1, keepdim=True)).to(dtype)


def _closure(opt, model, data):
    x, y = data

    def fn():
        opt.zero_grad()
        w = model[0].weight
        h = x @ (w.real + w.imag).T if w.is_complex() else x @ w.T
        loss = (model[2](torch.tanh(h + model[0].bias)) - y).pow(2).mean()
        loss.backward()
        return loss
    return fn


def _train(cls, kwargs, steps=20, dtype=torch.float32, complex_=False, model=None, opt=None):
    model = model or _model(dtype, complex_=complex_)
    opt = opt or cls(model.parameters(), **kwargs)
    data = _data(dtype)
    losses = [opt.step(_closure(opt, model, data)) for _ in range(steps)]
    return model, opt, [p.detach().clone() for p in model.parameters()], losses


def _samples():
    out = []
    for dtype in (torch.float32, torch.float64):
        for s in TORCH_INFO.optim_inputs_func("cpu", dtype):
            out.append(pytest.param(s.kwargs, dtype, id=f"{s.desc}-{dtype}".replace(" ", "_")))
    return out


@pytest.mark.parametrize("kwargs,dtype", _samples())
def test_equals_torch_on_optim_db_samples(kwargs, dtype):
    """torch's own LBFGS sample configurations, 20 steps of a random model: the same
    operations in the same order, so bit for bit."""
    _, _, ours, lo = _train(LBFGS, kwargs, steps=STEPS, dtype=dtype)
    _, _, ref, lr_ = _train(torch.optim.LBFGS, kwargs, steps=STEPS, dtype=dtype)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
    assert [float(a.detach()) for a in lo] == [float(b.detach()) for b in lr_]


@pytest.mark.parametrize("kwargs", [
    {"line_search_fn": "strong_wolfe", "max_iter": 5, "history_size": 3},
    {"line_search_fn": "strong_wolfe", "max_iter": 40, "max_eval": 7, "lr": 0.5},
    {"max_iter": 3, "history_size": 2, "lr": 0.1},
    {"line_search_fn": "strong_wolfe", "tolerance_change": 1e-3},
])
def test_equals_torch_more_configurations_and_complex(kwargs):
    for complex_ in (False, True):
        _, _, ours, _ = _train(LBFGS, kwargs, complex_=complex_)
        _, _, ref, _ = _train(torch.optim.LBFGS, kwargs, complex_=complex_)
        assert all(torch.equal(a, b) for a, b in zip(ours, ref))


def _saved(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("search", (None,) + SEARCHES)
def test_resumes_exactly(search):
    kwargs = {"line_search_fn": search, "max_iter": 4, "history_size": 5}
    _, _, straight, _ = _train(LBFGS, kwargs, steps=10)
    model, opt, _, _ = _train(LBFGS, kwargs, steps=5)
    sd, weights = _saved(opt.state_dict()), _saved(model.state_dict())
    model2 = _model()
    model2.load_state_dict(weights)
    opt2 = LBFGS(model2.parameters(), **kwargs)
    opt2.load_state_dict(sd)
    _, _, resumed, _ = _train(LBFGS, kwargs, steps=5, model=model2, opt=opt2)
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight))


@pytest.mark.parametrize("direction", ["torch_to_lrkit", "lrkit_to_torch"])
def test_state_dict_layout_is_torchs(direction):
    kwargs = {"line_search_fn": "strong_wolfe", "max_iter": 4}
    _, _, straight, _ = _train(torch.optim.LBFGS, kwargs, steps=8)
    first, second = ((torch.optim.LBFGS, LBFGS) if direction == "torch_to_lrkit"
                     else (LBFGS, torch.optim.LBFGS))
    model, opt, _, _ = _train(first, kwargs, steps=4)
    sd = _saved(opt.state_dict())
    opt2 = second(model.parameters(), **kwargs)
    opt2.load_state_dict(sd)
    _, _, resumed, _ = _train(second, kwargs, steps=4, model=model, opt=opt2)
    assert all(torch.equal(a, b) for a, b in zip(resumed, straight))
    _, ours, _, _ = _train(LBFGS, kwargs, steps=2)
    _, ref, _, _ = _train(torch.optim.LBFGS, kwargs, steps=2)
    a, b = ours.state_dict(), ref.state_dict()
    assert set(a) - {"skipped_steps", "lrkit_optimizer"} == set(b)
    assert a["param_groups"] == b["param_groups"]
    assert set(a["state"][0]) == set(b["state"][0])


def test_bad_state_dicts_are_refused_before_loading():
    model, opt, _, _ = _train(LBFGS, {"history_size": 3}, steps=3)
    sd = opt.state_dict()
    fresh = LBFGS(_model().parameters(), history_size=3)
    for mutate, match in [
        (lambda s: s["state"][0].__setitem__("d", torch.zeros(3)), r"state\['d'\] must have"),
        (lambda s: s["state"][0]["old_dirs"].append(torch.zeros(97)), "same length"),
        (lambda s: s["state"][0].__setitem__("H_diag", torch.tensor(math.nan)), "NaN"),
        (lambda s: s["param_groups"][0].__setitem__("max_iter", 0), "max_iter"),
        (lambda s: s.__setitem__("lrkit_optimizer", "Adam"), "another algorithm"),
        (lambda s: s["state"][0].__setitem__("momentum", 1.0), "unknown state key"),
    ]:
        bad = copy.deepcopy(sd)
        mutate(bad)
        with pytest.raises((ValueError, TypeError), match=match):
            fresh.load_state_dict(bad)
        assert not fresh.state


def test_reports_the_step_length():
    model = _model()
    opt = LBFGS(model.parameters(), line_search_fn="strong_wolfe", max_iter=1, max_eval=25)
    data = _data()
    with pytest.raises(ValueError, match="no step"):
        opt.explain()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step(_closure(opt, model, data))
    info = opt.explain()
    assert isinstance(info, QuasiNewtonStep)
    assert info.curvature_pairs == 0 and info.iterations == 1 and info.line_search == "strong_wolfe"
    g1 = torch.cat([p.grad.reshape(-1) for p in model.parameters()])  # (at the accepted point)
    assert info.step_size == opt.last_step_size > 0 and info.reason == "converged"
    assert info.function_evals == 1 + info.search_evals == opt.function_evals
    for p, b in zip(model.parameters(), before):
        e = opt.explain(p)
        assert torch.allclose(p.detach() - b, e.update, rtol=1e-5, atol=1e-7)
        assert torch.equal(opt.effective_lr(p), e.eta)
        assert float(e.eta.reshape(-1)[0]) == info.step_size
    for _ in range(5):
        opt.step(_closure(opt, model, data))
    info = opt.explain()
    assert info.curvature_pairs == 5 and info.initial_step == 1.0 and info.h_diag > 0
    assert opt.lr_stats()[0]["median"] == pytest.approx(info.step_size)
    assert opt.total_function_evals == opt.state[next(iter(model.parameters()))]["func_evals"]
    assert g1.shape[0] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kwargs,name", [
    ({"lr": -1.0}, "lr"), ({"max_iter": 0}, "max_iter"), ({"max_eval": 0}, "max_eval"),
    ({"tolerance_grad": -1.0}, "tolerance_grad"), ({"tolerance_change": -1e-9},
                                                   "tolerance_change"),
    ({"history_size": 0}, "history_size"), ({"line_search_fn": "wolfe"}, "line_search_fn"),
    ({"nonfinite": "ignore"}, "nonfinite"), ({"max_iter": 2.5}, "max_iter"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=f"LBFGS\\(\\): {name} must be"):
        LBFGS(_model().parameters(), **kwargs)
    with pytest.raises(TypeError, match="line_search_fn must be"):
        LBFGS(_model().parameters(), line_search_fn=3)
    m = _model()
    with pytest.raises(ValueError, match="one param group"):
        LBFGS([{"params": m[0].parameters()}, {"params": m[2].parameters()}])


@pytest.mark.parametrize("search", (None,) + SEARCHES)
def test_nonfinite_loss_and_gradient(search):
    model = _model()
    opt = LBFGS(model.parameters(), line_search_fn=search)
    with pytest.raises(ValueError, match="closure must be"):
        opt.step()

    def nan_loss():
        opt.zero_grad()
        loss = model(_data()[0]).sum() * math.nan
        loss.backward()
        return loss
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FloatingPointError, match="loss is not finite"):
        opt.step(nan_loss)

    def nan_grad():
        opt.zero_grad()
        loss = model(_data()[0]).pow(2).mean()
        loss.backward()
        model[2].bias.grad.fill_(math.inf)
        return loss
    with pytest.raises(NonFiniteGradientError, match=r"params'\]\[3\]"):
        opt.step(nan_grad)
    skip = LBFGS(model.parameters(), line_search_fn=search, nonfinite="skip")
    skip.step(nan_loss)
    skip.step(nan_grad)
    assert skip.skipped_steps == 2 and not skip.state.get(model[0].weight, {}).get("d")
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("search", SEARCHES)
def test_overflowing_trial_points_are_too_long(search):
    """exp(x) blows up at a step 1e3 along -g: the search comes back to finite values."""
    x = torch.tensor([3.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = LBFGS([x], lr=1e4, max_iter=30, line_search_fn=search)

    def closure():
        opt.zero_grad()
        loss = torch.exp(x).sum() + (x * x).sum()
        loss.backward()
        return loss
    opt.step(closure)
    assert torch.isfinite(x).all() and float(closure()) < math.exp(3) + math.exp(-1) + 10


# -- SciPy's L-BFGS-B: the same optimum, no more than 1.5x its function evaluations ------------
def _rosenbrock(x):
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


def _logistic():
    rng = np.random.RandomState(0)
    X = rng.randn(500, 20)
    y = (X @ rng.randn(20) + rng.randn(500) > 0).astype(float)
    Xt, yt = torch.tensor(X), torch.tensor(y)

    def f(w):
        return (torch.nn.functional.binary_cross_entropy_with_logits(Xt @ w, yt)
                + 5e-3 * (w * w).sum())
    return f


PROBLEMS = {"rosenbrock_2d": (_rosenbrock, [-1.2, 1.0]),
            "rosenbrock_10d": (_rosenbrock, [0.0] * 10),
            "logistic_regression": (_logistic(), [0.0] * 20)}


def _scipy(f, x0):
    """SciPy's optimum (tight tolerances) and the evaluations it took to get within 1e-6
    relative of it."""
    so = pytest.importorskip("scipy.optimize")
    count = [0]

    def fg(x):
        count[0] += 1
        xt = torch.tensor(x, requires_grad=True)
        v = f(xt)
        v.backward()
        return float(v.detach()), xt.grad.numpy().copy()
    opts = dict(gtol=1e-14, ftol=1e-16, maxiter=10000, maxfun=100000)
    x_star = so.minimize(fg, np.array(x0), jac=True, method="L-BFGS-B", options=opts).x
    count[0], reached = 0, []

    def cb(xk):
        if not reached and np.linalg.norm(xk - x_star) <= 1e-6 * np.linalg.norm(x_star):
            reached.append(count[0])
    so.minimize(fg, np.array(x0), jac=True, method="L-BFGS-B", callback=cb, options=opts)
    return x_star, reached[0]


@pytest.mark.parametrize("search", SEARCHES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_reaches_scipy_optimum_within_1_5x_its_evaluations(problem, search):
    f, x0 = PROBLEMS[problem]
    x_star, scipy_evals = _scipy(f, x0)
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    reached = []

    def watch(opt):
        if not reached and np.linalg.norm(x.detach().numpy() - x_star) <= 1e-6 * np.linalg.norm(
                x_star):
            reached.append(opt.total_function_evals)
    opt = LBFGS([x], max_iter=1000, max_eval=5000, tolerance_grad=1e-14, tolerance_change=1e-16,
                history_size=10, line_search_fn=search, callback=watch)

    def closure():
        opt.zero_grad()
        v = f(x)
        v.backward()
        return v
    opt.step(closure)
    assert reached, f"never within 1e-6 of SciPy's optimum: {x.detach().numpy()} vs {x_star}"
    assert reached[0] <= 1.5 * scipy_evals, (reached[0], scipy_evals)
