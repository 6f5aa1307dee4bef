"""The quality bar of the range test's suggestions (issue 5), as reusable pieces.

1. ``least_squares(seed)``: a least-squares problem whose Hessian's largest eigenvalue L
   is known; for plain SGD a good suggestion lies in ``[0.05 / L, 2 / L]`` (2/L is the
   divergence limit).
2. On a built-in task, ``grid_losses`` trains at every lr of ``LR_GRID`` (9 points, half
   decades from 1e-4 to 1) and ``trained_loss`` at a suggestion, each with a linear warmup
   over 5% of the budget then cosine decay to 0, peak lr = the lr tried; a suggestion
   passes when its final loss is within ``BAND`` (1.5x) of the grid's best. "Loss" is the
   task's metric in lower-is-better form (``loss_form``).

``tests/test_finder_quality.py`` runs a reduced version, ``benchmarks/finder_quality.py``
the full one.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch

from lrkit import schedules as S
from lrkit.bench.tasks import Task
from lrkit.bench.train import train
from lrkit.finder import LRFinderResult, find_lr

LR_GRID = [float(10 ** e) for e in np.linspace(-4, 0, 9)]
BAND = 1.5
OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
}


def least_squares(seed: int, n: int = 1024, d: int = 32, batch: int = 64):
    """``(model, loader, loss_fn, L)``: ``0.5 mean((A x - b)^2)`` over a mini-batch loader,
    whose Hessian ``A'A / n`` has condition number 100 and largest eigenvalue L drawn
    log-uniformly in [1, 1000] from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    scale = float(10 ** (3 * torch.rand((), generator=g)))
    u, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    singular = torch.logspace(0, -1, d, dtype=torch.float64)
    a = (u * singular) @ v.T * math.sqrt(n * scale)
    top = float(torch.linalg.eigvalsh(a.T @ a / n).max())
    b = a @ torch.randn(d, generator=g, dtype=torch.float64)
    b = b + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    data = torch.utils.data.TensorDataset(a.float(), b.float()[:, None])
    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Linear(d, 1, bias=False)

    def loss_fn(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return 0.5 * (out - target).pow(2).mean()

    return model, loader, loss_fn, top


def least_squares_sweep(seed: int, **find_kwargs) -> tuple[LRFinderResult, float]:
    """The range test of plain SGD on ``least_squares(seed)``, and that problem's L."""
    model, loader, loss_fn, top = least_squares(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return find_lr(model, opt, loader, loss_fn, warn=False, **find_kwargs), top


def loss_form(task: Task, value: float) -> float:
    """A metric value as a loss: itself, or the error rate for an accuracy."""
    if not math.isfinite(value):
        return math.inf
    return 1.0 - value if task.higher_is_better else value


def task_sweep(task: Task, optimizer: str, seed: int, **find_kwargs) -> LRFinderResult:
    """The range test (find_lr's defaults unless overridden) on ``task.build(seed)``."""
    inst = task.build(seed)
    opt = OPTIMIZERS[optimizer](inst.model.parameters(), 1e-3)
    return find_lr(inst.model, opt, inst.loader, inst.loss_fn, warn=False, **find_kwargs)


def trained_loss(task: Task, optimizer: str, seed: int, lr: float,
                 steps: int | None = None) -> float:
    """The final loss (``loss_form``) of warmup + cosine training with peak ``lr``."""
    run = train(task, lambda params: OPTIMIZERS[optimizer](params, lr),
                schedule=lambda n: S.family("cosine", lr, n, 0.05), seed=seed, steps=steps)
    return loss_form(task, run.final)


def grid_losses(task: Task, optimizer: str, seed: int, steps: int | None = None,
                grid: Iterable[float] = LR_GRID) -> dict[float, float]:
    return {lr: trained_loss(task, optimizer, seed, lr, steps) for lr in grid}


def within_band(loss: float, grid: dict[float, float]) -> bool:
    return loss <= BAND * min(grid.values())
