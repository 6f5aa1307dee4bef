"""The gradient noise that ``find_lr`` measures on its sweep, and the ``noisy`` rule.

The estimator is checked against linear regression with Gaussian inputs and label noise,
where the true gradient and the per-example covariance have closed forms; the tolerance
is drawn from the estimator's own standard error over the pairs it averaged.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lrkit.finder import (
    RULES,
    GradientNoise,
    LRFinderResult,
    edge,
    find_lr,
    gradient_noise,
    noisy,
    suggest,
)

torch.set_num_threads(1)


# -- the estimator against a closed form ---------------------------------------------
def regression(seed: int, d: int, batch: int, steps: int, label_noise: float):
    """``0.5 mean((x.w - y)^2)``, x ~ N(0, I_d), y = x.w* + N(0, s^2), fresh batches.

    At w, with delta = w - w*: the per-example gradient is ``x (x.delta - eps)``, so
    G = delta and (Gaussian fourth moments: E[x x' (x.delta)^2] = |delta|^2 I + 2 delta
    delta') tr(Sigma) = (d + 1) |delta|^2 + d s^2; a batch of B has tr(Sigma) / B."""
    g = torch.Generator().manual_seed(seed)
    w_star = torch.randn(d, generator=g, dtype=torch.float64)
    batches = []
    for _ in range(steps):
        x = torch.randn(batch, d, generator=g, dtype=torch.float64)
        y = x @ w_star + label_noise * torch.randn(batch, generator=g, dtype=torch.float64)
        batches.append((x, y[:, None]))
    model = torch.nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    delta2 = float(((model.weight[0].detach() - w_star) ** 2).sum())
    trace = ((d + 1) * delta2 + d * label_noise ** 2) / batch
    return model, batches, delta2, trace


def mse(out, target):
    return 0.5 * (out - target).pow(2).mean()


def standard_error(values: np.ndarray) -> float:
    """Of the mean of consecutive pairs' values: neighbouring pairs share a gradient, so
    the plain standard error is doubled to cover their correlation."""
    return 2 * float(np.std(values)) / math.sqrt(len(values))


@pytest.mark.parametrize("seed", range(4))
def test_noise_matches_the_closed_form(seed):
    rng = np.random.default_rng(seed)
    d, batch = int(rng.integers(5, 40)), int(rng.choice([8, 16, 32]))
    model, batches, delta2, trace = regression(seed, d, batch, 150, float(rng.uniform(0, 2)))
    # rates so small the weights do not move: every pair is two draws around one G
    r = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                start=1e-14, end=1e-13, steps=150, diverge=math.inf, warn=False)
    assert len(r.grad_sq) == len(r.lrs) == 150 and math.isnan(r.grad_dot[0])
    flat = np.ones(len(r.lrs))  # a loss that never falls: the whole sweep is quiet
    est = gradient_noise(r.lrs, flat, r.grad_sq, r.grad_dot, r.grad_diff, batch_size=batch)
    assert est is not None and est.pairs == 149 and est.batch_size == batch
    diffs, dots = r.grad_diff[1:] / 2, r.grad_dot[1:]
    assert abs(est.noise - trace) <= 5 * standard_error(diffs)
    assert abs(est.signal - delta2) <= 5 * standard_error(dots)
    # the per-step norms: E|g|^2 = |G|^2 + tr(Sigma_B)
    assert abs(np.mean(r.grad_sq) - (delta2 + trace)) <= 5 * standard_error(r.grad_sq)
    np.testing.assert_allclose(r.grad_norms, np.sqrt(r.grad_sq))
    assert est.scale == pytest.approx(est.ratio * batch)
    assert r.settings["batch_size"] == batch


def test_accumulation_averages_the_micro_batches():
    """Two micro-batches per step halve the noise of the step's gradient; the batch size
    recorded is the step's (B x accumulate), so B_simple is unchanged."""
    d, batch = 10, 8
    model, batches, delta2, trace = regression(7, d, batch, 400, 1.0)
    r = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                start=1e-14, end=1e-13, steps=200, accumulate=2, diverge=math.inf,
                warn=False)
    est = gradient_noise(r.lrs, np.ones(200), r.grad_sq, r.grad_dot, r.grad_diff,
                         batch_size=r.settings["batch_size"])
    assert r.settings["batch_size"] == 2 * batch
    assert abs(est.noise - trace / 2) <= 5 * standard_error(r.grad_diff[1:] / 2)
    assert est.scale == pytest.approx(est.ratio * 2 * batch)


