"""The outcome of ``lrkit.tune`` (``TuneResult``) and its HTML report."""
from __future__ import annotations

import base64
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrkit import _checks as C
from lrkit import schedules as S
from lrkit.pages import render
from lrkit.tuning.space import schedule_of
from lrkit.tuning.workers import fmt


@dataclass
class TuneResult:
    """The outcome of ``lrkit.tune``."""

    study: Any
    direction: str
    steps: int | None
    report_path: str | None = None
    failed: list[int] = field(default_factory=list)

    @property
    def best_trial(self) -> Any:
        return self.study.best_trial

    @property
    def best_value(self) -> float:
        return float(self.study.best_value)

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.study.best_params)

    @property
    def best_schedule(self) -> S.Schedule | None:
        """The best setting's schedule; ``str()`` of it is ``S.parse`` text."""
        if self.steps is None:
            return None
        return schedule_of(self.best_params, self.steps)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.study.get_trials(deepcopy=False):
            out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
        return out




def write_report(result: TuneResult, path: str) -> str:
    """A self-contained HTML page: the best setting and Optuna's plots (optimisation
    history, parameter importances, slice on lr) as embedded PNGs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    if not isinstance(result, TuneResult):
        raise TypeError(f"write_report(): result must be the TuneResult that tune() returns, "
                        f"got {type(result).__name__}")
    path = C.path("write_report()", "path", path)
    if os.path.isdir(path):
        raise ValueError(f"write_report(): path must name an HTML file, got the directory "
                         f"{path!r}")
    study = result.study
    figures = []
    plots = [("Optimisation history", lambda: ov.plot_optimization_history(study)),
             ("Parameter importances", lambda: ov.plot_param_importances(study)),
             ("Slice on lr", lambda: ov.plot_slice(study, params=["lr"]))]
    import warnings

    for title, make in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = make()
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            buf = io.BytesIO()
            fig.set_size_inches(7, 4)
            fig.tight_layout()
            fig.savefig(buf, format="png", dpi=100)
            plt.close(fig)
            figures.append({"title": title, "image": base64.b64encode(buf.getvalue()).decode()})
        except Exception as exc:  # too few trials for a plot: say so instead
            figures.append({"title": title, "image": None, "error": str(exc)})
    try:
        trial = result.best_trial
        schedule = result.best_schedule
        best = {"number": trial.number, "value": f"{result.best_value:.6g}",
                "schedule": str(schedule) if schedule is not None else None,
                "params": [(str(k), fmt(v)) for k, v in trial.params.items()]}
    except ValueError:
        best = None
    page = render("tune.html", study=study.study_name, best=best, direction=result.direction,
                  counts=str(result.counts()), figures=figures)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(page)
    return str(path)
