"""lrkit.Scheduler drives torch optimizers from schedules, resumes exactly, and composes."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lrkit
from lrkit import Plateau, Scheduler
from lrkit import schedules as S
from strategies import any_schedule


def make_opt(kind="sgd", lrs=(0.1,), **kw):
    params = [torch.nn.Parameter(torch.randn(3)) for _ in lrs]
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, lrs)]
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=kw.pop("momentum", 0.9), **kw)
    return torch.optim.Adam(groups, **kw)


def run(opt, sched, steps):
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return np.asarray(out)


def test_is_a_torch_lrscheduler_and_sets_lr_at_construction():
    opt = make_opt()
    sched = Scheduler(opt, lr=S.cosine(0.5, 10))
    assert isinstance(sched, torch.optim.lr_scheduler.LRScheduler)
    assert opt.param_groups[0]["lr"] == 0.5
    assert sched.get_last_lr() == [0.5]
    assert sched.last_epoch == 0


@given(any_schedule)
@settings(max_examples=30)
def test_lr_is_schedule_times_group_scale(s):
    opt = make_opt(lrs=(0.1, 0.1))
    opt.param_groups[1]["lr_scale"] = 0.25
    sched = Scheduler(opt, lr=s)
    got = run(opt, sched, 60)
    expected = s(np.arange(60))
    np.testing.assert_allclose(got[:, 0], expected, rtol=1e-15)
    np.testing.assert_allclose(got[:, 1], 0.25 * expected, rtol=1e-15)


def test_shorthand_and_spec_text():
    opt = make_opt()
    sched = S.cosine(0.3, 10).torch(opt)
    assert isinstance(sched, Scheduler) and opt.param_groups[0]["lr"] == 0.3
    opt2 = make_opt()
    Scheduler(opt2, lr="warmup(cosine(0.3, total=10), steps=2)")
    assert opt2.param_groups[0]["lr"] == 0.0


def test_schedules_momentum_weight_decay_and_betas():
    opt = make_opt(weight_decay=0.0)
    sched = Scheduler(opt, lr=S.one_cycle(0.1, 50), momentum=S.cyclic(0.85, 0.95, 10),
                      weight_decay=S.linear(0.0, 0.01, 50))
    run(opt, sched, 7)
    assert opt.param_groups[0]["momentum"] == pytest.approx(S.cyclic(0.85, 0.95, 10)(7))
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.0014)

    adam = make_opt("adam", betas=(0.9, 0.999))
    sched = Scheduler(adam, beta1=S.linear(0.95, 0.85, 10), beta2=0.98)
    run(adam, sched, 5)
    assert adam.param_groups[0]["betas"] == pytest.approx((0.9, 0.98))
    adam2 = make_opt("adam")
    Scheduler(adam2, momentum=0.8)  # momentum= on Adam schedules beta1, as torch OneCycleLR
    assert adam2.param_groups[0]["betas"][0] == 0.8


def test_unknown_hyperparameter_is_an_error():
    with pytest.raises(ValueError, match="nesterov_gamma"):
        Scheduler(make_opt(), nesterov_gamma=0.1)
    with pytest.raises(TypeError, match="optimizer"):
        Scheduler("not an optimizer", lr=0.1)
    with pytest.raises(lrkit.SpecError):
        Scheduler(make_opt(), lr="cosine(0.1")


def test_tensor_lr_is_updated_in_place():
    p = torch.nn.Parameter(torch.randn(3))
    opt = torch.optim.Adam([p], lr=torch.tensor(0.01))
    lr_tensor = opt.param_groups[0]["lr"]
    sched = Scheduler(opt, lr=S.cosine(0.01, 10))
    for _ in range(3):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] is lr_tensor
    assert float(lr_tensor) == pytest.approx(S.cosine(0.01, 10)(3))


ORDERS = ["opt_then_sched", "sched_then_opt", "build_sched_after_opt_load"]


@given(any_schedule, st.integers(1, 60), st.sampled_from(ORDERS), st.booleans())
@settings(max_examples=50)
def test_resume_mid_run_gives_the_identical_sequence(s, k, order, with_plateau):
    total = 80
    torch.manual_seed(0)
    metrics = list(np.random.default_rng(1).random(total))

    def build():
        torch.manual_seed(0)
        opt = make_opt(lrs=(0.1, 0.2))
        opt.param_groups[1]["lr_scale"] = 0.5
        return opt

    def make_sched(opt):
        plateau = Plateau(patience=2, factor=0.5) if with_plateau else None
        return Scheduler(opt, lr=s, momentum=S.linear(0.9, 0.8, 40), plateau=plateau)

    def advance(opt, sched, steps, start):
        out = []
        for i in range(start, start + steps):
            out.append([g["lr"] for g in opt.param_groups] + [opt.param_groups[0]["momentum"]])
            opt.step()
            sched.step(metrics[i]) if with_plateau else sched.step()
        return out

    opt = build()
    sched = make_sched(opt)
    straight = advance(opt, sched, total, 0)

    opt = build()
    sched = make_sched(opt)
    first = advance(opt, sched, k, 0)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)

    opt = build()
    if order == "opt_then_sched":
        sched = make_sched(opt)
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
    elif order == "sched_then_opt":
        sched = make_sched(opt)
        sched.load_state_dict(saved["sched"])
        opt.load_state_dict(saved["opt"])
    else:
        opt.load_state_dict(saved["opt"])
        sched = make_sched(opt)
        sched.load_state_dict(saved["sched"])
    rest = advance(opt, sched, total - k, k)
    assert first + rest == straight


def test_load_state_dict_restores_saved_schedules_with_a_warning():
    opt = make_opt()
    sched = Scheduler(opt, lr=S.cosine(0.1, 100))
    for _ in range(10):
        sched.step()
    state = sched.state_dict()
    fresh = Scheduler(make_opt(), lr=S.constant(1.0))
    with pytest.warns(UserWarning, match="differ"):
        fresh.load_state_dict(state)
    assert fresh.get_last_lr()[0] == pytest.approx(S.cosine(0.1, 100)(10))
    with pytest.raises(ValueError, match="state_dict"):
        fresh.load_state_dict({"bogus": 1})


@given(st.lists(st.floats(0.0, 10.0), min_size=1, max_size=80),
       st.floats(0.05, 0.9), st.integers(0, 5), st.sampled_from(["min", "max"]),
       st.floats(0, 0.1), st.sampled_from(["rel", "abs"]), st.integers(0, 3),
       st.floats(0, 1e-3))
def test_plateau_with_constant_schedule_equals_torch(metrics, factor, patience, mode,
                                                     threshold, threshold_mode, cooldown,
                                                     min_lr):
    kwargs = dict(factor=factor, patience=patience, mode=mode, threshold=threshold,
                  threshold_mode=threshold_mode, cooldown=cooldown, min_lr=min_lr)
    ref_opt = make_opt(lrs=(0.1, 0.03))
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(ref_opt, **kwargs)
    ours_opt = make_opt(lrs=(0.1, 0.03))
    ours = Scheduler(ours_opt, plateau=Plateau(**kwargs))
    ours_const = Scheduler(make_opt(lrs=(0.1, 0.1)), lr=0.1, plateau=Plateau(**kwargs))
    for m in metrics:
        ref_opt.step()
        ref.step(m)
        ours.step(m)
        ours_const.step(m)
        np.testing.assert_allclose(ours.get_last_lr(), ref.get_last_lr(), rtol=1e-12)
        assert ours_const.get_last_lr()[0] == pytest.approx(ref.get_last_lr()[0], rel=1e-12)


def test_plateau_composes_with_a_schedule():
    opt = make_opt()
    s = S.cosine(0.1, 100)
    sched = Scheduler(opt, lr=s, plateau=Plateau(patience=0, factor=0.5))
    sched.step(1.0)
    sched.step(2.0)  # no improvement: halve
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * s(2))
    for _ in range(3):
        sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * s(5))
    sched.report(3.0)  # a metric without advancing the step
    assert sched.last_epoch == 5
    assert sched.get_last_lr()[0] == pytest.approx(0.25 * s(5))


def test_metric_without_plateau_is_an_error():
    with pytest.raises(ValueError, match="plateau"):
        Scheduler(make_opt(), lr=0.1).step(1.0)


def test_scale_lr_keeps_the_shape():
    opt = make_opt()
    s = S.cosine(0.1, 100)
    sched = Scheduler(opt, lr=s)
    sched.step()
    sched.scale_lr(0.5)
    sched.step()
    assert sched.get_last_lr()[0] == pytest.approx(0.5 * s(2))
    state = sched.state_dict()
    again = Scheduler(make_opt(), lr=s)
    again.load_state_dict(state)
    assert again.get_last_lr() == sched.get_last_lr()


def test_works_with_torch_training_loop_and_no_warnings():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = Scheduler(opt, lr=S.warmup(S.cosine(1e-3, 90), 10))
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(20):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
    assert sched.last_epoch == 20


def test_schedulers_used_one_after_another_are_not_two_writers():
    """A Scheduler that is gone (the autopilot's probes make one each) writes no more: the
    next one on the same optimizer is no second writer, even where it reuses the old id."""
    import warnings

    import lrkit
    from lrkit import schedules as S

    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.SGD([w], lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for lr in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            sched = lrkit.Scheduler(opt, lr=S.constant(lr))
            for _ in range(2):
                opt.step()
                sched.step()
            assert opt.param_groups[0]["lr"] == lr
            del sched


@pytest.mark.parametrize("kwargs,at", [
    ({"beta1": 1.0}, 0), ({"momentum": 1.0}, 0), ({"beta2": 1e12}, 0),
    ({"beta1": "linear(0.9, 1.2, total=10)"}, 4)])
def test_a_beta_scheduled_out_of_its_range_raises_before_it_is_written(kwargs, at):
    """betas outside [0, 1) put NaN into lrkit's Adam (1 - beta1**t = 0) and a division by
    zero into torch's: the Scheduler refuses the value where the schedule reaches it."""
    for make in (lambda ps: lrkit.optim.Adam(ps), lambda ps: torch.optim.Adam(ps)):
        p = torch.nn.Parameter(torch.ones(3))
        opt = make([p])

        with pytest.raises(ValueError, match=rf"reaches .* at step {at}.*\[0, 1\)"):
            sched = Scheduler(opt, 0.1, **kwargs)
            for _ in range(10):
                p.grad = torch.ones(3)
                opt.step()
                sched.step()
        assert all(0 <= b < 1 for b in opt.param_groups[0]["betas"])
        assert torch.isfinite(p).all()


def test_a_beta_out_of_range_changes_nothing_where_it_is_refused():
    """The constructor, set_schedule and load_state_dict check a scheduled beta before they
    change the Scheduler or the optimizer."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = lrkit.optim.Adam([p], lr=0.01)
    with pytest.raises(ValueError, match=r"beta2= reaches 1 at step 0"):
        Scheduler(opt, "constant(0.5)", beta2=1.0)
    assert opt.param_groups[0]["lr"] == 0.01 and opt.param_groups[0]["betas"] == (0.9, 0.999)
    sched = Scheduler(opt, "constant(0.1)")
    p.grad = torch.ones(3)
    opt.step()
    sched.step()
    before = (sched.state_dict(), dict(opt.param_groups[0]))
    with pytest.raises(ValueError, match=r"beta1= reaches 1 at step 1"):
        sched.set_schedule("beta1", 1.0)
    bad = sched.state_dict()
    bad["schedules"]["beta2"] = S.constant(1.0).to_config()
    bad["last_epoch"] = 7
    with pytest.raises(ValueError, match=r"beta2= reaches 1 at step 7"):
        sched.load_state_dict(bad)
    assert sched.state_dict() == before[0]
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == {
        k: v for k, v in before[1].items() if k != "params"}
    sched.step()  # still steps


@pytest.mark.parametrize("cls,kwargs,at", [
    ("ScheduleFreeSGD", {"momentum": 0.0}, 0),
    ("ScheduleFreeSGD", {"momentum": "linear(0.9, 1.1, total=10)"}, 5),
    ("ScheduleFreeAdamW", {"beta1": 0.0}, 0),
    ("ScheduleFreeAdamW", {"momentum": "linear(0.9, 0, total=10)"}, 10),
    ("Prodigy", {"beta2": 1.0}, 0),
    ("DAdaptAdam", {"eps": "linear(1e-8, 0, total=4)"}, 4)])
def test_a_value_the_optimizer_refuses_is_refused_where_the_schedule_reaches_it(cls, kwargs,
                                                                                at):
    """lrkit's learning-rate-free and schedule-free optimizers check their groups' values
    (``_checks``): a scheduled value those checks refuse (the schedule-free optimizers
    divide by betas[0] or momentum in ``eval()``) is refused before it is written, at the
    step the schedule reaches it, naming the optimizer's own check."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = getattr(lrkit.optim, cls)([p])
    before = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
    with pytest.raises(ValueError, match=rf"reaches .* at step {at}"):
        sched = Scheduler(opt, **kwargs)
        for _ in range(12):
            p.grad = torch.ones(3)
            opt.step()
            before = {k: v for k, v in opt.param_groups[0].items() if k != "params"}
            sched.step()
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == before
    opt.step()  # the optimizer still steps, with the last values written
    assert torch.isfinite(p).all()


def test_values_the_optimizer_accepts_are_scheduled_on_every_group():
    """The same checks let every value the optimizer accepts through, group by group."""
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = lrkit.optim.ScheduleFreeAdamW([{"params": [a]}, {"params": [b], "betas": (0.5, 0.9)}])
    sched = Scheduler(opt, beta1="linear(0.9, 0.1, total=5)")
    for _ in range(5):
        a.grad, b.grad = torch.ones(3), torch.ones(2)
        opt.step()
        sched.step()
    assert [g["betas"] for g in opt.param_groups] == [(pytest.approx(0.1), 0.999),
                                                      (pytest.approx(0.1), 0.9)]


@pytest.mark.parametrize("make,key,value", [
    (lambda ps: lrkit.optim.Prodigy(ps, slice_p=2), "slice_p", 2),
    (lambda ps: lrkit.optim.SLS(ps), "max_backtracks", 50),
    (lambda ps: lrkit.optim.LBFGS(ps, lr=0.1), "history_size", 10),
    (lambda ps: torch.optim.LBFGS(ps, lr=0.1), "history_size", 10)])
def test_an_integer_key_stays_an_integer(make, key, value):
    """A count the groups hold as an int (slicing, range(), list length) is written as an int
    where the schedule's value is integral, and a non-integral value is refused where the
    schedule reaches it, naming the key, the step and the value, before anything changes."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = make([p])

    def closure():
        loss = ((p - 2) ** 2).sum()
        if torch.is_grad_enabled():
            opt.zero_grad()
            loss.backward()
        return loss

    sched = Scheduler(opt, **{key: value})
    for _ in range(2):
        assert type(opt.param_groups[0][key]) is int and opt.param_groups[0][key] == value
        opt.step(closure)
        sched.step()
    sched.set_schedule(key, S.linear(value, 2 * value, total=2))  # 2v at step 2: integral
    assert type(opt.param_groups[0][key]) is int and opt.param_groups[0][key] == 2 * value
    with pytest.raises(ValueError, match=rf"{key}= reaches {value + 0.5:g} at step 2.*integral"):
        sched.set_schedule(key, value + 0.5)
    assert opt.param_groups[0][key] == 2 * value and sched.schedules[key](2) == 2 * value


@pytest.mark.filterwarnings("ignore:Scheduler.step.. was called before")
def test_scheduled_integer_keys_still_pass_the_optimizers_own_checks():
    """The int written is the value the optimizer's own checks (``_validated``) see: a
    count of 0 where they need a positive one is refused by them; a key holding 0 (torch
    writes momentum=0 and weight_decay=0 for float options) may be scheduled to any number
    its checks accept."""
    p = torch.nn.Parameter(torch.ones(3))
    for opt, key in ((lrkit.optim.SLS([p]), "batches_per_epoch"),
                     (lrkit.optim.Prodigy([p]), "slice_p")):
        with pytest.raises(ValueError, match=rf"{key}= reaches 0 at step 2.*refuses.*positive"):
            sched = Scheduler(opt, **{key: "linear(2, 0, total=2)"})
            sched.step()
            sched.step()
        assert opt.param_groups[0][key] == 1 and sched.last_epoch == 2
    with pytest.raises(ValueError, match=r"warmup_steps= reaches 2.5 at step 0.*refuses"):
        Scheduler(lrkit.optim.ScheduleFreeAdamW([p]), warmup_steps=2.5)
    opt = lrkit.optim.ScheduleFreeAdamW([p])  # warmup_steps held as the int 0: not a count
    Scheduler(opt, warmup_steps=3.0)
    assert opt.param_groups[0]["warmup_steps"] == 3.0
    p.grad = torch.ones(3)
    opt.step()  # a float warmup_steps steps as its int would
    sgd = torch.optim.SGD([p], lr=0.1)
    assert sgd.param_groups[0]["momentum"] == 0 and type(sgd.param_groups[0]["momentum"]) is int
    sched = Scheduler(sgd, momentum="linear(0.5, 0.9, total=4)", weight_decay=1e-4)
    assert sgd.param_groups[0]["momentum"] == 0.5
    assert sgd.param_groups[0]["weight_decay"] == 1e-4
    p.grad = torch.ones(3)
    sgd.step()
    sched.step()
    assert sgd.param_groups[0]["momentum"] == pytest.approx(0.6)
    # a float option torch holds as the int 0, scheduled from a whole number, stays a float
    # (it was written as the int 1, then taken for a count and 0.75 refused)
    sgd = torch.optim.SGD([p], lr=0.1)
    sched = Scheduler(sgd, weight_decay="linear(1, 0, total=4)")
    for expected in (0.75, 0.5, 0.25, 0.0):
        sgd.step()
        sched.step()
        assert sgd.param_groups[0]["weight_decay"] == expected


@pytest.mark.parametrize("metric", [np.array(0.5), np.float32(0.5), np.array([0.5]),
                                    torch.tensor([0.5]), 0.5])
def test_a_metric_may_be_a_one_element_array(metric):
    """As before the metric was checked first: numpy scalars and one-element arrays are
    numbers to the plateau."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=0.1)
    sched = Scheduler(opt, plateau=Plateau(patience=0))
    sched.step(metric)
    sched.report(metric)
    assert sched.last_epoch == 1


@pytest.mark.parametrize("make,metric,error", [
    (lambda opt: Scheduler(opt, lr="cosine(0.1, total=10)"), 1.0, "needs a plateau"),
    (lambda opt: Scheduler(opt, plateau=Plateau()), torch.ones(2), r"shape \(2,\)"),
    (lambda opt: Scheduler(opt, plateau=Plateau()), "low", "must be a number")])
def test_a_refused_metric_changes_nothing(make, metric, error):
    opt = make_opt()
    sched = make(opt)
    opt.step()
    sched.step()
    before = (sched.last_epoch, sched._step_count, sched.get_last_lr(), sched.state_dict())
    with pytest.raises((ValueError, TypeError), match=error):
        sched.step(metric)
    with pytest.raises((ValueError, TypeError), match=error):
        sched.report(metric)
    assert (sched.last_epoch, sched._step_count, sched.get_last_lr(),
            sched.state_dict()) == before


@pytest.mark.parametrize("key", ["nesterov", "maximize"])
def test_a_switch_is_named_as_one(key):
    with pytest.raises(ValueError, match=rf"{key}= cannot be scheduled: param group 0 holds "
                                         rf"{key}=False, a switch \(bool\)"):
        Scheduler(make_opt(), **{key: 1.0})
