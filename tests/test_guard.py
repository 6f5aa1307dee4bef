"""DivergenceGuard: restore, back off through the schedule, give up with a summary."""
from __future__ import annotations

import io
import math

import pytest
import torch

import lrkit
from lrkit import DivergenceError, DivergenceGuard, Scheduler
from lrkit import schedules as S


def setup(lr=0.05, sched="lrkit"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if sched == "lrkit":
        scheduler = Scheduler(opt, lr=S.cosine(lr, 400))
    elif sched == "torch":
        scheduler = torch.optim.lr_scheduler.StepLR(opt, 100, 0.5)
    else:
        scheduler = None
    x = torch.randn(4096, 5)
    y = torch.sin(x.sum(1, keepdim=True))
    return model, opt, scheduler, x, y


def train(model, opt, scheduler, guard, x, y, steps, poison=()):
    losses = []
    for i in range(steps):
        idx = torch.arange(i * 64, i * 64 + 64) % 4096
        loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
        if i in poison:
            loss = loss * poison[i]
        if not guard.check(loss):
            continue
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
    return losses


def snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_no_intervention_on_a_healthy_run():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched)
    train(model, opt, sched, guard, x, y, 100)
    assert guard.events == [] and "no intervention" in guard.summary()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e4])
def test_bad_loss_restores_the_last_snapshot_and_backs_off(bad):
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=20)
    train(model, opt, sched, guard, x, y, 39)
    # the 40th healthy loss (step 39) snapshots the state that produced it: this one
    good = snapshot(model)
    lr_before = opt.param_groups[0]["lr"]
    step_before = sched.last_epoch
    train(model, opt, sched, guard, x, y, 3)
    loss = torch.tensor(bad)
    assert guard.check(loss) is False
    (event,) = guard.events
    assert event.kind == ("nonfinite" if not math.isfinite(bad) else "spike")
    assert event.restored_to == 39 and event.lr_factor == 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, good[k])
    assert sched.last_epoch == step_before
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * lr_before)
    # the schedule keeps its shape: later steps are the cosine times 0.5
    train(model, opt, sched, guard, x, y, 5)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * S.cosine(0.05, 400)(44))


def test_restore_rolls_back_steps_taken_since_the_snapshot():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=10)
    train(model, opt, sched, guard, x, y, 9)
    at_snapshot = snapshot(model)
    opt_state = {k: v["momentum_buffer"].clone() for k, v in opt.state_dict()["state"].items()}
    train(model, opt, sched, guard, x, y, 6)
    assert not guard.check(float("nan"))
    for k, v in model.state_dict().items():
        assert torch.equal(v, at_snapshot[k])
    for k, v in opt.state_dict()["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_state[k])
    assert sched.last_epoch == 9


def test_gives_up_after_max_retries_with_a_summary():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, max_retries=2)
    train(model, opt, sched, guard, x, y, 20)
    guard.check(float("nan"))
    guard.check(float("nan"))
    with pytest.raises(DivergenceError, match="max_retries=2") as info:
        guard.check(float("nan"))
    assert "3 intervention(s)" in str(info.value)


def test_recovering_resets_the_retry_count():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=10, max_retries=1)
    for _ in range(3):
        train(model, opt, sched, guard, x, y, 10)
        assert not guard.check(float("nan"))  # one retry each time, with recovery between
    assert len(guard.events) == 3
    assert guard.lr_factor == pytest.approx(0.125)


def test_a_diverging_lr_is_tamed():
    model, opt, sched, x, y = setup(lr=3.0)
    guard = DivergenceGuard(model, opt, sched, window=10, max_retries=10, min_history=3)
    losses = train(model, opt, sched, guard, x, y, 300)
    assert guard.events, "lr=3 should diverge at first"
    assert guard.lr_factor < 1
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 1.0


@pytest.mark.parametrize("sched_kind", ["torch", None])
def test_any_optimizer_and_scheduler(sched_kind):
    model, opt, sched, x, y = setup(sched=sched_kind)
    guard = DivergenceGuard(model, opt, sched, window=10)
    train(model, opt, sched, guard, x, y, 10)
    lr = opt.param_groups[0]["lr"]
    assert not guard.check(float("inf"))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * lr)
    if sched_kind == "torch":
        assert sched.base_lrs[0] == pytest.approx(0.025)


