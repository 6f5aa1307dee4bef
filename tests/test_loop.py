"""lrkit.loop, the one training step (issue 13): a closure step equals a plain one, k
accumulated micro-batches equal one batch k times larger, schedule-free weights switch for
evaluation and back, the guard rolls back (plain and closure), autocast runs the forward
in bfloat16 on the CPU, and the Loop drives a Scheduler."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lrkit
from lrkit import schedules as S
from lrkit.loop import Loop, Step, averaged, batch_loss, endless, evaluating, has_modes
from lrkit.scheduler import scale_lr

pytestmark = pytest.mark.usefixtures("one_thread")


def problem(seed: int = 0, n: int = 64, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=dtype)
    y = x @ torch.randn(5, 1, generator=g, dtype=dtype) + 0.1 * torch.randn(
        n, 1, generator=g, dtype=dtype)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)
    return model, x, y


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def params(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("make", [lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
                                  lambda p: torch.optim.Adam(p, lr=1e-2)])
def test_closure_step_equals_plain_step(make):
    runs = []
    for closure in (False, True):
        model, x, y = problem()
        step = Step(model, make(model.parameters()), batch_loss(F.mse_loss), closure=closure)
        losses = [step([b]) for b in batches(x, y, 8) * 3]
        runs.append((losses, params(model)))
    (plain, w_plain), (clos, w_clos) = runs
    assert plain == clos
    assert all(torch.equal(a, b) for a, b in zip(w_plain, w_clos))


@pytest.mark.parametrize("closure", [False, True])
def test_accumulated_micro_batches_equal_one_big_batch(closure):
    """4 micro-batches of 8, each loss / 4: the gradient of the mean over 32 (float64, so
    the sums' rounding, about 1e-16 relative per term, stays far below 1e-12)."""
    out = []
    for size, k in ((32, 1), (8, 4)):
        model, x, y = problem(dtype=torch.float64)
        step = Step(model, torch.optim.SGD(model.parameters(), lr=0.1), batch_loss(F.mse_loss),
                    closure=closure)
        micro = batches(x, y, size)
        losses = [step(micro[i:i + k]) for i in range(0, len(micro), k)]
        out.append((losses, params(model)))
    (big, w_big), (acc, w_acc) = out
    assert acc == pytest.approx(big, rel=1e-12)
    for a, b in zip(w_big, w_acc):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_schedule_free_weights_switch_for_evaluation_and_back():
    model, x, y = problem()
    opt = lrkit.optim.ScheduleFreeAdamW(model.parameters(), lr=1e-2)
    assert has_modes(opt) and not has_modes(torch.optim.SGD(model.parameters(), lr=0.1))
    opt.train()
    step = Step(model, opt, batch_loss(F.mse_loss))
    for b in batches(x, y, 8) * 2:
        step([b])
    training = params(model)
    with averaged(opt):
        averaged_weights = params(model)
    assert not all(torch.equal(a, b) for a, b in zip(training, averaged_weights))
    assert all(torch.equal(a, b) for a, b in zip(training, params(model)))  # back to training
    step([batches(x, y, 8)[0]])  # and it trains on (a schedule-free optimizer refuses to
    # step in eval mode)


def test_evaluating_sets_eval_mode_without_gradients_and_restores_flags():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    model[1].eval()  # a mixed state comes back as it was
    with evaluating(model):
        assert not torch.is_grad_enabled() and not any(m.training for m in model.modules())
    assert model.training and model[0].training and not model[1].training


class Spiky:
    """Batches with one poisoned (NaN) batch at position ``at``."""

    def __init__(self, x, y, at):
        self.items = batches(x, y, 8)
        self.at = at

    def stream(self):
        i = 0
        while True:
            xb, yb = self.items[i % len(self.items)]
            yield (xb * math.nan, yb) if i == self.at else (xb, yb)
            i += 1


@pytest.mark.parametrize("closure", [False, True])
def test_guard_rolls_back_a_bad_step_and_the_loop_resumes(closure):
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = lrkit.Scheduler(opt, lr=S.cosine(0.05, total=40))
    guard = lrkit.DivergenceGuard(model, opt, sched, snapshot_every=5, min_history=3)
    loop = Loop(Step(model, opt, batch_loss(F.mse_loss), closure=closure, guard=guard), sched)
    seen = []
    assert loop.run(Spiky(x, y, at=12).stream(), 30, lambda s, loss, lr: seen.append(s))
    assert [e.kind for e in guard.events] == ["nonfinite"]
    assert len(loop.losses) == len(loop.lrs) == 30 and all(map(math.isfinite, loop.losses))
    assert sched.last_epoch == 30 and guard.lr_factor == 0.5
    # its 10th check (step 9, before its update) was the last snapshot: steps 9 to 11 are
    # redone, and counted as updates again
    assert guard.events[0].restored_to == 9 and loop.updates == 30 + 3
    assert seen[-1] == 30 and [seen.count(k) for k in (9, 10, 11, 12, 13)] == [1, 2, 2, 2, 1]
    # the learning rate after the back-off: the schedule at half its height
    assert loop.lrs[-1] == pytest.approx(0.5 * S.cosine(0.05, total=40)(29), rel=1e-12)


def test_loop_stops_at_a_non_finite_loss_and_counts_refusals_as_one():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loop = Loop(Step(model, opt, batch_loss(F.mse_loss)))
    assert not loop.run(Spiky(x, y, at=3).stream(), 10)
    assert loop.diverged and len(loop.losses) == 4 and math.isnan(loop.losses[-1])
    assert loop.updates == 3 and len(loop.lrs) == 3

    class Refusing(torch.optim.SGD):
        def step(self, closure=None):
            raise FloatingPointError("refused")

    model, x, y = problem()
    loop = Loop(Step(model, Refusing(model.parameters(), lr=0.1), batch_loss(F.mse_loss)),
                nonfinite_errors=(FloatingPointError,))
    assert not loop.run(iter(batches(x, y, 8)), 5) and math.isnan(loop.losses[-1])


def test_autocast_bfloat16_on_cpu():
    model, x, y = problem()
    dtypes = []

    def compute(m, batch):
        out = m(batch[0])
        dtypes.append(out.dtype)
        return F.mse_loss(out.float(), batch[1])

    before = params(model)
    step = Step(model, torch.optim.SGD(model.parameters(), lr=0.05), compute,
                autocast=torch.bfloat16)
    value = step([(x, y)])
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(torch.equal(a, b) for a, b in zip(before, params(model)))
    with torch.no_grad():
        exact = float(F.mse_loss(torch.func.functional_call(
            model, dict(zip([n for n, _ in model.named_parameters()], before)), (x,)), y))
    assert value == pytest.approx(exact, rel=3e-2)  # bfloat16: 8 bits of mantissa


def test_scaler_step_matches_the_plain_step_at_scale_one():
    """A GradScaler (CPU, enabled, scale 1 and no growth) must leave the update unchanged."""
    runs = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=1.0, growth_interval=10**6)):
        for closure in (False, True):
            model, x, y = problem()
            step = Step(model, torch.optim.SGD(model.parameters(), lr=0.05),
                        batch_loss(F.mse_loss), closure=closure, scaler=scaler)
            runs.append(([step([b]) for b in batches(x, y, 16)], params(model)))
    for losses, w in runs[1:]:
        assert losses == runs[0][0]
        assert all(torch.equal(a, b) for a, b in zip(w, runs[0][1]))


