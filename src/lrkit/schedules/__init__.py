"""Learning-rate schedules: pure, vectorised functions of the optimizer step.

``from lrkit import schedules as S``; ``S.cosine(0.1, total=1000)(np.arange(1000))``.
Nothing here imports torch, keras or jax: the adapters (``s.torch``, ``s.keras``,
``s.optax``) do, when asked.
"""
from lrkit.errors import SpecError
from lrkit.schedules import families
from lrkit.schedules.base import REGISTRY, Schedule, from_config
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
from lrkit.schedules.parse import parse


def as_schedule(value: "Schedule | str | float") -> Schedule:
    """A schedule from a Schedule, spec text or a constant number."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, str):
        return parse(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            return constant(value)
        except ValueError as exc:
            raise ValueError(f"as_schedule(): value must be a Schedule, spec text or a "
                             f"non-negative finite number, got {value!r}") from exc
    raise TypeError(f"as_schedule(): value must be a Schedule, spec text or a number, got "
                    f"{value!r}")


__all__ = [
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
