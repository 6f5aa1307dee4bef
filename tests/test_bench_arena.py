"""The arena (issue 6): schedule shapes, the method table, the runner (resume after a kill,
divergence recorded), the results file, the report and the command line."""
from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lrkit import schedules as S
from lrkit.bench import get_task, train
from lrkit.bench import results as R
from lrkit.bench.methods import METHODS, SCHEDULES, Method
from lrkit.bench.report import summarize, write_report
from lrkit.bench.results import profile
from lrkit.bench.runner import SUITES, bench, plan
from lrkit.cli import main
from lrkit.schedules.families import time_based_decay

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = str(Path(__file__).resolve().parents[1] / "src")


# -- schedule shapes and the method table -------------------------------------------------------
@pytest.mark.parametrize("family", SCHEDULES)
def test_shapes_peak_at_lr_and_end_as_documented(family):
    steps, lr = 1000, 0.3
    s = METHODS[f"adam_{family}"].lr_schedule(lr, steps)  # S.family with the arena's warmup
    assert S.parse(str(s)) == s
    v = s(np.arange(steps))
    assert v.max() == pytest.approx(lr, rel=1e-9)
    assert v[0] < 0.05 * lr  # every shape warms up
    end = v[-1] / lr
    expected = {"constant": 1.0, "step_based": 0.01, "exponential": 0.01, "time_based": 0.01,
                "cosine": 0.0, "one_cycle": 0.0, "wsd": 0.0, "linear": 0.0}[family]
    assert end == pytest.approx(expected, abs=6e-3), (family, end)  # at step T - 1
    if family not in ("one_cycle", "wsd"):
        assert v[50] == pytest.approx(lr)  # 5% linear warmup, then the peak


def test_time_based_decay_is_solved():
    d = time_based_decay(760)
    assert float(S.time_based(1.0, decay=d)(760)) == pytest.approx(0.01, rel=1e-4)


def test_method_table_has_the_issue_methods():
    for opt in ("sgd", "adam"):
        for family in SCHEDULES:
            m = METHODS[f"{opt}_{family}"]
            assert m.schedule == family and m.grid == opt and not m.missing
    default = METHODS["adam_default"]
    assert default.grid is None and default.lr == 1e-3 and default.schedule is None
    assert default.setting(1e-3, 500) == "Adam(lr=0.001) | constant"
    for name in ("prodigy", "dadapt_adam", "sf_adamw", "sls"):
        m = METHODS[name]
        assert (m.missing is None) != (m.optimizer_class() is None)
    assert METHODS["sls"].closure and METHODS["sls"].kwargs(1.0, 100) == {"init_lr": 1.0}
    assert METHODS["sf_adamw"].kwargs(0.01, 1000) == {"lr": 0.01, "warmup_steps": 50}


def test_missing_optimizer_is_skipped_with_a_note():
    ghost = Method("ghost", "Ghost", "NoSuchOptimizer", reference="no_such_package:Ghost")
    assert ghost.missing == ("lrkit.optim has no NoSuchOptimizer and no_such_package is not "
                             "installed")
    p = plan(SUITES["quick"], tasks=["quadratic"], methods=[ghost, METHODS["adam_default"]])
    assert p.skipped == [f"ghost ({ghost.missing})"]
    assert {j.method.name for j in p.jobs} == {"adam_default"}
    with pytest.raises(RuntimeError, match="ghost: lrkit.optim has no NoSuchOptimizer"):
        ghost.cell(get_task("quadratic"), 0.1, 0, steps=5)


def test_authors_package_stands_in_and_is_named_in_the_setting():
    m = Method("sf", "SF", "NoSuchScheduleFree", reference="schedulefree:AdamWScheduleFree",
               grid="adam", warmup_option="warmup_steps", family="lr_free")
    assert m.missing is None and "using schedulefree.AdamWScheduleFree" in m.stand_in
    assert m.setting(0.01, 100).startswith("schedulefree.AdamWScheduleFree(lr=0.01, ")
    run = m.cell(get_task("quadratic"), 0.01, 0, steps=50)
    assert not run.diverged and run.final < run.metrics[0]


