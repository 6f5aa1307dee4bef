"""Drawing helpers shared by lrkit's figures, so that plots look alike.

They take plain data (arrays, mappings, callables of the step) and import no other lrkit
module: a result's ``.plot()`` (``LRFinderResult``, ``AutopilotReport``, a schedule) calls
down into them; the arena's figures (``lrkit.bench.figures``) build on them."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lrkit import _checks as C


def new_axes(ncols: int = 1, figsize: tuple[float, float] | None = None):
    """A figure with ``ncols`` axes, drawn without a display when none is available."""
    ncols = C.positive_int("new_axes()", "ncols", ncols)
    if figsize is not None:
        size = C.sequence("new_axes()", "figsize", figsize)
        if len(size) != 2:
            raise ValueError(f"new_axes(): figsize must be (width, height), got {figsize!r}")
        figsize = tuple(C.positive("new_axes()", f"figsize[{i}]", v) for i, v in enumerate(size))
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _has_display():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize or (6.0 * ncols, 4.0), squeeze=False)
    return fig, list(axes[0])


def _has_display() -> bool:
    import os

    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")) or \
        os.environ.get("MPLBACKEND") is not None


#: the most steps :func:`plot_schedules` evaluates and draws
PLOT_POINTS = 200_001


def plot_schedules(
    schedules: Sequence[Any],
    steps: int,
    ax: Any = None,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
):
    """Draw schedules over ``steps`` steps on one axes; returns the axes. Up to
    ``PLOT_POINTS`` steps every step is drawn; beyond, that many steps evenly spread
    (a figure is a few thousand pixels wide: a budget of 10**12 steps would otherwise
    ask for terabytes)."""
    fn = "plot_schedules()"
    schedules = C.sequence(fn, "schedules", schedules)
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{fn}: schedules[{i}] must be a schedule, got {s!r:.40}")
    steps = C.steps(fn, "steps", steps)
    if labels is not None:
        labels = C.sequence(fn, "labels", labels)
        if len(labels) != len(schedules):
            raise ValueError(f"{fn}: labels must have one label per schedule "
                             f"({len(schedules)}), got {len(labels)}")
        for i, label in enumerate(labels):
            if not isinstance(label, str):
                raise TypeError(f"{fn}: labels[{i}] must be a string, got {C.shown(label)}")
    C.boolean(fn, "log", log)
    if ax is None:
        _, (ax,) = new_axes()
    else:
        _check_axes(fn, ax)
    n = (np.arange(steps) if steps <= PLOT_POINTS else
         np.unique(np.linspace(0, steps - 1, PLOT_POINTS).round().astype(np.int64)))
    for i, s in enumerate(schedules):
        label = labels[i] if labels else str(s)
        ax.plot(n, s(n), label=label if len(label) <= 60 else label[:57] + "...", lw=1.6)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    if log:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _check_axes(fn: str, ax: Any) -> None:
    """Refuse an ``ax`` that is not a matplotlib Axes, naming it."""
    import matplotlib.axes

    if not isinstance(ax, matplotlib.axes.Axes):
        raise TypeError(f"{fn}: ax must be a matplotlib Axes or None, got {C.shown(ax)}")


def save(fig: Any, path: str) -> str:
    """Write ``fig`` to ``path`` (format from the suffix) and close it; returns ``path``."""
    if not hasattr(fig, "savefig"):
        raise TypeError(f"save(): fig must be a matplotlib Figure, got {fig!r:.40}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save(): path must be a file path, got {path!r}")
    import matplotlib.pyplot as plt

    try:
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:  # closed also where the path cannot be written (OSError)
        plt.close(fig)
    return path


def plot_lr_finder(lrs: Sequence[float], losses: Sequence[float], smoothed: Sequence[float],
                   ax: Any = None, *, zero_lag: Sequence[float] | None = None,
                   edge: float | None = None, suggestions: Mapping[str, Any] | None = None,
                   rule: str | None = None, validation: bool = False):
    """A range test: raw loss, its EMA and (``zero_lag``, on the finite losses) the
    zero-lag smoothing the edge rule reads, against lr on a log axis; ``edge`` and each of
    ``suggestions`` (rule -> lr, ``rule`` the default one) marked. ``LRFinderResult.plot``
    hands its curves here."""
    fn = "plot_lr_finder()"
    lrs, raw, ema = (_floats(fn, "lrs", lrs), _floats(fn, "losses", losses),
                     _floats(fn, "smoothed", smoothed))
    if not lrs.size == raw.size == ema.size:
        raise ValueError(f"{fn}: lrs, losses and smoothed must have the same length, got "
                         f"{lrs.size}, {raw.size} and {ema.size}")
    if rule is not None:
        C.text(fn, "rule", rule)
    if suggestions is not None and not isinstance(suggestions, Mapping):
        raise TypeError(f"{fn}: suggestions must be a mapping rule -> lr, got "
                        f"{type(suggestions).__name__}")
    suggestions = dict(suggestions or {})
    validation = C.boolean(fn, "validation", validation)
    if ax is None:
        _, (ax,) = new_axes(figsize=(7.5, 4.5))
    finite = np.isfinite(raw)
    ax.plot(lrs, raw, color="0.65", lw=0.8, label="loss")
    ax.plot(lrs, ema, color="C0", lw=1.6, label="EMA of the loss")
    if zero_lag is not None:
        z = _floats(fn, "zero_lag", zero_lag, int(finite.sum()))
        low, start = float(z.min()), float(np.median(z[: max(1, z.size // 10)]))
        ax.plot(lrs[finite], z, color="C1", lw=1.6, ls=":", label="zero-lag smoothing")
        if edge is not None:  # where the smoothing climbs back over its starting level
            ax.plot([edge], [start], "v", color="C1", ms=9, label=f"edge of progress: {edge:.3g}")
        high = max(start, float(np.nanmax(ema[: max(1, ema.size // 10)])))
        pad = 0.15 * (high - low) + 1e-12
        ax.set_ylim(low - pad, high + pad)  # keep the blow-up from squashing the curve
    ax.set_xscale("log")
    styles = {"steep": "C3", "valley": "C4", "minimum": "C2", "edge": "C1"}
    for i, (name, lr) in enumerate(suggestions.items()):
        if lr is None:
            continue
        default = name == rule
        ax.axvline(lr, color=styles.get(name, f"C{5 + i}"), ls="-" if default else "--",
                   lw=2 if default else 1,
                   label=f"{name}: {lr:.3g}" + (" (suggestion)" if default else ""))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss" if validation else "training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _floats(fn: str, name: str, values: Any, size: int | None = None) -> np.ndarray:
    """A 1-d float array (NaN and inf allowed: a diverged loss), of ``size`` if given."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise TypeError(f"{fn}: {name} must be a sequence of numbers, got "
                        f"{type(values).__name__}")
    try:
        out = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{fn}: {name} must be a sequence of numbers, got {values!r:.60}") \
            from None
    if out.ndim != 1 or (size is not None and out.size != size):
        raise ValueError(f"{fn}: {name} must be a 1-d sequence"
                         + (f" of {size} numbers" if size is not None else "")
                         + f", got shape {out.shape}")
    return out


