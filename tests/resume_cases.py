"""Exact-resume combinations: every registry optimizer x every schedule family (plateau too).

Shared by tests/test_resume.py (trains N steps straight, saving a checkpoint after K) and
tests/resume_worker.py (a new process that loads each checkpoint into freshly built
objects and trains the remaining N - K steps). Schedules are multipliers of the
optimizer's own lr (``lr_scale`` in the param group), so one instance per family suits
every optimizer.
"""
from __future__ import annotations

import inspect
from typing import Any, NamedTuple

import torch

from lrkit import Plateau, Scheduler
from lrkit import schedules as S
from optim_helpers import batches, loss_of, make_model
from optim_registry import REGISTRY

N, K = 8, 3

#: one instance of every family in ``S.REGISTRY``, changing within N steps, around 1
SCHEDULES: dict[str, S.Schedule] = {
    "time_based": S.time_based(1.0, 0.5),
    "step_based": S.step_based(1.0, 0.5, 2),
    "exponential": S.exponential(1.0, 0.2),
    "warmup": S.warmup(S.cosine(1.0, 6), 2),
    "join": S.join([S.constant(1.0), S.linear(1.0, 0.1, 4)], [4]),
    "product": S.product([S.cosine(1.0, 8), S.exponential(1.0, 0.1)]),
    "clip": S.clip(S.linear(2.0, 0.0, 8), 0.2, 1.0),
    "cosine_restarts": S.cosine_restarts(1.0, 3, 2),
    "cyclic": S.cyclic(0.1, 1.0, 2),
    "one_cycle": S.one_cycle(1.0, 8),
    "constant": S.constant(1.0),
    "linear": S.linear(1.0, 0.1, 8),
    "step": S.step(1.0, 2, 0.5),
    "multistep": S.multistep(1.0, [2, 5], 0.5),
    "inverse_time": S.inverse_time(1.0, 0.5),
    "exponential_decay": S.exponential_decay(1.0, 0.7),
    "polynomial": S.polynomial(1.0, 8, 0.0, 2.0),
    "cosine": S.cosine(1.0, 8),
    "inverse_sqrt": S.inverse_sqrt(1.0, 2),
    "wsd": S.wsd(1.0, 8, warmup=2, decay=0.5),
    "piecewise": S.piecewise([2, 5], [1.0, 0.5, 0.25]),
}
FAMILIES = (*SCHEDULES, "plateau")


class Case(NamedTuple):
    optimizer: str
    family: str
    mode: str  # the optimizer's mode when saved: "train", or "eval" (schedule-free)

    @property
    def id(self) -> str:
        return f"{self.optimizer}-{self.family}-{self.mode}"


def modes(info: Any) -> tuple[str, ...]:
    """Schedule-free optimizers (``opt.eval()``/``opt.train()``) are saved in both modes."""
    return ("train", "eval") if hasattr(info.cls, "eval") else ("train",)


CASES = [Case(info.name, family, mode) for info in REGISTRY.values() for family in FAMILIES
         for mode in modes(info)]


def base_lr(info: Any) -> float:
    cfg = info.configs[-1]
    if "lr" in cfg:
        return cfg["lr"]
    params = inspect.signature(info.cls.__init__).parameters
    if "lr" in params:
        return params["lr"].default
    return 1.0  # (no lr: SLS searches its step size, and a Scheduler's lr does nothing)


def build(case: Case, seed: int = 0) -> tuple:
    """Model, optimizer and Scheduler, freshly built (``seed`` only changes the model's
    initial values, which a resumed run overwrites)."""
    info = REGISTRY[case.optimizer]
    model = make_model(seed=seed)
    lr = base_lr(info)
    group = {"params": list(model.parameters()), "lr_scale": lr}
    opt = info.cls([group], **info.configs[-1])
    if case.family == "plateau":
        sched = Scheduler(opt, plateau=Plateau(factor=0.5, patience=0, threshold=0.1))
    else:
        sched = Scheduler(opt, lr=SCHEDULES[case.family])
    return model, opt, sched


def train(case: Case, model, opt, sched, start: int, stop: int) -> None:
    info = REGISTRY[case.optimizer]
    data = batches()
    for i in range(start, stop):
        batch = data[i % len(data)]

        def closure(batch=batch):  # (a line search re-evaluates it under no_grad)
            opt.zero_grad()
            loss = loss_of(model, batch)
            if torch.is_grad_enabled():
                loss.backward()
            return loss

        if "needs_closure" in info.tags:
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        if case.family == "plateau":
            sched.step(float(loss.detach()))
        else:
            sched.step()


def checkpoint(model, opt, sched) -> dict:
    return {"model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict()}


def params(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]