class ZeroInEval(torch.optim.SGD):
    """An SGD whose eval mode holds zero weights: evaluations must see them."""

    saved = None

    def eval(self):
        self.saved = [p.detach().clone() for g in self.param_groups for p in g["params"]]
        with torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    p.zero_()

    def train(self):
        if self.saved is None:
            return
        with torch.no_grad():
            params = [p for g in self.param_groups for p in g["params"]]
            for p, s in zip(params, self.saved):
                p.copy_(s)
        self.saved = None

    def step(self, closure=None):
        assert self.saved is None, "stepped in eval mode"
        return super().step(closure)


def test_train_evaluates_in_eval_mode():
    run = train("quadratic", lambda p: ZeroInEval(p, lr=0.01), steps=20)
    assert run.metrics == [0.0] * len(run.metrics)  # the zero weights' excess risk
    assert run.losses[-1] < run.losses[0]  # training itself used the real weights


class Backtracking(torch.optim.Optimizer):
    """A minimal line search: needs ``step(closure)``, re-evaluates without gradients."""

    def __init__(self, params, init_lr=1.0):
        super().__init__(params, {"lr": init_lr})
        self.total_function_evals = 0

    def step(self, closure):
        with torch.enable_grad():
            loss = closure()
        self.total_function_evals += 1
        params = [p for g in self.param_groups for p in g["params"]]
        w0 = [p.detach().clone() for p in params]
        eta = self.param_groups[0]["lr"]
        with torch.no_grad():
            for _ in range(30):
                for p, w in zip(params, w0):
                    p.copy_(w - eta * p.grad)
                self.total_function_evals += 1
                if closure() <= loss:
                    break
                eta *= 0.5
        return loss


def test_closure_optimizer_and_its_compute():
    m = Method("bt", "Backtracking", f"{__name__}:Backtracking", lr=1.0, lr_option="init_lr",
               closure=True, family="lr_free")
    run = m.cell(get_task("quadratic"), 1.0, 0, steps=40)
    assert not run.diverged and run.final < run.metrics[0]
    assert run.compute > 1.0 and run.info["function_evals_per_step"] >= 2


