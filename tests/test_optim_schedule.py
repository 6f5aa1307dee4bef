"""lrkit.Scheduler drives every optimizer (lr, momentum/beta1, ...); a 0-dim tensor lr
changed in place never recompiles a torch.compile'd step."""
from __future__ import annotations

import pytest
import torch

from lrkit import Scheduler
from lrkit import schedules as S
from optim_helpers import (
    INFOS,
    batches,
    loss_of,
    make_model,
    make_opt,
    param_groups,
    parity_rtol,
    rel_err,
)

SCHEDULED = [i for i in INFOS if "lr" in i.schedulable]
COMPILED = [i for i in SCHEDULED if "eager_step" not in i.tags]
EAGER = [i for i in SCHEDULED if "eager_step" in i.tags]


def _pick(info):
    """A config with momentum > 0 when momentum is scheduled (torch needs its buffer)."""
    if "momentum" in info.schedulable:
        return next(c for c in info.configs if c.get("momentum", 0) > 0)
    return info.configs[-1]


def _schedules(info, cfg):
    lr = cfg.get("lr", 1e-3)
    # (dadaptation's DAdaptSGD divides by zero when its first step has lr 0)
    start = 0.1 * lr if "lr_free" in info.tags else 0.0
    out = {"lr": S.warmup(S.cosine(lr, 20), steps=3, start=start)}
    for key in info.schedulable:
        if key in ("momentum", "beta1"):
            out[key] = S.linear(0.95, 0.85, 20)
        elif key == "beta2":
            out[key] = S.linear(0.999, 0.99, 20)
    return out


def _drive(cls, info, cfg, steps=20):
    model = make_model()
    opt = make_opt(cls, param_groups(model, cfg, True, cls), **cfg)
    sched = Scheduler(opt, **_schedules(info, cfg))
    data = batches()
    for i in range(steps):
        opt.zero_grad()
        loss_of(model, data[i % len(data)]).backward()
        opt.step()
        sched.step()
    return opt, [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("info", SCHEDULED, ids=[i.name for i in SCHEDULED])
def test_scheduler_drives_lr_and_momentum_like_on_the_reference(info):
    cfg = _pick(info)
    opt, ours = _drive(info.cls, info, cfg)
    scheds = _schedules(info, cfg)
    group = opt.param_groups[1]
    assert group["lr"] == pytest.approx(scheds["lr"](20) * 1.0)
    if "momentum" in scheds:
        assert group["momentum"] == pytest.approx(scheds["momentum"](20))
    if "beta1" in scheds:
        assert group["betas"] == pytest.approx((scheds["beta1"](20), scheds["beta2"](20)))
    ref_cls = info.reference_cls()
    if ref_cls is not None and not any(k in cfg for k in info.unsupported):
        _, theirs = _drive(ref_cls, info, cfg)
        assert rel_err(ours, theirs) <= parity_rtol(info, torch.float32, 20)


@pytest.mark.parametrize("info", COMPILED, ids=[i.name for i in COMPILED])
def test_tensor_lr_changed_in_place_never_recompiles(info):
    from torch._dynamo.testing import CompileCounter
    torch._dynamo.reset()
    cfg = dict(info.configs[0])
    cfg["lr"] = torch.tensor(cfg.get("lr", 1e-3))
    model = make_model()
    opt = info.cls(model.parameters(), **cfg)
    sched = Scheduler(opt, lr=S.cosine(1e-2, 10))
    counter = CompileCounter()

    @torch.compile(backend=counter)
    def step():
        opt.step()

    data = batches()
    counts = []
    for i in range(6):
        opt.zero_grad()
        loss_of(model, data[i % 4]).backward()
        step()
        sched.step()
        counts.append(counter.frame_count)
    assert counts[2] == counts[-1] > 0  # traced once more after the state appears, then never
    assert opt.param_groups[0]["lr"] is cfg["lr"]  # the Scheduler wrote into the tensor
    # and the compiled steps computed what eager steps compute
    model2 = make_model()
    cfg2 = dict(cfg, lr=torch.tensor(cfg["lr"].item()))
    cfg2["lr"] = torch.tensor(info.configs[0].get("lr", 1e-3))
    opt2 = info.cls(model2.parameters(), **cfg2, impl="reference")
    sched2 = Scheduler(opt2, lr=S.cosine(1e-2, 10))
    for i in range(6):
        opt2.zero_grad()
        loss_of(model2, data[i % 4]).backward()
        opt2.step()
        sched2.step()
    assert rel_err(list(model.parameters()), list(model2.parameters())) <= 1e-5


@pytest.mark.parametrize("info", EAGER, ids=[i.name for i in EAGER])
def test_steps_that_read_sums_on_the_host_run_eagerly_under_compile(info):
    """Learning-rate-free and schedule-free steps read their sums (d, the averaging
    weight) on the host at every step: inside a compiled function they run eagerly, with
    a tensor lr a Scheduler changes in place, and equal uncompiled steps."""
    torch._dynamo.reset()
    out = []
    for compiled in (True, False):
        model = make_model()
        lr = torch.tensor(info.configs[0].get("lr", 1.0))
        opt = info.cls(model.parameters(), **dict(info.configs[0], lr=lr))
        sched = Scheduler(opt, lr=S.cosine(float(lr), 10))
        step = torch.compile(opt.step, backend="eager") if compiled else opt.step
        data = batches()
        for i in range(6):
            opt.zero_grad()
            loss_of(model, data[i % 4]).backward()
            step()
            sched.step()
        assert opt.param_groups[0]["lr"] is lr
        out.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*out))