def test_state_dict_round_trip():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=10)
    train(model, opt, sched, guard, x, y, 12)
    guard.check(float("nan"))
    again = DivergenceGuard(model, opt, sched, window=10)
    again.load_state_dict(guard.state_dict())
    assert again.events == guard.events and again.lr_factor == guard.lr_factor


@pytest.mark.parametrize("kwargs, name", [
    ({"spike": 1.0}, "spike"), ({"window": 0}, "window"), ({"backoff": 1.0}, "backoff"),
    ({"backoff": 0}, "backoff"), ({"max_retries": -1}, "max_retries"),
    ({"spike": float("nan")}, "spike"),
])
def test_invalid_arguments(kwargs, name):
    model, opt, sched, _, _ = setup()
    with pytest.raises(ValueError, match=name):
        DivergenceGuard(model, opt, sched, **kwargs)
    with pytest.raises(TypeError, match="optimizer"):
        DivergenceGuard(model, "sgd")


def test_exported_lazily():
    assert lrkit.DivergenceGuard is DivergenceGuard


def _torch_optimizers():
    """Every optimizer class torch.optim has (LBFGS needs a closure, SparseAdam sparse
    gradients: left out)."""
    out = []
    for name in dir(torch.optim):
        cls = getattr(torch.optim, name)
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and \
                cls is not torch.optim.Optimizer and name not in ("LBFGS", "SparseAdam"):
            out.append(cls)
    return out


def _lrkit_optimizers():
    from optim_registry import REGISTRY
    return [(info.cls, info.configs[-1]) for info in REGISTRY.values()
            if "needs_closure" not in info.tags]


OPTIMIZERS = [(c, {"lr": 0.01}) for c in _torch_optimizers()] + _lrkit_optimizers()


@pytest.mark.parametrize("cls,cfg", OPTIMIZERS,
                         ids=[f"{c.__module__.split('.')[0]}.{c.__name__}" for c, _ in OPTIMIZERS])
def test_any_optimizer_is_restored_bit_for_bit(cls, cfg, caplog):
    """Parameters, gradients and optimizer state come back exactly as at the snapshot; the
    lr is backed off through the Scheduler; the event is logged and summarised."""
    import copy
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    if cls.__name__ == "Muon":  # torch's Muon takes 2-d parameters only
        model = torch.nn.Sequential(torch.nn.Linear(5, 8, bias=False), torch.nn.Tanh(),
                                    torch.nn.Linear(8, 1, bias=False))
    opt = cls(model.parameters(), **cfg)
    sched = Scheduler(opt, lr=S.constant(cfg["lr"]))
    x, y = torch.randn(256, 5), torch.randn(256, 1)
    guard = DivergenceGuard(model, opt, sched, window=4, min_history=2)
    train(model, opt, sched, guard, x, y, 3)
    params = snapshot(model)  # the 4th good loss (step 3) snapshots this state
    state = copy.deepcopy(opt.state_dict())
    train(model, opt, sched, guard, x, y, 3)
    assert any(not torch.equal(v, params[k]) for k, v in model.state_dict().items())
    with caplog.at_level("WARNING", logger="lrkit.guard"):
        assert not guard.check(torch.tensor(float("nan")))
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k])
    from optim_helpers import same_state
    now = opt.state_dict()
    for sd in (now, state):
        for g in sd["param_groups"]:
            g.pop("lr")
    assert same_state(now, state)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * cfg["lr"])
    assert "non-finite loss" in caplog.text and "restored the state of step 3" in caplog.text
    assert "1 intervention(s)" in guard.summary()


def test_bad_check_arguments():
    model, opt, sched, _, _ = setup()
    guard = DivergenceGuard(model, opt, sched)
    with pytest.raises(TypeError, match="loss"):
        guard.check("0.5")
    with pytest.raises(ValueError, match="loss"):
        guard.check(torch.ones(3))
    with pytest.raises(ValueError, match="lacks"):
        guard.load_state_dict({"steps": 3})
    with pytest.raises(ValueError, match="lr_factor"):
        guard.load_state_dict({**guard.state_dict(), "lr_factor": -1.0})


def noisy_losses(n, seed=0):
    """Minibatch losses of a noisy objective near its minimum: a scaled chi-square with one
    degree of freedom, whose single values often exceed 3x the median (P ~ 0.24)."""
    g = torch.Generator().manual_seed(seed)
    return (0.1 * torch.randn(n, generator=g) ** 2).tolist()


