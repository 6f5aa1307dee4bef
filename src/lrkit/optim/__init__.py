"""lrkit's optimizers: torch.optim's algorithms, exact and fast, that show the per-parameter
learning rate they apply (``effective_lr()``, ``lr_stats()``); and the methods that remove
the choice of a learning rate or of its schedule.

Every class is a ``torch.optim.Optimizer`` with its torch namesake's (or its authors'
package's) arguments, defaults and state layout, plus ``nonfinite=`` and ``impl=`` (see
:class:`LrkitOptimizer`):

* torch.optim's algorithms: SGD, Adagrad, Adadelta, RMSprop, Adam, AdamW, NAdam, RAdam,
  Adamax, Adafactor, and Lion;
* learning-rate-free: Prodigy, DAdaptAdam, DAdaptSGD, DoG, LDoG (with
  PolynomialDecayAverager), whose step size is estimated as they train
  (``estimated_lr()``; ``DEstimateWarning`` when the estimate stalls);
* schedule-free: ScheduleFreeAdamW, ScheduleFreeSGD (``train()``/``eval()``, and
  ``reestimate_batchnorm`` for the averaged weights);
* line search: SLS, whose ``step(closure)`` finds the step length on each minibatch;
  LBFGS (torch's L-BFGS with lrkit's line searches: ``lrkit.linesearch``), whose step
  length is set by the local curvature and a line search (``explain()`` shows it).

Facts about each class are class attributes (see :class:`LrkitOptimizer`):
``needs_closure``, ``lr_free``, ``recommended_lr``, ``recommended_family``,
``display_name``. The test configurations of each one (its reference, the argument
combinations its tests cover) live in the test suite, ``tests/optim_registry.py``.
"""
from __future__ import annotations

from lrkit.errors import NonFiniteGradientError
from lrkit.optim._lrfree import DEstimateWarning
from lrkit.optim.adafactor import Adafactor
from lrkit.optim.adagrad import Adadelta, Adagrad, RMSprop
from lrkit.optim.adam import Adam, Adamax, AdamW, NAdam, RAdam
from lrkit.optim.base import Explained, LrkitOptimizer, LrScaleWarning
from lrkit.optim.dadapt import DAdaptAdam, DAdaptSGD
from lrkit.optim.dog import DoG, LDoG, PolynomialDecayAverager
from lrkit.optim.lbfgs import LBFGS, QuasiNewtonStep
from lrkit.optim.lion import Lion
from lrkit.optim.prodigy import Prodigy
from lrkit.optim.schedulefree import (
    ScheduleFreeAdamW,
    ScheduleFreeModeWarning,
    ScheduleFreeSGD,
    reestimate_batchnorm,
)
from lrkit.optim.sgd import SGD
from lrkit.optim.sls import SLS

__all__ = [
    "SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "NAdam", "RAdam", "Adamax",
    "Lion", "Adafactor", "Prodigy", "DAdaptAdam", "DAdaptSGD", "DoG", "LDoG",
    "PolynomialDecayAverager", "ScheduleFreeAdamW", "ScheduleFreeSGD",
    "ScheduleFreeModeWarning", "reestimate_batchnorm",
    "SLS", "LBFGS", "QuasiNewtonStep", "DEstimateWarning", "LrkitOptimizer", "LrScaleWarning",
    "Explained", "NonFiniteGradientError",
]
