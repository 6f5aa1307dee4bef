"""lrkit in multi-process training: one small regression model trained under DDP, then
ZeroRedundancyOptimizer, then FSDP2 ``fully_shard``, each with lrkit's AdamW, a warmup +
cosine ``Scheduler`` and a ``DivergenceGuard``.

    torchrun --standalone --nproc_per_node 2 examples/distributed.py

Each process trains on its half of every batch (gloo on CPU, NCCL on GPUs). Rank 0 prints
the loss before and after training and a checksum of the parameters; the run fails if the
processes end with different parameters. ``--wrapper ddp`` (or zero, fsdp) runs one.
"""
from __future__ import annotations

import argparse
import gc
import os

import torch
import torch.distributed as dist
from torch import nn

import lrkit
from lrkit import schedules as S

LR = 1e-2


def build(wrapper: str, device: torch.device):
    torch.manual_seed(0)  # the same initial weights on every rank
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1)).to(device)
    settings = {"lr": LR, "weight_decay": 0.01}
    if wrapper == "ddp":
        model = nn.parallel.DistributedDataParallel(model)
        opt = lrkit.optim.AdamW(model.parameters(), **settings)
    elif wrapper == "zero":  # each rank keeps the optimizer state of its share of tensors
        from torch.distributed.optim import ZeroRedundancyOptimizer
        model = nn.parallel.DistributedDataParallel(model)
        opt = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=lrkit.optim.AdamW,
                                      **settings)
    else:  # FSDP2: parameters, gradients and optimizer state sharded (DTensors)
        from torch.distributed.fsdp import fully_shard
        for layer in model:
            if isinstance(layer, nn.Linear):
                fully_shard(layer)
        fully_shard(model)
        opt = lrkit.optim.AdamW(model.parameters(), **settings)
    return model, opt


def full(params) -> list[torch.Tensor]:
    """The whole parameters (an FSDP2 DTensor gathered from every rank)."""
    return [(p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
            for p in params]


def train(wrapper: str, steps: int, device: torch.device) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    model, opt = build(wrapper, device)
    sched = lrkit.Scheduler(opt, lr=S.warmup(S.cosine(LR, total=steps - 10), steps=10))
    guard = lrkit.DivergenceGuard(model, opt, sched, spread=3.0)  # minibatch noise is no spike
    g = torch.Generator().manual_seed(1)  # the same data on every rank
    x = torch.randn(4096, 16, generator=g)
    y = torch.sin(0.3 * x @ torch.randn(16, 1, generator=g))
    x, y = x.to(device), y.to(device)

    def loss_on(xb, yb):
        return nn.functional.mse_loss(model(xb), yb)

    with torch.no_grad():
        before = loss_on(x, y).item()
    batch = 64
    for step in range(steps):
        i = (step * batch) % len(x)
        mine = slice(i + rank * batch // world, i + (rank + 1) * batch // world)
        loss = loss_on(x[mine], y[mine])
        if not guard.check(loss):  # rolled back (on every rank alike): skip this batch
            continue
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        after = loss_on(x, y).item()
    params = full(model.parameters())
    checksum = torch.tensor([float(sum(p.double().sum() for p in params))], device=device)
    gathered = [torch.zeros_like(checksum) for _ in range(world)]
    dist.all_gather(gathered, checksum)
    if len({float(c) for c in gathered}) != 1:
        raise SystemExit(f"{wrapper}: the ranks disagree: {[float(c) for c in gathered]}")
    if rank == 0:
        print(f"{wrapper}: loss {before:.4f} -> {after:.4f}; parameters identical on "
              f"{world} ranks (checksum {float(checksum):.6f}); {guard.summary()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wrapper", default="ddp,zero,fsdp",
                        help="comma-separated: ddp, zero, fsdp (default: all three)")
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda \
        else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    for wrapper in args.wrapper.split(","):
        train(wrapper.strip(), args.steps, device)
        gc.collect()  # free the wrapped model and optimizer (cycles) while the group lives
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