def test_a_grad_scaler_is_unscaled_before_the_record():
    model, batches, _, _ = regression(3, 6, 8, 30, 0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def sweep(scaler):
        model.load_state_dict(state)
        return find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                       start=1e-14, end=1e-13, steps=30, scaler=scaler, diverge=math.inf,
                       warn=False)

    plain = sweep(None)
    scaled = sweep(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    np.testing.assert_allclose(scaled.grad_sq, plain.grad_sq, rtol=1e-9)
    np.testing.assert_allclose(scaled.grad_diff[1:], plain.grad_diff[1:], rtol=1e-9)


def test_noise_false_records_nothing():
    model, batches, _, _ = regression(0, 4, 8, 20, 1.0)
    r = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                start=1e-4, end=1.0, steps=20, warn=False, noise=False)
    assert len(r.grad_sq) == 0 and r.noise is None
    assert r.suggestions["noisy"] == r.suggestions["edge"]


# -- the quiet window --------------------------------------------------------------------
def test_only_the_quiet_start_is_used():
    """A loss flat for 30 points, then falling: pairs after the fall (whose differences
    carry the weights' drift) are left out."""
    n = 80
    lrs = np.geomspace(1e-6, 1.0, n)
    losses = np.where(np.arange(n) < 30, 2.0, 2.0 - np.linspace(0, 1.5, n))
    losses[60:] = 0.5 + np.linspace(0, 3, n - 60)  # a lowest point, then a blow-up
    sq = np.full(n, 3.0)
    dot = np.where(np.arange(n) < 32, 1.0, -50.0)
    diff = np.where(np.arange(n) < 32, 4.0, 500.0)
    dot[0] = diff[0] = math.nan
    est = gradient_noise(lrs, losses, sq, dot, diff)
    assert est.signal == 1.0 and est.noise == 2.0 and est.ratio == 2.0
    assert est.scale is None and 25 <= est.pairs <= 31 and est.lr_max < lrs[32]


def test_too_few_pairs_measure_nothing():
    lrs, losses = np.geomspace(1e-4, 1, 10), np.linspace(2, 1, 10)
    nan = np.full(10, math.nan)
    assert gradient_noise(lrs, losses, nan, nan, nan) is None
    assert gradient_noise(lrs[:3], losses[:3], *(np.ones(3),) * 3) is None


# -- the rule ------------------------------------------------------------------------------
def _curve():
    lrs = np.geomspace(1e-5, 10, 60)
    losses = 2 - np.tanh(5 * lrs) + np.where(lrs > 0.5, 5 * (lrs - 0.5), 0)
    return lrs, losses, losses


def _noise(signal, noise):
    return GradientNoise(signal=signal, noise=noise, pairs=20, lr_max=1e-3, batch_size=32)


def test_noisy_is_edge_without_noise_and_smaller_with_more():
    curve = _curve()
    base = edge(*curve)
    assert noisy(*curve) == base  # not measured
    assert noisy(*curve, noise=_noise(1.0, 0.0)) == base  # a noiseless gradient
    rng = np.random.default_rng(0)
    ratios = np.sort(rng.uniform(0, 20, 12))
    values = [noisy(*curve, noise=_noise(1.0, r)) for r in ratios]
    assert all(a > b for a, b in zip(values, values[1:]))
    np.testing.assert_allclose(values, base / (1 + ratios), rtol=1e-12)
    assert noisy(*curve, noise=_noise(-1.0, 1.0)) == 0.0  # pure noise: ratio inf


def test_suggest_hands_the_noise_to_rules_that_read_it():
    lrs, losses, _ = _curve()
    n = _noise(2.0, 3.0)
    assert suggest(lrs, losses, rule="noisy", noise=n) == pytest.approx(
        suggest(lrs, losses, rule="edge") / 2.5)
    assert suggest(lrs, losses, rule="edge", noise=n) == suggest(lrs, losses, rule="edge")
    seen = []

    def mine(lrs, losses, smoothed, noise=None):
        seen.append(noise)
        return 1e-3

    mine.uses_noise = True
    assert suggest(lrs, losses, rule=mine, noise=n) == 1e-3 and seen == [n]
    assert suggest(lrs, losses, rule=lambda a, b, c: 1e-2, noise=n) == 1e-2
    assert set(RULES) >= {"steep", "valley", "minimum", "edge", "noisy"}


