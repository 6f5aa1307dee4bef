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
