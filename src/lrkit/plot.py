"""Every matplotlib figure of lrkit, so that plots look alike."""
from __future__ import annotations

import os
from collections.abc import Sequence
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


def plot_schedules(
    schedules: Sequence[Any],
    steps: int,
    ax: Any = None,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
):
    """Draw schedules over ``steps`` steps on one axes; returns the axes."""
    fn = "plot_schedules()"
    schedules = C.sequence(fn, "schedules", schedules)
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"{fn}: schedules[{i}] must be a schedule, got {s!r:.40}")
    steps = C.positive_int(fn, "steps", steps)
    if labels is not None:
        labels = C.sequence(fn, "labels", labels)
        if len(labels) != len(schedules):
            raise ValueError(f"{fn}: labels must have one label per schedule "
                             f"({len(schedules)}), got {len(labels)}")
    C.boolean(fn, "log", log)
    if ax is None:
        _, (ax,) = new_axes()
    n = np.arange(int(steps))
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


def save(fig: Any, path: str) -> str:
    """Write ``fig`` to ``path`` (format from the suffix) and close it; returns ``path``."""
    if not hasattr(fig, "savefig"):
        raise TypeError(f"save(): fig must be a matplotlib Figure, got {fig!r:.40}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save(): path must be a file path, got {path!r}")
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_lr_finder(result: Any, ax: Any = None):
    """A range test: raw loss, its EMA and its zero-lag smoothing (what the edge rule
    reads) against lr on a log axis, each suggestion marked."""
    from lrkit.finder import LRFinderResult, edge_of_progress, zero_lag

    if not isinstance(result, LRFinderResult):
        raise TypeError(f"plot_lr_finder(): result must be an LRFinderResult (of "
                        f"lrkit.find_lr), got {result!r:.40}")
    if ax is None:
        _, (ax,) = new_axes(figsize=(7.5, 4.5))
    lrs, raw, ema = result.lrs, result.losses, result.smoothed_losses
    finite = np.isfinite(raw)
    ax.plot(lrs, raw, color="0.65", lw=0.8, label="loss")
    ax.plot(lrs, ema, color="C0", lw=1.6, label="EMA of the loss")
    if finite.sum() >= 3:
        z = zero_lag(raw[finite])
        low, start = float(z.min()), float(np.median(z[: max(1, z.size // 10)]))
        ax.plot(lrs[finite], z, color="C1", lw=1.6, ls=":", label="zero-lag smoothing")
        edge, found = edge_of_progress(lrs[finite], raw[finite])
        if found:  # where the smoothing climbs back over its starting level
            ax.plot([edge], [start], "v", color="C1", ms=9, label=f"edge of progress: {edge:.3g}")
        high = max(start, float(np.nanmax(ema[: max(1, ema.size // 10)])))
        pad = 0.15 * (high - low) + 1e-12
        ax.set_ylim(low - pad, high + pad)  # keep the blow-up from squashing the curve
    ax.set_xscale("log")
    styles = {"steep": "C3", "valley": "C4", "minimum": "C2", "edge": "C1"}
    for i, (rule, lr) in enumerate(result.suggestions.items()):
        if lr is None:
            continue
        default = rule == result.rule
        ax.axvline(lr, color=styles.get(rule, f"C{5 + i}"), ls="-" if default else "--",
                   lw=2 if default else 1,
                   label=f"{rule}: {lr:.3g}" + (" (suggestion)" if default else ""))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss" if result.settings.get("validation") else "training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax


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


def plot_autopilot(report: Any, axes: Sequence[Any] | None = None):
    """The autopilot's story in three panels: range test and probes, the schedule it
    used, and the training curve (with guard interventions marked)."""
    from lrkit.pilot import AutopilotReport

    if not isinstance(report, AutopilotReport):
        raise TypeError(f"plot_autopilot(): report must be the AutopilotReport that "
                        f"lrkit.autopilot returns, got {type(report).__name__}")
    if axes is None:
        _, axes = new_axes(3, figsize=(16, 4.2))
    ax_search, ax_sched, ax_curve = axes
    rt = report.range_test
    if rt:
        ax_search.plot(rt["lrs"], rt["losses"], color="0.6", lw=1, label="range test loss")
        _clip_blow_up(ax_search, rt["losses"])
        if report.suggestion:
            ax_search.axvline(report.suggestion, color="tab:blue", ls="--", lw=1,
                              label=f"suggestion {report.suggestion:.2g}")
    if report.probes:
        ax_probe = ax_search.twinx() if rt else ax_search
        rungs = sorted({p.rung for p in report.probes})
        for rung in rungs:
            ps = [p for p in report.probes if p.rung == rung]
            finite = [p for p in ps if np.isfinite(p.score)]
            ax_probe.plot([p.lr for p in finite], [p.score for p in finite], "o-", ms=5,
                          label=f"probes, {ps[0].steps} steps")
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

# -- the benchmark arena's report ----------------------------------------------------------------
SCHEDULE_COLORS = {"constant": "#1f77b4", "step_based": "#ff7f0e", "exponential": "#2ca02c",
                   "time_based": "#d62728", "cosine": "#9467bd", "one_cycle": "#8c564b",
                   "wsd": "#e377c2"}
METHOD_STYLES = {  # methods outside the optimizer x schedule grid
    "adam_default": {"color": "black", "ls": ":", "marker": "*"},
    "sf_adamw": {"color": "#17becf", "ls": "-", "marker": "D"},
    "sf_adamw_default": {"color": "#17becf", "ls": ":", "marker": "*"},
    "prodigy": {"color": "#bcbd22", "ls": "-.", "marker": "P"},
    "dadapt_adam": {"color": "#7f7f7f", "ls": "-.", "marker": "X"},
    "sls": {"color": "#393b79", "ls": "-.", "marker": "h"},
    "autopilot": {"color": "#ff1493", "ls": "-", "marker": "o"},
}
_EXTRA_COLORS = ["#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"]


def method_style(name: str, family: str = "") -> dict[str, Any]:
    """Colour by schedule, line style by optimizer (SGD solid, Adam dashed); the methods
    outside that grid have their own."""
    C.text("method_style()", "name", name)
    C.text("method_style()", "family", family)
    if name in METHOD_STYLES:
        return dict(METHOD_STYLES[name])
    opt, _, sched = name.partition("_")
    if sched in SCHEDULE_COLORS:
        return {"color": SCHEDULE_COLORS[sched], "ls": "--" if opt == "adam" else "-",
                "marker": "s" if opt == "adam" else "o"}
    return {"color": _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)], "ls": "-",
            "marker": "o"}


def _wide_range(values: Sequence[float]) -> bool:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0])
    return v.size > 1 and v.max() / v.min() > 30


def plot_arena_summary(arena: Any):
    """Methods x tasks coloured by shortfall (text: final metric), beside the
    time-to-target performance profile."""
    import matplotlib.colors as mcolors

    ranking = arena.ranking()
    tasks = arena.tasks
    n, k = len(ranking), len(tasks)
    # tall enough for the colour bar's and the profile's labels with few methods
    fig, (ax, prof) = new_axes(2, figsize=(10.5 + 1.5 * k, max(3.8, 1.6 + 0.34 * n)))
    fig.set_layout_engine("constrained")
    matrix = np.full((n, k), np.nan)
    cmap = _shortfall_cmap()
    norm = mcolors.Normalize(0.0, 0.5)
    for i, (m, _, _) in enumerate(ranking):
        for j, t in enumerate(tasks):
            e = arena.entry(t, m)
            if e is None:
                continue
            matrix[i, j] = t.shortfall(e)
            b = e.best
            text = "div" if not np.isfinite(e.score) else f"{b.final:.3g}"
            met = b.reached == len(b.rows) and np.isfinite(e.score)
            shade = cmap(norm(matrix[i, j]))
            dark = 0.299 * shade[0] + 0.587 * shade[1] + 0.114 * shade[2] < 0.5
            ax.text(j, i, text, ha="center", va="center", fontsize=7.5,
                    fontweight="bold" if met else "normal", color="white" if dark else "black")
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto")
    ax.set_xticks(range(k), [f"{t.name}\n{t.metric.replace('_', ' ')}" for t in tasks],
                  fontsize=7.5)
    ax.xaxis.tick_top()
    ax.set_yticks(range(n), [f"{label}  ({arena.mean_shortfall(m):.2f})"
                             for m, label, _ in ranking], fontsize=8)
    ax.tick_params(length=0)
    cbar = fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, extend="max")
    cbar.set_label("shortfall from the task's best\n(0 best, 1 untrained)", fontsize=8)
    ax.set_title("Final metric of each method's best setting (bold: target met); "
                 "rows by mean shortfall", fontsize=9)
    _profile_axes(arena, "time", prof, top=12)
    return fig


def _shortfall_cmap():
    import matplotlib.colors as mcolors

    return mcolors.LinearSegmentedColormap.from_list(
        "shortfall", ["#1a9850", "#a6d96a", "#ffffbf", "#fdae61", "#d73027"])


def _profile_axes(arena: Any, kind: str, ax: Any, top: int | None = None):
    ratios, used = arena.ratios(kind)
    taus = np.exp(np.linspace(0.0, np.log(16.0), 400))
    from lrkit.bench.report import profile

    scored = sorted(((arena.profile_score(m, kind), m, label) for m, label, _ in arena.methods),
                    key=lambda x: -x[0] if np.isfinite(x[0]) else 1.0)
    shown = scored if top is None else scored[:top]
    for score, m, label in shown:
        style = method_style(m)
        ax.step(taus, profile(ratios[m], taus), where="post", color=style["color"],
                ls=style["ls"], lw=1.6, label=f"{label} ({score:.2f})")
    ax.set_xscale("log")
    ax.set_xlim(1.0, 16.0)
    ax.set_ylim(-0.02, 1.02)
    ax.axvline(4.0, color="0.6", lw=0.8, ls=":")
    ticks = [1, 2, 4, 8, 16]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    what = "cost to reach the target" if kind == "time" else "final score (loss form)"
    ax.set_xlabel(f"tau: {what} / the best method's")
    ax.set_ylabel(f"fraction of the {len(used)} tasks within tau")
    title = "Performance profile: " + ("time to target" if kind == "time" else "final metric")
    if top is not None and len(scored) > top:
        title += f" (top {top} of {len(scored)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def plot_performance_profiles(arena: Any):
    """AlgoPerf-style performance profiles: time to target, and final metric."""
    fig, (left, right) = new_axes(2, figsize=(17, 5.5))
    fig.set_layout_engine("constrained")
    _profile_axes(arena, "time", left)
    _profile_axes(arena, "final", right)
    return fig


def plot_task(arena: Any, task: Any):
    """One task: training curves of each method's best setting, then final metric against
    peak lr for each tuned optimizer, with the range test's suggestion."""
    import matplotlib.transforms as mtransforms

    from lrkit.bench.methods import METHODS

    order = {m.probe: i for i, m in reversed(list(enumerate(METHODS.values())))}
    probes = sorted({e.probe for e in task.entries if e.tuned},
                    key=lambda p: (order.get(p, len(order)), p))
    ncols = 1 + max(1, len(probes))
    fig, axes = new_axes(ncols, figsize=(4.6 * ncols + 2.6, 4.3))
    curves, panels = axes[0], axes[1:]
    finals = [s.final for e in task.entries for s in e.settings] + [task.start, task.target]
    log = not task.higher_is_better and _wide_range(finals)
    low = min(v for v in finals if np.isfinite(v))
    top = task.start * (1.5 if log else 1.05) if not task.higher_is_better else None
    handles = {}
    for e in task.entries:
        style = method_style(e.method, e.family)
        if np.isfinite(e.score):
            x, y = e.best.curve()
            (h,) = curves.plot(x, y, color=style["color"], ls=style["ls"], lw=1.3)
            handles[e.label] = h
    curves.set_title(f"{task.name}: best setting of each method", fontsize=10)
    curves.set_xlabel("step")
    for ax in axes:
        ax.set_ylabel(task.metric)
        ax.axhline(task.target, color="0.5", ls="--", lw=0.9)
        ax.grid(True, which="both", alpha=0.25)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(low / 2, top)
        elif task.higher_is_better:
            ax.set_ylim(max(0.0, min(task.start, low) - 0.05), 1.0)
        else:
            ax.set_ylim(low - 0.05 * abs(low), top)
    untuned_lines = [e for e in task.entries if not e.tuned and e.probe not in probes]
    for ax, probe in zip(panels, probes or [None]):
        blend = mtransforms.blended_transform_factory(ax.transData, ax.transAxes)
        for e in task.entries:
            if e.probe != probe:
                continue
            style = method_style(e.method, e.family)
            lrs = np.array([s.lr for s in e.settings])
            vals = np.array([s.final for s in e.settings])
            div = np.array([bool(s.diverged) for s in e.settings])
            if e.tuned:
                over = ~div & (vals > top) if top is not None else np.zeros_like(div)
                shown = np.where(over, top, vals)  # worse than the untrained model: on the rim
                (h,) = ax.plot(lrs[~div], shown[~div], color=style["color"], ls=style["ls"],
                               marker=style["marker"], ms=4, lw=1.3)
                if over.any():
                    ax.plot(lrs[over], shown[over], "^", color=style["color"], ms=6,
                            clip_on=False)
                ax.plot(lrs[div], np.full(div.sum(), 0.97), "x", color=style["color"], ms=6,
                        transform=blend)
            else:
                (h,) = ax.plot(lrs[~div], vals[~div], style["marker"], color=style["color"],
                               ms=13, mec="white")
            handles.setdefault(e.label, h)
        if probe is not None and probe in task.range_tests:
            lr = task.range_tests[probe]
            h = ax.axvline(lr, color="red", lw=1.8, alpha=0.6)
            ax.text(lr, 0.03, f" range test {lr:.2g}", transform=blend, color="red",
                    fontsize=7.5, rotation=90, va="bottom")
            handles.setdefault("range-test suggestion", h)
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate")
        ax.set_title(f"lr sensitivity: {probe or 'untuned methods'}", fontsize=10)
    last = panels[-1]
    for e in untuned_lines:
        style = method_style(e.method, e.family)
        if np.isfinite(e.score):
            h = last.axhline(e.best.final, color=style["color"], ls=style["ls"], lw=1.4)
            handles.setdefault(e.label, h)
    from matplotlib.lines import Line2D

    handles["target"] = Line2D([], [], color="0.5", ls="--")
    fig.set_layout_engine("constrained")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center",
               fontsize=7, frameon=False)
    return fig


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