def _clip_blow_up(ax: Any, losses: Sequence[float]) -> None:
    """A range test's loss on a log axis (when positive) cut at 4x its first value, so the
    final blow-up does not flatten the part of the curve that decides."""
    finite = np.asarray([v for v in losses if np.isfinite(v)], dtype=float)
    if not len(finite):
        return
    low, top = float(finite.min()), min(float(finite.max()), 4.0 * abs(float(finite[0])))
    if low > 0:
        ax.set_yscale("log")
        ax.set_ylim(low / 1.1, max(top, low * 1.1) * 1.1)
    elif top > low:
        ax.set_ylim(low - 0.05 * (top - low), top + 0.05 * (top - low))


def save_png_bytes(fig: Any, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for pages that embed their figures); closes it."""
    import io

    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    fn = "save_png_bytes()"
    if not isinstance(fig, Figure):
        raise TypeError(f"{fn}: fig must be a matplotlib Figure, got {type(fig).__name__}")
    dpi = C.positive_int(fn, "dpi", dpi)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def plot_horizon(horizon: Mapping[str, Any], steps: int, ax: Any):
    """The autopilot's horizon fit: the probes' optimum at each length (log-log), the line
    of slope -beta through them extended to the run's ``steps``, and the peak it gives;
    ``horizon`` is ``AutopilotReport.horizon`` (plain data)."""
    fn = "plot_horizon()"
    if not isinstance(horizon, Mapping):
        raise TypeError(f"{fn}: horizon must be AutopilotReport.horizon, a mapping, got "
                        f"{type(horizon).__name__}")
    steps = C.nonnegative_int(fn, "steps", steps)
    if not callable(getattr(ax, "plot", None)):
        raise TypeError(f"{fn}: ax must be a matplotlib Axes, got {type(ax).__name__}")
    lengths = list(horizon.get("lengths", ()))
    optima = list(horizon.get("optima", ()))
    if not lengths or len(lengths) != len(optima):
        ax.text(0.5, 0.5, "no horizon fit", ha="center", va="center", transform=ax.transAxes)
        return ax
    ax.plot(lengths, optima, "o", color="tab:blue", ms=7, label="probes' optimum")
    beta, peak = horizon.get("beta", 0.0), horizon.get("peak")
    if peak is not None and steps:
        xs = np.geomspace(lengths[0], max(steps, lengths[-1]), 50)
        ax.plot(xs, optima[-1] * (xs / lengths[-1]) ** -beta, "--", color="0.4",
                label=f"lr* ~ T^-{beta:.2f}")
        ax.plot([steps], [peak], "*", color="tab:red", ms=12, label=f"peak {peak:.3g}")
    predicted, realised = horizon.get("predicted"), horizon.get("realised")
    if predicted is not None:
        text = f"score predicted {predicted:.4g}"
        if realised is not None:
            text += f", reached {realised:.4g}"
        ax.text(0.02, 0.02, text, transform=ax.transAxes, fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("run length (steps)")
    ax.set_ylabel("best peak learning rate")
    ax.set_title("Horizon: the best rate against the length")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return ax


def plot_autopilot(report: Mapping[str, Any], axes: Sequence[Any] | None = None):
    """The autopilot's story in three panels: range test and probes, the schedule it
    used, and the training curve (with guard interventions marked); a fourth, the horizon
    fit (``plot_horizon``), when the probes ran at two lengths. ``report`` is
    ``AutopilotReport.to_dict()`` (plain data; ``AutopilotReport.plot`` hands it here)."""
    needed = ("range_test", "suggestion", "probes", "lr", "lrs", "losses", "val_steps",
              "val_losses", "guard_events", "relative_compute")
    if not isinstance(report, Mapping) or any(k not in report for k in needed):
        raise TypeError(f"plot_autopilot(): report must be AutopilotReport.to_dict(), a "
                        f"mapping with {', '.join(needed)}, got {type(report).__name__}")
    horizon = report.get("horizon") or {}
    report = _Record(report)
    fitted = len(horizon.get("lengths", ())) > 1
    if axes is None:
        _, axes = new_axes(4 if fitted else 3, figsize=(21 if fitted else 16, 4.2))
    if len(axes) not in (3, 4):
        raise ValueError(f"plot_autopilot(): axes must be 3 or 4 axes, got {len(axes)}")
    ax_search, ax_sched, ax_curve = axes[:3]
    if len(axes) == 4:
        plot_horizon(horizon, len(report.lrs), axes[3])
    rt = report.range_test
    if rt:
        ax_search.plot(rt["lrs"], rt["losses"], color="0.6", lw=1, label="range test loss")
        _clip_blow_up(ax_search, rt["losses"])
        if report.suggestion:
            ax_search.axvline(report.suggestion, color="tab:blue", ls="--", lw=1,
                              label=f"suggestion {report.suggestion:.2g}")
    if report.probes:
        ax_probe = ax_search.twinx() if rt else ax_search
        rungs = sorted({p["rung"] for p in report.probes})
        for rung in rungs:
            ps = [p for p in report.probes if p["rung"] == rung]
            finite = [p for p in ps if np.isfinite(p["score"])]
            ax_probe.plot([p["lr"] for p in finite], [p["score"] for p in finite], "o-", ms=5,
                          label=f"probes, {ps[0]['steps']} steps")
        ax_probe.set_ylabel("probe loss")
        ax_probe.legend(fontsize=8, loc="upper right")
    if report.lr:
        ax_search.axvline(report.lr, color="tab:red", lw=1.5, label=f"chosen {report.lr:.2g}")
    ax_search.set_xscale("log")
    ax_search.set_xlabel("learning rate")
    ax_search.set_ylabel("range-test loss")
    ax_search.set_title("Choosing the peak learning rate")
    ax_search.legend(fontsize=8, loc="upper left")
    steps = np.arange(len(report.lrs))
    ax_sched.plot(steps, report.lrs, color="tab:red")
    ax_sched.set_xlabel("step")
    ax_sched.set_ylabel("learning rate")
    ax_sched.set_title("Schedule used", fontsize=10)
    losses = np.asarray(report.losses, dtype=float)
    if len(losses):
        ax_curve.plot(np.arange(len(losses)), losses, color="0.75", lw=0.6, label="train loss")
        k = max(1, len(losses) // 50)
        smooth = np.convolve(losses, np.ones(k) / k, mode="valid")
        ax_curve.plot(np.arange(k - 1, len(losses)), smooth, color="tab:blue",
                      label=f"train loss, mean of {k}")
    if report.val_losses:
        ax_curve.plot(report.val_steps, report.val_losses, "o-", color="tab:green", ms=3,
                      label="validation loss")
    for event in report.guard_events:
        ax_curve.axvline(event["step"], color="tab:red", lw=0.8, alpha=0.6)
    ax_curve.set_yscale("log" if len(losses) and np.nanmin(losses) > 0 else "linear")
    ax_curve.set_xlabel("step")
    ax_curve.set_title(f"Training ({report.relative_compute:.2f}x the compute of one run)")
    ax_curve.legend(fontsize=8)
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return axes


class _Record:
    """Attribute access to a mapping's keys (``r.lr`` for ``r["lr"]``)."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self.__dict__.update(data)


def plot_trials(ax: Any, xs: Sequence[float], values: Sequence[float],
                pruned_xs: Sequence[float], pruned_values: Sequence[float], *,
                xlabel: str, ylabel: str, best: Sequence[float] | None = None,
                log_x: bool = False, title: str = "") -> Any:
    """Search trials on ``ax``: completed ones as dots, pruned ones as hollow circles at
    their last reported (intermediate) value, and the best value so far as a step line
    (``best``, one per x, for a history)."""
    if len(xs):
        ax.scatter(xs, values, s=28, color="tab:blue", label="completed", zorder=3)
    if len(pruned_xs):
        ax.scatter(pruned_xs, pruned_values, s=36, facecolors="none", edgecolors="tab:gray",
                   label="pruned (last reported value)", zorder=2)
    if best is not None and len(xs):
        ax.step(xs, best, where="post", color="tab:red", lw=1.2, label="best so far")
    if log_x:
        ax.set_xscale("log")
    finite = [v for v in (*values, *pruned_values) if np.isfinite(v)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 100:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax
