"""What the command line trains: a TARGET and an optimizer, named in text.

A TARGET is ``package.module:function``, a function of no arguments returning
``(model, loader, loss_fn)``, or the name of a built-in benchmark task (``lrkit.bench``).
The current directory is importable, as with ``python -m``, so ``train:setup`` finds
``setup`` in ``./train.py``. An optimizer is a ``torch.optim`` class name, any case,
optionally with keyword arguments: ``adam``, ``"sgd(momentum=0.9, nesterov=True)"``.

Every error is a ``TargetError`` whose message says what was wrong in one line.
"""
from __future__ import annotations

import ast
import importlib
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any


class TargetError(ValueError):
    """A TARGET or optimizer text that cannot be turned into what it names."""


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


def optimizer_classes() -> dict[str, type]:
    """Optimizer classes by lower-case name: lrkit.optim's (and their ``aliases``), then
    torch.optim's others."""
    import torch

    import lrkit.optim

    def found(module: Any, names: Iterable[str]) -> dict[str, type]:
        return {n.lower(): getattr(module, n) for n in names
                if isinstance(getattr(module, n, None), type)
                and issubclass(getattr(module, n), torch.optim.Optimizer)
                and n not in ("Optimizer", "LrkitOptimizer")}

    own = found(lrkit.optim, lrkit.optim.__all__)
    aliases = {alias: cls for cls in own.values() for alias in getattr(cls, "aliases", ())}
    return {**found(torch.optim, dir(torch.optim)), **own, **aliases}


def optimizer_factory(text: str) -> Callable[..., Any]:
    """``params, **defaults -> optimizer`` for an optimizer text such as
    ``"sgd(momentum=0.9)"``; the text's own arguments win over ``defaults``."""

    source = text.strip() if isinstance(text, str) else ""
    try:
        node = ast.parse(source, mode="eval").body
    except SyntaxError:
        node = None
    if isinstance(node, ast.Name):
        name, kwargs = node.id, {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        name = node.func.id
        try:
            kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
        except ValueError:
            raise TargetError(f"optimizer {text!r}: arguments must be literal values") from None
    else:
        raise TargetError(f"optimizer must be an optimizer class name with optional keyword "
                          f"arguments, e.g. 'adam' or 'sgd(momentum=0.9)', got {text!r}")
    classes = optimizer_classes()
    cls = classes.get(name.lower())
    if cls is None:
        raise TargetError(f"optimizer {name!r} is neither in lrkit.optim nor in torch.optim; "
                          f"one of {', '.join(sorted(classes))}")

    def make(params: Any, **defaults: Any) -> Any:
        try:
            return cls(params, **{**defaults, **kwargs})
        except (TypeError, ValueError) as exc:
            raise TargetError(f"optimizer {text!r}: {exc}") from exc

    return make
