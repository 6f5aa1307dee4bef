"""``lrkit.tune`` (this module is ``lrkit.tuning``): search the learning rate and its
schedule with Optuna.

lrkit writes no search engine and no cluster scheduler of its own: it drives Optuna, with
a default search space for the learning rate (log-uniform, centred on the range test's
suggestion when there is one), the schedule family, the warmup fraction and the momentum
(or Adam's beta1); trials report their metric as they train so that a pruner (ASHA by
default) stops bad ones early.

Storage decides where the study lives and who can share it:

- none given, one worker: an SQLite file ``lrkit-tune.db`` in the working directory; an
  interrupted run resumes by running the same command again (finished trials are kept);
- ``workers > 1`` on one machine: a journal file (``lrkit-tune.journal``, Optuna's
  ``JournalStorage`` file backend; SQLite is not safe for parallel writers);
- many machines: every machine runs the same command against one PostgreSQL URL
  (``postgresql://user:pass@host/db``, Optuna's RDB storage) or one journal file on
  shared storage (``journal:/shared/study.journal``).

A trial whose worker died (killed, out of memory, machine lost) is marked failed, not
left running for ever: each worker records its host, pid and a heartbeat on the trial it
runs, and every worker, before each new trial, fails the running trials of dead local
processes at once and those whose heartbeat is older than ``stale_after`` seconds.
"""
from __future__ import annotations

import base64
import html
import inspect
import math
import multiprocessing as mp
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lrkit import _checks as C
from lrkit import schedules as S

DEFAULT_SQLITE = "lrkit-tune.db"
DEFAULT_JOURNAL = "lrkit-tune.journal"
DEFAULT_FAMILIES = ("constant", "cosine", "one_cycle", "wsd", "step_based", "exponential",
                    "time_based")
HEARTBEAT_SECONDS = 5.0
DEFAULT_TARGET_STEPS = 300
MAX_FAILURES_IN_A_ROW = 5


# -- search spaces ------------------------------------------------------------------------
@dataclass(frozen=True)
class LogUniform:
    """A float drawn log-uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        C.positive("LogUniform()", "low", self.low)
        if C.positive("LogUniform()", "high", self.high) < self.low:
            raise ValueError(f"LogUniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Uniform:
    """A float drawn uniformly from [low, high]."""

    low: float
    high: float

    def __post_init__(self) -> None:
        C.real("Uniform()", "low", self.low)
        if C.real("Uniform()", "high", self.high) < self.low:
            raise ValueError(f"Uniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class IntUniform:
    """An integer drawn from [low, high] (log-spaced with ``log=True``)."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        C.boolean("IntUniform()", "log", self.log)
        C.integer("IntUniform()", "low", self.low)
        if C.integer("IntUniform()", "high", self.high) < self.low:
            raise ValueError(f"IntUniform(): high must be >= low, got low={self.low!r}, "
                             f"high={self.high!r}")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class Categorical:
    """One of ``choices``."""

    choices: tuple[Any, ...]

    def __init__(self, choices: Any) -> None:
        items = tuple(C.sequence("Categorical()", "choices", choices, min_len=1))
        object.__setattr__(self, "choices", items)

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, list(self.choices))


Distribution = LogUniform | Uniform | IntUniform | Categorical
Space = Mapping[str, Distribution] | Callable[[Any], dict[str, Any]]


def default_space(lr_suggestion: float | None = None,
                  families: tuple[str, ...] = DEFAULT_FAMILIES) -> dict[str, Distribution]:
    """The default search space.

    ``lr``: log-uniform over [suggestion / 100, suggestion * 10] (clipped to [1e-6, 10])
    when a range-test suggestion is known, else [1e-5, 1]; ``schedule``: a family of
    ``S.family``; ``warmup``: the warmup fraction in [0, 0.2]; ``momentum``: SGD's momentum
    or Adam's beta1 in [0.8, 0.99].
    """
    families = tuple(C.sequence("default_space()", "families", families, min_len=1))
    if lr_suggestion is not None:
        lr_suggestion = C.positive("default_space()", "lr_suggestion", lr_suggestion)
        low, high = max(lr_suggestion / 100, 1e-6), min(lr_suggestion * 10, 10.0)
        lr = LogUniform(low, max(high, low * 10))
    else:
        lr = LogUniform(1e-5, 1.0)
    return {"lr": lr, "schedule": Categorical(families), "warmup": Uniform(0.0, 0.2),
            "momentum": Uniform(0.8, 0.99)}


