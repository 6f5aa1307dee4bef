"""What the command line trains: a TARGET and an optimizer, named in text.

A TARGET is ``package.module:function``, a function of no arguments returning
``(model, loader, loss_fn)``, or the name of a built-in benchmark task (``lrkit.bench``).
The current directory is importable, as with ``python -m``, so ``train:setup`` finds
``setup`` in ``./train.py``. An optimizer is a ``torch.optim`` class name, any case,
optionally with keyword arguments: ``adam``, ``"sgd(momentum=0.9, nesterov=True)"``.

Every error is a ``TargetError`` whose message says what was wrong in one line.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lrkit.errors import TargetError
from lrkit.optim.names import optimizer_classes, optimizer_factory

__all__ = ["Target", "TargetError", "load_target", "optimizer_classes", "optimizer_factory"]


@dataclass
class Target:
    name: str
    model: Any
    loader: Iterable[Any]
    loss_fn: Callable[[Any, Any], Any]


def load_target(text: str, seed: int = 0) -> Target:
    """The model, loader and loss of a TARGET (a built-in task is built from ``seed``)."""
    if not isinstance(text, str) or not text.strip():
        raise TargetError(f"TARGET must be 'package.module:function' or a built-in task name, "
                          f"got {text!r}")
    text = text.strip()
    if ":" not in text:
        from lrkit.bench.tasks import TASKS

        if text not in TASKS:
            raise TargetError(f"TARGET {text!r} is neither 'package.module:function' nor a "
                              f"built-in task ({', '.join(TASKS)})")
        model, loader, loss_fn = TASKS[text].build(seed).as_target()
        return Target(text, model, loader, loss_fn)
    module_name, _, attr = text.partition(":")
    if not module_name or not attr:
        raise TargetError(f"TARGET {text!r} must be 'package.module:function'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise TargetError(f"cannot import {module_name!r} for TARGET {text!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise TargetError(f"module {module_name!r} has no {attr!r} (TARGET {text!r})")
        fn = getattr(fn, part)
    if not callable(fn):
        raise TargetError(f"TARGET {text!r} must name a function, got a {type(fn).__name__}")
    try:
        value = fn()
    except Exception as exc:
        raise TargetError(f"TARGET {text!r} raised {type(exc).__name__}: {exc}") from exc
    return Target(text, *_check_shape(text, value))


def _check_shape(text: str, value: Any) -> tuple[Any, Any, Any]:
    import torch

    shape = "(model, loader, loss_fn)"
    if not isinstance(value, (tuple, list)) or len(value) != 3:
        what = (f"a {type(value).__name__} of length {len(value)}"
                if isinstance(value, (tuple, list)) else f"a {type(value).__name__}")
        raise TargetError(f"TARGET {text!r} must return {shape}, got {what}")
    model, loader, loss_fn = value
    if not isinstance(model, torch.nn.Module):
        raise TargetError(f"TARGET {text!r} must return {shape}: model must be a "
                          f"torch.nn.Module, got a {type(model).__name__}")
    if not isinstance(loader, Iterable):
        raise TargetError(f"TARGET {text!r} must return {shape}: loader must be an iterable "
                          f"of (inputs, targets) batches, got a {type(loader).__name__}")
    if not callable(loss_fn):
        raise TargetError(f"TARGET {text!r} must return {shape}: loss_fn must be callable, "
                          f"got a {type(loss_fn).__name__}")
    try:
        first = next(iter(loader))
    except StopIteration:
        raise TargetError(f"TARGET {text!r}: its loader yields no batches") from None
    if not isinstance(first, (tuple, list)) or len(first) != 2:
        raise TargetError(f"TARGET {text!r}: its loader must yield (inputs, targets) pairs, "
                          f"the first batch is a {type(first).__name__}"
                          + (f" of length {len(first)}" if isinstance(first, (tuple, list))
                             else ""))
    return model, loader, loss_fn
