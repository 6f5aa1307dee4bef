"""The global quantities of the learning-rate-free optimizers under sharding: two processes
on CPU (gloo), ZeroRedundancyOptimizer(optimizer_class=lrkit.optim.X, sharded=True) gives
each process a subset of the tensors, and the all-reduced sums give every process the d
(or DoG's step size) of a single process: the run matches the unsharded one."""
from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lrkit import optim

STEPS = 8
# float64 and well-conditioned multipliers: a different order of the partial sums (per
# process, then across processes) changes d by ~1e-16, which stays ~1e-13 after the steps
CONFIGS = {
    "Prodigy": {"lr": 0.3, "weight_decay": 0.1},
    "DAdaptAdam": {"lr": 0.1, "weight_decay": 0.1, "decouple": True},
    "DAdaptSGD": {"lr": 0.5, "momentum": 0.9},
    "DoG": {"weight_decay": 0.01},
    "LDoG": {},
}


def model_and_data():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()
    x = torch.randn(64, 6, dtype=torch.float64)
    y = torch.sin(x @ torch.randn(6, 3, dtype=torch.float64))
    return model, x, y


def train(model, opt, x, y):
    for i in range(STEPS):
        idx = torch.arange(i * 16, i * 16 + 16) % len(x)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def single_process(name, **extra):
    model, x, y = model_and_data()
    opt = getattr(optim, name)(model.parameters(), **CONFIGS[name], **extra)
    return train(model, opt, x, y), opt


def _worker(rank: int, world: int, init: str, out: str) -> None:
    from torch.distributed.optim import ZeroRedundancyOptimizer
    torch.set_num_threads(1)
    # a collective one process never reaches fails in a minute, not gloo's default 30
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        results = {}
        for name, cfg in CONFIGS.items():
            for sharded in (True, False):
                model, x, y = model_and_data()  # the same data: the same (full) gradients
                opt = ZeroRedundancyOptimizer(model.parameters(),
                                              optimizer_class=getattr(optim, name),
                                              sharded=sharded, **cfg)
                owned = len(opt.optim.param_groups[0]["params"])
                results[name, sharded] = (train(model, opt, x, y), owned,
                                          opt.optim.estimated_lr())
        # a gradient that is NaN on one process only: both skip the same step
        model, x, y = model_and_data()
        opt = optim.Prodigy(model.parameters(), lr=0.3, sharded=True, nonfinite="skip")
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        if rank == 1:
            next(model.parameters()).grad[0, 0] = float("nan")
        opt.step()
        results["skipped"] = opt.skipped_steps
        if rank == 0:
            torch.save(results, out)
        else:
            torch.save(results, out + ".1")
    finally:
        dist.destroy_process_group()


def test_zero_sharded_matches_a_single_process(tmp_path):
    """One spawn of two processes trains every optimizer of CONFIGS under ZeRO with and
    without ``sharded=True`` (a few seconds in all)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", out), nprocs=2, join=True)
    rank0, rank1 = torch.load(out, weights_only=False), torch.load(out + ".1", weights_only=False)
    for name in CONFIGS:
        expected, opt = single_process(name)
        got, owned0, lr0 = rank0[name, True]
        got1, owned1, lr1 = rank1[name, True]
        assert owned0 > 0 and owned1 > 0  # each process stepped only its own tensors
        assert all(torch.equal(a, b) for a, b in zip(got, got1))  # ZeRO broadcast them
        for a, b in zip(got, expected):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-13), name
        if name != "LDoG":  # one step size for all: the same on both processes
            assert lr0 == lr1
            assert lr0 == pytest.approx(opt.estimated_lr(), rel=1e-10), name
        # the reduction is what makes them equal: without it each process's d (or DoG's
        # distance) sees only its own tensors (LDoG's are per tensor: nothing to reduce)
        local, _, _ = rank0[name, False]
        departed = max(float((a - b).abs().max()) for a, b in zip(local, expected))
        assert departed > 1e-9 if name != "LDoG" else departed == 0.0, (name, departed)
    # a gradient that is NaN on one process only: both skipped the same step
    assert rank0["skipped"] == rank1["skipped"] == 1


def test_sharded_needs_an_initialised_process_group():
    model, *_ = model_and_data()
    opt = optim.Prodigy(model.parameters(), sharded=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    if not dist.is_initialized():
        with pytest.raises(RuntimeError, match="init_process_group"):
            opt.step()
    with pytest.raises(TypeError, match="sharded must be True, False or a"):
        optim.DoG(model.parameters(), sharded="yes")


def test_fsdp_in_use_is_the_authors_name_for_sharded():
    model, *_ = model_and_data()
    assert optim.Prodigy(model.parameters(), fsdp_in_use=True).sharded is True
    assert optim.DAdaptSGD(model.parameters()).sharded is False
