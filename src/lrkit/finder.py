"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural
networks", section 3.3) and the rules that turn its curve into a suggestion.

``find_lr`` trains for ``steps`` optimizer steps while the learning rate rises from
``start`` to ``end`` (geometrically, or linearly), records the loss (and the norms and
overlaps of consecutive gradients, whence the gradient noise scale) at each step, stops
once the loss blows up, and puts the model, the optimizer, the grad scaler and the global
random generators back exactly as they were. The recorded curve goes to every rule of
``RULES``; ``LRFinderResult.suggestion`` is the one of ``DEFAULT_RULE``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit._snapshot import Snapshot
from lrkit.loop import Step, batch_loss, evaluating
from lrkit.scheduler import Scheduler

_FN = "find_lr()"
MODES = ("exp", "linear")


class LRFinderWarning(UserWarning):
    """A doubt about a range test's curve (also listed in ``LRFinderResult.warnings``)."""


# -- suggestion rules ------------------------------------------------------------------
# A rule maps the recorded curve (the finite points only, in sweep order) to a learning
# rate, or None when the curve is too short to say anything.
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray], "float | None"]
MIN_POINTS = 5


def _curves(fn: str, **arrays: Any) -> list[np.ndarray]:
    """The named arguments as 1-d float64 arrays of one length (TypeError or ValueError
    naming the argument otherwise)."""
    out = []
    for name, value in arrays.items():
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{fn}: {name} must be a 1-d array of numbers, got {value!r:.40}")
        try:
            a = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{fn}: {name} must be a 1-d array of numbers, got "
                            f"{value!r:.40}") from None
        if a.ndim != 1:
            raise ValueError(f"{fn}: {name} must be 1-d, got shape {a.shape}")
        if out and len(a) != len(out[0]):
            first = next(iter(arrays))
            raise ValueError(f"{fn}: {name} must have as many points as {first} "
                             f"({len(out[0])}), got {len(a)}")
        out.append(a)
    return out


def _fastai_window(n: int) -> slice:
    """fastai's ``LRFinder`` leaves out the first 10% and the last 5 points."""
    lo, hi = n // 10, n - 5
    return slice(lo, hi) if hi - lo >= MIN_POINTS else slice(0, n)


def steep(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray) -> float | None:
    """The lr of steepest descent of the smoothed loss against log lr (fastai ``steep``)."""
    lrs, losses, smoothed = _curves("steep()", lrs=lrs, losses=losses, smoothed=smoothed)
    window = _fastai_window(len(lrs))
    x, y = np.log(lrs[window]), smoothed[window]
    if len(x) < 2:
        return None
    return float(lrs[window][int(np.argmin(np.diff(y) / np.diff(x)))])


