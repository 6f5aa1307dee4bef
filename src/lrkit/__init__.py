"""lrkit: everything about the learning rate of gradient-based training.

``from lrkit import schedules as S`` gives the schedule library (no torch needed);
``lrkit.Scheduler`` drives any torch optimizer from it; ``lrkit.find_lr`` runs the
learning-rate range test. Heavier parts are imported on
first use, so ``import lrkit`` stays light and never imports keras or jax.
"""
from __future__ import annotations

import importlib
from typing import Any

from lrkit import schedules
from lrkit.errors import SpecError

__version__ = "0.1.0"

_LAZY = {
    "Scheduler": "lrkit.scheduler",
    "Plateau": "lrkit.scheduler",
    "DivergenceGuard": "lrkit.guard",
    "DivergenceError": "lrkit.guard",
    "find_lr": "lrkit.finder",
    "LRFinderResult": "lrkit.finder",
    "LRFinderWarning": "lrkit.finder",
    "optim": "lrkit.optim",
    "NonFiniteGradientError": "lrkit.errors",
    "tune": "lrkit.tuning",
    "TuneResult": "lrkit.tuning",
    "autopilot": "lrkit.pilot",
    "AutopilotReport": "lrkit.pilot",
}

__all__ = ["SpecError", "schedules", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        return module if module.__name__ == f"lrkit.{name}" else getattr(module, name)
    raise AttributeError(f"module 'lrkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
