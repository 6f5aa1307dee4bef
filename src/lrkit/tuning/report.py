"""The outcome of ``lrkit.tune`` (``TuneResult``) and its HTML report."""
from __future__ import annotations

import base64
import os
from collections.abc import Callable
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
    """A self-contained HTML page: what a trial's value is, the best setting, and three
    plots as embedded PNGs: the history of the search and a slice on lr (completed trials,
    and pruned ones at their last reported value), and Optuna's parameter importances
    (from 5 completed trials on)."""
    if not isinstance(result, TuneResult):
        raise TypeError(f"write_report(): result must be the TuneResult that tune() returns, "
                        f"got {type(result).__name__}")
    path = C.path("write_report()", "path", path)
    if os.path.isdir(path):
        raise ValueError(f"write_report(): path must name an HTML file, got the directory "
                         f"{path!r}")
    import warnings

    import optuna

    study = result.study
    figures = []
    with warnings.catch_warnings():  # Optuna marks its plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for title, make in _report_plots(result):
            image = _figure(make)
            if image.startswith("unavailable: "):
                figures.append({"title": title, "image": None,
                                "error": image[len("unavailable: "):]})
            else:
                figures.append({"title": title, "image": image})
    try:
        trial = result.best_trial
        schedule = result.best_schedule
        best = {"number": trial.number, "value": f"{result.best_value:.6g}",
                "schedule": str(schedule) if schedule is not None else None,
                "params": [(str(k), fmt(v)) for k, v in trial.params.items()]}
    except ValueError:
        best = None
    meaning = study.user_attrs.get("lrkit_objective") or "the objective's return value"
    summary = ", ".join(f"{n} {k}" for k, n in sorted(result.counts().items()))
    page = render("tune.html", study=study.study_name, best=best, direction=result.direction,
                  meaning=meaning, counts=summary, figures=figures)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(page)
    return str(path)


def _figure(make: Callable[[], Any]) -> str:
    """The figure ``make()`` draws as base64 PNG, or ``"unavailable: why"``."""
    from lrkit.plot import save_png_bytes

    try:
        ax = make()
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(7, 4)
        return base64.b64encode(save_png_bytes(fig)).decode()
    except Exception as exc:  # too few trials for a plot: say so instead
        return f"unavailable: {exc}"


def _report_plots(result: TuneResult) -> list[tuple[str, Callable[[], Any]]]:
    """The report's plots: (title, function drawing it and returning its axes)."""
    from optuna.trial import TrialState

    from lrkit.plot import new_axes, plot_trials

    trials = result.study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    last = {t.number: t.intermediate_values[max(t.intermediate_values)] for t in pruned}
    pick = max if result.direction == "maximize" else min
    best = [pick(t.value for t in done[:i + 1]) for i in range(len(done))]
    ylabel = "value (pruned: last reported)"

    def history():
        _, (ax,) = new_axes(1)
        return plot_trials(ax, [t.number for t in done], [t.value for t in done],
                           [t.number for t in pruned], [last[t.number] for t in pruned],
                           xlabel="trial", ylabel=ylabel, best=best)

    def lr_slice():
        have = [t for t in done if "lr" in t.params]
        cut = [t for t in pruned if "lr" in t.params]
        if not have and not cut:
            raise ValueError("no trial has an lr")
        _, (ax,) = new_axes(1)
        return plot_trials(ax, [t.params["lr"] for t in have], [t.value for t in have],
                           [t.params["lr"] for t in cut], [last[t.number] for t in cut],
                           xlabel="lr", ylabel=ylabel, log_x=True)

    def importances():
        if len(done) < 5:
            raise ValueError(f"needs 5 completed trials, the study has {len(done)} (pruned "
                             f"trials have no final value)")
        import optuna.visualization.matplotlib as ov

        return ov.plot_param_importances(result.study)

    return [("Optimisation history", history), ("Slice on lr", lr_slice),
            ("Parameter importances", importances)]
