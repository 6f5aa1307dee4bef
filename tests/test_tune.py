"""lrkit.tune: Optuna-driven search of the learning rate and schedule."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from click.testing import CliRunner
from optuna.trial import TrialState

import lrkit
from lrkit import schedules as S
from lrkit.cli import main
from lrkit.tuning import (
    Categorical,
    IntUniform,
    LogUniform,
    StorageError,
    StudyMismatchError,
    Uniform,
    default_space,
    open_storage,
    schedule_of,
    tune,
)

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")


def journal(tmp_path, name="study.journal") -> str:
    return f"journal:{tmp_path / name}"


def quadratic(params):
    """A cheap objective with its optimum at lr = 0.01."""
    return (math.log10(params["lr"]) + 2.0) ** 2


# -- the search space --------------------------------------------------------------------
def test_default_space_centres_lr_on_the_suggestion():
    space = default_space(0.01)
    assert space["lr"] == LogUniform(1e-4, 0.1)
    assert set(space["schedule"].choices) == {"constant", "cosine", "one_cycle", "wsd",
                                              "step_based", "exponential", "time_based"}
    assert default_space(None)["lr"] == LogUniform(1e-5, 1.0)
    assert 0.0 <= space["warmup"].low < space["warmup"].high <= 0.5
    assert space["momentum"] == Uniform(0.8, 0.99)


@pytest.mark.parametrize("make, name", [
    (lambda: LogUniform(0.0, 1.0), "low"), (lambda: LogUniform(1.0, 0.1), "high"),
    (lambda: Uniform(float("nan"), 1.0), "low"), (lambda: IntUniform(3, 1), "high"),
    (lambda: Categorical([]), "choices"),
])
def test_distributions_validate(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_every_default_family_builds_a_parseable_schedule():
    for family in default_space()["schedule"].choices:
        s = schedule_of({"lr": 0.1, "schedule": family, "warmup": 0.1}, 500)
        assert S.parse(str(s)) == s
        values = s(np.arange(500))
        assert values.max() == pytest.approx(0.1, rel=1e-6)
        assert np.all(np.isfinite(values))


# -- objectives ----------------------------------------------------------------------------
def test_callable_objective_with_a_dict_space(tmp_path):
    result = tune(quadratic, space={"lr": LogUniform(1e-5, 1.0)}, trials=25,
                  storage=journal(tmp_path), seed=0, pruner="none")
    assert abs(math.log10(result.best_params["lr"]) + 2.0) < 0.5
    assert result.counts() == {"complete": 25}
    assert result.best_schedule is None


def test_optuna_style_space_function_and_pruning(tmp_path):
    def space(trial):
        return {"lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
                "depth": trial.suggest_int("depth", 1, 3)}

    def objective(params, report):
        value = 0.0
        for step in range(1, 11):
            value = quadratic(params) + params["depth"] + 1.0 / step
            report(step, value)
        return value

    result = tune(objective, space=space, trials=20, storage=journal(tmp_path), seed=1,
                  pruner="median")
    assert result.best_params["depth"] == 1
    assert sum(result.counts().values()) == 20


def test_maximize_direction(tmp_path):
    result = tune(lambda p: -quadratic(p), space={"lr": LogUniform(1e-4, 1.0)}, trials=15,
                  storage=journal(tmp_path), direction="maximize", seed=0)
    assert result.direction == "maximize" and result.best_value <= 0


def test_task_target_uses_the_metric_and_gives_a_parseable_best_schedule(tmp_path):
    result = tune("rosenbrock", trials=6, steps=60, storage=journal(tmp_path), seed=0)
    assert result.direction == "minimize"
    best = result.best_schedule
    assert isinstance(best, S.Schedule) and S.parse(str(best)) == best
    param = torch.nn.Parameter(torch.zeros(2))
    sched = lrkit.Scheduler(lrkit.optim.SGD([param], lr=0.1), lr=str(best))
    assert sched.get_last_lr()[0] == best(0)
    assert result.study.user_attrs["lrkit_lr_suggestion"] > 0  # the range test ran once


def test_module_function_target(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    result = tune("tune_targets:regression", trials=5, steps=40, storage=journal(tmp_path),
                  seed=0, pruner="none")
    assert result.counts() == {"complete": 5}
    assert result.best_value < 2.0


def test_a_study_scored_with_other_settings_is_refused(tmp_path, monkeypatch):
    """Issue 16: a rerun with --steps 200 on a study scored at 300 steps ran no trial and
    printed a schedule rebuilt for 200 steps; now it says why it cannot resume."""
    monkeypatch.chdir(HERE)
    storage = journal(tmp_path)
    first = tune("tune_targets:regression", trials=2, steps=30, storage=storage, seed=0,
                 pruner="none", range_test=False)
    assert first.study.user_attrs["lrkit_settings"] == {"steps": 30, "optimizer": "adam"}
    with pytest.raises(StudyMismatchError, match=r"scored with steps=30; this run asks for "
                                                 r"steps=20.*name a new study"):
        tune("tune_targets:regression", trials=3, steps=20, storage=storage, seed=0)
    result = CliRunner().invoke(main, ["tune", "tune_targets:regression", "--trials", "3",
                                       "--steps", "30", "--optimizer", "sgd",
                                       "--storage", storage, "--out", str(tmp_path / "r.html")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "optimizer='adam'; this run asks for optimizer='sgd'" in result.output
    again = tune("tune_targets:regression", trials=3, steps=30, storage=storage, seed=0,
                 pruner="none", range_test=False)  # the same settings resume
    assert len(again.study.trials) == 3


def test_seeded_search_reaches_the_grid_best_within_10_percent(tmp_path):
    """Issue 8: a seeded search on a built-in task, at most 30 trials, within 10% of the
    best final metric of the grid (9 log-spaced peak lrs x the 7 default families, SGD
    with momentum 0.9, same seed and budget)."""
    from lrkit.bench.tasks import get_task
    from lrkit.bench.train import train

    task, steps, seed = get_task("noisy_quadratic"), 300, 0
    grid = []
    for family in default_space()["schedule"].choices:
        for lr in np.logspace(-4, 0, 9):
            def make(params, lr=lr):
                return lrkit.optim.SGD(params, lr=lr, momentum=0.9)
            grid.append(train(task, make, S.family(family, lr, steps), seed=seed,
                              steps=steps).final)
    grid_best = min(grid)
    result = tune("noisy_quadratic", trials=30, steps=steps, seed=seed,
                  storage=journal(tmp_path))
    assert sum(result.counts().values()) <= 30
    assert result.best_value <= 1.1 * grid_best, (result.best_value, grid_best)


# -- storage, resume, workers --------------------------------------------------------------------
def test_default_storage_is_sqlite_in_the_working_directory_and_resumes(tmp_path,
                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = {"lr": LogUniform(1e-4, 1.0)}
    first = tune(quadratic, space=space, trials=4, study="resume", seed=0)
    assert (tmp_path / "lrkit-tune.db").exists()
    assert len(first.study.trials) == 4
    again = tune(quadratic, space=space, trials=4, study="resume", seed=0)
    assert len(again.study.trials) == 4  # nothing left to do
    more = tune(quadratic, space=space, trials=7, study="resume", seed=0)
    assert len(more.study.trials) == 7
    assert [t.number for t in more.study.trials] == list(range(7))


@pytest.mark.parametrize("url, message", [
    ("foo://x", "unknown kind"),
    ("postgresql://nobody@127.0.0.1:1/x", "cannot be opened"),
    ("journal:", "file path"),
    ("", "must be a URL"),
])
def test_bad_storage_urls(url, message):
    with pytest.raises(StorageError, match=message):
        open_storage(url)


SECRET = "s3cretpw"


@pytest.mark.parametrize("url, workers", [
    (f"postgresql://alice:{SECRET}@127.0.0.1:1/db", 1),     # unreachable server
    (f"postgres://alice:{SECRET}@127.0.0.1:1/db", 1),
    (f"postgresql+nosuchdriver://alice:{SECRET}@127.0.0.1:1/db", 1),
    (f"mysql://alice:{SECRET}@127.0.0.1:1/db", 1),
    (f"foo://alice:{SECRET}@host/db", 1),                  # unknown kind
    (f"sqlite://alice:{SECRET}@/x.db", 2),                  # refused for workers
])
def test_storage_errors_never_show_the_password(url, workers, tmp_path):
    with pytest.raises(StorageError) as err:
        open_storage(url, workers)
    assert SECRET not in str(err.value) and "alice:***@" in str(err.value)
    result = CliRunner().invoke(main, ["tune", "rosenbrock", "--storage", url, "--workers",
                                       str(workers), "--trials", "1",
                                       "--out", str(tmp_path / "r.html")])
    assert result.exit_code != 0 and "alice:***@" in result.output
    assert SECRET not in result.output


def test_redact_hides_only_the_password():
    from lrkit.tuning import redact

    assert redact("postgresql://u:p%40ss@h:5/db") == "postgresql://u:***@h:5/db"
    assert redact("postgresql+psycopg://u:pw@h/db?x=1") == "postgresql+psycopg://u:***@h/db?x=1"
    assert redact("postgresql://u@h/db") == "postgresql://u@h/db"
    assert redact("sqlite:///a:b@c.db") == "sqlite:///a:b@c.db"  # a path, not a password
    assert redact("journal:/x/y.journal") == "journal:/x/y.journal"


def test_sqlite_refuses_parallel_workers(tmp_path):
    with pytest.raises(StorageError, match="not safe"):
        tune(quadratic, space={"lr": LogUniform(1e-3, 1)}, storage=f"sqlite:///{tmp_path}/x.db",
             workers=2)


def test_workers_share_a_journal_study(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)  # spawned workers import tune_targets from here
    monkeypatch.setenv("PYTHONPATH", f"{SRC}{os.pathsep}{HERE}")
    result = tune("tune_targets:regression", trials=8, steps=20, workers=2,
                  storage=journal(tmp_path), seed=0, pruner="none", range_test=False)
    trials = result.study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert 8 <= len(trials) <= 9
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_killed_worker_leaves_its_trial_failed_not_lost(tmp_path):
    storage = journal(tmp_path)
    script = textwrap.dedent(f"""
        from lrkit.tuning import tune, LogUniform
        tune("tune_targets:slow_regression", space={{"lr": LogUniform(1e-3, 0.1)}},
             trials=3, steps=200, storage={storage!r}, study="killed", pruner="none")
    """)
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}", "LRKIT_TEST_SLEEP": "0.05"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=HERE, env=env)
    store = open_storage(storage)
    deadline = time.time() + 120
    running = []
    while time.time() < deadline and not running:
        time.sleep(0.3)
        try:
            study = optuna.load_study(study_name="killed", storage=store)
            running = study.get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            pass
    assert running, "no trial started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = running[0].number
    os.environ["LRKIT_TEST_SLEEP"] = "0"
    try:
        cwd = os.getcwd()
        os.chdir(HERE)
        result = tune("tune_targets:slow_regression", space={"lr": LogUniform(1e-3, 0.1)},
                      trials=3, steps=200, storage=storage, study="killed", pruner="none")
    finally:
        os.chdir(cwd)
        os.environ.pop("LRKIT_TEST_SLEEP", None)
    states = {t.number: t.state for t in result.study.trials}
    assert states[killed] == TrialState.FAIL
    assert result.study.trials[killed].system_attrs["lrkit_failed"] == "worker died"
    assert killed in result.failed
    assert sum(s == TrialState.COMPLETE for s in states.values()) == 3
    assert TrialState.RUNNING not in states.values()


# -- PostgreSQL: many machines --------------------------------------------------------------
import pg_server  # noqa: E402


@pytest.mark.skipif(not pg_server.available() and not os.environ.get("LRKIT_REQUIRE_POSTGRES"),
                    reason="PostgreSQL server binaries missing (.ci/run installs them)")
def test_two_workers_on_two_processes_share_a_postgres_study(tmp_path):
    with pg_server.postgres_server() as url:
        env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{HERE}"}
        cmd = [sys.executable, "-m", "lrkit.cli", "tune", "tune_targets:regression",
               "--trials", "16", "--steps", "20", "--storage", url, "--study", "pg",
               "--pruner", "none", "--out", str(tmp_path / "r.html")]
        procs = [subprocess.Popen(cmd + ["--seed", str(i)], cwd=HERE, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for i in range(2)]
        outputs = [p.communicate(timeout=300)[0].decode() for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        study = optuna.load_study(study_name="pg", storage=url)
        trials = study.trials
        numbers = [t.number for t in trials]
        assert sorted(numbers) == list(range(len(trials)))  # none lost, none duplicated
        assert len(set(t._trial_id for t in trials)) == len(trials)
        assert 16 <= len(trials) <= 17
        assert all(t.state == TrialState.COMPLETE for t in trials)
        workers = {t.user_attrs["worker"] for t in trials}
        assert len(workers) == 2, workers  # the trials were split between the processes


# -- command line and report ----------------------------------------------------------------
def test_cli_prints_the_best_schedule_and_writes_a_report(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["tune", "rosenbrock", "--trials", "5", "--steps", "60",
                                       "--storage", journal(tmp_path), "--seed", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("best schedule: "))
    schedule = S.parse(line[len("best schedule: "):])
    assert isinstance(schedule, S.Schedule)
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 2
    assert "Optimisation history" in page and "Slice on lr" in page


def test_report_shows_pruned_trials_and_says_what_value_is(tmp_path, monkeypatch):
    """Issue 16: 1 complete and 5 pruned trials gave one point per plot, uniform
    importances, no word on what "value" is, and a leaked ExperimentalWarning."""
    import warnings

    import optuna
    from optuna.distributions import FloatDistribution

    from lrkit import plot, tuning

    study = optuna.create_study(direction="maximize")
    study.set_user_attr("lrkit_objective", "test_accuracy of task mnist1d_mlp after 50 "
                                           "training steps with adam, maximised")
    dist = {"lr": FloatDistribution(1e-6, 1.0, log=True)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.01}, distributions=dist,
                                              value=0.9, intermediate_values={10: 0.5}))
    for i in range(5):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 10.0 ** -(i + 1)}, distributions=dist,
            state=optuna.trial.TrialState.PRUNED,
            intermediate_values={10: 0.1 * i, 20: 0.1 * i + 0.05}))
    drawn = []
    real = plot.plot_trials
    monkeypatch.setattr(plot, "plot_trials", lambda ax, *a, **k: drawn.append(a) or
                        real(ax, *a, **k))
    out = tmp_path / "r.html"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuning.write_report(tuning.TuneResult(study, "maximize", 50), str(out))
    assert not [w for w in caught if issubclass(w.category, optuna.exceptions.ExperimentalWarning)]
    history, lr_slice = drawn
    assert history[2] == [1, 2, 3, 4, 5] and history[3] == pytest.approx(
        [0.05, 0.15, 0.25, 0.35, 0.45])  # pruned trials at their last reported value
    assert lr_slice[2] == pytest.approx([0.1, 0.01, 1e-3, 1e-4, 1e-5])
    page = out.read_text()
    assert "Value: test_accuracy of task mnist1d_mlp after 50 training steps" in page
    assert '<p class="summary">Trials: 1 complete, 5 pruned</p>' in page
    assert page.count("data:image/png;base64,") == 2
    assert "unavailable: needs 5 completed trials, the study has 1" in page


def test_tune_records_what_value_is(tmp_path, monkeypatch):
    monkeypatch.chdir(HERE)
    result = tune("tune_targets:regression", trials=1, steps=20, storage=journal(tmp_path),
                  range_test=False)
    assert result.study.user_attrs["lrkit_objective"] == (
        "mean training loss of tune_targets:regression over the last tenth of 20 training "
        "steps with adam, minimised")
    help_text = CliRunner().invoke(main, ["tune", "--help"]).output
    assert "mean training loss over the last tenth of --steps" in " ".join(help_text.split())


@pytest.mark.parametrize("args, message", [
    (["nosuch.module:fn"], "cannot import"),
    (["not_a_task"], "neither"),
    (["rosenbrock", "--storage", "foo://x"], "unknown kind"),
    (["rosenbrock", "--storage", "postgresql://nobody@127.0.0.1:1/x"], "cannot be opened"),
])
def test_cli_user_errors_are_one_line_and_non_zero(args, message, tmp_path):
    result = CliRunner().invoke(main, ["tune", *args, "--trials", "2", "--out",
                                       str(tmp_path / "r.html")])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([x for x in result.output.splitlines() if x.strip()]) == 1


def test_lrkit_tune_is_the_function():
    import lrkit.tuning

    assert lrkit.tune is lrkit.tuning.tune and callable(lrkit.tune)
