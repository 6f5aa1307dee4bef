"""lrkit inside PyTorch Lightning (issue 17), with the real ``lightning`` package: an lrkit
optimizer and ``lrkit.Scheduler`` from ``configure_optimizers`` step by step, exact resume
from a checkpoint, and the callbacks of ``lrkit.integrations.lightning``."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

pl = pytest.importorskip("lightning.pytorch")

import lrkit  # noqa: E402
from lrkit import schedules as S  # noqa: E402
from lrkit.integrations.lightning import Autopilot, RangeTest, ScheduleFree  # noqa: E402
from lrkit.pilot import choose_lr  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LightningModule.log.*")
STEPS = 24


def data(n: int = 96, batch: int = 8, same_batches: bool = False
         ) -> torch.utils.data.DataLoader:
    """12 batches. ``same_batches``: all equal, for the resume tests: Lightning restarts a
    plain DataLoader on resume (here with one batch more in the resumed epoch), so only
    then is the data after a resume that of a straight run."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    y = x @ torch.randn(6, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
    if same_batches:
        x, y = x[:batch].repeat(n // batch, 1), y[:batch].repeat(n // batch, 1)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)


class Module(pl.LightningModule):
    def __init__(self, optimizer: str = "adamw", schedule: S.Schedule | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))
        self.optimizer = optimizer
        self.lr_schedule = schedule or S.warmup(S.cosine(1e-2, total=STEPS - 4), steps=4)
        self.val_seen: list[tuple[bool, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx):
        opt = self.trainer.optimizers[0]
        self.val_seen.append((opt.training, self.net[0].weight.detach().clone()))
        return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        if self.optimizer == "schedulefree":
            opt = lrkit.optim.ScheduleFreeAdamW(self.parameters(), lr=1e-2, warmup_steps=4)
            return opt
        opt = lrkit.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.01)
        sched = lrkit.Scheduler(opt, lr=self.lr_schedule)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class Rates(pl.Callback):
    """The lr each optimizer step used, and the weights before the first one."""

    def __init__(self):
        self.lrs: list[float] = []
        self.first_weights: list[torch.Tensor] | None = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.first_weights is None:
            self.first_weights = [p.detach().clone() for p in pl_module.parameters()]
        self.lrs.append(optimizer.param_groups[0]["lr"])


def trainer(tmp_path, steps=STEPS, callbacks=(), **kw) -> pl.Trainer:
    checkpoints = any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks)
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=checkpoints, default_root_dir=tmp_path,
                      callbacks=list(callbacks), **kw)


def every_epoch(tmp_path) -> pl.callbacks.ModelCheckpoint:
    """A checkpoint at the end of every epoch (12 batches): epoch=0.ckpt is at step 12."""
    return pl.callbacks.ModelCheckpoint(tmp_path, "{epoch}", save_top_k=-1, every_n_epochs=1,
                                        save_on_train_epoch_end=True)


def test_rates_per_step_equal_the_schedule(tmp_path):
    module, rates = Module(), Rates()
    trainer(tmp_path, callbacks=[rates]).fit(module, data())
    expected = module.lr_schedule(np.arange(STEPS))
    assert rates.lrs == [float(v) for v in expected]  # exactly, step by step


def test_checkpoint_resumes_the_same_rates_and_weights(tmp_path):
    straight, rates = Module(), Rates()
    same = data(same_batches=True)
    trainer(tmp_path, callbacks=[rates, every_epoch(tmp_path)]).fit(straight, same)
    resumed, rest = Module(), Rates()
    trainer(tmp_path, callbacks=[rest]).fit(resumed, same,
                                            ckpt_path=tmp_path / "epoch=0.ckpt")
    assert len(rest.lrs) == STEPS - 12 and rest.lrs == rates.lrs[12:]
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_range_test_sets_the_peak_and_leaves_the_module(tmp_path):
    module, rates = Module(), Rates()
    before = [p.detach().clone() for p in module.parameters()]
    finder = RangeTest(steps=30)
    trainer(tmp_path, callbacks=[finder, rates]).fit(module, data())
    # the same range test by hand, on a fresh copy: the same suggestion
    twin = Module()
    opt = lrkit.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.01)
    by_hand = lrkit.find_lr(twin.net, opt, data(), torch.nn.functional.mse_loss, steps=30)
    assert finder.peak == by_hand.suggestion is not None
    assert all(torch.equal(a, b) for a, b in zip(before, rates.first_weights))
    expected = module.lr_schedule * (finder.peak / module.lr_schedule.peak(STEPS))
    assert rates.lrs == [float(v) for v in expected(np.arange(STEPS))]
    assert max(rates.lrs) == pytest.approx(finder.peak, rel=1e-12)


