"""The learning-rate-free and schedule-free optimizers, their authors' packages, and the
argument combinations drawn for the bit-for-bit tests of their reference paths (the
registry's configs drive the generic suite; these add the packages' defaults and random
draws); plus the small model those tests train."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dadaptation
import dog
import prodigyopt
import pytest
import schedulefree
import torch
from hypothesis import strategies as st

from lrkit.optim.dadapt import DAdaptAdam, DAdaptSGD
from lrkit.optim.dog import DoG, LDoG
from lrkit.optim.prodigy import Prodigy
from lrkit.optim.schedulefree import ScheduleFreeAdamW, ScheduleFreeSGD


def _train_mode(cls):
    """schedulefree's optimizers start in eval mode (ours in train mode); their
    single-tensor path is the one lrkit's reference mirrors."""
    def make(params, **kw):
        opt = cls(params, foreach=False, **kw)
        opt.train()
        return opt
    return make


@dataclass
class Case:
    ours: type
    theirs: Callable
    kwargs: st.SearchStrategy
    # per-group options the package honours per group (for the param-group test)
    group_options: list[dict[str, Any]] = field(default_factory=lambda: [{}, {}])
    switches: bool = False  # train/eval switches during the run (schedule-free)


def options(required=None, **optional):
    """Keyword arguments: each optional one present or left at its default."""
    return st.fixed_dictionaries(required or {}, optional=optional)


betas = st.tuples(st.sampled_from([0.0, 0.5, 0.9]), st.sampled_from([0.9, 0.99, 0.999]))
decay = st.sampled_from([0.0, 0.01, 0.1])
growth = st.sampled_from([math.inf, 1.02, 1.5])
multiplier = st.sampled_from([0.5, 1.0, 2.0])
eps = st.sampled_from([1e-8, 1e-6])
d0 = st.sampled_from([1e-6, 1e-3])

prodigy_options = options(
    lr=multiplier, betas=betas, beta3=st.none() | st.sampled_from([0.5, 0.99]), eps=eps,
    weight_decay=decay, decouple=st.booleans(), use_bias_correction=st.booleans(),
    safeguard_warmup=st.booleans(), d0=d0, d_coef=multiplier, growth_rate=growth,
    slice_p=st.sampled_from([1, 3, 11]))
dadapt_adam_options = options(
    lr=multiplier, betas=betas, eps=eps, weight_decay=decay, decouple=st.booleans(),
    use_bias_correction=st.booleans(), d0=d0, growth_rate=growth)
dadapt_sgd_options = options(  # lr=2 diverges on the test problem (in dadaptation too)
    lr=st.sampled_from([0.5, 1.0]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
    weight_decay=decay, d0=d0, growth_rate=growth)
dog_options = options(
    reps_rel=st.sampled_from([1e-6, 1e-4]), lr=st.sampled_from([0.5, 1.0]),
    weight_decay=decay, eps=st.sampled_from([1e-8, 1e-4]),
    init_eta=st.none() | st.sampled_from([1e-4, 1e-2]))
schedule_options = dict(
    weight_decay=decay, warmup_steps=st.sampled_from([0, 10, 200]),
    r=st.sampled_from([0.0, 1.0]), weight_lr_power=st.sampled_from([0.0, 2.0]))
sf_adamw_options = options(
    {"lr": st.sampled_from([0.0025, 0.01, 0.03])},
    betas=st.tuples(st.sampled_from([0.5, 0.9]), st.sampled_from([0.99, 0.999])), eps=eps,
    **schedule_options)
sf_sgd_options = options(
    {"lr": st.sampled_from([0.05, 0.1, 0.3])}, momentum=st.sampled_from([0.5, 0.9]),
    **schedule_options)

dog_groups = [{"reps_rel": 1e-4, "weight_decay": 0.1}, {}]
CASES = {
    "Prodigy": Case(Prodigy, prodigyopt.Prodigy, prodigy_options,
                    [{"weight_decay": 0.1, "safeguard_warmup": True}, {"eps": 1e-6}]),
    "DAdaptAdam": Case(DAdaptAdam, dadaptation.DAdaptAdam, dadapt_adam_options,
                       [{"weight_decay": 0.1, "layer_scale": 0.5}, {"eps": 1e-6}]),
    "DAdaptSGD": Case(DAdaptSGD, dadaptation.DAdaptSGD, dadapt_sgd_options),
    "DoG": Case(DoG, dog.DoG, dog_options, dog_groups),
    "LDoG": Case(LDoG, dog.LDoG, dog_options, dog_groups),
    "ScheduleFreeAdamW": Case(
        ScheduleFreeAdamW, _train_mode(schedulefree.AdamWScheduleFree), sf_adamw_options,
        [{"lr": 0.01, "weight_decay": 0.1}, {"lr": 0.03, "warmup_steps": 5}], switches=True),
    "ScheduleFreeSGD": Case(
        ScheduleFreeSGD, _train_mode(schedulefree.SGDScheduleFree), sf_sgd_options,
        [{"lr": 0.1, "weight_decay": 0.1}, {"lr": 0.3, "momentum": 0.5}], switches=True),
}



# ------------------------------------------------------------------ the model and data
@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: threads only add overhead on the shared cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def problem(dtype=torch.float32, seed=0):
    """A small MLP (one zero-initialised bias) and a regression data set."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                torch.nn.Linear(16, 3)).to(dtype)
    torch.nn.init.zeros_(model[2].bias)
    x = torch.randn(256, 6, dtype=dtype)
    y = torch.sin(x @ torch.randn(6, 3, dtype=dtype))
    return model, x, y


def train(model, opt, x, y, steps, start=0, switches=False):
    """Minibatch steps with real gradients; with ``switches``, eval()/train() every 10."""
    for i in range(start, start + steps):
        idx = torch.arange(i * 32, i * 32 + 32) % len(x)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
        if switches and i % 10 == 9:
            opt.eval()
            opt.train()


def groups_of(model, options):
    """Two param groups: the first layer, and the rest."""
    params = list(model.parameters())
    return [dict(params=params[:2], **options[0]), dict(params=params[2:], **options[1])]


def run(make, dtype=torch.float32, steps=100, groups=None, switches=False):
    """Train a fresh model with ``make(params)``; its final weights (x, for schedule-free)."""
    model, x, y = problem(dtype)
    opt = make(model.parameters() if groups is None else groups_of(model, groups))
    train(model, opt, x, y, steps, switches=switches)
    if switches:
        opt.eval()
    return [p.detach().clone() for p in model.parameters()], opt


def relative_error(ours, theirs) -> float:
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(ours, theirs))


def fork(model, opt, make):
    """A copy of the model and a fresh optimizer loaded from a deep copy of the state."""
    model2 = copy.deepcopy(model)
    opt2 = make(model2.parameters())
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    return model2, opt2
