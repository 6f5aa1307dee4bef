"""A param group's ``lr_scale`` is applied by lrkit.Scheduler; without one, every lrkit
optimizer warns once that it is not (issue 16, defect 2)."""
from __future__ import annotations

import warnings

import pytest
import torch

import lrkit
from lrkit.optim import LrScaleWarning
from optim_helpers import INFOS, batches, make_model, train


def _scaled_groups(model, info=None):
    params = list(model.parameters())
    if info is not None and "single_group" in info.tags:  # L-BFGS: one group only
        return [{"params": params, "lr_scale": 0.1}]
    return [{"params": params[:2], "lr_scale": 0.1}, {"params": params[2:]}]


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_lr_scale_without_scheduler_warns_once_at_the_callers_line(info):
    model = make_model()
    opt = info.cls(_scaled_groups(model, info), **info.configs[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(opt, model, batches(), 3)
    ours = [w for w in caught if issubclass(w.category, LrScaleWarning)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert "group 0: lr_scale=0.1" in str(ours[0].message)
    assert "Scheduler" in str(ours[0].message)
    assert ours[0].filename.endswith("optim_helpers.py")  # where opt.step() was called


SCHEDULABLE = [i for i in INFOS if "lr" in i.schedulable]  # SLS finds its own step size


@pytest.mark.parametrize("info", SCHEDULABLE, ids=[i.name for i in SCHEDULABLE])
def test_lr_scale_with_a_scheduler_is_applied_silently(info):
    model = make_model()
    opt = info.cls(_scaled_groups(model), **info.configs[0])
    base = opt.param_groups[1]["lr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", LrScaleWarning)
        lrkit.Scheduler(opt, lr=base)
        if "shared_lr" in info.tags:  # one d estimate for all groups: refused clearly
            with pytest.raises(ValueError, match="share one d estimate"):
                train(opt, model, batches(), 1)
            return
        train(opt, model, batches(), 3)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * base)


def test_no_lr_scale_no_warning():
    model = make_model()
    opt = lrkit.optim.AdamW(model.parameters())
    with warnings.catch_warnings():
        warnings.simplefilter("error", LrScaleWarning)
        train(opt, model, batches(), 2)
    torch.testing.assert_close(opt.param_groups[0]["lr"], 1e-3)