@pytest.mark.parametrize("seed", range(3))
def test_spread_keeps_ordinary_noise_from_counting_as_spikes(seed):
    model, opt, sched, *_ = setup()
    plain = DivergenceGuard(model, opt, sched, backoff=0.99, max_retries=10**6)
    wide = DivergenceGuard(model, opt, sched, spread=3.0)
    values = noisy_losses(2000, seed)
    assert sum(not plain.check(v) for v in values) > 100  # 3x the median: noise trips it
    assert sum(not wide.check(v) for v in values) <= 3  # 3x the spread above it: rarely
    assert wide.threshold() > 3 * float(torch.tensor(values[-50:]).median())
    assert wide.check(0.1) and not wide.check(100.0)  # a real spike still is one
    assert wide.events[-1].kind == "spike"


def test_spread_leaves_the_rule_of_a_smooth_curve_alone():
    model, opt, sched, *_ = setup()
    guard = DivergenceGuard(model, opt, sched, spread=3.0, window=20)
    for i in range(40):
        assert guard.check(1.0 + 1e-3 * math.sin(i))
    assert guard.threshold() == pytest.approx(3.0, rel=1e-2)
    assert not guard.check(3.2)


def collapse(seed=0):
    """Minibatch losses that fall from chance level (2.3) to 0.2, then climb back within 40
    steps and stay there: a run that collapsed to chance without any single spike."""
    g = torch.Generator().manual_seed(seed)
    noise = (1 + 0.2 * torch.randn(400, generator=g)).clamp(min=0.3).tolist()
    level = [2.3 * (0.2 / 2.3) ** min(1.0, i / 120) for i in range(200)]
    level += [0.2 + 2.1 * min(1.0, i / 40) for i in range(200)]
    return [a * b for a, b in zip(level, noise)]


@pytest.mark.parametrize("kwargs", [{"spread": 3.0}, {"window": 20, "spread": 3.0},
                                    {"spread": 10.0}])
def test_a_sustained_rise_back_to_the_start_is_caught(kwargs):
    """Issue 16: spread=3 let a run climb back to chance level with 0 interventions."""
    model, opt, sched, *_ = setup()
    guard = DivergenceGuard(model, opt, sched, max_retries=10**6, **kwargs)
    verdicts = [guard.check(v) for v in collapse()]
    rises = [e for e in guard.events if e.kind == "rise"]
    assert rises, guard.summary()
    first = rises[0]
    assert 200 < first.step <= 300  # within a few blocks of the climb
    assert first.restored_to <= 215  # a state from before the climb was half-way
    assert "sustained rise" in first.describe()
    assert verdicts[first.step] is False
    plain = DivergenceGuard(model, opt, sched, rise=None, **kwargs)
    assert all(plain.check(v) for v in collapse()) and not plain.events


@pytest.mark.parametrize("seed", range(3))
def test_the_rise_rule_leaves_noise_and_a_plateau_alone(seed):
    model, opt, sched, *_ = setup()
    for kwargs in ({"spread": 3.0}, {"spread": 3.0, "window": 20}):
        guard = DivergenceGuard(model, opt, sched, **kwargs)
        for v in noisy_losses(2000, seed):
            guard.check(v)
        assert not [e for e in guard.events if e.kind == "rise"]
    guard = DivergenceGuard(model, opt, sched, spread=3.0)
    falls = [2.3 * (0.05 / 2.3) ** min(1.0, i / 300) for i in range(1000)]  # then a plateau
    g = torch.Generator().manual_seed(seed)
    assert all(guard.check(v * float(1 + 0.3 * torch.rand(1, generator=g))) for v in falls)


def test_events_number_steps_from_zero_like_the_loop():
    """Issue 16: a NaN injected at loop step 25 was reported as step 26."""
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=10)
    train(model, opt, sched, guard, x, y, 40, poison={25: float("nan")})
    (event,) = guard.events
    assert event.step == 25 and event.describe().startswith("step 25: non-finite loss")
    # the snapshot at the 20th good loss, before its update: the start of step 19
    assert event.restored_to == 19 and sched.last_epoch == 19 + 14  # steps 26 to 39 after


