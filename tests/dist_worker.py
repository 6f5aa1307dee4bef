"""Two CPU processes (gloo) train every registry optimizer under DDP, ZeRO and FSDP2.

Run by tests/test_distributed.py as ``python tests/dist_worker.py OUT_DIR`` (with
PYTHONPATH=src:tests): it spawns 2 ranks, and each saves ``OUT_DIR/rank{r}.pt``, a dict
keyed by ``(optimizer, wrapper)`` holding the final full parameters (``("ok", [tensors])``)
or the error (``("error", type name, message)``), plus the non-finite agreement checks
under ``(optimizer, wrapper, "skip" | "raise")``. One spawn runs everything, so the suite
pays the start-up of two processes once.
"""
from __future__ import annotations

import datetime
import os
import sys
import tempfile
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
STEPS = 4
WRAPPERS = ("ddp", "zero", "fsdp")
TIMEOUT = datetime.timedelta(seconds=60)


def config(info):
    """The registry's last config: its widest (weight decay, amsgrad... where it has them)."""
    return dict(info.configs[-1])


def sharded_kwargs(info) -> dict:
    """Arguments that switch an optimizer's global sums to sums over all ranks (the
    authors' ``fsdp_in_use``, or lrkit's ``sharded`` where the authors have none: DoG),
    for ZeRO and FSDP, where each rank holds part of the model."""
    import inspect
    names = inspect.signature(info.cls.__init__).parameters
    if "fsdp_in_use" in names:
        return {"fsdp_in_use": True}
    return {"sharded": True} if "sharded" in names else {}


def half(batch, rank):
    x, y = batch
    n = x.shape[0] // WORLD
    return x[rank * n:(rank + 1) * n], y[rank * n:(rank + 1) * n]


def step(opt, model, batch, closure: bool):
    from optim_helpers import loss_of

    def fn():  # (a line search re-evaluates it under no_grad: no backward there)
        opt.zero_grad()
        loss = loss_of(model, batch)
        if torch.is_grad_enabled():
            loss.backward()
        return loss

    if closure:
        opt.step(fn)
    else:
        fn()
        opt.step()


def build(wrapper, info, mesh, **extra):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    from optim_helpers import make_model

    cfg = {**config(info), **extra}
    model = make_model()
    if wrapper == "ddp":
        model = DDP(model)
        return model, model, info.cls(model.parameters(), **cfg)
    if wrapper == "zero":
        model = DDP(model)
        return model, model, ZeroRedundancyOptimizer(
            model.parameters(), optimizer_class=info.cls, **cfg, **sharded_kwargs(info))
    from torch.distributed.fsdp import fully_shard
    for m in model:
        if any(True for _ in m.parameters(recurse=False)):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, model, info.cls(model.parameters(), **cfg, **sharded_kwargs(info))


