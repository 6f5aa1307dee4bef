"""lrkit's RangeTest callback against Lightning's own learning-rate finder, on arena tasks.

For each task and seed, three Lightning runs of the task's full budget with Adam and
the task's warmup + cosine schedule, differing only in the peak rate:

* ``lrkit``: ``lrkit.integrations.lightning.RangeTest()`` (lrkit's default "edge" rule,
  100 steps from 1e-7 to 10) sets the peak;
* ``lightning``: ``Tuner(trainer).lr_find(...)`` (Lightning's ``LearningRateFinder``
  logic: 100 steps from 1e-7 to 10, its ``suggestion()``, the steepest descent of the
  smoothed loss) sets it;
* ``1e-3``: Adam's usual untuned peak.

Prints a Markdown table of the suggestions and the final metric (the arena's metric of
each task, mean over seeds). Run::

    PYTHONPATH=src python benchmarks/lightning_finder.py --tasks quadratic,rosenbrock \
        --seeds 2
"""
from __future__ import annotations

import argparse
import logging
import math
import time
import warnings

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.tuner import Tuner

import lrkit
from lrkit.bench import get_task
from lrkit.bench.tasks import warmup_cosine
from lrkit.integrations.lightning import RangeTest

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


class TaskModule(pl.LightningModule):
    def __init__(self, task, seed: int, peak: float = 1e-3):
        super().__init__()
        self.inst = task.build(seed)
        self.net = self.inst.model
        self.lr = peak  # Lightning's finder writes its suggestion here
        self.steps = task.steps

    def training_step(self, batch, batch_idx):
        inputs, targets = batch
        return self.inst.loss_fn(self.net(inputs), targets)

    def configure_optimizers(self):
        opt = lrkit.optim.Adam(self.parameters(), lr=self.lr)
        sched = lrkit.Scheduler(opt, lr=warmup_cosine(self.lr, self.steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def trainer(steps: int, callbacks=()) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                      enable_progress_bar=False, enable_model_summary=False,
                      enable_checkpointing=False, callbacks=list(callbacks))


def run(task, seed: int, how: str) -> tuple[float | None, float]:
    torch.manual_seed(seed)
    module = TaskModule(task, seed)
    callbacks = []
    peak: float | None = 1e-3
    if how == "lrkit":
        finder = RangeTest()
        callbacks.append(finder)
    elif how == "lightning":
        found = Tuner(trainer(task.steps)).lr_find(
            module, train_dataloaders=module.inst.loader, min_lr=1e-7, max_lr=10.0,
            num_training=100, update_attr=False)
        peak = found.suggestion() if found is not None else None
        module = TaskModule(task, seed, peak if peak else 1e-3)
    trainer(task.steps, callbacks).fit(module, module.inst.loader)
    if how == "lrkit":
        peak = finder.peak
    value = module.inst.evaluate(module.net)
    return peak, value if math.isfinite(value) else math.inf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="quadratic,noisy_quadratic,digits_softmax,rosenbrock")
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| task | metric | lrkit RangeTest: peak | metric | Lightning lr_find: peak | "
          "metric | Adam 1e-3 | better |")
    print("|---|---|---|---|---|---|---|---|")
    began = time.perf_counter()
    for name in args.tasks.split(","):
        task = get_task(name)
        rows = {how: [run(task, s, how) for s in range(args.seeds)]
                for how in ("lrkit", "lightning", "default")}
        peaks = {h: "/".join(f"{p:.3g}" if p else "none" for p, _ in r)
                 for h, r in rows.items()}
        means = {h: float(np.mean([v for _, v in r])) for h, r in rows.items()}
        sign = 1 if task.higher_is_better else -1
        best = "lrkit" if sign * means["lrkit"] > sign * means["lightning"] else (
            "Lightning" if sign * means["lightning"] > sign * means["lrkit"] else "tie")
        print(f"| {name} | {task.metric} | {peaks['lrkit']} | {means['lrkit']:.4g} | "
              f"{peaks['lightning']} | {means['lightning']:.4g} | {means['default']:.4g} | "
              f"{best} |", flush=True)
    print(f"\n{time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