def self_tuning(method, task, lr, seed, steps):
    """What issue 9's autopilot does, in miniature: spend half a run choosing, then train."""
    probe = METHODS["adam_constant"].cell(task, 1.0, seed, steps // 2)
    chosen = 1.0 if not probe.diverged else 0.1
    run = METHODS["adam_cosine"].cell(task, chosen, seed, steps)
    run.compute, run.info = 1.5, {"overhead": 0.5, "chosen_lr": chosen}
    return run


def test_a_self_tuning_method_plugs_in_with_a_runner(tmp_path):
    auto = Method("auto", "Self-tuning Adam", "Adam", family="auto", runner=self_tuning)
    out = bench("quick", tasks=["rosenbrock"], methods=[auto, "adam_cosine"], workers=1,
                out=tmp_path, steps=1000, report=False, progress=False, log=lambda _: None)
    assert out.complete and out.new == 7  # 1 + 5 lrs + the Adam range test
    (row,) = [r for r in R.load_rows(tmp_path) if r.method == "auto"]
    assert row.compute == 1.5 and row.info["chosen_lr"] == 1.0 and not row.tuned
    assert row.setting == "auto(optimizer='Adam', steps=1000)"
    assert row.steps_to_target is not None
    arena = summarize(R.load_rows(tmp_path))
    entry = arena.entry(arena.tasks[0], "auto")
    assert entry.cost_to_target == pytest.approx(0.5 + 1.0 * row.steps_to_target / 1000)


# -- the runner and its results file ------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_diverging_setting_is_recorded_not_raised(tmp_path):
    out = bench("quick", tasks=["rosenbrock"], methods=["sgd_constant"], workers=1,
                out=tmp_path, steps=150, report=False, progress=False, log=lambda _: None)
    assert out.complete and out.new == 6  # 5 lrs + the range test
    rows = {float(r["lr"]): r for r in _rows(tmp_path / "results.csv")}
    assert rows[1.0]["diverged"] == "1" and rows[1.0]["final"] == "inf"
    assert rows[1e-4]["diverged"] == "0" and math.isfinite(float(rows[1e-4]["final"]))
    again = bench("quick", tasks=["rosenbrock"], methods=["sgd_constant"], workers=1,
                  out=tmp_path, steps=150, report=False, progress=False, log=lambda _: None)
    assert again.new == 0 and again.before == 6  # nothing repeated


def test_results_file_drops_a_partial_last_line(tmp_path):
    path = tmp_path / "r.csv"
    f = R.ResultsFile(path, ("task", "a", "b"))
    f.add({"task": "t", "a": 1.5, "b": [1.0, math.inf]})
    f.add({"task": "u", "a": None, "b": {"x": 2}})
    with open(path, "ab") as fh:
        fh.write(b'v,3.0,"[1,')  # killed mid-write
    g = R.ResultsFile(path, ("task", "a", "b"))
    assert [r["task"] for r in g.records] == ["t", "u"]
    assert g.records[0]["b"] == "[1.0,null]" and g.records[1]["a"] == ""
    g.add({"task": "w", "a": 2.0, "b": []})
    assert [r["task"] for r in _rows(path)] == ["t", "u", "w"]
    h = R.ResultsFile(path, ("task", "a", "b", "c"))  # a new column: rewritten, kept
    assert [r["task"] for r in h.records] == ["t", "u", "w"] and h.records[0]["c"] == ""
    assert list(_rows(path)[0]) == ["task", "a", "b", "c"]


def test_resume_after_kill_repeats_no_finished_cell(tmp_path):
    """SIGKILL the bench (2 workers) once a few cells are in, rerun: every cell exactly
    once, the rows written before the kill untouched."""
    out = tmp_path / "bench"
    cmd = [sys.executable, "-m", "lrkit.cli", "bench", "--tasks", "quadratic", "--methods",
           "sgd_cosine,adam_wsd,adam_default", "--steps", "300", "--out", str(out),
           "--no-report", "--workers"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd + ["2"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    results = out / "results.csv"
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(_rows(results)) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the bench ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)  # the parent only: its workers notice and quit
        proc.wait(30)
    first = R.ResultsFile(results, R.RUN_COLUMNS, repair=False).records
    tests = out / "range_tests.csv"
    tests_before = len(R.ResultsFile(tests, R.RANGE_COLUMNS, repair=False).records)
    assert 3 <= len(first) < 11  # 2 methods x 5 lrs + 1
    done = subprocess.run(cmd + ["1"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resuming: {len(first) + tests_before} of 13 cells" in done.stderr
    final = R.ResultsFile(results, R.RUN_COLUMNS, repair=False).records
    assert len(final) == 11 and len({R.run_key(r) for r in final}) == 11  # each once
    assert final[:len(first)] == first  # finished rows untouched, none redone
    tests = _rows(tests)
    assert len({R.range_key(r) for r in tests}) == len(tests) == 2


# -- the report ------------------------------------------------------------------------------
def _row(task="t", method="m", lr=0.1, seed=0, final=1.0, diverged=False, stt=None, **kw):
    base = dict(task=task, method=method, label=method, family="sgd", optimizer="SGD()",
                schedule="cosine", grid="sgd", lr=lr, seed=seed, steps=100, metric="loss",
                higher_is_better=False, target=0.5, final=math.inf if diverged else final,
                half=final, steps_to_target=stt, reached=stt is not None, diverged=diverged,
                wall_time=0.1, compute=1.0, setting=f"{method}({lr})", eval_steps=[0, 50, 100],
                metrics=[10.0, final, final], losses=[1.0], info={})
    base.update(kw)
    return R.Row(**base)


def test_report_semantics_on_hand_made_rows():
    rows = [
        _row(method="a", lr=0.1, seed=0, final=0.4, stt=50), _row(method="a", lr=0.1, seed=1,
                                                                   final=0.6, stt=100),
        _row(method="a", lr=1.0, seed=0, final=0.1, stt=20),
        _row(method="a", lr=1.0, seed=1, diverged=True),  # one seed diverged: unsafe
        _row(method="b", lr=0.01, seed=0, final=1.0), _row(method="b", lr=0.01, seed=1,
                                                           final=1.0),
        _row(method="c", lr=0.5, seed=0, final=0.45, stt=25, grid="", compute=2.0),
        _row(method="c", lr=0.5, seed=1, final=0.45, stt=25, grid="", compute=2.0),
    ]
    arena = summarize(rows, [{"task": "t", "probe": "SGD()", "seed": 0, "suggestion": 0.2}])
    (task,) = arena.tasks
    assert [e.method for e in task.entries] == ["c", "a", "b"]
    a = arena.entry(task, "a")
    assert a.best.lr == 0.1 and a.score == pytest.approx(0.5) and a.diverged_lrs == 1
    assert task.range_tests == {"SGD()": 0.2} and task.start == 10.0
    assert arena.grid_best(task, "SGD()").method == "a"  # c is untuned
    assert task.shortfall(arena.entry(task, "c")) == 0.0
    assert task.shortfall(a) == pytest.approx(math.log(0.5 / 0.45) / math.log(10 / 0.45))
    assert task.shortfall(arena.entry(task, "b")) == pytest.approx(
        math.log(1 / 0.45) / math.log(10 / 0.45))
    # time to target, oracle: a's fastest lr reaches it at median(50, 100)/100 = 0.75 runs;
    # c at 25/100 x 2 (its compute) = 0.5; b never
    ratios, used = arena.ratios("time_oracle")
    assert used == ["t"] and ratios["c"] == [1.0] and ratios["a"] == [1.5]
    assert ratios["b"] == [math.inf]
    # charged (the default): a tuned over 2 lrs pays both cells, 2 x 0.75 = 1.5 runs
    ratios, used = arena.ratios("time")
    assert used == ["t"] and ratios["c"] == [1.0] and ratios["a"] == [3.0]
    assert list(profile([1.0, 2.0, math.inf], np.array([1.0, 1.5, 2.0, 100.0]))) == \
        pytest.approx([1 / 3, 1 / 3, 2 / 3, 2 / 3])
    assert arena.profile_score("c", "time") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="ratios\\(\\): kind must be one of"):
        arena.ratios("speed")


def test_time_to_target_charges_a_tuned_method_its_whole_grid():
    """Issue 14: a tuned method pays its number of lr cells x its fastest cell's cost to
    target; an untuned one its run; a self-tuning one its run's compute, search included.
    The oracle view keeps the best cell's cost alone."""
    def tuned(lr, stt, seed=0):
        return _row(method="grid", lr=lr, seed=seed, final=0.4 if stt else 0.9, stt=stt,
                    grid="adam")

    rows = [tuned(lr, stt, s) for lr, stt in ((1e-3, None), (1e-2, 40), (1e-1, 20), (1.0, None))
            for s in (0, 1)]
    rows += [_row(method="grid", lr=10.0, seed=s, diverged=True, grid="adam") for s in (0, 1)]
    rows += [_row(method="fixed", lr=1e-3, seed=s, final=0.45, stt=60, grid="") for s in (0, 1)]
    # a self-tuning run: 0.25 runs of search (its overhead) then training, compute 1.25
    rows += [_row(method="auto", lr=1.0, seed=s, final=0.42, stt=50, grid="", compute=1.25,
                  info={"overhead": 0.25}) for s in (0, 1)]
    arena = summarize(rows, [])
    (task,) = arena.tasks
    grid, fixed, auto = (arena.entry(task, m) for m in ("grid", "fixed", "auto"))
    assert grid.cells == 5 and fixed.cells == 1 and auto.cells == 1  # a diverged lr counts
    assert grid.oracle_cost_to_target == pytest.approx(0.2)
    assert grid.cost_to_target == pytest.approx(5 * 0.2)
    assert fixed.cost_to_target == fixed.oracle_cost_to_target == pytest.approx(0.6)
    assert auto.cost_to_target == pytest.approx(0.25 + 1.0 * 0.5)
    charged, _ = arena.ratios("time")
    oracle, _ = arena.ratios("time_oracle")
    assert charged["fixed"] == [pytest.approx(0.6 / 0.6)]
    assert charged["grid"] == [pytest.approx(1.0 / 0.6)]
    assert charged["auto"] == [pytest.approx(0.75 / 0.6)]
    assert oracle["grid"] == [1.0] and oracle["fixed"] == [pytest.approx(3.0)]
    assert arena.profile_score("grid", "time_oracle") == pytest.approx(1.0)
    assert arena.profile_score("grid", "time") < arena.profile_score("fixed", "time") == 1.0
    from lrkit.bench.report import leaderboard, summary_table

    head, body = summary_table(arena)
    charged_col = head.index("time-to-target profile (grid charged)")
    oracle_col = head.index("time-to-target profile (oracle: best cell only)")
    by_label = {row[0]: row for row in body}
    assert float(by_label["grid"][oracle_col]) == pytest.approx(1.0)
    assert float(by_label["grid"][charged_col]) < 1.0
    head, body = leaderboard(task)
    col = head.index("cost to target (charged)")
    row = next(r for r in body if r[1] == "grid")
    assert row[col] == "1" and row[col + 1] == "0.2"


def test_report_builds_from_a_small_results_file(tmp_path):
    bench("quick", tasks=["quadratic", "rosenbrock"],
          methods=["sgd_cosine", "adam_constant", "adam_default"], workers=1, out=tmp_path,
          steps=100, report=False, progress=False, log=lambda _: None)
    page = write_report(tmp_path / "results.csv", tmp_path / "report")
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 4  # summary, profiles, 2 tasks
    assert "src='figures" not in html and "Task: rosenbrock" in html
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Task: quadratic" in md and "| # | method | best lr |" in md
    assert "Adam 1e-3 constant (default)" in md and "Range-test suggestions" in md
    for name in ("summary", "profiles", "task_quadratic", "task_rosenbrock"):
        assert (tmp_path / "report" / "figures" / f"{name}.png").stat().st_size > 10_000


# -- the command line --------------------------------------------------------------------------
def test_cli_bench_and_report(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--tasks", "noisy_quadratic", "--methods",
                               "adam_cosine,adam_default", "--steps", "60", "--workers", "1",
                               "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "7 cells run, 0 already done, of 7" in res.output
    assert (tmp_path / "report.html").exists() and (tmp_path / "report.md").exists()
    res = runner.invoke(main, ["report", str(tmp_path), "--out", str(tmp_path / "again")])
    assert res.exit_code == 0 and (tmp_path / "again" / "report.html").exists()


def test_cli_bench_lrs_replaces_the_suites_grid(tmp_path):
    """--lrs: the tuned methods run on exactly those rates (the untuned ones at their own)."""
    res = CliRunner().invoke(main, ["bench", "--tasks", "quadratic", "--methods",
                                    "adam_cosine,adam_default", "--steps", "30", "--workers",
                                    "1", "--lrs", "0.1,0.01", "--no-report",
                                    "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = R.load_rows(tmp_path)  # (the fourth cell run is the range test's)
    assert len(rows) == 3
    assert sorted(r.lr for r in rows if r.method == "adam_cosine") == [0.01, 0.1]
    assert [r.lr for r in rows if r.method == "adam_default"] == [1e-3]
    for bad in ("0.1,x", "0,0.1", "-1", "inf", ","):
        res = CliRunner().invoke(main, ["bench", "--lrs", bad, "--out", str(tmp_path)])
        assert res.exit_code == 2 and "--lrs expects" in res.output, (bad, res.output)


def test_cli_bench_errors_are_one_line(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["bench", "--tasks", "nope"])
    assert res.exit_code == 2 and "unknown task 'nope'" in res.output
    res = runner.invoke(main, ["bench", "--methods", "sgd_cosine,nope"])
    assert res.exit_code == 2 and "unknown method 'nope'" in res.output
    res = runner.invoke(main, ["bench", "--list"])
    assert res.exit_code == 0 and "adam_default" in res.output and "suite quick" in res.output
    (tmp_path / "empty.csv").write_text("")
    res = runner.invoke(main, ["report", str(tmp_path / "empty.csv")])
    assert res.exit_code == 1 and "holds no finished cells" in res.output


def test_single_task_summary_keeps_its_labels_inside_the_figure():
    """Issue 16: with one task the summary clipped and overlapped the colour-bar label and
    the profile's y label."""
    from lrkit.bench.figures import plot_arena_summary

    rows = [_row(method=m, lr=0.1, seed=0, final=f, stt=50 if f < 0.5 else None)
            for m, f in (("a", 0.4), ("b", 0.9), ("c", 0.45))]
    fig = plot_arena_summary(summarize(rows, []))
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    texts = [t for ax in fig.axes for t in (ax.yaxis.label, ax.xaxis.label) if t.get_text()]
    assert len(texts) >= 3
    extents = [t.get_window_extent(renderer) for t in texts]
    for t, e in zip(texts, extents):
        assert box.x0 <= e.x0 and e.x1 <= box.x1 and box.y0 <= e.y0 and e.y1 <= box.y1, \
            t.get_text()
    import matplotlib.pyplot as plt
    plt.close(fig)