def full(params):
    from torch.distributed.tensor import DTensor
    return [(p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for p in params]


def train(wrapper, info, mesh, rank):
    from optim_helpers import batches
    model, _, opt = build(wrapper, info, mesh)
    data = batches()
    for i in range(STEPS):
        step(opt, model, half(data[i % len(data)], rank), "needs_closure" in info.tags)
    return full(model.parameters())


def nonfinite(wrapper, info, mesh, rank, mode):
    """One healthy step, then a NaN in one gradient entry that only one rank's optimizer
    sees (ZeRO: the parameter rank 0 owns; FSDP: rank 0's shard): every rank must skip (or
    raise) together. Returns ("ok", params before, params after, skipped) or the error."""
    from torch.distributed.tensor import DTensor

    from optim_helpers import batches, loss_of
    model, _, opt = build(wrapper, info, mesh, nonfinite=mode)
    data = batches()
    closure = "needs_closure" in info.tags
    step(opt, model, half(data[0], rank), closure)
    before = full(model.parameters())
    params = list(model.parameters())
    target = -1
    if wrapper == "zero":  # the first parameter rank 0's optimizer owns
        owned = {id(p) for g in opt.optim.param_groups for p in g["params"]}
        mine = [i for i, p in enumerate(params) if id(p) in owned]
        index = torch.tensor([mine[0] if rank == 0 else -1])
        dist.all_reduce(index, op=dist.ReduceOp.MAX)
        target = int(index)
    elif rank == 0:
        target = 0

    def poisoned():  # the gradient, with a NaN where only one rank's optimizer sees it
        opt.zero_grad()
        loss = loss_of(model, half(data[1], rank))
        if torch.is_grad_enabled():
            loss.backward()
            if target >= 0:
                g = params[target].grad
                (g.to_local() if isinstance(g, DTensor) else g).view(-1)[0] = float("nan")
        return loss

    try:
        if closure:  # (a line search computes the gradient inside step)
            opt.step(poisoned)
        else:
            poisoned()
            opt.step()
    except Exception as exc:  # noqa: BLE001 - reported to the test
        return ("error", type(exc).__name__, str(exc))
    local = opt.optim if wrapper == "zero" else opt
    return ("ok", before, full(model.parameters()), local.skipped_steps)


def guarded(wrapper, mesh, rank):
    """DivergenceGuard under DDP, ZeRO or FSDP2: a NaN loss on rank 0 only makes every rank
    roll back to the same snapshot (ZeRO: the local optimizer's state too) and back off."""
    import copy

    from lrkit import DivergenceGuard, Scheduler
    from optim_helpers import batches, loss_of, same_state
    from optim_registry import REGISTRY
    model, _, opt = build(wrapper, REGISTRY["Adam"], mesh)
    sched = Scheduler(opt, lr=0.01)
    guard = DivergenceGuard(model, opt, sched, window=2, min_history=1)
    local = opt.optim if wrapper == "zero" else opt
    data = batches()
    for i in range(4):
        loss = loss_of(model, half(data[i % len(data)], rank))
        if i == 3 and rank == 0:
            loss = loss * float("nan")
        if not guard.check(loss):
            continue
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i == 0:  # the second good loss snapshots this state
            params = full(model.parameters())
            state = copy.deepcopy(local.state_dict())
    return ("ok", len(guard.events), opt.param_groups[0]["lr"],
            all(torch.equal(a, b) for a, b in zip(full(model.parameters()), params)),
            same_state(local.state_dict()["state"], state["state"]), full(model.parameters()))


def worker(rank, init, out):
    torch.set_num_threads(1)
    sys.path[:0] = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    # a collective that one rank never reaches fails within TIMEOUT instead of gloo's
    # default 30 minutes
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=WORLD,
                            timeout=TIMEOUT)
    from torch.distributed.device_mesh import init_device_mesh

    from optim_registry import REGISTRY
    mesh = init_device_mesh("cpu", (WORLD,))
    results = {}
    for info in REGISTRY.values():
        for wrapper in WRAPPERS:
            if wrapper == "zero" and "replicated_only" in info.tags:
                continue  # (L-BFGS: its dot products need every parameter on every rank)
            try:
                results[(info.name, wrapper)] = ("ok", train(wrapper, info, mesh, rank))
            except Exception as exc:  # noqa: BLE001 - reported to the test
                results[(info.name, wrapper)] = ("error", type(exc).__name__,
                                                 f"{exc}\n{traceback.format_exc()}")
                dist.barrier()  # resynchronise the ranks after a failure on one of them
        for wrapper in ("zero", "fsdp"):
            for mode in ("skip", "raise"):
                if results.get((info.name, wrapper), ("skipped",))[0] != "ok":
                    continue
                try:
                    results[(info.name, wrapper, mode)] = nonfinite(wrapper, info, mesh, rank,
                                                                    mode)
                except Exception as exc:  # noqa: BLE001
                    results[(info.name, wrapper, mode)] = ("error", type(exc).__name__,
                                                           traceback.format_exc())
                dist.barrier()
    for wrapper in WRAPPERS:
        try:
            results[("guard", wrapper)] = guarded(wrapper, mesh, rank)
        except Exception as exc:  # noqa: BLE001
            results[("guard", wrapper)] = ("error", type(exc).__name__, traceback.format_exc())
        dist.barrier()
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    out = sys.argv[1]
    fd, path = tempfile.mkstemp(dir=out, suffix=".init")
    os.close(fd)
    os.unlink(path)  # the file store creates it
    mp.spawn(worker, args=("file://" + path, out), nprocs=WORLD)
