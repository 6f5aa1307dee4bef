"""lrkit inside Hugging Face's ``Trainer`` (issue 17), with the real ``transformers``
package and a tiny GPT-2 built from a config (nothing downloaded): rates per step equal
the schedule, a checkpoint resumes the same rates and weights, and
``lrkit.integrations.transformers.schedule`` equals ``transformers.get_scheduler``."""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import lrkit  # noqa: E402
from lrkit import schedules as S  # noqa: E402
from lrkit.integrations.transformers import NAMES, schedule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 12


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 48, length: int = 8, vocab: int = 32):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, vocab, (n, length), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1,
                                     n_head=2)
    return transformers.GPT2LMHeadModel(config)


LR_SCHEDULE = S.warmup(S.cosine(3e-3, total=STEPS - 3), steps=3)


class Rates(transformers.TrainerCallback):
    def __init__(self):
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.lrs.append(optimizer.param_groups[0]["lr"])


def train(tmp_path, resume=None, **kw):
    net = model()
    opt = lrkit.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=0.01)
    sched = lrkit.Scheduler(opt, lr=LR_SCHEDULE)
    rates = Rates()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=STEPS, per_device_train_batch_size=8,
        save_strategy="steps", save_steps=6, report_to=[], use_cpu=True, seed=0,
        logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, **kw)
    trainer = transformers.Trainer(model=net, args=args, train_dataset=Tokens(),
                                   optimizers=(opt, sched), callbacks=[rates])
    trainer.train(resume_from_checkpoint=resume)
    return net, rates.lrs


def test_trainer_rates_equal_the_schedule_and_a_checkpoint_resumes(tmp_path):
    straight, lrs = train(tmp_path / "a")
    assert lrs == [float(v) for v in LR_SCHEDULE(np.arange(STEPS))]  # step by step
    resumed, rest = train(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-6"))
    assert rest == lrs[6:]
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))


@pytest.mark.parametrize("name", NAMES)
def test_schedule_equals_get_scheduler(name):
    warmup = 0 if name == "constant" else 7
    extra = {"power": 2.0, "lr_end": 1e-4} if name == "polynomial" else {}
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.05)
    reference = transformers.get_scheduler(name, opt, num_warmup_steps=warmup,
                                           num_training_steps=50,
                                           scheduler_specific_kwargs=extra)
    ours = schedule(name, 0.05, num_warmup_steps=warmup, num_training_steps=50, **extra)
    # past the end too, except cosine: transformers' climbs again there, lrkit's stays at 0
    for n in range(51 if name == "cosine" else 60):
        assert ours(n) == pytest.approx(reference.get_last_lr()[0], rel=1e-12, abs=1e-15), n
        opt.step()
        reference.step()


def test_schedule_checks_its_arguments():
    with pytest.raises(ValueError, match="name"):
        schedule("cosine_with_restarts", 0.1, num_training_steps=10)
    with pytest.raises(ValueError, match="num_training_steps"):
        schedule("linear", 0.1, num_warmup_steps=5)
    with pytest.raises(TypeError, match="power"):
        schedule("linear", 0.1, num_training_steps=10, power=2.0)
    with pytest.raises(ValueError, match="num_warmup_steps"):
        schedule("constant", 0.1, num_warmup_steps=5)
