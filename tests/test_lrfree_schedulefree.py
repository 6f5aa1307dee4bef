"""Schedule-free optimizers make the usual traps impossible or loud: a step in eval mode,
switching train/eval, a state_dict taken in either mode, groups added later; and BatchNorm
statistics re-estimated for the averaged weights."""
from __future__ import annotations

import math

import pytest
import torch

from lrfree_cases import fork, one_thread, problem, train  # noqa: F401
from lrkit.optim import ScheduleFreeAdamW, ScheduleFreeSGD, reestimate_batchnorm

# ------------------------------------------------------------------- schedule-free
SCHEDULE_FREE = [ScheduleFreeAdamW, ScheduleFreeSGD]


@pytest.mark.parametrize("cls", SCHEDULE_FREE)
def test_a_step_in_eval_mode_raises_before_the_closure_runs(cls):
    model, x, y = problem()
    opt = cls(model.parameters())
    train(model, opt, x, y, 2)  # starts in train mode: no .train() needed
    opt.eval()
    opt.eval()  # idempotent
    calls = []
    with pytest.raises(RuntimeError, match=r"eval mode.*call optimizer.train\(\)"):
        opt.step(lambda: calls.append(1))
    assert calls == [] and not opt.training
    opt.train()
    opt.train()
    train(model, opt, x, y, 1, start=2)


@pytest.mark.parametrize("cls", SCHEDULE_FREE)
def test_eval_then_train_restores_the_training_weights_bit_for_bit(cls):
    model, x, y = problem()
    opt = cls(model.parameters())
    train(model, opt, x, y, 20)
    y_weights = [p.detach().clone() for p in model.parameters()]
    opt.eval()
    x_weights = [p.detach().clone() for p in model.parameters()]
    assert not all(torch.equal(a, b) for a, b in zip(x_weights, y_weights))
    opt.train()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), y_weights))

    model, x, y = problem()
    loose = cls(model.parameters(), exact_switch=False)  # schedulefree's way: no copy of y
    train(model, loose, x, y, 3)
    loose.eval()
    assert loose.state and all("y" not in state for state in loose.state.values())


@pytest.mark.parametrize("cls", SCHEDULE_FREE)
def test_weights_changed_in_eval_mode_are_respected_by_train(cls):
    model, x, y = problem()
    opt = cls(model.parameters())
    train(model, opt, x, y, 20)
    opt.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # e.g. a user loaded other weights
    x_weights = [p.detach().clone() for p in model.parameters()]
    opt.train()
    beta = opt.param_groups[0]["betas"][0] if cls is ScheduleFreeAdamW \
        else opt.param_groups[0]["momentum"]
    for p, xw in zip(model.parameters(), x_weights):
        assert torch.equal(p, torch.lerp(xw, opt.state[p]["z"], 1 - beta))


@pytest.mark.parametrize("cls", SCHEDULE_FREE)
def test_a_state_dict_taken_in_eval_mode_resumes_exactly_like_one_taken_in_train_mode(cls):
    def make(p):
        return cls(p)

    model, x, y = problem()
    opt = make(model.parameters())
    train(model, opt, x, y, 30, switches=True)
    in_train = fork(model, opt, make)
    opt.eval()  # a checkpoint is usually taken in eval mode
    in_eval = fork(model, opt, make)
    opt.train()
    assert not in_eval[1].training and in_train[1].training
    in_eval[1].train()
    for m, o in ((model, opt), in_train, in_eval):
        train(m, o, x, y, 30, start=30, switches=True)
    for other, _ in (in_train, in_eval):
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_a_param_group_added_in_eval_mode_starts_in_eval_mode():
    model, x, y = problem()
    layers = list(model.parameters())
    opt = ScheduleFreeAdamW(layers[:2])
    train(model, opt, x, y, 3)
    opt.eval()
    opt.add_param_group({"params": layers[2:]})
    assert not opt.training
    opt.train()
    assert opt.training


def test_foreach_maps_onto_impl_for_drop_in_use():
    params = [torch.nn.Parameter(torch.randn(4, 3))]
    assert ScheduleFreeSGD(params, foreach=False).impl == "reference"
    assert ScheduleFreeSGD(params, foreach=True).impl == "foreach"
    assert ScheduleFreeSGD(params).impl == "auto"