def sample(space: Space, trial: Any) -> dict[str, Any]:
    """Draw one setting from a dict of distributions or an Optuna-style function."""
    if callable(space) and not isinstance(space, Mapping):
        params = space(trial)
        if not isinstance(params, Mapping):
            raise TypeError(f"tune(): a space function must return a dict of settings, got "
                            f"{type(params).__name__}")
        return dict(params)
    out = {}
    for name, dist in space.items():
        if not hasattr(dist, "suggest"):
            raise TypeError(f"tune(): space[{name!r}] must be an lrkit distribution "
                            f"(LogUniform, Uniform, IntUniform, Categorical), got {dist!r}")
        out[name] = dist.suggest(trial, name)
    return out


def schedule_of(params: Mapping[str, Any], steps: int) -> S.Schedule | None:
    """The schedule a setting describes (``lr``, ``schedule`` family, ``warmup``)."""
    if not isinstance(params, Mapping):
        raise TypeError(f"schedule_of(): params must be a dict of settings, got "
                        f"{type(params).__name__}")
    steps = C.positive_int("schedule_of()", "steps", steps)
    if "lr" not in params:
        return None
    name = params.get("schedule", "constant")
    return S.family(name, float(params["lr"]), steps, float(params.get("warmup", 0.0)))


# -- objectives -----------------------------------------------------------------------------
class Report:
    """``report(step, value)`` inside an objective: records an intermediate value and raises
    ``optuna.TrialPruned`` when the pruner stops the trial."""

    def __init__(self, trial: Any) -> None:
        self.trial = trial

    def __call__(self, step: int, value: float) -> None:
        import optuna

        if not math.isfinite(value):
            return
        self.trial.report(float(value), int(step))
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} with value {value:.4g}")


@dataclass
class _Objective:
    """What a trial trains: a built-in task, a ``module:function`` target or a callable."""

    name: str
    direction: str
    fn: Callable[[dict[str, Any], Report], float]
    steps: int | None = None
    lr_suggestion: Callable[[], float | None] | None = None
    #: what a trial's value depends on besides its parameters, recorded in the study so
    #: that a rerun with other settings does not mix values that cannot be compared
    settings: dict[str, Any] = field(default_factory=dict)
    #: what "value" means, in words (the report and the study's user attributes say it)
    description: str = ""


def _make_optimizer(optimizer: str, params: Mapping[str, Any]):
    """``params -> optimizer`` with the setting's momentum as SGD's momentum or Adam's beta1."""
    from lrkit.targets import optimizer_factory

    factory = optimizer_factory(optimizer)

    def make(parameters):
        opt = factory(parameters, lr=float(params.get("lr", 1e-3)))
        if "momentum" in params:
            m = float(params["momentum"])
            for group in opt.param_groups:
                if "momentum" in group:
                    group["momentum"] = m
                elif "betas" in group:
                    group["betas"] = (m, *tuple(group["betas"])[1:])
        return opt

    return make


def _task_objective(task: Any, optimizer: str | None, steps: int | None, seed: int):
    from lrkit.bench.train import train

    optimizer = optimizer or task.reference.optimizer
    budget = steps or task.steps

    def fn(params: dict[str, Any], report: Report) -> float:
        run = train(task, _make_optimizer(optimizer, params), schedule_of(params, budget),
                    seed=seed, steps=budget, on_eval=report)
        return float(run.final)

    def suggestion() -> float | None:
        return _range_test(lambda: task.build(seed).as_target(), optimizer)

    return _Objective(task.name, "maximize" if task.higher_is_better else "minimize", fn,
                      budget, suggestion,
                      {"steps": budget, "optimizer": optimizer, "seed": seed},
                      f"{task.metric} of task {task.name} after {budget} training steps with "
                      f"{optimizer} (task seed {seed}), "
                      f"{'maximised' if task.higher_is_better else 'minimised'}")