def valley(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray) -> float | None:
    """fastai's ``valley``: in the longest descending run of the smoothed loss (its longest
    decreasing subsequence, O(n^2)), the point two thirds of the way down."""
    lrs, losses, smoothed = _curves("valley()", lrs=lrs, losses=losses, smoothed=smoothed)
    window = _fastai_window(len(lrs))
    x, y = lrs[window], smoothed[window]
    n = len(y)
    if n < 2:
        return None
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if y[i] < y[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return float(x[max_start + int(sections) + int(sections / 2)])


def minimum(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray) -> float | None:
    """A tenth of the lr at which the smoothed loss is lowest (fastai ``minimum``)."""
    lrs, losses, smoothed = _curves("minimum()", lrs=lrs, losses=losses, smoothed=smoothed)
    window = _fastai_window(len(lrs))
    return float(lrs[window][int(np.argmin(smoothed[window]))] / 10)


def centred_smooth(y: np.ndarray, half: int) -> np.ndarray:
    """A zero-lag, spike-proof smoother: a running median, then a running mean, both
    centred on each point; the windows shrink symmetrically near the ends, so no point is
    pulled towards the past (the debiased EMA lags by about ``1 / (1 - smooth)`` points)."""
    (out,) = _curves("centred_smooth()", y=y)
    half = C.nonnegative_int("centred_smooth()", "half", half)
    n = len(out)
    for reduce in (np.median, np.mean):
        prev = out
        out = np.empty(n)
        for i in range(n):
            h = min(half, i, n - 1 - i)
            out[i] = reduce(prev[i - h:i + h + 1])
    return out


def zero_lag(losses: np.ndarray) -> np.ndarray:
    """``centred_smooth`` with windows of about 8% of the sweep (9 points of 100)."""
    (losses,) = _curves("zero_lag()", losses=losses)
    return centred_smooth(losses, max(2, len(losses) // 25))


EDGE_DIVISOR = 8.0


def edge(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray) -> float | None:
    """lrkit's rule: the *edge of progress* divided by ``EDGE_DIVISOR`` (8).

    The edge is the learning rate at which the loss, past its lowest point, climbs back
    above where it started (the median of the first 10% of the sweep): the largest rate
    that still makes progress at all. It is read off ``centred_smooth`` of the raw losses,
    not the EMA, for three reasons:

    - the debiased EMA lags by about ``1 / (1 - smooth)`` points, 50 at the default, half
      of a default sweep: what is read off it (its minimum, its slope) moves with
      ``smooth`` and ``steps``; a centred smoother has no lag, and its median ignores the
      single-batch spikes that fool slope-based rules;
    - the minimum of a loss that sits on a noisy floor over a decade or more of learning
      rates (a quadratic under SGD, say) wanders anywhere along that floor, while the
      climb back past the starting level is one sharp event;
    - the best peak rate of a full run sits a roughly constant factor below that event.
      On the quality bar (benchmarks/README.md: 7 tasks x SGD and Adam x 5 seeds) the
      suggestion is within 1.5x of the best of a 9-point grid in 48 of 70 cases with a
      divisor of 6 or 8, 47 with 10, 45 with 4, 31 with 16; ``minimum`` scores 34,
      ``steep`` 28, ``valley`` 9. For plain SGD on least squares it lies at 0.34/L to
      0.53/L (20 seeds), inside [0.05/L, 2/L].

    If the loss never climbs back within the sweep, the last rate of the sweep stands in
    for the edge (and ``find_lr`` warns that ``end`` may be too small).
    """
    lrs, losses, smoothed = _curves("edge()", lrs=lrs, losses=losses, smoothed=smoothed)
    return edge_of_progress(lrs, losses)[0] / EDGE_DIVISOR


def edge_of_progress(lrs: np.ndarray, losses: np.ndarray) -> tuple[float, bool]:
    """The edge of progress (see ``edge``), and whether the loss did climb back above its
    starting level (if not, the edge is the last learning rate of the sweep)."""
    lrs, losses = _curves("edge_of_progress()", lrs=lrs, losses=losses)
    n = len(lrs)
    z = zero_lag(losses)
    lowest = int(np.argmin(z))
    start = float(np.median(z[: max(1, n // 10)]))
    above = np.flatnonzero(z[lowest:] > start)
    return float(lrs[lowest + above[0] if above.size else n - 1]), bool(above.size)


def _uses_noise(rule: Any) -> bool:
    """Whether a rule reads the gradient noise: called as ``rule(lrs, losses, smoothed,
    noise=...)`` (mark one with ``rule.uses_noise = True``)."""
    return bool(getattr(rule, "uses_noise", False))


def noisy(lrs: np.ndarray, losses: np.ndarray, smoothed: np.ndarray,
          noise: GradientNoise | None = None) -> float | None:
    """The edge rule corrected for gradient noise: ``edge / (1 + B_simple / B)``.

    McCandlish et al. 2018 ("An empirical model of large-batch training", arXiv
    1812.06162, section 2.2): a step ``-eta g`` on a minibatch gradient of B examples,
    with true gradient G, Hessian H and per-example covariance Sigma, changes the
    expected loss by ``-eta |G|^2 + eta^2 / 2 (G'HG + tr(H Sigma) / B)``, which is best at

        eta_opt(B) = eta_max / (1 + B_noise / B),   eta_max = |G|^2 / G'HG,
        B_noise = tr(H Sigma) / G'HG  ~  B_simple = tr(Sigma) / |G|^2   (H ~ I).

    Here ``edge(...)`` stands in for the noiseless ``eta_max`` and ``B_simple / B`` is
    ``noise.ratio``, measured by ``gradient_noise`` on the sweep's quiet start from
    consecutive minibatch gradients (no extra forward or backward pass). Without a
    measurement (``noise=None``: an old record, ``find_lr(noise=False)``, too few pairs)
    and for a noiseless gradient it is ``edge`` exactly; the more noise, the smaller.

    Measured on issue 5's quality bar (benchmarks/README.md, 2026-12-03) it does not close
    the misses it was built for and is not the default: on the 50 task cases trained for
    both rules it lands within 1.5x of the grid's best in 24 against edge's 29 (one more
    on noisy_quadratic with SGD and on digits_softmax with Adam; two fewer on digits with
    SGD, five fewer on mnist1d_mlp with SGD). The noise at the start of the sweep does not
    tell the tasks where the edge is too high (noisy_quadratic: ``B_simple / B`` = 0.2,
    digits_softmax with Adam: 1.1) from those where it is right or too low (MNIST-1D: 1.3
    to 7).
    """
    lrs, losses, smoothed = _curves("noisy()", lrs=lrs, losses=losses, smoothed=smoothed)
    if noise is not None and not isinstance(noise, GradientNoise):
        raise TypeError(f"noisy(): noise must be a GradientNoise or None, got "
                        f"{type(noise).__name__}")
    base = edge(lrs, losses, smoothed)
    if base is None or noise is None:
        return base
    return base / (1 + noise.ratio)


noisy.uses_noise = True  # type: ignore[attr-defined]


# -- the gradient noise scale ------------------------------------------------------------
@dataclass(frozen=True)
class GradientNoise:
    """The gradient noise of a sweep's quiet start (``gradient_noise``).

    ``signal`` estimates ``|G|^2``, the squared norm of the true gradient; ``noise``
    estimates ``tr(Sigma_B)``, the total variance of one step's minibatch gradient
    (``tr(Sigma) / B`` for batches of B independent examples, Sigma the per-example
    covariance); both from ``pairs`` pairs of consecutive steps whose learning rates reach
    ``lr_max``. ``ratio = noise / signal`` is the noise-to-signal ratio of one step's
    gradient: McCandlish et al.'s simple noise scale in units of the batch,
    ``B_simple / B`` (arXiv 1812.06162, eq. 2.8); ``scale`` is ``B_simple`` itself in
    examples when the batch size is known (``batch_size``, accumulation included).
    """

    signal: float
    noise: float
    pairs: int
    lr_max: float
    batch_size: int | None = None

    @property
    def ratio(self) -> float:
        """``tr(Sigma_B) / |G|^2`` (inf when the signal is not positive: pure noise)."""
        return self.noise / self.signal if self.signal > 0 else math.inf

    @property
    def scale(self) -> float | None:
        """McCandlish et al.'s ``B_simple = tr(Sigma) / |G|^2`` in examples, or None."""
        return None if self.batch_size is None else self.ratio * self.batch_size

    def to_dict(self) -> dict[str, Any]:
        ratio, scale = self.ratio, self.scale
        return {"signal": self.signal, "noise": self.noise, "pairs": self.pairs,
                "lr_max": self.lr_max, "batch_size": self.batch_size,
                "ratio": ratio if math.isfinite(ratio) else None,
                "scale": scale if scale is not None and math.isfinite(scale) else None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GradientNoise:
        return cls(float(d["signal"]), float(d["noise"]), int(d["pairs"]),
                   float(d["lr_max"]), d.get("batch_size"))


QUIET = 0.1   # the quiet start ends once the loss has fallen by 10% of its whole fall
MIN_PAIRS = 3


def gradient_noise(lrs: Any, losses: Any, grad_sq: Any, grad_dot: Any, grad_diff: Any, *,
                   batch_size: int | None = None) -> GradientNoise | None:
    """The gradient noise of a sweep, from the gradients of consecutive steps at its quiet
    start (None with fewer than ``MIN_PAIRS`` usable pairs).

    While the learning rate is tiny the weights barely move, so the minibatch gradients
    ``g_t`` and ``g_{t+1}`` of two consecutive steps are two independent draws around the
    same true gradient G with covariance ``Sigma_B``: ``E[g_t . g_{t+1}] = |G|^2`` and
    ``E|g_t - g_{t+1}|^2 = 2 tr(Sigma_B)``. Averaged over the pairs of the quiet start this
    gives unbiased estimates of both at the cost of one dot product and one copy of the
    gradient per step, with no batch splitting; unlike McCandlish et al.'s two-batch-size
    estimator (arXiv 1812.06162, appendix A.1) it needs no per-example or small-batch
    gradients, so it works for any model, loss and ``step_fn``. A pair of step ``t`` is
    ``grad_dot[t] = g_t . g_{t-1}`` and ``grad_diff[t] = |g_t - g_{t-1}|^2``.

    The quiet start runs from the first point to the last one, before the lowest, where
    the zero-lag smoothed loss has not yet fallen for good by ``QUIET`` (10%) of its whole
    fall (from its starting level to its lowest point): as long as the loss has barely
    moved, the weights have barely moved along the directions that matter, and a
    gradient's drift ``H dw`` between two steps, which would add to
    ``|g_t - g_{t+1}|^2``, is small beside the noise.
    """
    fn = "gradient_noise()"
    lrs, losses, sq, dot, diff = _curves(fn, lrs=lrs, losses=losses, grad_sq=grad_sq,
                                          grad_dot=grad_dot, grad_diff=grad_diff)
    if batch_size is not None:
        batch_size = C.positive_int(fn, "batch_size", batch_size)
    finite = np.isfinite(losses) & np.isfinite(lrs)
    n = int(np.argmin(finite)) if not finite.all() else len(losses)  # the finite prefix
    if n < MIN_POINTS:
        return None
    z = zero_lag(losses[:n])
    start = float(np.median(z[: max(1, n // 10)]))
    fall = start - float(np.min(z))
    if fall > 0:  # up to the last point before the lowest that is still near the start
        high = np.flatnonzero(z[: int(np.argmin(z)) + 1] >= start - QUIET * fall)
        end = int(high[-1]) + 1 if high.size else 0
    else:  # the loss never fell: every point is quiet
        end = n
    keep = np.isfinite(dot[:end]) & np.isfinite(diff[:end])
    if keep.sum() < MIN_PAIRS:
        return None
    return GradientNoise(signal=float(np.mean(dot[:end][keep])),
                         noise=float(np.mean(diff[:end][keep])) / 2,
                         pairs=int(keep.sum()), lr_max=float(np.max(lrs[:end][keep])),
                         batch_size=batch_size)


def _batch_size(batch: Any) -> int | None:
    """The leading size of a batch's first tensor (inputs first), or None."""
    if torch.is_tensor(batch):
        return int(batch.shape[0]) if batch.ndim else None
    items = (list(batch.values()) if isinstance(batch, dict)
             else list(batch) if isinstance(batch, (list, tuple)) else [])
    for item in items:
        if torch.is_tensor(item) and item.ndim:
            return int(item.shape[0])
    return None


RULES: dict[str, Rule] = {"steep": steep, "valley": valley, "minimum": minimum, "edge": edge,
                          "noisy": noisy}
DEFAULT_RULE = "edge"


def suggest(lrs: Any, losses: Any, smoothed: Any = None, rule: str | Rule = DEFAULT_RULE,
            *, smooth: float = 0.98, noise: GradientNoise | None = None) -> float | None:
    """Apply one rule to a recorded curve, leaving out its non-finite points first.

    ``smoothed`` defaults to the debiased EMA (factor ``smooth``) of the finite losses.
    A rule that reads the gradient noise (one with the attribute ``uses_noise = True``,
    as ``noisy``) gets ``noise`` (a ``GradientNoise``; None: not measured) as a keyword,
    ``rule(lrs, losses, smoothed, noise=noise)``; the others never see it.
    """
    fn = "suggest()"
    lrs, losses = _curves(fn, lrs=lrs, losses=losses)
    if isinstance(rule, str):
        rule = RULES[C.choice(fn, "rule", rule, RULES)]
    elif not callable(rule):
        raise TypeError(f"{fn}: rule must be a rule name or a callable, got {rule!r}")
    keep = np.isfinite(lrs) & np.isfinite(losses) & (lrs > 0)
    if smoothed is None:
        smoothed = np.full(len(losses), np.nan)
        smoothed[keep] = ema(losses[keep], C.in_range(fn, "smooth", smooth, 0, 1, high_open=True))
    else:
        (smoothed,) = _curves(fn, smoothed=smoothed)
        if len(smoothed) != len(lrs):
            raise ValueError(f"{fn}: smoothed must have as many points as lrs ({len(lrs)}), "
                             f"got {len(smoothed)}")
    keep &= np.isfinite(smoothed)
    if noise is not None and not isinstance(noise, GradientNoise):
        raise TypeError(f"{fn}: noise must be a GradientNoise or None, got "
                        f"{type(noise).__name__}")
    if keep.sum() < MIN_POINTS:
        return None
    if _uses_noise(rule):
        value = rule(lrs[keep], losses[keep], smoothed[keep], noise=noise)
    else:
        value = rule(lrs[keep], losses[keep], smoothed[keep])
    return None if value is None or not math.isfinite(value) else float(value)


def ema(losses: Any, smooth: float) -> np.ndarray:
    """The debiased exponential moving average ``avg_i / (1 - smooth**(i+1))`` of fastai
    and torch-lr-finder; a non-finite loss makes it, and everything after, NaN."""
    (losses,) = _curves("ema()", losses=losses)
    smooth = C.in_range("ema()", "smooth", smooth, 0.0, 1.0, high_open=True)
    out = np.empty(len(losses))
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = smooth * avg + (1 - smooth) * loss
        out[i] = avg / (1 - smooth ** (i + 1)) if math.isfinite(avg) else math.nan
    return out


# -- the result ------------------------------------------------------------------------
@dataclass
class LRFinderResult:
    """The curve of a range test and what the rules make of it.

    ``lrs[i]`` is the (base) learning rate of step ``i``; ``losses[i]`` the loss recorded
    at it (the validation loss when ``find_lr`` had a ``val_loader``, else the training
    loss of the batch), ``smoothed_losses`` their debiased EMA, ``train_losses`` the
    training losses in both cases. ``stop_reason`` is "completed", "diverged" (smoothed
    loss above ``diverge`` x its best), "non-finite" or "data" (the loader ran out).

    ``grad_sq[i]`` is ``|g_i|^2``, the squared norm of the gradient step ``i`` stepped on,
    ``grad_dot[i] = g_i . g_{i-1}`` and ``grad_diff[i] = |g_i - g_{i-1}|^2`` (NaN for the
    first step, a missing or non-finite gradient); empty when the sweep did not record
    them (``find_lr(noise=False)``, a record made before lrkit did). ``noise`` reads the
    gradient noise off them (``gradient_noise``), ``grad_norms`` is ``sqrt(grad_sq)``.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    train_losses: np.ndarray
    suggestions: dict[str, float | None]
    rule: str = DEFAULT_RULE
    stop_reason: str = "completed"
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    grad_sq: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_dot: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grad_diff: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def grad_norms(self) -> np.ndarray:
        """``|g_t|``, the norm of the gradient of each step (empty without a record)."""
        return np.sqrt(self.grad_sq)

    @property
    def noise(self) -> GradientNoise | None:
        """The gradient noise measured at the quiet start of the sweep (``gradient_noise``),
        None without a gradient record or with too few pairs."""
        if len(self.grad_sq) != len(self.lrs):
            return None
        return gradient_noise(self.lrs, self.losses, self.grad_sq, self.grad_dot,
                              self.grad_diff, batch_size=self.settings.get("batch_size"))

    @property
    def suggestion(self) -> float | None:
        """The recommended learning rate: the suggestion of ``rule``."""
        return self.suggestions.get(self.rule)

    def suggest(self, rule: str | Rule) -> float | None:
        """Apply any rule (a name of ``RULES`` or a callable) to this curve."""
        return suggest(self.lrs, self.losses, self.smoothed_losses, rule, noise=self.noise)

    def plot(self, ax: Any = None):
        """Loss against lr on a log axis, with every suggestion marked and the measured
        gradient noise written in a corner; returns the Axes."""
        from lrkit.plot import plot_lr_finder

        finite = np.isfinite(self.losses)
        z = edge = None
        if finite.sum() >= 3:
            z = zero_lag(self.losses[finite])
            where, found = edge_of_progress(self.lrs[finite], self.losses[finite])
            edge = where if found else None
        ax = plot_lr_finder(self.lrs, self.losses, self.smoothed_losses, ax, zero_lag=z,
                            edge=edge, suggestions=self.suggestions, rule=self.rule,
                            validation=bool(self.settings.get("validation")))
        noise = self.noise
        if noise is not None:  # the measured gradient noise, in a corner
            scale = "" if noise.scale is None else f", B_simple = {noise.scale:.3g} examples"
            ax.text(0.01, 0.01, f"gradient noise tr(Sigma_B)/|G|^2 = {noise.ratio:.3g}{scale} "
                    f"({noise.pairs} pairs, lr <= {noise.lr_max:.2g})",
                    transform=ax.transAxes, fontsize=7, color="0.35", va="bottom")
        return ax

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (non-finite losses become None); ``from_dict`` reads it back."""
        def floats(a: np.ndarray) -> list[float | None]:
            return [float(v) if math.isfinite(v) else None for v in a]

        return {
            "lrs": floats(self.lrs), "losses": floats(self.losses),
            "smoothed_losses": floats(self.smoothed_losses),
            "train_losses": floats(self.train_losses),
            "suggestions": dict(self.suggestions), "suggestion": self.suggestion,
            "rule": self.rule, "stop_reason": self.stop_reason,
            "settings": dict(self.settings), "warnings": list(self.warnings),
            "grad_sq": floats(self.grad_sq), "grad_dot": floats(self.grad_dot),
            "grad_diff": floats(self.grad_diff),
            "noise": None if (n := self.noise) is None else n.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LRFinderResult:
        def arr(key: str) -> np.ndarray:
            return np.array([math.nan if v is None else v for v in d[key]], dtype=np.float64)

        def opt(key: str) -> np.ndarray:  # absent from records made before lrkit recorded it
            return arr(key) if key in d else np.zeros(0)

        return cls(arr("lrs"), arr("losses"), arr("smoothed_losses"), arr("train_losses"),
                   dict(d["suggestions"]), d["rule"], d["stop_reason"], dict(d["settings"]),
                   list(d["warnings"]), opt("grad_sq"), opt("grad_dot"), opt("grad_diff"))


# -- the sweep -------------------------------------------------------------------------
def find_lr(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: Iterable[Any],
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    *,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    mode: str = "exp",
    smooth: float = 0.98,
    diverge: float = 4.0,
    accumulate: int = 1,
    scaler: torch.amp.GradScaler | None = None,
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
    val_loader: Iterable[Any] | None = None,
    device: str | torch.device | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    warn: bool = True,
    noise: bool = True,
) -> LRFinderResult:
    """Run the learning-rate range test and suggest an initial learning rate.

    Each of ``steps`` optimizer steps uses the next lr of a sweep from ``start`` to ``end``
    (``mode="exp"``: geometric; ``"linear"``), set on every param group as
    ``lr * group.get("lr_scale", 1)`` like ``lrkit.Scheduler``, so a suggestion is the base
    lr to give a schedule. A step draws ``accumulate`` batches from ``loader`` (re-iterated
    when it runs out) and averages their gradients; the loss of a batch is
    ``step_fn(model, batch)`` when given (any batch structure), else
    ``loss_fn(model(inputs), targets)`` for a batch ``(inputs, targets)``. With a
    ``torch.amp.GradScaler`` the backward passes are scaled and the step goes through
    ``scaler.step`` (run your forward under ``torch.autocast`` in the model or ``step_fn``).
    With ``val_loader``, the loss recorded after each step is the mean loss over the whole
    of ``val_loader``, computed in eval mode without gradients.

    The sweep stops early once the debiased EMA of the loss (factor ``smooth``) exceeds
    ``diverge`` times its best (for a negative best: ``diverge - 1`` times its size above
    it; ``math.inf`` never stops) or a loss is not finite. Afterwards the parameters,
    gradients and buffers of ``model``, the ``training`` flags of its modules, the state and
    param-group settings of ``optimizer`` (and its parameters outside ``model``), the state
    of ``scaler`` and the global random generators (torch CPU and CUDA, numpy, ``random``)
    are restored bit for bit from copies held in memory, also when the sweep raises. With
    ``device``, the model and its batches are moved there for the sweep and the model back
    afterwards. ``callback(step, lr, loss)`` is called after each step (a progress bar).
    A one-shot iterator as ``loader`` is consumed and cannot be restored.

    After each step the gradients left on the optimizer's parameters (the mean over the
    micro-batches with ``accumulate``, unscaled by the ``scaler``'s step) are compared
    with the previous step's: their squared norms, dot products and squared differences
    go to ``result.grad_sq``, ``grad_dot`` and ``grad_diff``, and ``result.noise`` reads
    the gradient noise scale off the sweep's quiet start (``gradient_noise``); this costs
    one copy of the gradient and three reductions per step, no extra forward or backward
    pass (``noise=False`` skips it). An optimizer that rewrites ``.grad`` in place during
    its step would bias it; torch's do not.

    Doubts about the curve (a loss still falling at the sweep's end or never falling,
    a loader that ran out...) are listed in ``result.warnings`` and, with ``warn=True``,
    also emitted as ``LRFinderWarning`` at the caller's line.
    """
    _check_objects(model, optimizer, loader, loss_fn, scaler, step_fn, val_loader, callback)
    start = C.positive(_FN, "start", start)
    end = C.positive(_FN, "end", end)
    if end <= start:
        raise ValueError(f"{_FN}: end must be greater than start ({start!r}), got {end!r}")
    steps = C.steps(_FN, "steps", steps, minimum=2)
    mode = C.choice(_FN, "mode", mode, MODES)
    smooth = C.in_range(_FN, "smooth", smooth, 0.0, 1.0, high_open=True)
    diverge = _check_diverge(diverge)
    accumulate = C.positive_int(_FN, "accumulate", accumulate)
    device = _check_device(device)
    warn = C.boolean(_FN, "warn", warn)
    noise = C.boolean(_FN, "noise", noise)

    sweep = (S.exponential_decay(start, rate=end / start, every=steps - 1) if mode == "exp"
             else S.linear(start, end, total=steps - 1))
    settings = {"start": start, "end": end, "steps": steps, "mode": mode, "smooth": smooth,
                "diverge": diverge, "accumulate": accumulate,
                "optimizer": type(optimizer).__name__, "validation": val_loader is not None,
                "batch_size": None}
    compute = step_fn if step_fn is not None else batch_loss(loss_fn, _FN)
    step = Step(model, optimizer, compute, closure=True, scaler=scaler, device=device,
                name=_FN)  # a closure serves every optimizer, L-BFGS included
    lrs: list[float] = []
    losses: list[float] = []
    train_losses: list[float] = []
    smoothed: list[float] = []
    stop_reason = "completed"
    snapshot = Snapshot(model, optimizer, scaler)
    scale_applied = vars(optimizer).get("lr_scale_applied")  # the sweep's Scheduler sets it
    try:
        if device is not None:
            model.to(device)
            if optimizer.state:  # move its state beside the moved parameters
                optimizer.load_state_dict(optimizer.state_dict())
        scheduler = Scheduler(optimizer, lr=sweep)
        batches = _Batches(loader)
        pairs = _GradientPairs(optimizer) if noise else None
        avg, best = 0.0, math.inf
        for i in range(steps):
            micro = batches.take(accumulate)
            if micro is None:
                stop_reason = "data"
                break
            if i == 0:
                size = _batch_size(micro[0])
                settings["batch_size"] = None if size is None else size * accumulate
            train_loss = step(micro)
            assert train_loss is not None  # (no guard: never rolled back)
            if pairs is not None:
                pairs.record()
            loss = train_loss if val_loader is None else _val_loss(step, val_loader)
            lrs.append(sweep(i))
            train_losses.append(train_loss)
            losses.append(loss)
            avg = smooth * avg + (1 - smooth) * loss
            value = avg / (1 - smooth ** (i + 1)) if math.isfinite(avg) else math.nan
            smoothed.append(value)
            if callback is not None:
                callback(i, lrs[-1], loss)
            if not math.isfinite(value):
                stop_reason = "non-finite"
                break
            best = min(best, value)
            if value > best + (diverge - 1) * abs(best):
                stop_reason = "diverged"
                break
            scheduler.step()
    finally:
        snapshot.restore()
        if scale_applied is None:
            vars(optimizer).pop("lr_scale_applied", None)
        else:
            optimizer.lr_scale_applied = scale_applied  # type: ignore[attr-defined]
    if not lrs:
        raise ValueError(f"{_FN}: loader yielded no batches")
    arrays = [np.asarray(a, dtype=np.float64) for a in (lrs, losses, smoothed, train_losses)]
    grads = ([np.asarray(a, dtype=np.float64) for a in (pairs.sq, pairs.dot, pairs.diff)]
             if pairs is not None else [np.zeros(0)] * 3)
    result = LRFinderResult(*arrays, suggestions={}, stop_reason=stop_reason,
                            settings=settings, grad_sq=grads[0], grad_dot=grads[1],
                            grad_diff=grads[2])
    measured = result.noise
    result.suggestions = {name: suggest(arrays[0], arrays[1], arrays[2], rule, noise=measured)
                          for name, rule in RULES.items()}
    result.warnings.extend(_diagnose(result))
    if warn:
        for text in result.warnings:
            warnings.warn(f"{_FN}: {text}", LRFinderWarning, stacklevel=2)
    return result


def _diagnose(result: LRFinderResult) -> list[str]:
    """Plain-words warnings about a curve whose suggestions deserve doubt."""
    out = []
    if result.stop_reason == "data":
        out.append("the loader ran out of batches before the sweep ended; pass a re-iterable "
                   "loader (a DataLoader) to cover the whole range")
    finite = np.isfinite(result.losses)
    n = int(finite.sum())
    if n < MIN_POINTS:
        out.append(f"only {n} finite point(s) recorded: too few for a suggestion")
        return out
    i_min = int(np.argmin(zero_lag(result.losses[finite])))
    if i_min >= 0.9 * (n - 1) and result.stop_reason in ("completed", "data"):
        out.append("the loss was still falling at the end of the sweep: the suggestions may "
                   "be too small; try a larger end")
    elif not edge_of_progress(result.lrs[finite], result.losses[finite])[1]:
        out.append("the loss never climbed back above its starting level, so the edge rule "
                   "used the last learning rate of the sweep; a larger end would locate it")
    if i_min <= 0.1 * (n - 1):
        out.append("the loss never fell below its first values: start may already be too "
                   "large, or the model cannot learn from these batches")
    return out


# -- the gradient noise ------------------------------------------------------------------
class _GradientPairs:
    """Per step of the sweep: ``|g_t|^2``, ``g_t . g_{t-1}`` and ``|g_t - g_{t-1}|^2`` of the
    gradients the optimizer stepped on (those left on its parameters after the step,
    unscaled by a GradScaler's ``step``; averaged over micro-batches with ``accumulate``),
    in float32 (float64 for float64 gradients). It keeps one flat copy of the previous
    gradient; a step whose gradient is missing or not finite records NaN and breaks the
    chain of pairs."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.prev: torch.Tensor | None = None
        self.sq: list[float] = []
        self.dot: list[float] = []
        self.diff: list[float] = []

    def record(self) -> None:
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = None
        sq = dot = diff = math.nan
        if grads:
            with torch.no_grad():
                dtype = torch.float64 if any(g.dtype == torch.float64 for g in grads) \
                    else torch.float32  # float32 sums err far below the sampling noise
                where = grads[0].device  # (a model split over devices: gathered on one)
                flat = torch.cat([(g.to_dense() if g.is_sparse else g).reshape(-1)
                                  .to(device=where, dtype=dtype) for g in grads])
                sq = float(flat @ flat)
                if not math.isfinite(sq):
                    flat, sq = None, math.nan
                elif self.prev is not None and self.prev.shape == flat.shape:
                    dot, diff = (float(v) for v in torch.stack(
                        [flat @ self.prev, (flat - self.prev).pow(2).sum()]))
        self.sq.append(sq)
        self.dot.append(dot)
        self.diff.append(diff)
        self.prev = flat


# -- one step ----------------------------------------------------------------------------
def _val_loss(step: Step, val_loader: Iterable[Any]) -> float:
    total, count = 0.0, 0
    with evaluating(step.model):
        for batch in val_loader:
            total += float(step.loss(batch))
            count += 1
    if count == 0:
        raise ValueError(f"{_FN}: val_loader yielded no batches")
    return total / count


class _Batches:
    """Draws batches from a loader, starting it again when it runs out."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.it: Iterator[Any] = iter(loader)

    def take(self, k: int) -> list[Any] | None:
        out = []
        restarted = False
        while len(out) < k:
            try:
                out.append(next(self.it))
                restarted = False
            except StopIteration:
                if restarted:
                    return None
                self.it, restarted = iter(self.loader), True
        return out


# -- argument checks ---------------------------------------------------------------------
def _check_objects(model, optimizer, loader, loss_fn, scaler, step_fn, val_loader, callback):
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"{_FN}: model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"{_FN}: optimizer must be a torch.optim.Optimizer, got "
                        f"{type(optimizer).__name__}")
    for name, value in (("loader", loader), ("val_loader", val_loader)):
        if value is not None and not isinstance(value, Iterable):
            raise TypeError(f"{_FN}: {name} must be an iterable of batches (a DataLoader), "
                            f"got {type(value).__name__}")
    if loader is None:
        raise TypeError(f"{_FN}: loader must be an iterable of batches (a DataLoader), got None")
    for name, value in (("loss_fn", loss_fn), ("step_fn", step_fn), ("callback", callback)):
        if value is not None and not callable(value):
            raise TypeError(f"{_FN}: {name} must be callable, got {type(value).__name__}")
    if loss_fn is None and step_fn is None:
        raise ValueError(f"{_FN}: loss_fn is required unless step_fn is given, got None")
    if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
        raise TypeError(f"{_FN}: scaler must be a torch.amp.GradScaler or None, got "
                        f"{type(scaler).__name__}")
    owned = {id(p) for p in model.parameters()}
    if not any(id(p) in owned for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(f"{_FN}: optimizer must update parameters of model, but none of its "
                         "parameters belongs to model")
    if not any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
        raise ValueError(f"{_FN}: none of the optimizer's parameters requires grad (a frozen "
                         "model): the range test has nothing to train; unfreeze the layers "
                         "it should train (requires_grad_(True))")


def _check_diverge(diverge: Any) -> float:
    if not (isinstance(diverge, (int, float)) and diverge == math.inf):
        diverge = C.real(_FN, "diverge", diverge)
    if not diverge > 1:
        raise ValueError(f"{_FN}: diverge must be a number > 1 (or math.inf), got {diverge!r}")
    return float(diverge)


def _check_device(device: Any) -> torch.device | None:
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"{_FN}: device must be a str, a torch.device or None, got "
                        f"{type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"{_FN}: device must name a torch device ('cpu', 'cuda:0'...), got "
                         f"{device!r}") from None
