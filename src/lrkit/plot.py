"""Every matplotlib figure of lrkit, so that plots look alike."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def new_axes(ncols: int = 1, figsize: tuple[float, float] | None = None):
    """A figure with ``ncols`` axes, drawn without a display when none is available."""
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_lr_finder(result: Any, ax: Any = None):
    """A range test: raw and smoothed loss against lr (log axis), each suggestion marked."""
    if ax is None:
        _, (ax,) = new_axes(figsize=(7.5, 4.5))
    lrs, raw, smoothed = result.lrs, result.losses, result.smoothed_losses
    ax.plot(lrs, raw, color="0.6", lw=0.8, alpha=0.7, label="loss")
    ax.plot(lrs, smoothed, color="C0", lw=1.8, label="smoothed loss")
    ax.set_xscale("log")
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:  # keep the blow-up from squashing the interesting part
        low, first = float(finite.min()), float(finite[: max(1, finite.size // 10)].max())
        top = max(first, low) + 0.1 * abs(max(first, low) - low) + 1e-12
        ax.set_ylim(low - 0.05 * (top - low), top)
    for i, (rule, lr) in enumerate(sorted(result.suggestions.items())):
        if lr is None:
            continue
        default = rule == result.rule
        ax.axvline(lr, color=f"C{i + 1}", ls="-" if default else "--", lw=2 if default else 1,
                   label=f"{rule}: {lr:.3g}" + (" (suggestion)" if default else ""))
    ax.set_xlabel("learning rate")
    ax.set_ylabel("validation loss" if result.settings.get("validation") else "training loss")
    ax.set_title("Learning-rate range test")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return ax