def _target_objective(text: str, optimizer: str | None, steps: int | None):
    """A user's ``module:function`` target: the mean training loss of the last tenth of
    ``steps`` updates (default 300), reported every tenth of the run."""
    from lrkit.scheduler import Scheduler
    from lrkit.targets import load_target

    optimizer = optimizer or "adam"
    budget = steps or DEFAULT_TARGET_STEPS

    def fn(params: dict[str, Any], report: Report) -> float:
        target = load_target(text)
        model, loss_fn = target.model, target.loss_fn
        opt = _make_optimizer(optimizer, params)(model.parameters())
        schedule = schedule_of(params, budget)
        sched = Scheduler(opt, lr=schedule) if schedule is not None else None
        losses: list[float] = []
        batches = iter(target.loader)
        every = max(1, budget // 10)
        for step in range(1, budget + 1):
            try:
                inputs, targets = next(batches)
            except StopIteration:
                batches = iter(target.loader)
                inputs, targets = next(batches)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(inputs), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                return math.inf
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(value)
            if step % every == 0:
                report(step, sum(losses[-every:]) / every)
        tail = losses[-max(1, budget // 10):]
        return sum(tail) / len(tail)

    def suggestion() -> float | None:
        def build():
            t = load_target(text)
            return t.model, t.loader, t.loss_fn
        return _range_test(build, optimizer)

    return _Objective(text, "minimize", fn, budget, suggestion,
                      {"steps": budget, "optimizer": optimizer},
                      f"mean training loss of {text} over the last tenth of {budget} "
                      f"training steps with {optimizer}, minimised")


def _range_test(build: Callable[[], tuple[Any, Any, Any]], optimizer: str) -> float | None:
    from lrkit.finder import find_lr
    from lrkit.targets import optimizer_factory

    model, loader, loss_fn = build()
    opt = optimizer_factory(optimizer)(model.parameters(), lr=1e-3)
    result = find_lr(model, opt, loader, loss_fn, warn=False)
    value = result.suggestion
    return float(value) if value is not None and math.isfinite(value) else None


def _callable_objective(fn: Callable[..., float], direction: str, name: str | None):
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) >= 2:
        call = fn
    else:
        def call(settings: dict[str, Any], report: Report) -> float:
            return fn(settings)
    label = name or getattr(fn, "__name__", "objective")
    return _Objective(label, direction, call,
                      description=f"the number {label}(params) returns, {direction[:-1]}ed")


def _resolve(objective_or_target: Any, optimizer: str | None, steps: int | None, seed: int,
             direction: str | None) -> _Objective:
    from lrkit.bench.tasks import TASKS, Task

    if isinstance(objective_or_target, Task):
        return _task_objective(objective_or_target, optimizer, steps, seed)
    if isinstance(objective_or_target, str):
        text = objective_or_target.strip()
        if text in TASKS:
            return _task_objective(TASKS[text], optimizer, steps, seed)
        if ":" in text:
            from lrkit.targets import load_target

            load_target(text)  # a TARGET that cannot load fails here, once, with one line
            return _target_objective(text, optimizer, steps)
        from lrkit.targets import TargetError

        raise TargetError(f"TARGET {text!r} is neither 'package.module:function' nor a "
                          f"built-in task ({', '.join(TASKS)})")
    if callable(objective_or_target):
        return _callable_objective(objective_or_target, direction or "minimize", None)
    raise TypeError("tune(): objective_or_target must be a task name, 'module:function', a "
                    f"Task or a callable, got {type(objective_or_target).__name__}")


# -- storage ---------------------------------------------------------------------------------
class StorageError(ValueError):
    """A storage URL that cannot be used."""


_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.-]*://[^/@:]*:)(?P<password>[^@]*)@")


def redact(url: str) -> str:
    """``url`` with the password of its ``user:password@`` part replaced by ``***``: the
    only form a storage URL is shown in (errors, progress, reports, logs)."""
    return _PASSWORD.sub(r"\g<head>***@", url)


def _scrub(text: str, url: str) -> str:
    """``text`` (a driver's message about ``url``) with the URL's password hidden."""
    match = _PASSWORD.match(url)
    if match and match["password"]:
        text = text.replace(match["password"], "***")
    return text.replace(url, redact(url))


def open_storage(storage: str | None, workers: int = 1) -> Any:
    """The Optuna storage a URL names (see the module docstring for the forms); errors
    show the URL with its password hidden (``redact``)."""
    workers = C.positive_int("open_storage()", "workers", workers)
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    if storage is None:
        storage = f"journal:{DEFAULT_JOURNAL}" if workers > 1 else f"sqlite:///{DEFAULT_SQLITE}"
    if not isinstance(storage, str) or not storage.strip():
        raise StorageError(f"storage must be a URL such as sqlite:///study.db, "
                           f"postgresql://user@host/db or journal:PATH, got "
                           f"{redact(storage) if isinstance(storage, str) else storage!r}")
    url = storage.strip()
    shown = redact(url)
    if url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = url[len("journal:"):] if url.startswith("journal:") else url
        if not path:
            raise StorageError(f"storage {shown!r}: a journal needs a file path (journal:PATH)")
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(path))
        except OSError as exc:
            raise StorageError(f"storage {shown!r}: cannot open the journal file: "
                               f"{exc}") from None
    scheme = url.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in ("sqlite", "postgresql", "postgres", "mysql"):
        raise StorageError(f"storage {shown!r}: unknown kind; use sqlite:///FILE, "
                           f"postgresql://USER@HOST/DB, mysql://... or journal:FILE")
    if scheme == "sqlite" and workers > 1:
        raise StorageError(f"storage {shown!r}: SQLite is not safe for {workers} parallel "
                           f"writers; use journal:FILE (one machine) or PostgreSQL")
    if scheme == "postgres":
        url = "postgresql" + url[len("postgres"):]
    for attempt in range(4):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as exc:
            raise StorageError(f"storage {shown!r} needs a database driver: "
                               f"{_scrub(str(exc), url)} (pip install 'lrkit[tune]' "
                               f"brings PostgreSQL's)") from None
        except Exception as exc:  # sqlalchemy raises many kinds: report one clear line
            # workers starting together on a new database race to create its tables; the
            # loser finds them on the next attempt
            if attempt < 3 and "refused" not in str(exc):
                time.sleep(0.2 + 0.3 * attempt)
                continue
            text = _scrub(str(exc), url).strip()
            first = text.splitlines()[0] if text else type(exc).__name__
            raise StorageError(f"storage {shown!r} cannot be opened: {first}") from None
    raise AssertionError("unreachable")


