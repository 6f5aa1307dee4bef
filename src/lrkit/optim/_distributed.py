"""What a step does in multi-process training: DTensor shards (FSDP2) and agreed decisions.

* **DTensor parameters** (``torch.distributed.fsdp.fully_shard``, or any DTensor): for the
  duration of a step, :class:`LocalShards` puts each rank's local shard (``to_local()``, the
  same storage) in the param groups in place of the DTensor, with its local gradient and
  local state, so every implementation (lrkit's kernel included) runs unchanged on plain
  tensors; afterwards the state is put back under the DTensor, new state tensors shaped
  like the shard wrapped as DTensors of the same placement. That is exact for
  elementwise algorithms. An algorithm with per-tensor reductions (Adafactor's norms and
  row/column means) sums its local partial results with :func:`shard_sum`.
* **Agreed decisions**: whether any rank met a non-finite gradient is all-reduced
  (:func:`any_rank`), so under ZeRO or FSDP, where each rank sees only some gradients,
  every rank raises or skips together instead of one of them stepping alone (or hanging).
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor


def is_dtensor(t: Any) -> bool:
    """True for a DTensor (without importing torch.distributed.tensor when nothing has)."""
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


def world_size() -> int:
    """The number of processes of the default group (1 when torch.distributed is not set up)."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """``flag`` or-ed over every process of the default group (one all-reduce of one
    number; no communication in a single process or while torch.compile traces)."""
    if world_size() <= 1 or torch.compiler.is_compiling():
        return flag
    dist = torch.distributed
    if device is None or (device.type == "cpu" and dist.get_backend() == "nccl"):
        device = torch.device("cuda", torch.cuda.current_device()) \
            if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


class Shard:
    """Where a local tensor sits in its DTensor: global shape, mesh, placements."""

    __slots__ = ("shape", "mesh", "placements")

    def __init__(self, dt: Any) -> None:
        self.shape, self.mesh, self.placements = dt.shape, dt.device_mesh, dt.placements

    def numel(self) -> int:
        return self.shape.numel()

    def sharded_dims(self) -> set[int]:
        n = len(self.shape)
        return {pl.dim % n for pl in self.placements if pl.is_shard()}


def shard_sum(shard: Shard | None, t: Tensor, dims: tuple[int, ...] | None = None) -> Tensor:
    """``t`` (a partial sum over the local shard along ``dims``, None: all dims) summed over
    the ranks that hold the other parts; in place, returned. The identity for ``None``."""
    if shard is None:
        return t
    n = len(shard.shape)
    over = set(range(n)) if dims is None else {d % n for d in dims}
    for mesh_dim, pl in enumerate(shard.placements):
        if pl.is_shard() and pl.dim % n in over:
            torch.distributed.all_reduce(t, group=shard.mesh.get_group(mesh_dim))
    return t


class LocalShards:
    """Swap DTensor parameters for their local shards for one step (see the module)."""

    def __init__(self, opt: Any) -> None:
        self.opt = opt
        self.groups: list[tuple[dict[str, Any], list[Any]]] = []
        self.swapped: list[tuple[Any, Tensor, dict[str, Any]]] = []

    def __enter__(self) -> dict[int, Shard]:
        from torch.distributed.tensor import DTensor

        opt, state = self.opt, self.opt.state
        shards: dict[int, Shard] = {}
        for group in opt.param_groups:
            params = group["params"]
            if not any(isinstance(p, DTensor) for p in params):
                continue
            local = []
            for p in params:
                if not isinstance(p, DTensor):
                    local.append(p)
                    continue
                lp = p.to_local()
                g = p.grad
                lp.grad = g.to_local() if isinstance(g, DTensor) else g
                saved = state.pop(p, None)
                originals: dict[str, Any] = {}
                if saved:
                    loc = {}
                    for k, v in saved.items():
                        if isinstance(v, DTensor):
                            originals[k] = (v, v.to_local())
                            loc[k] = originals[k][1]
                        else:
                            loc[k] = v
                    state[lp] = loc
                self.swapped.append((p, lp, originals))
                shards[id(lp)] = Shard(p)
                local.append(lp)
            self.groups.append((group, params))
            group["params"] = local
        return shards

    def __exit__(self, *exc: Any) -> None:
        from torch.distributed.tensor import DTensor

        state = self.opt.state
        for group, params in self.groups:
            group["params"] = params
        for p, lp, originals in self.swapped:
            lp.grad = None
            loc = state.pop(lp, None)
            if loc is None:
                continue
            back = {}
            for k, v in loc.items():
                if k in originals and originals[k][1] is v:
                    back[k] = originals[k][0]
                elif isinstance(v, Tensor) and v.dim() > 0 and v.shape == lp.shape:
                    back[k] = DTensor.from_local(v, p.device_mesh, p.placements,
                                                 run_check=False, shape=p.shape,
                                                 stride=p.stride())
                else:
                    back[k] = v
            state[p] = back
