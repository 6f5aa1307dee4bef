"""Learning-rate schedules: pure, vectorised functions of the optimizer step.

``from lrkit import schedules as S``; ``S.cosine(0.1, total=1000)(np.arange(1000))``.
Nothing here imports torch, keras or jax: the adapters (``s.torch``, ``s.keras``,
``s.optax``) do, when asked.
"""
from lrkit.errors import SpecError
from lrkit.schedules import families
from lrkit.schedules.base import MAX_STEPS, Schedule
from lrkit.schedules.classic import (
    Exponential,
    StepBased,
    TimeBased,
    exponential,
    step_based,
    time_based,
)
from lrkit.schedules.combinators import (
    Clip,
    Join,
    Product,
    Warmup,
    clip,
    join,
    product,
    warmup,
)
from lrkit.schedules.cyclic import (
    CosineRestarts,
    Cyclic,
    OneCycle,
    cosine_restarts,
    cyclic,
    one_cycle,
)
from lrkit.schedules.decay import (
    WSD,
    Constant,
    Cosine,
    ExponentialDecay,
    InverseSqrt,
    InverseTime,
    Linear,
    MultiStep,
    Piecewise,
    Polynomial,
    Step,
    constant,
    cosine,
    exponential_decay,
    inverse_sqrt,
    inverse_time,
    linear,
    multistep,
    piecewise,
    polynomial,
    step,
    wsd,
)
from lrkit.schedules.families import COMPARED, FAMILIES, family
from lrkit.schedules.parse import as_schedule, parse
from lrkit.schedules.registry import REGISTRY, from_config

__all__ = [
    "MAX_STEPS",
    "REGISTRY", "Schedule", "SpecError", "as_schedule", "from_config", "parse",
    "COMPARED", "FAMILIES", "families", "family",
    "Exponential", "StepBased", "TimeBased", "exponential", "step_based", "time_based",
    "Clip", "Join", "Product", "Warmup", "clip", "join", "product", "warmup",
    "CosineRestarts", "Cyclic", "OneCycle", "cosine_restarts", "cyclic", "one_cycle",
    "WSD", "Constant", "Cosine", "ExponentialDecay", "InverseSqrt", "InverseTime", "Linear",
    "MultiStep", "Piecewise", "Polynomial", "Step", "constant", "cosine", "exponential_decay",
    "inverse_sqrt", "inverse_time", "linear", "multistep", "piecewise", "polynomial", "step",
    "wsd",
]