# -- dead workers ---------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fail_dead_trials(study: Any, stale_after: float) -> list[int]:
    """Mark failed the running trials whose worker is gone; returns their numbers."""
    from optuna.trial import TrialState

    host, now, failed = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = t.system_attrs
        pid, where = attrs.get("lrkit_pid"), attrs.get("lrkit_host")
        beat = attrs.get("lrkit_heartbeat", attrs.get("lrkit_started", now))
        dead = (where == host and pid is not None and not _pid_alive(int(pid))
                and int(pid) != os.getpid())
        if dead or now - float(beat) > stale_after:
            study._storage.set_trial_system_attr(
                t._trial_id, "lrkit_failed", "worker died" if dead else "heartbeat stale")
            study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            failed.append(t.number)
    return failed


class _Heartbeat:
    """Refreshes ``lrkit_heartbeat`` on the running trial from a background thread."""

    def __init__(self, study: Any, trial_id: int) -> None:
        self.study, self.trial_id = study, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT_SECONDS):
            try:
                self.study._storage.set_trial_system_attr(self.trial_id, "lrkit_heartbeat",
                                                          time.time())
            except Exception:  # the trial finished meanwhile: nothing to refresh
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(timeout=1.0)


# -- the driver -----------------------------------------------------------------------------
def _pruner(pruner: Any, steps: int | None = None):
    """An Optuna pruner by name.

    Schedules that decay show their worth late (the short-horizon bias of Wu et al. 2018:
    early in a run, a high constant rate looks worse than it ends), so the first rung of
    ASHA sits at half the budget with a reduction factor of 2, and the median rule waits
    for 8 trials and a quarter of the budget. Measured on noisy_quadratic (300 steps,
    seeds 0-2, 30 trials): Optuna's ASHA defaults pruned 26 of 30 trials and ended 7-56%
    above the grid's best; these settings ended within 8% of it.
    """
    import optuna

    if not isinstance(pruner, str):
        import optuna
        if not isinstance(pruner, optuna.pruners.BasePruner):
            raise TypeError(f"tune(): pruner must be a name or an optuna pruner, got "
                            f"{type(pruner).__name__}")
        return pruner
    half = max(1, (steps or 2) // 2)
    quarter = max(1, (steps or 4) // 4)
    table = {
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=half,
                                                                reduction_factor=2),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=8,
                                                      n_warmup_steps=quarter),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=quarter),
        "none": optuna.pruners.NopPruner,
    }
    if pruner not in table:
        raise ValueError(f"tune(): pruner must be one of {', '.join(map(repr, table))} or an "
                         f"optuna pruner, got {pruner!r}")
    return table[pruner]()


