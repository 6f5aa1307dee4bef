"""``tune()``: open the study, choose the default space, run the workers, write the report."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lrkit import _checks as C
from lrkit.tuning.objective import Objective, ObjectiveSpec, resolve
from lrkit.tuning.report import TuneResult, write_report
from lrkit.tuning.space import Space, default_space
from lrkit.tuning.storage import open_storage
from lrkit.tuning.workers import LiveTable, StudySettings, run_worker, run_workers


def tune(
    objective_or_target: Any,
    space: Space | None = None,
    trials: int = 50,
    storage: str | None = None,
    study: str | None = None,
    pruner: Any = "asha",
    sampler: Any = "tpe",
    workers: int = 1,
    seed: int | None = None,
    *,
    optimizer: str | None = None,
    steps: int | None = None,
    direction: str | None = None,
    range_test: bool = True,
    stale_after: float = 120.0,
    report: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Search the learning rate and schedule with Optuna; returns a ``TuneResult``.

    ``objective_or_target``: a built-in task name or ``Task`` (the metric of a training
    run of ``steps`` updates, default the task's budget, with ``optimizer``, default the
    task's reference optimizer), ``"package.module:function"`` returning ``(model, loader,
    loss_fn)`` (the mean training loss of the last tenth of ``steps`` updates, default
    300, with ``optimizer``, default Adam), or a callable ``f(params)`` /
    ``f(params, report)`` returning the value to minimise (``direction="maximize"`` to
    maximise), where ``report(step, value)`` reports intermediate values for pruning.
    ``space``: a dict of lrkit distributions or an Optuna-style ``space(trial) -> dict``;
    the default (``default_space``) centres the lr on a range test run once per study.
    ``trials`` counts finished (completed or pruned) trials over the whole study, so a
    rerun resumes up to it and several workers share it. ``storage``/``study``/
    ``workers``: see the module docstring. ``report``: write an HTML report there.
    ``seed`` seeds the sampler and the task's model and data (paired across trials).
    """
    import optuna

    fn = "tune()"
    range_test = C.boolean(fn, "range_test", range_test)
    progress = C.boolean(fn, "progress", progress)
    trials = C.positive_int(fn, "trials", trials)
    workers = C.positive_int(fn, "workers", workers)
    stale_after = C.positive(fn, "stale_after", stale_after)
    task_seed = 0 if seed is None else C.nonnegative_int(fn, "seed", seed)
    if steps is not None:
        steps = C.integer(fn, "steps", steps, minimum=2)
    if direction is not None:
        direction = C.choice(fn, "direction", direction, ("minimize", "maximize"))
    if space is not None and not (callable(space) or isinstance(space, Mapping)):
        raise TypeError(f"{fn}: space must be a dict of lrkit distributions or a function of "
                        f"an Optuna trial, got {type(space).__name__}")
    if workers > 1 and callable(objective_or_target) and not isinstance(objective_or_target,
                                                                         str):
        _check_picklable(objective_or_target)
    spec = ObjectiveSpec(objective_or_target, optimizer, steps, task_seed, direction)
    objective = resolve(spec)
    store = open_storage(storage, workers)
    study_name = study or f"lrkit-{objective.name}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    the_study = optuna.create_study(study_name=study_name, storage=store,
                                    direction=objective.direction, load_if_exists=True)
    if the_study.direction.name.lower() != objective.direction:
        raise ValueError(f"{fn}: study {study_name!r} already exists with direction "
                         f"{the_study.direction.name.lower()}, not {objective.direction}")
    _check_settings(the_study, objective.settings)
    if objective.description:
        the_study.set_user_attr("lrkit_objective", objective.description)
    if space is None:
        space = _default_space_for(the_study, objective, range_test)
    settings = StudySettings(space, trials, storage, study_name, pruner, sampler, workers,
                             stale_after)
    display = LiveTable(the_study, trials) if progress else None
    if workers == 1:
        failed = run_worker(objective, settings, seed,
                            on_trial=display.update if display else None, storage_obj=store)
    else:
        failed = run_workers(spec, settings, seed, display)
    if display:
        display.close()
    result = TuneResult(the_study, objective.direction, objective.steps, failed=failed)
    if report:
        result.report_path = write_report(result, report)
    return result


class StudyMismatchError(ValueError):
    """A study's trials were scored with other settings than the ones asked for."""


def _check_settings(study: Any, settings: dict[str, Any]) -> None:
    """Record ``settings`` in a new study; refuse to add trials to one scored otherwise."""
    recorded = study.user_attrs.get("lrkit_settings")
    if recorded is None:
        study.set_user_attr("lrkit_settings", settings)
        return
    differ = {k: (recorded.get(k), v) for k, v in settings.items() if recorded.get(k) != v}
    if differ:
        had = ", ".join(f"{k}={old!r}" for k, (old, _) in differ.items())
        asked = ", ".join(f"{k}={new!r}" for k, (_, new) in differ.items())
        raise StudyMismatchError(
            f"tune(): study {study.study_name!r} was scored with {had}; this run asks for "
            f"{asked}, and values scored otherwise cannot be compared. Rerun with the "
            "study's settings to resume it, or name a new study (--study NAME, study=)")


def _default_space_for(study: Any, objective: Objective, range_test: bool) -> dict:
    """The default space; the range-test suggestion is computed once and kept in the study."""
    suggestion = study.user_attrs.get("lrkit_lr_suggestion")
    if suggestion is None and range_test and objective.lr_suggestion is not None:
        try:
            suggestion = objective.lr_suggestion()
        except Exception:  # a failed range test falls back to the wide default range
            suggestion = None
        study.set_user_attr("lrkit_lr_suggestion", suggestion if suggestion else 0.0)
    usable = isinstance(suggestion, float) and math.isfinite(suggestion) and suggestion > 0
    return default_space(suggestion if usable else None)


def _check_picklable(fn: Any) -> None:
    import pickle

    try:
        pickle.dumps(fn)
    except Exception as exc:
        raise TypeError(f"tune(): with workers > 1 the objective must be picklable (a "
                        f"module-level function), got {fn!r}: {exc}") from None
