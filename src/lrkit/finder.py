"""The learning-rate range test (Smith 2017, "Cyclical learning rates for training neural
networks", section 3.3) and the rules that turn its curve into a suggestion.

``find_lr`` trains for ``steps`` optimizer steps while the learning rate rises from
``start`` to ``end`` (geometrically, or linearly), records the loss at each step, stops
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


RULES: dict[str, Rule] = {"steep": steep, "valley": valley, "minimum": minimum, "edge": edge}
DEFAULT_RULE = "edge"


def suggest(lrs: Any, losses: Any, smoothed: Any = None, rule: str | Rule = DEFAULT_RULE,
            *, smooth: float = 0.98) -> float | None:
    """Apply one rule to a recorded curve, leaving out its non-finite points first.

    ``smoothed`` defaults to the debiased EMA (factor ``smooth``) of the finite losses.
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
    if keep.sum() < MIN_POINTS:
        return None
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

    @property
    def suggestion(self) -> float | None:
        """The recommended learning rate: the suggestion of ``rule``."""
        return self.suggestions.get(self.rule)

    def suggest(self, rule: str | Rule) -> float | None:
        """Apply any rule (a name of ``RULES`` or a callable) to this curve."""
        return suggest(self.lrs, self.losses, self.smoothed_losses, rule)

    def plot(self, ax: Any = None):
        """Loss against lr on a log axis, with every suggestion marked; returns the Axes."""
        from lrkit.plot import plot_lr_finder

        finite = np.isfinite(self.losses)
        z = edge = None
        if finite.sum() >= 3:
            z = zero_lag(self.losses[finite])
            where, found = edge_of_progress(self.lrs[finite], self.losses[finite])
            edge = where if found else None
        return plot_lr_finder(self.lrs, self.losses, self.smoothed_losses, ax, zero_lag=z,
                              edge=edge, suggestions=self.suggestions, rule=self.rule,
                              validation=bool(self.settings.get("validation")))

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
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LRFinderResult:
        def arr(key: str) -> np.ndarray:
            return np.array([math.nan if v is None else v for v in d[key]], dtype=np.float64)

        return cls(arr("lrs"), arr("losses"), arr("smoothed_losses"), arr("train_losses"),
                   dict(d["suggestions"]), d["rule"], d["stop_reason"], dict(d["settings"]),
                   list(d["warnings"]))


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

    Doubts about the curve (a loss still falling at the sweep's end or never falling,
    a loader that ran out...) are listed in ``result.warnings`` and, with ``warn=True``,
    also emitted as ``LRFinderWarning`` at the caller's line.
    """
    _check_objects(model, optimizer, loader, loss_fn, scaler, step_fn, val_loader, callback)
    start = C.positive(_FN, "start", start)
    end = C.positive(_FN, "end", end)
    if end <= start:
        raise ValueError(f"{_FN}: end must be greater than start ({start!r}), got {end!r}")
    steps = C.integer(_FN, "steps", steps, minimum=2)
    mode = C.choice(_FN, "mode", mode, MODES)
    smooth = C.in_range(_FN, "smooth", smooth, 0.0, 1.0, high_open=True)
    diverge = _check_diverge(diverge)
    accumulate = C.positive_int(_FN, "accumulate", accumulate)
    device = _check_device(device)
    warn = C.boolean(_FN, "warn", warn)

    sweep = (S.exponential_decay(start, rate=end / start, every=steps - 1) if mode == "exp"
             else S.linear(start, end, total=steps - 1))
    settings = {"start": start, "end": end, "steps": steps, "mode": mode, "smooth": smooth,
                "diverge": diverge, "accumulate": accumulate,
                "optimizer": type(optimizer).__name__, "validation": val_loader is not None}
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
        avg, best = 0.0, math.inf
        for i in range(steps):
            micro = batches.take(accumulate)
            if micro is None:
                stop_reason = "data"
                break
            train_loss = step(micro)
            assert train_loss is not None  # (no guard: never rolled back)
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
    suggestions = {name: suggest(arrays[0], arrays[1], arrays[2], rule)
                   for name, rule in RULES.items()}
    result = LRFinderResult(*arrays, suggestions=suggestions, stop_reason=stop_reason,
                            settings=settings)
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
