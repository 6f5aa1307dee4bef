"""The names of lrkit's schedule classes and how a schedule is rebuilt from its config.

``REGISTRY`` (name -> class) is filled by every ``Schedule`` subclass as it is defined;
``from_config`` rebuilds a schedule from ``s.to_config()``; ``ScheduleLike`` is what the
Scheduler and the adapters need of a schedule. Nothing here imports a schedule class, so
the Scheduler, the adapters and the text parser sit on this module, below the classes
(whose ``s.torch()``, ``s.keras()``, ``s.optax()`` and ``s.plot()`` call down into them).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from lrkit.errors import SpecError

REGISTRY: dict[str, type] = {}


@runtime_checkable
class ScheduleLike(Protocol):
    """A schedule as its users see it: ``s(step)``, ``s.evaluate(n, ops)`` on any array
    library, and ``s.to_config()`` (which ``from_config`` inverts)."""

    def __call__(self, step: Any) -> Any: ...

    def evaluate(self, n: Any, o: Any) -> Any: ...

    def to_config(self) -> dict[str, Any]: ...


def _value_from_config(v: Any, path: str) -> Any:
    if isinstance(v, dict):
        return from_config(v, _path=path)
    if isinstance(v, list):
        return [_value_from_config(x, f"{path}[{i}]") for i, x in enumerate(v)]
    return v


def from_config(config: Any, *, _path: str = "config") -> Any:
    """Rebuild a schedule from ``s.to_config()``; raises ``SpecError`` on anything else."""
    if not isinstance(config, dict):
        raise SpecError(f"{_path}: a schedule config must be a dict, got {type(config).__name__}")
    name = config.get("name")
    if not isinstance(name, str) or name not in REGISTRY:
        known = ", ".join(sorted(REGISTRY))
        raise SpecError(f"{_path}: unknown schedule name {name!r}; known: {known}")
    cls = REGISTRY[name]
    args = {}
    for key, value in config.items():
        if key == "name":
            continue
        if not isinstance(key, str):
            raise SpecError(f"{_path}: argument names must be strings, got {key!r}")
        args[key] = _value_from_config(value, f"{_path}.{key}")
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{_path}: {exc}") from None
    except RecursionError:
        raise SpecError(f"{_path}: config nested too deeply") from None
