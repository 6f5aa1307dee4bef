"""benchmarks/autopilot_bar.py, issue 14's bar: its arithmetic on a hand-made results file,
and the whole pipeline (bench, results, bar) at CI size."""
from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

from lrkit.bench import results as R
from lrkit.bench.report import summarize

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "autopilot_bar.py"
CI = bool(os.environ.get("CI"))


def _script():
    spec = importlib.util.spec_from_file_location("autopilot_bar", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _record(task, method, lr, seed, final, *, grid="adam", probe="Adam()", compute=1.0,
            higher=False, diverged=False):
    return {"task": task, "method": method, "label": method, "family": "adam" if grid else "x",
            "optimizer": probe, "schedule": "", "grid": grid, "lr": lr, "seed": seed,
            "steps": 100, "metric": "m", "higher_is_better": higher, "target": 0.0,
            "final": math.inf if diverged else final, "half": final, "steps_to_target": None,
            "reached": False, "diverged": diverged, "wall_time": 0.1, "compute": compute,
            "setting": f"{method}({lr})", "eval_steps": [0, 100],
            "metrics": [0.0 if higher else 10.0, final], "losses": [1.0], "info": {}}


def _write(path: Path, records) -> None:
    f = R.ResultsFile(path / R.RESULTS, R.RUN_COLUMNS)
    for rec in records:
        f.add(rec)


def test_bar_arithmetic_on_a_hand_made_results_file(tmp_path, capsys):
    """Two arena tasks (one where higher is better) and one held-out task; two Adam
    families x 2 lrs x 3 seeds, the self-tuning method under a custom name, two untuned
    contenders."""
    recs = []
    for s in range(3):
        for task in ("quadratic", "noisy_regression"):  # lower is better
            # adam_cosine's best: 1.0 at lr 0.01; adam_wsd's best: 1.05
            recs += [_record(task, "adam_cosine", 0.01, s, 1.0),
                     _record(task, "adam_cosine", 0.1, s, 2.0),
                     _record(task, "adam_wsd", 0.01, s, 1.05),
                     _record(task, "adam_wsd", 0.1, s, 1.5)]
        acc = dict(task="mnist1d_mlp", seed=s, higher=True)  # higher is better
        recs += [_record(method="adam_cosine", lr=0.01, final=0.9, **acc),
                 _record(method="adam_cosine", lr=0.1, final=0.5, **acc),
                 _record(method="adam_wsd", lr=0.01, final=0.85, **acc),
                 _record(method="adam_wsd", lr=0.1, final=0.6, **acc),
                 _record(method="pilot2", lr=1.0, final=0.72, grid="", compute=1.5, **acc),
                 _record(method="adam_default", lr=1e-3, final=0.3, grid="", **acc)]
        recs += [_record("quadratic", "pilot2", 1.0, s, 1.005, grid="", compute=1.5),
                 _record("noisy_regression", "pilot2", 1.0, s, 1.0, grid="", compute=2.5,
                         diverged=s == 2),
                 _record("quadratic", "prodigy", 1.0, s, 0.9, grid="", probe="Prodigy()")]
    _write(tmp_path / "a", recs[:len(recs) // 2])  # two directories, pooled
    _write(tmp_path / "b", recs[len(recs) // 2:])
    bar = _script()
    arena = summarize([r for d in ("a", "b") for r in R.load_rows(tmp_path / d)])
    table = bar.bar(arena, "pilot2")
    assert [r.task for r in table] == ["quadratic", "mnist1d_mlp", "noisy_regression"]
    rows = {r.task: r for r in table}
    q = rows["quadratic"]
    assert q.best_final == 1.0 and q.best_label == "adam_cosine" and q.best_lr == 0.01
    assert q.cells == 4 and q.group == "arena" and q.best_seeds == (0, 1, 2)
    assert q.method.gap == pytest.approx(0.005) and q.method.ok and q.method.compute == 1.5
    m = rows["mnist1d_mlp"]
    assert m.best_final == 0.9 and m.method.gap == pytest.approx(0.2) and not m.method.ok
    assert m.contenders["adam_default"].gap == pytest.approx(0.6 / 0.9)
    held = rows["noisy_regression"]
    assert held.group == "held-out" and held.method.diverged == 1 and not held.method.ok
    assert held.method.gap == math.inf
    assert q.contenders["prodigy"].gap == pytest.approx(-0.1) and q.contenders["prodigy"].ok
    fam = bar.best_family(arena, ["quadratic", "mnist1d_mlp"])
    assert fam[0] == "adam_cosine"
    # the task's best entry (prodigy on quadratic) sets the shortfall's zero
    t0 = arena.tasks[0]
    assert fam[2] == pytest.approx(statistics_mean([t0.shortfall(arena.entry(t0, "adam_cosine")),
                                                    0.0]))
    assert bar.main([str(tmp_path / "a"), str(tmp_path / "b"), "--method", "pilot2"]) == 0
    out = capsys.readouterr().out
    assert "pilot2 within 1% on 1 of 7 arena tasks (needs 5; 2 in the results): not met" in out
    assert "held-out: pilot2 within 1% on 0 of 3 held-out tasks (needs 2; 1 in the results)" \
        in out
    assert "best tuned single family adam_cosine (adam_cosine)" in out
    assert "| quadratic | m | 1.005 | +0.5% | 1.50x | 0/3 | yes | 1 | adam_cosine lr=0.01 | 4 |" \
        in out
    assert "Prodigy (prodigy): within 1% on 1 of 1" in out
    assert bar.main([str(tmp_path / "a"), "--method", "nobody"]) == 0  # warns; empty columns
    assert "no results of method 'nobody'" in capsys.readouterr().err


def statistics_mean(values):
    return sum(values) / len(values)


def test_bar_pipeline_end_to_end_at_ci_size(tmp_path, capsys):
    """The plumbing of issue 14's bar in one go: the heldout suite's protocol on one arena
    task and one held-out task (two Adam families over the half-decade grid, the new untuned
    methods, the autopilot), a tiny budget, one seed; then the bar script on the results."""
    from lrkit.bench import bench

    steps = 30 if CI else 60
    methods = ["adam_cosine", "adam_linear", "adam_default", "sf_adamw_algoperf",
               "adam_linear_suggested", "autopilot"]
    out = bench("heldout", tasks=["quadratic", "noisy_regression"], methods=methods, seeds=1,
                workers=1, out=tmp_path, steps=steps, report=False, progress=False,
                log=lambda _: None)
    assert out.complete, out.errors
    rows = R.load_rows(tmp_path)
    assert {r.method for r in rows} == set(methods)
    suggested = [r for r in rows if r.method == "adam_linear_suggested"]
    for r in suggested:  # the range test's 100 steps are charged
        assert r.compute == pytest.approx(1 + r.info["range_test_steps"] / steps)
        assert r.info["rule"] and r.info["chosen_lr"] > 0
    (sf,) = [r for r in rows if r.method == "sf_adamw_algoperf" and r.task == "quadratic"]
    assert "betas=(0.9, 0.9955159689799007)" in sf.setting and "weight_lr_power=2.0" in \
        sf.setting and f"warmup_steps={round(0.02 * steps)}" in sf.setting
    assert _script().main([str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "| quadratic | excess_risk |" in text and "| noisy_regression (held-out) |" in text
    assert "of 7 arena tasks (needs 5; 1 in the results)" in text
    assert "held-out: autopilot within 1% on" in text and "of 3 held-out tasks" in text


def test_redraw_reads_the_best_cell_and_the_method_on_fresh_seeds(tmp_path, capsys):
    """The noise floor: the grid's best cell on seeds it did not use, and the method
    against it on the same seeds (the paired seeds in the redraw results are ignored)."""
    main, fresh = [], []
    for s in range(3):
        main += [_record("quadratic", "adam_cosine", 0.01, s, 1.0),
                 _record("quadratic", "adam_cosine", 0.1, s, 2.0),
                 _record("quadratic", "pilot2", 1.0, s, 1.1, grid="", compute=1.5)]
    for s in range(6):  # the redraw run repeats the paired seeds: they must not count
        fresh += [_record("quadratic", "adam_cosine", 0.01, s, 1.0 if s < 3 else 1.2),
                  _record("quadratic", "adam_cosine", 0.1, s, 9.0),
                  _record("quadratic", "pilot2", 1.0, s, 1.1 if s < 3 else 1.26, grid="",
                          compute=1.5)]
    _write(tmp_path / "main", main)
    _write(tmp_path / "fresh", fresh)
    bar = _script()
    arena = summarize(R.load_rows(tmp_path / "main"))
    table = bar.bar(arena, "pilot2")
    (x,) = bar.redraw(arena, table, R.load_rows(tmp_path / "fresh"), "pilot2")
    assert x.task == "quadratic" and x.seeds == (3, 4, 5)
    assert x.cell == pytest.approx(1.2) and x.cell_gap == pytest.approx(0.2)
    assert x.method == pytest.approx(1.26) and x.method_gap == pytest.approx(0.05)
    assert bar.main([str(tmp_path / "main"), "--method", "pilot2", "--redraw",
                     str(tmp_path / "fresh")]) == 0
    out = capsys.readouterr().out
    assert "| quadratic | [3, 4, 5] | 1.2 | +20.0% | 1.26 | +5.0% |" in out
    assert "stays within 1% of its paired mean on 0 of 1 tasks" in out
