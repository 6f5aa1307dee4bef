"""module:function TARGETs for the tuning tests: tiny, deterministic, quick."""
from __future__ import annotations

import os
import time

import torch


def regression():
    """A small linear regression: (model, loader, loss_fn)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.1 * torch.randn(512, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=32)
    return model, loader, torch.nn.functional.mse_loss


class _SlowLoss:
    def __call__(self, out, target):
        time.sleep(float(os.environ.get("LRKIT_TEST_SLEEP", "0.05")))
        return torch.nn.functional.mse_loss(out, target)


def slow_regression():
    """The same problem with a slow loss, so a trial is running long enough to be killed."""
    model, loader, _ = regression()
    return model, loader, _SlowLoss()
