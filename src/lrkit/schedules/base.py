"""The ``Schedule`` base class: a pure, vectorised function of the optimizer step.

A schedule is defined by its constructor arguments alone. From them it derives its
evaluation (``s(n)``), its JSON-able config (``s.to_config()``), its text form
(``str(s)``, which ``S.parse`` reads back) and equality. Subclasses implement
``_eval(n, o)``: the formula, written against the array operations ``o`` so the same
code runs on numpy, jax and keras (see ``_ops``).
"""
from __future__ import annotations

import copy
import inspect
import math
import numbers
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lrkit import _checks as C
from lrkit.schedules._ops import NUMPY, Ops
from lrkit.schedules.registry import REGISTRY, StepCache, from_config  # noqa: F401

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.axes


#: the largest integer argument a schedule takes: float64 counts steps exactly up to it
MAX_STEPS = C.MAX_STEPS
#: the most steps ``Schedule.peak`` evaluates one by one (and how many it spreads beyond)
PEAK_EXACT = 2**20


class Schedule:
    """Base class of every schedule. ``s(n)`` is the learning rate used by update ``n``.

    Steps count optimizer updates from 0. ``s(int)`` returns a float, ``s(array)`` a float64
    numpy array of the same shape, computed without a Python loop over steps.
    """

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            REGISTRY[cls.name] = cls

    # -- construction -------------------------------------------------------------
    def _set(self, **params: Any) -> None:
        """Store the validated constructor arguments, in signature order. Integer
        arguments (step counts, also inside lists) must be at most ``MAX_STEPS`` (2**53,
        where float64, in which schedules are evaluated, stops counting exactly)."""
        for name, value in params.items():
            for v in (value if type(value) in (list, tuple) else (value,)):
                if type(v) is int and abs(v) > MAX_STEPS:
                    got = C.shown(v) if type(value) is int else C.shown(value)
                    raise ValueError(
                        f"{self.name}(): {name} must be at most 2**53 "
                        f"({MAX_STEPS}: steps are counted in float64), got {got}")
        self._params = params

    @property
    def params(self) -> dict[str, Any]:
        """The constructor arguments (validated, canonical types)."""
        return dict(self._params)

    # -- evaluation ---------------------------------------------------------------
    def _eval(self, n: Any, o: Ops) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def evaluate(self, n: Any, o: Ops) -> Any:
        """The formula on an array of steps (float dtype) in the backend ``o``.

        Outside numpy (jax, keras) the integer arguments, and those in lists and tuples
        (milestones, boundaries), enter as floats: those backends read a Python int as
        int32 and overflow from 2**31 (``total=10**10``)."""
        if o.xp is np:
            return self._eval(n, o)
        floats = copy.copy(self)
        floats._params = {k: _floated(v) for k, v in self._params.items()}
        return floats._eval(n, o)

    def __call__(self, step: Any) -> Any:
        if isinstance(step, (numbers.Integral, float)) and not isinstance(step, bool):
            return self._one(np.asarray([step]))
        if isinstance(step, bool) or isinstance(step, (str, bytes)):
            raise TypeError(f"{self.name}(): step must be an integer or an array of integers,"
                            f" got {step!r}")
        arr = np.asarray(_tensor_to_host(step))
        if arr.ndim == 0:
            return self._one(arr.reshape(1))
        return np.asarray(self._eval(_as_steps(arr), NUMPY), dtype=np.float64)

    def _one(self, arr: np.ndarray) -> float:
        """One step, evaluated as a 1-element array: numpy's vectorised loops (SIMD pow,
        exp, cos...) and its 0-dim scalar path may differ in the last bit, and ``s(n)``
        must equal ``s(steps)[i]`` exactly (the Scheduler serves blocks of the latter)."""
        out = self._eval(_as_steps(arr), NUMPY)
        return float(np.asarray(out, dtype=np.float64).reshape(-1)[0])

    # -- config and text ----------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """A JSON-able dict; ``S.from_config`` rebuilds an equal schedule."""
        return {"name": self.name, **{k: _value_to_config(v) for k, v in self._params.items()}}

    def __str__(self) -> str:
        # the first argument positionally, the others by keyword, defaults left out
        sig = inspect.signature(type(self).__init__)
        parts = []
        for i, (pname, p) in enumerate(list(sig.parameters.items())[1:]):
            value = self._params[pname]
            if i == 0:
                parts.append(_value_to_text(value))
            elif p.default is inspect.Parameter.empty or not _same(value, p.default):
                parts.append(f"{pname}={_value_to_text(value)}")
        return f"{self.name}({', '.join(parts)})"

    def __repr__(self) -> str:
        return f"S.{self}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.to_config() == other.to_config()

    def __hash__(self) -> int:
        return hash(str(self))

    def __reduce__(self):
        return (from_config, (self.to_config(),))

    # -- composition --------------------------------------------------------------
    def __mul__(self, other: Any) -> Schedule:
        return Product([self, other])

    def __rmul__(self, other: Any) -> Schedule:
        return Product([other, self])

    # -- use ----------------------------------------------------------------------
    def peak(self, steps: int) -> float:
        """The largest value over steps 0..steps-1 (``steps`` from 1 to 2**53).

        Up to ``PEAK_EXACT`` steps every step counts; beyond, the first ``PEAK_EXACT``
        steps (where warmups and rises peak) and ``PEAK_EXACT`` more evenly spread over
        the rest: the largest of those, as a budget of 10**12 steps would otherwise need
        terabytes. A peak narrower than the spacing, ``steps / PEAK_EXACT``, may be missed.
        """
        steps = C.steps("peak()", "steps", steps)
        n = np.arange(min(steps, PEAK_EXACT))
        if steps > PEAK_EXACT:
            spread = np.linspace(0, steps - 1, PEAK_EXACT).round().astype(np.int64)
            n = np.concatenate([n, spread])
        return float(np.max(self(n)))

    def plot(self, steps: int, ax: matplotlib.axes.Axes | None = None, **kwargs: Any):
        """Draw the schedule over ``steps`` steps with matplotlib; returns the Axes."""
        from lrkit.plot import plot_schedules

        return plot_schedules([self], steps, ax=ax, **kwargs)

    def torch(self, optimizer: Any, **kwargs: Any):
        """``lrkit.Scheduler(optimizer, lr=self, **kwargs)``."""
        from lrkit.scheduler import Scheduler

        return Scheduler(optimizer, lr=self, **kwargs)

    def keras(self):
        """A ``keras.optimizers.schedules.LearningRateSchedule`` computing this schedule."""
        from lrkit.adapters.keras import to_keras

        return to_keras(self)

    def optax(self):
        """A jit-compatible optax schedule (a callable on jax integer arrays)."""
        from lrkit.adapters.optax import to_optax

        return to_optax(self)