def test_find_lr_suggests_with_its_own_measurement():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + torch.randn(512, 1, generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16,
                                       shuffle=True, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    r = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), data,
                torch.nn.functional.mse_loss, warn=False)
    assert r.noise is not None and r.noise.ratio > 0 and r.settings["batch_size"] == 16
    assert r.suggestions["noisy"] == pytest.approx(r.suggestions["edge"] / (1 + r.noise.ratio))
    assert r.suggest("noisy") == pytest.approx(r.suggestions["noisy"])
    r.plot()  # draws the noise in a corner


# -- the record ------------------------------------------------------------------------------
def test_round_trip_through_json():
    model, batches, _, _ = regression(1, 5, 8, 60, 1.0)
    r = find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                start=1e-6, end=10.0, steps=60, warn=False)
    d = json.loads(json.dumps(r.to_dict()))
    back = LRFinderResult.from_dict(d)
    for name in ("lrs", "losses", "grad_sq", "grad_dot", "grad_diff"):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
    assert back.noise == r.noise and back.suggestions == r.suggestions
    assert d["noise"] == (None if r.noise is None else r.noise.to_dict())
    if r.noise is not None:
        assert GradientNoise.from_dict(d["noise"]) == r.noise
    old = {k: v for k, v in d.items() if not k.startswith("grad_") and k != "noise"}
    legacy = LRFinderResult.from_dict(old)  # a record made before the gradients were kept
    assert legacy.noise is None and len(legacy.grad_sq) == 0
    assert legacy.suggest("noisy") == legacy.suggest("edge")


def test_pure_noise_serialises():
    n = _noise(-0.5, 1.0)
    assert n.ratio == math.inf and n.to_dict()["ratio"] is None
    assert json.loads(json.dumps(n.to_dict()))["scale"] is None
    assert GradientNoise.from_dict(n.to_dict()) == n


# -- bad inputs ----------------------------------------------------------------------------
def test_bad_inputs_are_named():
    lrs, losses, _ = _curve()
    model, batches, _, _ = regression(0, 3, 4, 5, 1.0)
    with pytest.raises(TypeError, match="noise"):
        find_lr(model, torch.optim.SGD(model.parameters(), lr=0.1), batches, mse,
                noise="yes")
    with pytest.raises(TypeError, match="noise"):
        suggest(lrs, losses, rule="noisy", noise=0.5)
    with pytest.raises(TypeError, match="noise"):
        noisy(lrs, losses, losses, noise={"ratio": 1})
    with pytest.raises(ValueError, match="grad_dot"):
        gradient_noise(lrs, losses, lrs, lrs[:-1], lrs)
    with pytest.raises(ValueError, match="batch_size"):
        gradient_noise(lrs, losses, lrs, lrs, lrs, batch_size=0)
    with pytest.raises(TypeError, match="grad_sq"):
        gradient_noise(lrs, losses, "abc", lrs, lrs)


def test_lbfgs_sparse_and_unused_parameters_are_recorded():
    """A closure optimizer (L-BFGS), a sparse embedding gradient and a parameter that never
    gets a gradient: the record has one finite entry per step all the same."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 3, sparse=True)
    head = torch.nn.Linear(3, 1)
    unused = torch.nn.Linear(2, 2)
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "unused": unused})
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 10, (8,), generator=g), torch.randn(8, 1, generator=g))
               for _ in range(12)]

    def step_fn(m, batch):
        idx, y = batch
        return mse(m["head"](m["emb"](idx)), y)

    for opt in (torch.optim.SGD(model.parameters(), lr=0.1),
                torch.optim.LBFGS(list(head.parameters()), lr=0.1, max_iter=2)):
        r = find_lr(model, opt, batches, step_fn=step_fn, start=1e-6, end=1e-3, steps=12,
                    warn=False)
        assert len(r.grad_sq) == 12 and np.isfinite(r.grad_sq).all()
        assert np.isfinite(r.grad_diff[1:]).all()
        assert r.settings["batch_size"] == 8
