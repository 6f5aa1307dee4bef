"""lrkit.find_lr: the sweep, early stopping, the rules, and exact restoration afterwards."""
from __future__ import annotations

import json
import math
import random
import warnings
from collections import namedtuple

import numpy as np
import pytest
import torch

import lrkit
from lrkit import finder
from lrkit.finder import LRFinderResult, find_lr, suggest


# -- fixtures -----------------------------------------------------------------------------
class Net(torch.nn.Module):
    """Parameters, buffers (batch norm), dropout (draws from the global RNG), a frozen
    submodule in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.drop = torch.nn.Dropout(0.2)
        self.fc2 = torch.nn.Linear(16, 1)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def make_data(n: int = 256, batch: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)


def mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(out, target)


def warm(model, opt, loader, steps: int = 3) -> None:
    """A few ordinary steps, so the optimizer has state and the params have gradients."""
    for _, (x, y) in zip(range(steps), loader):
        opt.zero_grad()
        mse(model(x), y).backward()
        opt.step()


def everything(model, opt, scaler=None):
    """All that find_lr promises to restore, as plain comparable values."""
    tensors = {f"model.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    tensors.update({f"grad.{n}": p.grad.clone() for n, p in model.named_parameters()
                    if p.grad is not None})
    state = opt.state_dict()
    for i, s in state["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = v.clone() if torch.is_tensor(v) else torch.tensor(v)
    groups = [{k: v for k, v in g.items()} for g in state["param_groups"]]
    flags = [m.training for m in model.modules()]
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    return tensors, groups, flags, rng, None if scaler is None else scaler.state_dict()


def assert_same(before, after) -> None:
    t0, g0, f0, r0, s0 = before
    t1, g1, f1, r1, s1 = after
    assert t0.keys() == t1.keys()
    for k in t0:
        assert torch.equal(t0[k], t1[k]), k
    assert g0 == g1
    assert f0 == f1
    assert torch.equal(r0[0], r1[0])
    assert r0[1][0] == r1[1][0] and np.array_equal(r0[1][1], r1[1][1]) and r0[1][2:] == r1[1][2:]
    assert r0[2] == r1[2]
    assert s0 == s1


# -- restoration --------------------------------------------------------------------------
OPTIMIZERS = {
    "SGD": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9, nesterov=True),
    "Adam": lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True),
    "AdamW": lambda p: torch.optim.AdamW(p, lr=1e-3),
    "Adam-tensor-lr": lambda p: torch.optim.Adam(p, lr=torch.tensor(1e-3)),
    "NAdam": lambda p: torch.optim.NAdam(p),
    "RAdam": lambda p: torch.optim.RAdam(p),
    "Adamax": lambda p: torch.optim.Adamax(p),
    "Adagrad": lambda p: torch.optim.Adagrad(p),
    "Adadelta": lambda p: torch.optim.Adadelta(p),
    "RMSprop": lambda p: torch.optim.RMSprop(p, momentum=0.5, centered=True),
    "Rprop": lambda p: torch.optim.Rprop(p),
    "ASGD": lambda p: torch.optim.ASGD(p),
    "Adafactor": lambda p: torch.optim.Adafactor(p),
    "LBFGS": lambda p: torch.optim.LBFGS(p, max_iter=2),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_torch_optimizer_sweeps_and_is_restored_bit_for_bit(name):
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    model.drop.eval()  # a user's choice of mode, kept
    opt = OPTIMIZERS[name](model.parameters())
    if name != "LBFGS":  # L-BFGS needs a closure; it starts the sweep without state
        warm(model, opt, loader)
    np.random.seed(1)  # noqa: NPY002
    random.seed(2)
    before = everything(model, opt)
    result = find_lr(model, opt, loader, mse, steps=30, end=1.0)
    assert_same(before, everything(model, opt))
    assert 2 <= len(result.lrs) <= 30
    assert np.isfinite(result.losses[:-1]).all()


def test_restored_in_place_so_references_stay_valid():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = lrkit.Scheduler(opt, lr=lrkit.schedules.cosine(1e-3, total=100))
    warm(model, opt, loader)
    weight, group, groups = model.fc1.weight, opt.param_groups[0], opt.param_groups
    exp_avg = opt.state[model.fc1.weight]["exp_avg"]
    saved = exp_avg.clone()
    find_lr(model, opt, loader, mse, steps=20)
    assert model.fc1.weight is weight and opt.param_groups is groups
    assert opt.param_groups[0] is group and "initial_lr" in group
    assert opt.state[model.fc1.weight]["exp_avg"] is exp_avg and torch.equal(exp_avg, saved)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(lrkit.schedules.cosine(1e-3, 100)(1))


def test_optimizer_without_state_gets_none_back_and_fresh_grads_are_cleared():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.Adam(model.parameters())
    before = everything(model, opt)
    find_lr(model, opt, loader, mse, steps=10)
    assert len(opt.state) == 0
    assert all(p.grad is None for p in model.parameters())
    assert_same(before, everything(model, opt))


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_restored_when_the_sweep_raises(error):
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    warm(model, opt, loader)
    before = everything(model, opt)
    calls = []

    def step_fn(m, batch):
        calls.append(1)
        if len(calls) == 7:
            raise error("boom")
        return mse(m(batch[0]), batch[1])

    with pytest.raises(error, match="boom"):
        find_lr(model, opt, loader, step_fn=step_fn, steps=20)
    assert_same(before, everything(model, opt))


def test_parameters_of_the_optimizer_outside_the_model_are_restored():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    scale = torch.nn.Parameter(torch.ones(()))
    opt = torch.optim.SGD([*model.parameters(), scale], lr=0.1)
    find_lr(model, opt, loader, lambda out, y: mse(out * scale, y), steps=20)
    assert scale.item() == 1.0 and scale.grad is None


def test_device_moves_and_moves_back():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.Adam(model.parameters())
    warm(model, opt, loader)
    before = everything(model, opt)
    result = find_lr(model, opt, loader, mse, steps=10, device="cpu")
    assert len(result.lrs) == 10
    assert_same(before, everything(model, opt))


# -- the sweep ----------------------------------------------------------------------------
def recording_step(record):
    def step_fn(model, batch):
        record.append((model.training, torch.is_grad_enabled()))
        return mse(model(batch[0]), batch[1])
    return step_fn


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_sweep_sets_lr_times_group_scale(mode):
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.SGD([{"params": model.fc1.parameters()},
                           {"params": [*model.bn.parameters(), *model.fc2.parameters()],
                            "lr_scale": 0.5}], lr=0.1)
    seen = []

    def step_fn(m, batch):
        seen.append([g["lr"] for g in opt.param_groups])
        return mse(m(batch[0]), batch[1])

    r = find_lr(model, opt, loader, step_fn=step_fn, start=1e-4, end=1e-2, steps=11,
                mode=mode, diverge=math.inf)
    expected = np.geomspace(1e-4, 1e-2, 11) if mode == "exp" else np.linspace(1e-4, 1e-2, 11)
    np.testing.assert_allclose(r.lrs, expected, rtol=1e-12)
    np.testing.assert_allclose(np.array(seen), np.stack([r.lrs, 0.5 * r.lrs], 1), rtol=1e-12)
    assert r.stop_reason == "completed"
    assert opt.param_groups[0]["lr"] == 0.1 and "lr_scale" not in opt.param_groups[0]


def test_stops_when_the_smoothed_loss_exceeds_diverge_times_its_best():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    r = find_lr(model, opt, loader, mse, steps=100, diverge=3.0)
    assert r.stop_reason in ("diverged", "non-finite") and len(r.lrs) < 100
    if r.stop_reason == "diverged":
        best = np.min(r.smoothed_losses[:-1])
        assert r.smoothed_losses[-1] > 3.0 * best
        assert np.all(r.smoothed_losses[:-1] <= 3.0 * np.minimum.accumulate(
            r.smoothed_losses[:-1]))


def test_smoothed_losses_are_the_debiased_ema():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    r = find_lr(model, torch.optim.SGD(model.parameters()), loader, mse, steps=30, smooth=0.9)
    avg, expected = 0.0, []
    for i, loss in enumerate(r.losses):
        avg = 0.9 * avg + 0.1 * loss
        expected.append(avg / (1 - 0.9 ** (i + 1)))
    np.testing.assert_allclose(r.smoothed_losses, expected, rtol=1e-12)
    np.testing.assert_array_equal(r.losses, r.train_losses)


def test_non_finite_loss_stops_and_is_skipped_by_every_rule():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    count = []

    def step_fn(m, batch):
        count.append(1)
        loss = mse(m(batch[0]), batch[1])
        return loss * math.nan if len(count) == 40 else loss

    r = find_lr(model, opt, loader, step_fn=step_fn, steps=100, diverge=math.inf)
    assert r.stop_reason == "non-finite" and len(r.lrs) == 40
    assert math.isnan(r.losses[-1]) and math.isnan(r.smoothed_losses[-1])
    assert all(v is not None and math.isfinite(v) for v in r.suggestions.values())
    assert all(v <= r.lrs[-2] for v in r.suggestions.values())


@pytest.mark.parametrize("rule", list(finder.RULES))
def test_rules_ignore_non_finite_points_anywhere(rule):
    lrs = np.geomspace(1e-5, 1, 60)
    losses = 1 + (np.log10(lrs) + 2.5) ** 2 / 10
    clean = suggest(lrs, losses, rule=rule)
    noisy = losses.copy()
    noisy[[3, 20, 59]] = [math.nan, math.inf, -math.inf]
    keep = np.isfinite(noisy)
    assert suggest(lrs, noisy, rule=rule) == suggest(lrs[keep], losses[keep], rule=rule)
    assert clean is not None and 1e-5 <= clean <= 1
    assert suggest(lrs[:3], losses[:3], rule=rule) is None


def test_accumulation_averages_micro_batches():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = x.sum(1, keepdim=True)
    model = torch.nn.Linear(8, 1)
    halves = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    wholes = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    kw = {"start": 1e-3, "end": 0.1, "steps": 8, "diverge": math.inf}
    a = find_lr(model, torch.optim.SGD(model.parameters()), halves, mse, accumulate=2, **kw)
    b = find_lr(model, torch.optim.SGD(model.parameters()), wholes, mse, **kw)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-5)
    seen = []
    find_lr(model, torch.optim.SGD(model.parameters()), halves, step_fn=lambda m, bt: (
        seen.append(1), mse(m(bt[0]), bt[1]))[1], accumulate=3, **kw)
    assert len(seen) == 3 * 8


def test_loader_is_restarted_and_a_one_shot_iterator_stops_the_sweep():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    data = [(torch.randn(4, 8), torch.randn(4, 1)) for _ in range(3)]
    r = find_lr(model, torch.optim.SGD(model.parameters()), data, mse, steps=10, end=1e-3)
    assert len(r.lrs) == 10
    r = find_lr(model, torch.optim.SGD(model.parameters()), iter(data), mse, steps=10,
                end=1e-3)
    assert r.stop_reason == "data" and len(r.lrs) == 3
    assert any("ran out" in w for w in r.warnings)
    with pytest.raises(ValueError, match="loader yielded no batches"):
        find_lr(model, torch.optim.SGD(model.parameters()), [], mse)


def test_custom_batch_structures_through_step_fn():
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    Batch = namedtuple("Batch", "features label weight")
    dicts = [{"x": torch.randn(4, 8), "y": torch.randn(4, 1)} for _ in range(5)]
    tuples = [Batch(torch.randn(4, 8), torch.randn(4, 1), torch.rand(4, 1)) for _ in range(5)]
    r = find_lr(model, torch.optim.SGD(model.parameters()), dicts, device="cpu",
                step_fn=lambda m, b: mse(m(b["x"]), b["y"]), steps=10)
    assert len(r.lrs) == 10
    r = find_lr(model, torch.optim.Adam(model.parameters()), tuples, device="cpu",
                step_fn=lambda m, b: ((m(b.features) - b.label) ** 2 * b.weight).mean(),
                steps=10)
    assert len(r.lrs) == 10
    with pytest.raises(TypeError, match=r"\(inputs, targets\) pair, got a dict.*step_fn"):
        find_lr(model, torch.optim.SGD(model.parameters()), dicts, mse)
    with pytest.raises(TypeError, match="got a Batch of length 3"):
        find_lr(model, torch.optim.SGD(model.parameters()), tuples, mse)
    with pytest.raises(TypeError, match="loss must be a tensor with one element"):
        find_lr(model, torch.optim.SGD(model.parameters()), dicts,
                step_fn=lambda m, b: m(b["x"]))


def test_validation_loss_variant():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    val = make_data(n=64, batch=32, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    record: list = []
    before = everything(model, opt)
    r = find_lr(model, opt, loader, step_fn=recording_step(record), val_loader=val, steps=10,
                end=1e-2)
    assert_same(before, everything(model, opt))
    train_calls = [c for c in record if c[1]]
    val_calls = [c for c in record if not c[1]]
    assert len(train_calls) == 10 and len(val_calls) == 20  # 2 validation batches per step
    assert all(training for training, _ in train_calls)
    assert not any(training for training, _ in val_calls)
    assert not np.array_equal(r.losses, r.train_losses)
    assert r.settings["validation"] is True and np.isfinite(r.losses).all()


def test_grad_scaler_with_cpu_autocast_and_its_state_restored():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.Adam(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=3)
    warm(model, opt, loader)

    def step_fn(m, batch):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(batch[0])
        return mse(out.float(), batch[1])

    before = everything(model, opt, scaler)
    r = find_lr(model, opt, loader, step_fn=step_fn, scaler=scaler, steps=20)
    assert_same(before, everything(model, opt, scaler))
    assert scaler.get_scale() == 2.0 ** 10
    assert np.isfinite(r.losses[:-1]).all()


def test_grad_scaler_float16_skips_overflowing_steps():
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 40)  # overflows at first

    def step_fn(m, batch):
        with torch.autocast("cpu", dtype=torch.float16):
            return mse(m(batch[0]).float(), batch[1])

    r = find_lr(model, opt, loader, step_fn=step_fn, scaler=scaler, steps=15, end=1e-3)
    assert len(r.lrs) == 15 and np.isfinite(r.losses).all()
    assert scaler.get_scale() == 2.0 ** 40


# -- result -------------------------------------------------------------------------------
def test_result_to_dict_is_json_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model, loader = Net(), make_data()
    r = find_lr(model, torch.optim.SGD(model.parameters()), loader, mse, steps=60)
    text = json.dumps(r.to_dict(), allow_nan=False)
    back = LRFinderResult.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.lrs, r.lrs)
    np.testing.assert_array_equal(back.losses[np.isfinite(r.losses)],
                                  r.losses[np.isfinite(r.losses)])
    assert back.suggestions == r.suggestions and back.suggestion == r.suggestion
    assert r.suggestion == r.suggestions[finder.DEFAULT_RULE]
    assert set(r.suggestions) == set(finder.RULES)
    ax = r.plot()
    ax.figure.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 5000
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert all(any(rule in lab for lab in labels) for rule in finder.RULES)
    assert ax.get_xscale() == "log"


def test_lazy_exports():
    assert lrkit.find_lr is find_lr and lrkit.LRFinderResult is LRFinderResult


def test_import_lrkit_stays_light():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(lrkit.__file__).parents[1])}
    code = ("import sys, lrkit; assert 'lrkit.finder' not in sys.modules; "
            "assert 'torch' not in sys.modules; lrkit.find_lr; "
            "assert 'lrkit.finder' in sys.modules and 'lrkit.bench' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# -- argument checks ----------------------------------------------------------------------
def _setup():
    model = torch.nn.Linear(2, 1)
    return model, torch.optim.SGD(model.parameters()), [(torch.ones(1, 2), torch.ones(1, 1))]


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"start": 0}, ValueError, "start must be a positive number"),
    ({"start": "a"}, TypeError, "start must be a real number"),
    ({"end": 1e-8}, ValueError, r"end must be greater than start \(1e-07\), got 1e-08"),
    ({"steps": 1}, ValueError, "steps must be an integer >= 2, got 1"),
    ({"steps": 2.5}, ValueError, "steps must be an integer"),
    ({"mode": "log"}, ValueError, "mode must be one of 'exp', 'linear', got 'log'"),
    ({"smooth": 1.0}, ValueError, r"smooth must be in \[0, 1\)"),
    ({"diverge": 1.0}, ValueError, r"diverge must be a number > 1 \(or math.inf\), got 1.0"),
    ({"diverge": math.nan}, ValueError, "diverge must be a finite number"),
    ({"accumulate": 0}, ValueError, "accumulate must be a positive integer, got 0"),
    ({"scaler": object()}, TypeError, "scaler must be a torch.amp.GradScaler"),
    ({"step_fn": 3}, TypeError, "step_fn must be callable, got int"),
    ({"val_loader": 3}, TypeError, "val_loader must be an iterable of batches"),
    ({"device": "gpu9"}, ValueError, "device must name a torch device"),
    ({"device": 3}, TypeError, "device must be a str, a torch.device or None"),
    ({"loss_fn": None}, ValueError, "loss_fn is required unless step_fn is given"),
    ({"callback": "x"}, TypeError, "callback must be callable"),
])
def test_bad_arguments_name_themselves(kwargs, exc, match):
    model, opt, data = _setup()
    args = {"loss_fn": mse, **kwargs}
    with pytest.raises(exc, match=r"find_lr\(\): " + match):
        find_lr(model, opt, data, **args)


def test_bad_objects_name_themselves():
    model, opt, data = _setup()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        find_lr("m", opt, data, mse)
    with pytest.raises(TypeError, match="optimizer must be a torch.optim.Optimizer"):
        find_lr(model, "adam", data, mse)
    with pytest.raises(TypeError, match="loader must be an iterable of batches"):
        find_lr(model, opt, 5, mse)
    other = torch.optim.SGD(torch.nn.Linear(2, 1).parameters())
    with pytest.raises(ValueError, match="none of its parameters belongs to model"):
        find_lr(model, other, data, mse)
    with pytest.raises(ValueError, match="suggest\\(\\): rule must be one of"):
        suggest([1, 2], [1, 2], rule="nope")


# -- the rules on known curves --------------------------------------------------------------
def run_curve(f, **kw):
    """A sweep whose loss is exactly f(lr) (the model only carries the gradient)."""
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def step_fn(m, batch):
        lr = opt.param_groups[0]["lr"]
        return m(batch).sum() * 0 + f(lr)

    return find_lr(model, opt, [torch.zeros(1, 1)], step_fn=step_fn, **kw)


def test_edge_is_where_the_loss_climbs_back_over_its_start_divided_by_8():
    # falls from ~2 to ~1 around 1e-4, climbs back past 2 at lr = 0.1
    r = run_curve(lambda lr: 1 + 1 / (1 + lr * 1e4) + (lr / 0.1) ** 2, diverge=math.inf)
    step = (10 / 1e-7) ** (1 / 99)  # one step of the sweep
    edge, found = finder.edge_of_progress(r.lrs, r.losses)
    assert found and 0.1 / step <= edge <= 0.1 * step
    assert r.suggestions["edge"] == edge / finder.EDGE_DIVISOR == r.suggestion
    assert not r.warnings


def test_warnings_for_curves_that_do_not_say_much():
    r = run_curve(lambda lr: 1 + 1 / (1 + lr * 1e4) + lr / 20)  # rises, not back to 2
    assert any("never climbed back" in w for w in r.warnings)
    assert r.suggestions["edge"] == pytest.approx(10 / 8)
    r = run_curve(lambda lr: 1 / (1 + lr), end=1e-3)  # still falling at the end
    assert any("still falling" in w for w in r.warnings)
    r = run_curve(lambda lr: 1 + lr, start=1e-3, end=1.0)  # never fell
    assert any("never fell" in w for w in r.warnings)


def test_warnings_are_also_python_warnings_at_the_callers_line():
    with pytest.warns(lrkit.LRFinderWarning, match=r"^find_lr\(\): .*still falling") as rec:
        r = run_curve(lambda lr: 1 / (1 + lr), end=1e-3)
    assert [str(w.message) for w in rec] == [f"find_lr(): {w}" for w in r.warnings]
    assert all(w.filename == run_curve.__code__.co_filename for w in rec)  # not finder.py
    with warnings.catch_warnings():
        warnings.simplefilter("error", lrkit.LRFinderWarning)
        r = run_curve(lambda lr: 1 / (1 + lr), end=1e-3, warn=False)
    assert any("still falling" in w for w in r.warnings)


def test_a_frozen_model_and_a_huge_step_count_are_clear_errors():
    """A model whose parameters all have requires_grad=False made backward raise its own
    RuntimeError; a step count beyond 2**53 was refused by an internal schedule's name."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    data = [(torch.randn(8, 3), torch.randn(8, 1)) for _ in range(4)]
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"find_lr\(\): steps must be at most 2\*\*53"):
        find_lr(model, opt, data, torch.nn.functional.mse_loss, steps=10**20)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="none of the optimizer's parameters requires grad"):
        find_lr(model, opt, data, torch.nn.functional.mse_loss, steps=5)
    model.weight.requires_grad_(True)  # one trainable tensor is enough
    result = find_lr(model, opt, data, torch.nn.functional.mse_loss, steps=4)
    assert len(result.lrs) == 4