def _floated(v: Any) -> Any:
    """``v`` with its Python ints, and those of a list or tuple, as floats."""
    if type(v) is int:
        return float(v)
    if type(v) in (list, tuple):
        return type(v)(_floated(x) for x in v)
    return v


def _tensor_to_host(step: Any) -> Any:
    """A torch tensor of steps as one numpy reads: detached from autograd, on the CPU, and
    bfloat16 widened to float32 (exact: it holds integers only up to 256 anyway). Other
    values pass unchanged; schedules import no torch, so tensors are recognised by module."""
    if type(step).__module__.split(".")[0] != "torch" or not hasattr(step, "detach"):
        return step
    step = step.detach().cpu()
    return step.float() if str(step.dtype) == "torch.bfloat16" else step


def _as_steps(arr: np.ndarray) -> np.ndarray:
    """Validate an array of steps (non-negative integers) and convert it to float64."""
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"step must be an integer or an array of integers, got dtype {arr.dtype}")
    n = arr.astype(np.float64, copy=False)
    if n.size:
        if np.issubdtype(arr.dtype, np.floating) and not np.all(np.floor(n) == n):
            raise ValueError("step must be an integer (optimizer updates counted from 0)")
        if n.min() < 0:
            raise ValueError(f"step must be >= 0, got {arr.min()!r}")
    return n


def _same(a: Any, b: Any) -> bool:
    """Whether a stored argument equals its default (so the text form may omit it)."""
    return not isinstance(a, (list, tuple)) and type(a) is type(b) and a == b


def _value_to_config(v: Any) -> Any:
    if isinstance(v, Schedule):
        return v.to_config()
    if isinstance(v, (list, tuple)):
        return [_value_to_config(x) for x in v]
    return v


def _value_to_text(v: Any) -> str:
    if isinstance(v, Schedule):
        return str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value_to_text(x) for x in v) + "]"
    return repr(v)


def _check_known_product(fn: str, factors: list[Any]) -> None:
    """Refuse factors whose known values (numbers, constant schedules) multiply, in the
    order ``_eval`` multiplies them, past float64's largest number: every step would be inf."""
    known = [f.params["lr"] if isinstance(f, Schedule) and f.name == "constant" else f
             for f in factors if not isinstance(f, Schedule) or f.name == "constant"]
    if 0.0 in known:
        return
    value = 1.0
    for v in known:
        value *= v
        if math.isinf(value):
            raise ValueError(f"{fn}: the factors' values {', '.join(map(repr, known))} "
                             "multiply past float64's largest number (the rate would be "
                             "inf at every step)")


class Product(Schedule):
    """The pointwise product of schedules and constants: ``s * 0.5``, ``s1 * s2``."""

    name = "product"

    def __init__(self, factors: list[Schedule | float]) -> None:
        fn = "product()"
        items: list[Schedule | float] = []
        for i, f in enumerate(C.sequence(fn, "factors", factors, min_len=1)):
            if isinstance(f, Product):
                items.extend(f.params["factors"])
            elif isinstance(f, Schedule):
                items.append(f)
            elif isinstance(f, numbers.Real) and not isinstance(f, bool):
                items.append(C.nonnegative(fn, f"factors[{i}]", f))
            else:
                raise TypeError(
                    f"{fn}: factors[{i}] must be a Schedule or a number, got {C.shown(f)}")
        _check_known_product(fn, items)
        self._set(factors=items)

    def _eval(self, n: Any, o: Ops) -> Any:
        out = o.full_like(n, 1.0)
        for f in self._params["factors"]:
            out = out * (f.evaluate(n, o) if isinstance(f, Schedule) else f)
        return out

    def __str__(self) -> str:
        # ``a * 0.5`` where it reads back as this product: with two factors or more, one of
        # them a schedule (text folds a product of numbers into one number, and one factor
        # is no product at all); else the call, ``product([0.5])``
        if not self._as_operator():
            return super().__str__()
        return " * ".join(str(f) if isinstance(f, Schedule) else repr(f)
                          for f in self._params["factors"])

    def __repr__(self) -> str:  # Python, with S = lrkit.schedules: each factor's repr
        factors = [repr(f) for f in self._params["factors"]]
        return " * ".join(factors) if self._as_operator() else \
            f"S.product([{', '.join(factors)}])"

    def _as_operator(self) -> bool:
        factors = self._params["factors"]
        return len(factors) > 1 and any(isinstance(f, Schedule) for f in factors)