def test_range_test_is_not_rerun_on_resume(tmp_path):
    finder = RangeTest(steps=30)
    trainer(tmp_path, callbacks=[finder, every_epoch(tmp_path)]).fit(Module(), data())
    again, rates = RangeTest(steps=30), Rates()
    trainer(tmp_path, callbacks=[again, rates]).fit(Module(), data(),
                                                    ckpt_path=tmp_path / "epoch=0.ckpt")
    assert again.result is None  # the checkpoint's Scheduler already had the peak
    expected = Module().lr_schedule * (finder.peak / Module().lr_schedule.peak(STEPS))
    assert rates.lrs == [float(v) for v in expected(np.arange(12, STEPS))]


def test_autopilot_callback_writes_its_choice(tmp_path):
    steps = 60
    module, rates = Module(), Rates()
    pilot = Autopilot(budget=1.5)
    trainer(tmp_path, steps=steps, callbacks=[pilot, rates]).fit(module, data())
    twin = Module()
    opt = lrkit.optim.AdamW(twin.parameters(), lr=1e-2, weight_decay=0.01)
    by_hand = choose_lr(twin.net, opt, data(), torch.nn.functional.mse_loss, steps=steps)
    assert pilot.report.schedule == by_hand.schedule and pilot.report.lr == by_hand.lr
    chosen = S.parse(pilot.report.schedule)
    assert rates.lrs == [float(v) for v in chosen(np.arange(steps))]


def test_a_callback_without_an_lrkit_scheduler_says_what_is_needed(tmp_path):
    with pytest.raises(ValueError, match="lrkit.Scheduler"):
        trainer(tmp_path, callbacks=[RangeTest()]).fit(Module("schedulefree"), data())


def test_schedule_free_switches_with_validation_and_checkpoints(tmp_path):
    def run(steps, ckpt=None, callbacks=()):
        module = Module("schedulefree")
        t = trainer(tmp_path, steps=steps, callbacks=[ScheduleFree(), *callbacks],
                    val_check_interval=6, num_sanity_val_steps=0, limit_val_batches=1)
        t.fit(module, data(same_batches=True), data(), ckpt_path=ckpt)
        return module, t

    straight, t = run(STEPS, callbacks=[every_epoch(tmp_path)])
    assert len(straight.val_seen) == 4 and not any(mode for mode, _ in straight.val_seen)
    assert not t.optimizers[0].training  # after fit: the averaged weights, to evaluate
    # validation saw the averaged weights, and training went on from the training ones:
    # a run stopped at step 6 holds (after fit, in eval mode) what validation saw there
    first, _ = run(6)
    assert torch.equal(first.net[0].weight, straight.val_seen[0][1])
    # the checkpoint of epoch 0 (step 12, after its validation) resumes exactly and
    # carries the averaged weights
    saved = torch.load(tmp_path / "epoch=0.ckpt", weights_only=False)
    assert torch.equal(saved["lrkit_averaged_state_dict"]["net.0.weight"],
                       straight.val_seen[1][1])
    assert not torch.equal(saved["state_dict"]["net.0.weight"], straight.val_seen[1][1])
    resumed, _ = run(STEPS, ckpt=tmp_path / "epoch=0.ckpt")
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


def test_callbacks_check_their_arguments():
    with pytest.raises(ValueError, match="steps"):
        RangeTest(steps=0)
    with pytest.raises(ValueError, match="end"):
        RangeTest(start=1.0, end=0.1)
    with pytest.raises(ValueError, match="budget"):
        Autopilot(budget=0.5)
    with pytest.raises(TypeError, match="save_averaged"):
        ScheduleFree(save_averaged="yes")
    assert copy.deepcopy(RangeTest()).steps == 100
