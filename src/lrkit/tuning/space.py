"""The search space of ``lrkit.tune``: distributions, the default space, drawing a setting
from an Optuna trial, and the schedule a setting describes."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lrkit import _checks as C
from lrkit import schedules as S

# the families of S.family that tune searches by default: those the arena compares, less
# linear (the autopilot's default), as issue 8 specified the space
DEFAULT_FAMILIES = tuple(f for f in S.COMPARED if f != "linear")


@dataclass(frozen=True)
class LogUniform:
    """A float drawn log-uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        C.positive("LogUniform()", "low", self.low)
        if C.positive("LogUniform()", "high", self.high) < self.low:
            raise ValueError(f"LogUniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        C.real("Uniform()", "low", self.low)
        if C.real("Uniform()", "high", self.high) < self.low:
            raise ValueError(f"Uniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class IntUniform:
    """An integer drawn from [low, high] (log-spaced with ``log=True``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        C.boolean("IntUniform()", "log", self.log)
        C.integer("IntUniform()", "low", self.low)
        if C.integer("IntUniform()", "high", self.high) < self.low:
            raise ValueError(f"IntUniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Categorical:
    """One of ``choices``."""

    choices: tuple[Any, ...]

    def __init__(self, choices: Any) -> None:
        items = tuple(C.sequence("Categorical()", "choices", choices, min_len=1))
        object.__setattr__(self, "choices", items)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))


Distribution = LogUniform | Uniform | IntUniform | Categorical
Space = Mapping[str, Distribution] | Callable[[Any], dict[str, Any]]


def default_space(lr_suggestion: float | None = None,
                  families: tuple[str, ...] = DEFAULT_FAMILIES) -> dict[str, Distribution]:
    """The default search space.

    ``lr``: log-uniform over [suggestion / 100, suggestion * 10] (clipped to [1e-6, 10])
    when a range-test suggestion is known, else [1e-5, 1]; ``schedule``: a family of
    ``S.family``; ``warmup``: the warmup fraction in [0, 0.2]; ``momentum``: SGD's momentum
    or Adam's beta1 in [0.8, 0.99].
    """
    families = tuple(C.sequence("default_space()", "families", families, min_len=1))
    if lr_suggestion is not None:
        lr_suggestion = C.positive("default_space()", "lr_suggestion", lr_suggestion)
        low, high = max(lr_suggestion / 100, 1e-6), min(lr_suggestion * 10, 10.0)
        lr = LogUniform(low, max(high, low * 10))
    else:
        lr = LogUniform(1e-5, 1.0)
    return {"lr": lr, "schedule": Categorical(families), "warmup": Uniform(0.0, 0.2),
            "momentum": Uniform(0.8, 0.99)}


def sample(space: Space, trial: Any) -> dict[str, Any]:
    """Draw one setting from a dict of distributions or an Optuna-style function."""
    if callable(space) and not isinstance(space, Mapping):
        params = space(trial)
        if not isinstance(params, Mapping):
            raise TypeError(f"tune(): a space function must return a dict of settings, got "
                            f"{type(params).__name__}")
        return dict(params)
    out = {}
    for name, dist in space.items():
        if not hasattr(dist, "suggest"):
            raise TypeError(f"tune(): space[{name!r}] must be an lrkit distribution "
                            f"(LogUniform, Uniform, IntUniform, Categorical), got {dist!r}")
        out[name] = dist.suggest(trial, name)
    return out


def schedule_of(params: Mapping[str, Any], steps: int) -> S.Schedule | None:
    """The schedule a setting describes (``lr``, ``schedule`` family, ``warmup``)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"schedule_of(): params must be a dict of settings, got "
                        f"{type(params).__name__}")
    steps = C.positive_int("schedule_of()", "steps", steps)
    if "lr" not in params:
        return None
    name = params.get("schedule", "constant")
    return S.family(name, float(params["lr"]), steps, float(params.get("warmup", 0.0)))
