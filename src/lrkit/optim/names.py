"""Optimizer classes by name, and optimizers from text such as ``"sgd(momentum=0.9)"``:
lrkit.optim's classes (and their ``aliases``), then torch.optim's others."""
from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from typing import Any

from lrkit.errors import TargetError


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