def _sampler(sampler: Any, seed: int | None):
    import optuna

    if not isinstance(sampler, str):
        if not isinstance(sampler, optuna.samplers.BaseSampler):
            raise TypeError(f"tune(): sampler must be a name or an optuna sampler, got "
                            f"{type(sampler).__name__}")
        return sampler
    table = {"tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=8,
                                                       multivariate=True, group=True),
             "random": lambda: optuna.samplers.RandomSampler(seed=seed)}
    if sampler not in table:
        raise ValueError(f"tune(): sampler must be one of {', '.join(map(repr, table))} or an "
                         f"optuna sampler, got {sampler!r}")
    return table[sampler]()


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


def _done(study: Any) -> int:
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states))


def _run_worker(objective: _Objective, space: Space, trials: int, storage: str | None,
                study_name: str, pruner: Any, sampler: Any, seed: int | None, workers: int,
                stale_after: float, on_trial: Callable[[Any], None] | None = None,
                storage_obj: Any = None) -> list[int]:
    """One worker: run trials until the study holds ``trials`` finished or running ones."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = storage_obj if storage_obj is not None else open_storage(storage, workers)
    study = optuna.load_study(study_name=study_name, storage=store,
                              sampler=_sampler(sampler, seed),
                              pruner=_pruner(pruner, objective.steps))
    host, pid = socket.gethostname(), os.getpid()
    failed: list[int] = []

    def run_trial(trial: Any) -> float:
        trial.set_user_attr("worker", f"{host}:{pid}")
        storage_ = study._storage
        storage_.set_trial_system_attr(trial._trial_id, "lrkit_host", host)
        storage_.set_trial_system_attr(trial._trial_id, "lrkit_pid", pid)
        storage_.set_trial_system_attr(trial._trial_id, "lrkit_started", time.time())
        params = sample(space, trial)
        with _Heartbeat(study, trial._trial_id):
            value = objective.fn(params, Report(trial))
        value = float(value)
        if math.isnan(value):
            raise ValueError("the objective returned NaN")
        return value

    from optuna.trial import TrialState

    failures_in_a_row = 0
    while True:
        failed += fail_dead_trials(study, stale_after)
        if _done(study) >= trials:
            break
        study.optimize(run_trial, n_trials=1, catch=(Exception,), gc_after_trial=False,
                       callbacks=[(lambda s, t: on_trial(t))] if on_trial else None)
        last = study.get_trials(deepcopy=False)[-1]
        mine = last.user_attrs.get("worker") == f"{host}:{pid}"
        failures_in_a_row = failures_in_a_row + 1 if mine and last.state == TrialState.FAIL \
            else 0
        if failures_in_a_row >= MAX_FAILURES_IN_A_ROW:
            reason = last.system_attrs.get("fail_reason", "see the log")
            raise RuntimeError(f"tune(): {MAX_FAILURES_IN_A_ROW} trials in a row failed; the "
                               f"last with: {reason}")
    return failed


def _worker_entry(kwargs: dict[str, Any]) -> None:
    """A spawned worker process (``workers > 1``)."""
    import torch

    torch.set_num_threads(1)
    target = kwargs.pop("target")
    objective = _resolve(target, kwargs.pop("optimizer"), kwargs.pop("steps"),
                         kwargs.pop("task_seed"), kwargs.pop("direction"))
    _run_worker(objective, **kwargs)


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
    objective = _resolve(objective_or_target, optimizer, steps, task_seed, direction)
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
    shared = dict(space=space, trials=trials, storage=storage, study_name=study_name,
                  pruner=pruner, sampler=sampler, workers=workers, stale_after=stale_after)
    display = _LiveTable(the_study, trials) if progress else None
    if workers == 1:
        failed = _run_worker(objective, seed=seed, on_trial=display.update if display else None,
                             storage_obj=store, **shared)
    else:
        failed = _run_workers(objective_or_target, optimizer, steps, task_seed, direction,
                              seed, shared, display)
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


def _default_space_for(study: Any, objective: _Objective, range_test: bool) -> dict:
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


def _run_workers(target: Any, optimizer: str | None, steps: int | None, task_seed: int,
                 direction: str | None, seed: int | None, shared: dict[str, Any],
                 display: Any) -> list[int]:
    ctx = mp.get_context("spawn")
    procs = []
    for i in range(shared["workers"]):
        kwargs = dict(shared, target=target, optimizer=optimizer, steps=steps,
                      task_seed=task_seed, direction=direction,
                      seed=None if seed is None else seed + i)
        p = ctx.Process(target=_worker_entry, args=(kwargs,), daemon=False)
        p.start()
        procs.append(p)
    try:
        while any(p.is_alive() for p in procs):
            if display:
                display.refresh()
            time.sleep(0.5)
    finally:
        for p in procs:
            p.join()
    bad = [p.exitcode for p in procs if p.exitcode]
    if bad:
        raise RuntimeError(f"tune(): {len(bad)} worker process(es) failed (exit codes {bad})")
    return []


# -- live table and report -------------------------------------------------------------------
class _LiveTable:
    """A rich table of the latest trials, their settings and the best so far."""

    def __init__(self, study: Any, trials: int) -> None:
        from rich.console import Console
        from rich.live import Live

        self.study, self.trials = study, trials
        self.live = Live(self.table(), console=Console(), refresh_per_second=2, transient=False)
        self.live.start()

    def table(self):
        from optuna.trial import TrialState
        from rich.table import Table

        all_trials = self.study.get_trials(deepcopy=False)
        done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials)
        best = None
        try:
            best = self.study.best_trial
        except ValueError:
            pass
        title = f"lrkit tune: {done}/{self.trials} trials"
        if best is not None:
            title += f", best #{best.number} = {best.value:.4g}"
        table = Table(title=title)
        for col in ("#", "state", "lr", "schedule", "warmup", "momentum", "value"):
            table.add_column(col, justify="right" if col not in ("state", "schedule") else "left")
        for t in all_trials[-12:]:
            p = t.params
            value = "" if t.value is None else f"{t.value:.4g}"
            mark = " *" if best is not None and t.number == best.number else ""
            table.add_row(str(t.number), t.state.name.lower(), _fmt(p.get("lr")),
                          str(p.get("schedule", "")), _fmt(p.get("warmup")),
                          _fmt(p.get("momentum")), value + mark)
        return table

    def update(self, _trial: Any = None) -> None:
        self.live.update(self.table())

    refresh = update

    def close(self) -> None:
        self.update()
        self.live.stop()


def _fmt(v: Any) -> str:
    return "" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v))


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
    with warnings.catch_warnings():  # Optuna marks its plots experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        figures = [(title, _figure(make)) for title, make in _report_plots(result)]
    counts = result.counts()
    rows = ""
    meaning = study.user_attrs.get("lrkit_objective") or "the objective's return value"
    head = f"<p>Value: {html.escape(meaning)}.</p>"
    try:
        best = result.best_trial
        schedule = result.best_schedule
        rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in best.params.items())
        head += (f"<p>Best trial #{best.number}: <b>{result.best_value:.6g}</b> "
                 f"({result.direction}).</p>")
        if schedule is not None:
            head += f"<p>Best schedule: <code>{html.escape(str(schedule))}</code></p>"
    except ValueError:
        head += "<p>No completed trial yet.</p>"
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
    body = "".join(
        f"<h2>{t}</h2>" + (f'<img src="data:image/png;base64,{img}">' if not
                           img.startswith("unavailable") else f"<p>{img}</p>")
        for t, img in figures)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>lrkit tune: "
            f"{html.escape(study.study_name)}</title><style>body{{font-family:sans-serif;"
            f"max-width:900px;margin:2em auto}}td{{padding:2px 10px}}"
            f"table{{border-collapse:collapse;margin:1em 0}}table td{{border:1px solid #ccc}}"
            f"p.summary{{margin-top:1em}}</style></head><body>"
            f"<h1>lrkit tune: {html.escape(study.study_name)}</h1>{head}"
            f"<table>{rows}</table><p class='summary'>Trials: {html.escape(summary)}</p>{body}"
            f"</body></html>")
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
        return f"unavailable: {html.escape(str(exc))}"


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
