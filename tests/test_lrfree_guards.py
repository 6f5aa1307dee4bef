"""The learning-rate-free and schedule-free optimizers fail loudly and clearly: bad
arguments, a stalled d estimate, param groups that cannot share d, non-finite gradients,
schedule-free's train/eval traps; and BatchNorm statistics for averaged weights."""
from __future__ import annotations

import copy
import math
import re
import warnings

import pytest
import torch

from lrfree_cases import CASES, fork, one_thread, problem, train  # noqa: F401
from lrkit.optim._lrfree import DEstimateWarning
from lrkit.optim.dadapt import DAdaptAdam, DAdaptSGD
from lrkit.optim.dog import DoG, LDoG
from lrkit.optim.prodigy import Prodigy
from lrkit.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD, reestimate_batchnorm
from lrkit.optim.sls import SLS

SHARED_D = [Prodigy, DAdaptAdam, DAdaptSGD]


def params():
    return [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]


@pytest.mark.parametrize("cls, kwargs, name", [
    (Prodigy, {"lr": 0}, "lr"), (Prodigy, {"betas": (0.9, 1.0)}, "betas[1]"),
    (Prodigy, {"betas": (0.9,)}, "betas"), (Prodigy, {"eps": 0}, "eps"),
    (Prodigy, {"d0": -1e-6}, "d0"), (Prodigy, {"d_coef": 0}, "d_coef"),
    (Prodigy, {"growth_rate": 0.5}, "growth_rate"), (Prodigy, {"slice_p": 0}, "slice_p"),
    (Prodigy, {"beta3": 1.5}, "beta3"), (Prodigy, {"weight_decay": -0.1}, "weight_decay"),
    (Prodigy, {"d_stall_steps": 0}, "d_stall_steps"), (Prodigy, {"impl": "cuda"}, "impl"),
    (Prodigy, {"nonfinite": "ignore"}, "nonfinite"),
    (DAdaptAdam, {"lr": -1.0}, "lr"), (DAdaptAdam, {"betas": (-0.1, 0.9)}, "betas[0]"),
    (DAdaptAdam, {"eps": -1e-8}, "eps"), (DAdaptAdam, {"log_every": -1}, "log_every"),
    (DAdaptSGD, {"momentum": 1.0}, "momentum"), (DAdaptSGD, {"d0": 0}, "d0"),
    (DAdaptSGD, {"weight_decay": -1}, "weight_decay"),
    (DoG, {"lr": 0}, "lr"), (DoG, {"reps_rel": 0}, "reps_rel"), (LDoG, {"init_eta": 0},
                                                                 "init_eta"),
    (DoG, {"weight_decay": -1e-3}, "weight_decay"),
    (ScheduleFreeAdamW, {"lr": -1e-3}, "lr"), (ScheduleFreeAdamW, {"betas": (0.0, 0.999)},
                                               "betas[0]"),
    (ScheduleFreeAdamW, {"warmup_steps": -1}, "warmup_steps"),
    (ScheduleFreeAdamW, {"eps": 0}, "eps"), (ScheduleFreeSGD, {"momentum": 0}, "momentum"),
    (ScheduleFreeSGD, {"weight_decay": -1}, "weight_decay"), (ScheduleFreeSGD, {"r": -1}, "r"),
    (SLS, {"init_lr": 0}, "init_lr"), (SLS, {"c": 1.0}, "c"), (SLS, {"beta": 1.0}, "beta"),
    (SLS, {"gamma": 0.5}, "gamma"), (SLS, {"max_backtracks": -1}, "max_backtracks"),
    (SLS, {"reset": "never"}, "reset"), (SLS, {"batches_per_epoch": 0}, "batches_per_epoch"),
])
def test_invalid_arguments_raise_a_value_error_naming_the_argument(cls, kwargs, name):
    with pytest.raises(ValueError, match=re.escape(f"{cls.__name__}(): {name} must be")):
        cls(params(), **kwargs)


def test_a_param_group_option_is_checked_too():
    with pytest.raises(ValueError, match=r"Prodigy\(\) param group 1: eps must be"):
        Prodigy([{"params": [params()[0]]}, {"params": [params()[1]], "eps": -1.0}])


@pytest.mark.parametrize("cls", SHARED_D)
def test_sharded_parameters_are_refused_until_distributed_support(cls):
    with pytest.raises(NotImplementedError, match="fsdp_in_use"):
        cls(params(), fsdp_in_use=True)


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


@pytest.mark.parametrize("cls", [DoG, LDoG])
def test_dog_with_zero_gradients_and_no_eps_says_why_it_cannot_step(cls):
    w = torch.nn.Parameter(torch.ones(5))
    with pytest.raises(ValueError, match="sum of squared gradients"):
        linear_loss_steps(cls([w], eps=0.0), w, 1, sign=lambda i: 0.0)


# ------------------------------------------------------------------ non-finite
def poisoned_step(opt, model, x, y):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x[:32]), y[:32]).backward()
    next(model.parameters()).grad[0, 0] = float("nan")
    opt.step()


def identical(a, b) -> bool:
    """Nested containers of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("name", list(CASES))
def test_nonfinite_gradients_raise_skip_or_are_zeroed(name):
    ours = CASES[name].ours
    model, x, y = problem()
    with pytest.raises(FloatingPointError, match="non-finite gradient.*nonfinite='skip'"):
        poisoned_step(ours(model.parameters()), model, x, y)

    model, x, y = problem()
    opt = ours(model.parameters(), nonfinite="skip")
    train(model, opt, x, y, 3)
    before = copy.deepcopy((model.state_dict(), opt.state_dict()))
    poisoned_step(opt, model, x, y)
    assert identical((model.state_dict(), opt.state_dict()), before)

    model, x, y = problem()
    opt = ours(model.parameters(), nonfinite="zero")
    poisoned_step(opt, model, x, y)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert next(model.parameters()).grad[0, 0] == 0


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
    assert ScheduleFreeSGD(params(), foreach=False).impl == "reference"
    assert ScheduleFreeSGD(params(), foreach=True).impl == "fast"
    assert ScheduleFreeSGD(params(), foreach=False, impl="fast").impl == "fast"


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