def test_explain_describes_the_training_weights_and_refuses_eval_mode():
    model, x, y = problem()
    opt = ScheduleFreeAdamW(model.parameters(), lr=0.01)
    train(model, opt, x, y, 5)
    w = next(model.parameters())
    assert (opt.effective_lr(w) > 0).all()
    opt.eval()
    with pytest.raises(ValueError, match="eval mode; call train"):
        opt.effective_lr(w)


def test_batchnorm_statistics_are_reestimated_for_the_averaged_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = ScheduleFreeAdamW(model.parameters(), lr=0.05)
    x, y = torch.randn(256, 4), torch.randn(256, 1)
    for i in range(40):
        idx = torch.arange(i * 32, i * 32 + 32) % 256
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    batches = [(x[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)]
    model.eval()
    reestimate_batchnorm(model, batches, opt)
    assert not opt.training and not model.training  # both left as they were asked to be
    with torch.no_grad():
        features = model[0](x)  # the averaged weights x are in the model now
    bn = model[1]
    assert torch.allclose(bn.running_mean, features.mean(0), atol=1e-6)
    batch_vars = torch.stack([features[i:i + 64].var(0) for i in range(0, 256, 64)])
    assert torch.allclose(bn.running_var, batch_vars.mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 4
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batchnorm(model, [])


def test_reestimate_batchnorm_accepts_a_forward_function_and_a_batch_limit():
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5))
    seen = []

    def forward(m, batch):
        seen.append(batch["x"].shape[0])
        m(batch["x"])

    reestimate_batchnorm(model, ({"x": torch.randn(8, 3)} for _ in range(5)), forward=forward,
                         num_batches=2)
    assert seen == [8, 8] and int(model[1].num_batches_tracked) == 2
    assert math.isfinite(float(model[1].running_var.sum()))


def _trained(cls, steps=5):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = cls(model.parameters(), lr=0.01 if cls is ScheduleFreeAdamW else 0.1)
    x = torch.randn(16, 4)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    return model, opt, x


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_bind_ties_the_optimizer_mode_to_the_model(cls):
    """Issue 16: model.eval() without opt.eval() scored the training weights."""
    import warnings

    from lrkit.optim import ScheduleFreeModeWarning

    model, opt, x = _trained(cls)
    handle = opt.bind(model)
    y = [p.detach().clone() for p in model.parameters()]
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("error", ScheduleFreeModeWarning)
        bound_out = model(x)
    assert not opt.training  # the forward saw eval mode: the averaged weights x
    ref, ref_opt, _ = _trained(cls)
    ref_opt.eval()
    with torch.no_grad():
        assert torch.equal(bound_out, ref.eval()(x))
    model.train()
    opt.zero_grad()
    model(x).pow(2).mean().backward()  # back to y before the forward, bit for bit
    assert opt.training
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), y))
    opt.step()
    handle.remove()
    model.eval()
    with pytest.warns(ScheduleFreeModeWarning), torch.no_grad():
        model(x)
    assert opt.training  # unbound: the model's mode no longer moves the optimizer


@pytest.mark.parametrize("cls", [ScheduleFreeAdamW, ScheduleFreeSGD])
def test_evaluating_with_the_training_weights_warns_once_at_the_callers_line(cls):
    from lrkit.optim import ScheduleFreeModeWarning

    model, opt, x = _trained(cls)
    model.eval()
    with pytest.warns(ScheduleFreeModeWarning, match=r"opt.eval\(\).*opt.bind\(model\)") as rec:
        with torch.no_grad():
            model(x)
            model(x)
    ours = [w for w in rec if issubclass(w.category, ScheduleFreeModeWarning)]
    assert len(ours) == 1 and ours[0].filename == __file__
    import warnings

    fresh, opt2, _ = _trained(cls)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ScheduleFreeModeWarning)
        opt2.eval()
        with torch.no_grad():
            fresh.eval()(x)  # the right way: no warning
        opt2.train()
        fresh.train()
        fresh(x).sum().backward()  # training forwards never warn
