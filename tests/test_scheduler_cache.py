"""The Scheduler's cached evaluation (``StepCache``) gives the scalar path's values bit for
bit, for every schedule kind, in order, after jumps and after a schedule is replaced."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit import Scheduler
from lrkit import schedules as S
from lrkit.schedules.base import StepCache
from strategies import ALL

KINDS = sorted(ALL)


def bits(x: float) -> int:
    return int(np.float64(x).view(np.int64))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_cache_equals_scalar_path_bit_for_bit(kind, data):
    s = data.draw(ALL[kind])
    cache = StepCache(s)
    start = data.draw(st.integers(0, 3000))
    jumps = data.draw(st.lists(st.integers(0, 5000), max_size=3))
    # in order across several blocks (16, 32, 64...), then jumps, each followed by a run
    for lo in [start, *jumps]:
        for n in range(lo, lo + 70):
            assert bits(cache(n)) == bits(s(n)), (str(s), n)


def test_blocks_grow_while_steps_come_in_order_and_restart_after_a_jump():
    cache = StepCache(S.cosine(0.1, 10_000))
    for n in range(3000):
        cache(n)
    assert cache.block == StepCache.MAX_BLOCK
    cache(10)
    assert cache.block == StepCache.MIN_BLOCK and cache.lo == 10


def test_scheduler_values_equal_the_schedules_after_resume_and_replacement():
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [p], "lr_scale": 0.5 * (i + 1)}
                           for i, p in enumerate(params)], lr=0.1, momentum=0.9)
    lr = S.warmup(S.cosine(0.1, 400), 20)
    mom = S.one_cycle(0.9, 500)
    sched = Scheduler(opt, lr=lr, momentum=mom)
    for n in range(1, 300):
        sched.step()
        for g in opt.param_groups:
            assert g["lr"] == lr(n) * g["lr_scale"]
            assert g["momentum"] == mom(n)
    state = sched.state_dict()
    state["last_epoch"] = 123
    sched.load_state_dict(state)  # a jump back: the same values as the scalar path
    assert [g["lr"] for g in opt.param_groups] == [lr(123) * g["lr_scale"]
                                                   for g in opt.param_groups]
    other = S.linear(0.2, 0.0, 1000)
    sched.schedules["lr"] = other  # replaced in place: a new cache
    sched.step()
    assert opt.param_groups[0]["lr"] == other(124) * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sched.values() == {"lr": other(124), "momentum": mom(124)}


# ---------------------------------------------------------- the step's fast paths (issue 19)
def _opt(n: int = 3, lr: float | torch.Tensor = 0.1) -> torch.optim.Optimizer:
    params = [torch.nn.Parameter(torch.zeros(2)) for _ in range(n)]
    return torch.optim.SGD([{"params": [p]} for p in params], lr=lr, momentum=0.9)


def test_a_key_added_by_set_schedule_is_compared_with_the_other_writers():
    """The check of other writers is skipped while one Scheduler keeps stepping; a key it
    starts to schedule (set_schedule) is compared again at its next step, so the clash
    with another Scheduler's key is seen at that other Scheduler's next step."""
    opt = _opt()
    a = Scheduler(opt, lr=0.1)
    b = Scheduler(opt, momentum=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()
        b.step()  # b writes momentum
        a.step()
        a.step()  # a alone: the check is skipped
        a.set_schedule("momentum", 0.8)
        a.step()  # a now writes momentum after b
    with pytest.warns(UserWarning, match="also steps momentum"):
        b.step()  # b again: the two take turns


def test_one_scheduler_stepping_alone_never_warns_and_keeps_exact_values():
    opt = _opt(4)
    opt.param_groups[2]["lr_scale"] = 0.3
    lr = S.warmup(S.cosine(0.1, 500), 25)
    sched = Scheduler(opt, lr=lr)
    sched.scale_lr(0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n in range(1, 200):
            opt.step()
            sched.step()
            want = [lr(n) * g.get("lr_scale", 1.0) * 0.7 for g in opt.param_groups]
            assert [g["lr"] for g in opt.param_groups] == want
            assert sched.get_last_lr() == want
            assert all(type(v) is float for v in sched.get_last_lr())


def test_tensor_and_float_lrs_in_one_optimizer():
    opt = _opt(2)
    opt.param_groups[1]["lr"] = torch.tensor(0.1, dtype=torch.float64)
    lr = S.cosine(0.1, 100)
    sched = Scheduler(opt, lr=lr)
    for n in range(1, 20):
        opt.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == lr(n)
        assert isinstance(opt.param_groups[1]["lr"], torch.Tensor)
        assert float(opt.param_groups[1]["lr"]) == lr(n)
        assert sched.get_last_lr() == [lr(n), lr(n)]


def test_optimizer_and_scheduler_still_pickle_after_steps():
    """The record of which Scheduler stepped last lives in the module, not on the objects
    (a weak reference there would make them unpicklable)."""
    import pickle

    opt = _opt(2)
    sched = Scheduler(opt, lr=S.cosine(0.1, 100))
    for _ in range(3):
        opt.step()
        sched.step()
    sched2 = pickle.loads(pickle.dumps(sched))
    assert sched2.last_epoch == 3 and sched2.get_last_lr() == sched.get_last_lr()
    opt2 = pickle.loads(pickle.dumps(opt))
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
