"""The arena report's figures: a methods x tasks summary beside the performance profile,
the profiles, and one figure per task. They read the ``Arena`` that ``summarize`` builds and
draw with ``lrkit.plot``'s helpers."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lrkit import _checks as C
from lrkit.bench.methods import METHODS
from lrkit.bench.results import profile
from lrkit.plot import new_axes

SCHEDULE_COLORS = {"constant": "#1f77b4", "step_based": "#ff7f0e", "exponential": "#2ca02c",
                   "time_based": "#d62728", "cosine": "#9467bd", "one_cycle": "#8c564b",
                   "wsd": "#e377c2", "linear": "#843c39"}
_EXTRA_COLORS = ["#637939", "#843c39", "#7b4173", "#3182bd", "#e6550d"]


def method_style(name: str, family: str = "",
                 style: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``style`` when given (a method outside the optimizer x schedule grid has its own);
    else colour by schedule, line style by optimizer (SGD solid, Adam dashed)."""
    C.text("method_style()", "name", name)
    C.text("method_style()", "family", family)
    if style is not None:
        if not isinstance(style, Mapping):
            raise TypeError(f"method_style(): style must be a mapping (color, ls, marker) or "
                            f"None, got {type(style).__name__}")
        return dict(style)
    opt, _, sched = name.partition("_")
    if sched in SCHEDULE_COLORS:
        return {"color": SCHEDULE_COLORS[sched], "ls": "--" if opt == "adam" else "-",
                "marker": "s" if opt == "adam" else "o"}
    return {"color": _EXTRA_COLORS[sum(map(ord, name)) % len(_EXTRA_COLORS)], "ls": "-",
            "marker": "o"}


def _style(name: str, family: str = "") -> dict[str, Any]:
    method = METHODS.get(name)
    return method_style(name, family, method.style if method is not None else None)


def _wide_range(values: Sequence[float]) -> bool:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0])
    return v.size > 1 and v.max() / v.min() > 30


def plot_arena_summary(arena: Any):
    """Methods x tasks coloured by shortfall (text: final metric), beside the
    time-to-target performance profile (tuned methods charged their whole lr grid)."""
    import matplotlib.colors as mcolors

    ranking = arena.ranking()
    tasks = arena.tasks
    n, k = len(ranking), len(tasks)
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
    # charged for their grid, tuned methods sit a grid's size (9 cells...) to the right
    tau_max = 64.0 if kind == "time" else 16.0
    taus = np.exp(np.linspace(0.0, np.log(tau_max), 400))

    scored = sorted(((arena.profile_score(m, kind), m, label) for m, label, _ in arena.methods),
                    key=lambda x: -x[0] if np.isfinite(x[0]) else 1.0)
    shown = scored if top is None else scored[:top]
    for score, m, label in shown:
        style = _style(m)
        ax.step(taus, profile(ratios[m], taus), where="post", color=style["color"],
                ls=style["ls"], lw=1.6, label=f"{label} ({score:.2f})")
    ax.set_xscale("log")
    ax.set_xlim(1.0, tau_max)
    ax.set_ylim(-0.02, 1.02)
    ax.axvline(4.0, color="0.6", lw=0.8, ls=":")
    ticks = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= tau_max]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.minorticks_off()
    what = {"time": "cost to target, tuned: x its lr cells",
            "time_oracle": "cost to target of the best cell"}.get(kind,
                                                                   "final score (loss form)")
    ax.set_xlabel(f"tau: {what} / the best method's")
    ax.set_ylabel(f"fraction of the {len(used)} tasks within tau")
    title = {"time": "Time to target, grid charged (tuned: x its lr cells)",
             "time_oracle": "Time to target, oracle (tuned: best cell only)",
             "final": "Final metric"}[kind]
    if top is not None and len(scored) > top:
        title += f" (top {top} of {len(scored)})"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return ax


def plot_performance_profiles(arena: Any):
    """AlgoPerf-style performance profiles: time to target with a tuned method charged its
    whole lr grid, the same in the oracle view (its best cell only), and final metric."""
    fig, axes = new_axes(3, figsize=(26, 5.5))
    fig.set_layout_engine("constrained")
    for ax, kind in zip(axes, ("time", "time_oracle", "final")):
        _profile_axes(arena, kind, ax)
    return fig


def plot_task(arena: Any, task: Any):
    """One task: training curves of each method's best setting, then final metric against
    peak lr for each tuned optimizer, with the range test's suggestion."""
    import matplotlib.transforms as mtransforms

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
        style = _style(e.method, e.family)
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
            style = _style(e.method, e.family)
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
        style = _style(e.method, e.family)
        if np.isfinite(e.score):
            h = last.axhline(e.best.final, color=style["color"], ls=style["ls"], lw=1.4)
            handles.setdefault(e.label, h)
    from matplotlib.lines import Line2D

    handles["target"] = Line2D([], [], color="0.5", ls="--")
    fig.set_layout_engine("constrained")
    fig.legend(list(handles.values()), list(handles.keys()), loc="outside right center",
               fontsize=7, frameon=False)
    return fig