def test_users_step_fn_with_dict_batches_and_the_message_for_other_batches():
    model, x, y = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    step = Step(model, opt, lambda m, b: F.mse_loss(m(b["x"]), b["y"]))
    assert math.isfinite(step([{"x": x, "y": y}]))
    with pytest.raises(TypeError, match=r"fit\(\): without step_fn each batch must be an "
                                        r"\(inputs, targets\) pair, got a dict"):
        Step(model, opt, batch_loss(F.mse_loss, "fit()"))([{"x": x}])
    with pytest.raises(TypeError, match="the loss must be a tensor with one element"):
        Step(model, opt, lambda m, b: m(b[0]), name="fit()")([(x, y)])
    with pytest.raises(ValueError, match="fit\\(\\): loader yields no batches"):
        next(endless([], "fit()"))


def test_a_one_shot_loader_is_named_as_such():
    """A generator yields its batches once: when it is exhausted, the message says that,
    not that it yields no batches."""
    stream = endless((b for b in [1, 2, 3]), "fit()")
    assert [next(stream) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(ValueError, match=r"fit\(\): loader can be iterated only once \(it "
                                         r"yielded 3 batches.*pass a list or a DataLoader"):
        next(stream)


@pytest.mark.parametrize("make", [lambda ps: lrkit.optim.SLS(ps), lambda ps: lrkit.optim.LBFGS(ps),
                                  lambda ps: torch.optim.LBFGS(ps)])
def test_a_scaler_with_a_closure_only_optimizer_is_refused_up_front(make):
    model, _, _ = problem()
    opt = make(model.parameters())
    with pytest.raises(ValueError, match=rf"Step\(\): scaler cannot be used with "
                                         rf"{type(opt).__name__}, which re-evaluates"):
        Step(model, opt, batch_loss(F.mse_loss), closure=True,
             scaler=torch.amp.GradScaler("cpu"))


def test_scale_lr_is_the_writer_for_torch_schedulers_and_tensor_rates():
    model, _, _ = problem()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    torch_sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10)
    scale_lr(opt, 0.5, torch_sched)
    assert opt.param_groups[0]["lr"] == 0.05 and torch_sched.base_lrs == [0.05]
    opt = torch.optim.Adam(model.parameters(), lr=torch.tensor(0.1))
    scale_lr(opt, 0.5)
    assert torch.is_tensor(opt.param_groups[0]["lr"])
    assert float(opt.param_groups[0]["lr"]) == pytest.approx(0.05)
    sched = lrkit.Scheduler(opt, lr=S.constant(0.2))
    scale_lr(opt, 0.25, sched)  # lrkit's Scheduler: the schedule keeps its shape
    assert sched.lr_multiplier == 0.25 and float(opt.param_groups[0]["lr"]) == \
        pytest.approx(0.05)
