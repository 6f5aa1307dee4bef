"""In-memory snapshots of a model, an optimizer and a grad scaler, restored bit for bit.

``snap = Snapshot(model, optimizer, scaler); ...; snap.restore()`` puts back the values of
every parameter, gradient and buffer, each module's ``training`` flag, the optimizer's
state and param-group settings (and those of the local optimizer a wrapper such as
``ZeroRedundancyOptimizer`` holds in ``.optim``), the scaler's scale and counters, and
(unless ``rng=False``) the global random number generators. Tensors are copied to host
memory (so a GPU model does not need twice its memory on the device) and copied back *into
the original tensor objects*, so references held elsewhere (tied weights, views, an LR
scheduler's param groups) stay valid.
Nothing is written to disk.
"""
from __future__ import annotations

import copy
from typing import Any

import torch

from lrkit._rng import capture_rng, restore_rng


class _Saved:
    """A tensor saved by value, with the object it came from and its device."""

    __slots__ = ("obj", "value", "device")

    def __init__(self, obj: torch.Tensor) -> None:
        self.obj = obj
        self.device = obj.device
        self.value = obj.detach().to("cpu", copy=True)

    def load(self) -> torch.Tensor:
        obj, value = self.obj, self.value
        with torch.no_grad():
            if obj.shape == value.shape and obj.dtype == value.dtype and obj.device == self.device:
                obj.copy_(value)
            else:  # moved, cast or resized meanwhile: re-point the same object at the old data
                obj.data = value.to(self.device)
        return obj


def save_tree(x: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of a nest of dicts, lists and tuples, its tensors saved by value."""
    memo = {} if memo is None else memo
    if torch.is_tensor(x):
        if id(x) not in memo:
            memo[id(x)] = _Saved(x)
        return memo[id(x)]
    if isinstance(x, dict):
        out = copy.copy(x)  # keeps the type (OrderedDict, defaultdict and its factory)
        out.clear()
        out.update((k, save_tree(v, memo)) for k, v in x.items())
        return out
    if isinstance(x, list):
        return [save_tree(v, memo) for v in x]
    if isinstance(x, tuple):
        items = [save_tree(v, memo) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return copy.deepcopy(x)


def load_tree(x: Any) -> Any:
    """The inverse of ``save_tree``: original tensor objects, holding their saved values."""
    if isinstance(x, _Saved):
        return x.load()
    if isinstance(x, dict):
        out = copy.copy(x)
        out.clear()
        out.update((k, load_tree(v)) for k, v in x.items())
        return out
    if isinstance(x, list):
        return [load_tree(v) for v in x]
    if isinstance(x, tuple):
        items = [load_tree(v) for v in x]
        return type(x)(*items) if hasattr(x, "_fields") else tuple(items)
    return copy.deepcopy(x)


_SCALARS = (bool, int, float, str, type(None))


class Snapshot:
    """Everything a training step can change, saved now and restored by ``restore()``."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scaler: Any = None, *, rng: bool = True) -> None:
        memo: dict[int, Any] = {}
        self.rng = capture_rng() if rng else None
        self.model = model
        self.modules = [(m, m.training, dict(m._parameters), dict(m._buffers))
                        for m in model.modules()]
        tensors = {id(t): t for _, _, ps, bs in self.modules
                   for t in (*ps.values(), *bs.values()) if t is not None}
        tensors.update((id(p), p) for g in optimizer.param_groups for p in g["params"])
        self.tensors = [(save_tree(t, memo), save_tree(t.grad, memo)) for t in tensors.values()]
        inner = getattr(optimizer, "optim", None)  # ZeroRedundancyOptimizer's local one
        self.optimizers = [_SavedOptimizer(o, memo) for o in (
            optimizer, *([inner] if isinstance(inner, torch.optim.Optimizer) else []))]
        self.scaler = scaler
        self.scaler_attrs = None if scaler is None else save_tree(dict(vars(scaler)), memo)

    def restore(self) -> None:
        for module, training, params, buffers in self.modules:
            module.training = training
            module._parameters.clear()
            module._parameters.update(params)
            module._buffers.clear()
            module._buffers.update(buffers)
        for value, grad in self.tensors:
            tensor = value.load()
            tensor.grad = None if grad is None else grad.load()
        for saved in self.optimizers:
            saved.restore()
        if self.scaler is not None:
            for k, v in load_tree(self.scaler_attrs).items():
                setattr(self.scaler, k, v)
        if self.rng is not None:
            restore_rng(self.rng)


class _SavedOptimizer:
    """An optimizer's state and param-group settings, restored into the same containers."""

    def __init__(self, optimizer: torch.optim.Optimizer, memo: dict[int, Any]) -> None:
        self.optimizer = optimizer
        self.containers = (optimizer.param_groups, list(optimizer.param_groups),
                           optimizer.state)
        self.groups = [{k: None if k == "params" else save_tree(v, memo) for k, v in g.items()}
                       for g in optimizer.param_groups]
        self.state = save_tree(dict(optimizer.state), memo)
        self.attrs = {k: v for k, v in vars(optimizer).items() if isinstance(v, _SCALARS)}

    def restore(self) -> None:
        opt = self.optimizer
        groups_list, groups, state = self.containers
        for group, saved in zip(groups, self.groups):
            params = group["params"]
            group.clear()
            for k, v in saved.items():  # in the original key order
                group[k] = params if k == "params" else load_tree(v)
        groups_list[:] = groups
        opt.param_groups = groups_list
        state.clear()
        state.update(load_tree(self.state))
        opt.state = state
        for k, v in self.attrs.items():
            setattr(opt, k, v)