def test_restored_to_names_the_step_whose_start_was_restored():
    """A snapshot taken in check() is the state before that loss's update: the start of the
    step that loss belongs to (it was labelled one step later)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(32, 4), torch.randn(32, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sched = Scheduler(opt, lr=S.constant(0.01))
    guard = DivergenceGuard(model, opt, sched, window=4, min_history=2, snapshot_every=4)
    start = {}
    for step in range(7):
        start[step] = model.weight.detach().clone()
        loss = torch.nn.functional.mse_loss(model(x), y) * (math.nan if step == 6 else 1.0)
        if not guard.check(loss):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    (event,) = guard.events
    assert event.restored_to == 3 and sched.last_epoch == 3
    assert torch.equal(model.weight, start[3])


def _resume_run(n, snapshot, nan_at=10, total=16):
    """A run to ``total`` with a NaN at ``nan_at``, saved at ``n`` (``n=None``: not saved)
    and resumed in fresh objects; the guard's state loaded first, before the model's."""
    torch.manual_seed(1)
    data = [(torch.randn(16, 4), torch.randn(16, 1)) for _ in range(total)]

    def build():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        sched = Scheduler(opt, lr=S.cosine(0.01, total=40))
        return model, opt, sched, DivergenceGuard(model, opt, sched, window=5, min_history=3,
                                                  snapshot_every=4)

    def train(objs, steps):
        model, opt, sched, guard = objs
        for i in steps:
            loss = torch.nn.functional.mse_loss(model(data[i][0]), data[i][1])
            if not guard.check(loss * (math.nan if i == nan_at else 1.0)):
                continue
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()

    objs = build()
    if n is None:
        train(objs, range(total))
        return objs
    train(objs, range(n))
    buffer = io.BytesIO()
    model, opt, sched, guard = objs
    torch.save([guard.state_dict(snapshot=snapshot), model.state_dict(), opt.state_dict(),
                sched.state_dict()], buffer)
    objs = build()
    buffer.seek(0)
    for obj, state in zip((objs[3], *objs[:3]), torch.load(buffer)):
        obj.load_state_dict(state)
    train(objs, range(n, total))
    return objs


def test_a_resume_with_the_guard_is_exact_across_a_later_rollback():
    """With the snapshot saved (state_dict(snapshot=True)), a rollback after the resume point
    restores what the uninterrupted run restores, bit for bit, whatever the order of
    loading; without it, the snapshot cadence is kept (since_snapshot), so the resumed run
    is exact when the snapshot restored was taken after the resume point, and otherwise
    restores the state at the resume point (the guard's own snapshot of it)."""
    straight = _resume_run(None, False)
    (event,) = straight[3].events
    assert event.restored_to == 7
    for n, snapshot in [(2, False), (7, False), (8, True), (9, True), (10, True)]:
        resumed = _resume_run(n, snapshot)
        assert [e.describe() for e in resumed[3].events] == [event.describe()]
        assert resumed[2].last_epoch == straight[2].last_epoch
        assert all(torch.equal(a, b) for a, b in zip(straight[0].parameters(),
                                                     resumed[0].parameters()))
        assert resumed[3]._since_snapshot == straight[3]._since_snapshot
    (event,) = _resume_run(9, False)[3].events
    assert event.restored_to == 9


def test_a_state_dict_from_before_since_snapshot_still_loads():
    model, opt, sched, x, y = setup()
    guard = DivergenceGuard(model, opt, sched, window=10)
    train(model, opt, sched, guard, x, y, 13)
    state = guard.state_dict()
    assert state["since_snapshot"] == 3 and "snapshot" not in state
    del state["since_snapshot"]
    again = DivergenceGuard(model, opt, sched, window=10)
    again.load_state_dict(state)
    assert again._since_snapshot == 0 and again.steps == 13
    with pytest.raises(ValueError, match="since_snapshot"):
        again.load_state_dict({**guard.state_dict(), "since_snapshot": -1})
    with pytest.raises(ValueError, match="snapshot lacks 'lr_factor', 'model'"):
        again.load_state_dict({**guard.state_dict(), "snapshot": {"step": 1}})
    bad = guard.state_dict(snapshot=True)
    bad["snapshot"]["model"] = {"0.weight": torch.ones(2)}
    before = snapshot(model)
    with pytest.raises(ValueError, match="snapshot does not fit"):
        again.load_state_dict(bad)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
