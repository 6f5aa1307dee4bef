"""lrkit's optimizers: torch.optim's algorithms, exact and fast, that show the per-parameter
learning rate they apply (``effective_lr()``, ``lr_stats()``).

Every class is a ``torch.optim.Optimizer`` with its torch namesake's arguments, defaults
and state layout, plus ``nonfinite=`` and ``impl=`` (see :class:`LrkitOptimizer`).
``REGISTRY`` lists each one with its reference and the argument combinations its tests
cover.
"""
from __future__ import annotations

from lrkit.errors import NonFiniteGradientError
from lrkit.optim.adafactor import Adafactor
from lrkit.optim.adagrad import Adadelta, Adagrad, RMSprop
from lrkit.optim.adam import Adam, Adamax, AdamW, NAdam, RAdam
from lrkit.optim.base import Explained, LrkitOptimizer
from lrkit.optim.lion import Lion
from lrkit.optim.registry import REGISTRY, OptimizerInfo
from lrkit.optim.sgd import SGD

__all__ = [
    "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Adamax",
    "Lion", "Adafactor", "LrkitOptimizer", "Explained", "NonFiniteGradientError",
    "REGISTRY", "OptimizerInfo",
]
