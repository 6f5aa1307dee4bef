"""The command line: demo, plot, show, and one clear line for user errors."""
from __future__ import annotations

from click.testing import CliRunner

from lrkit.cli import main


def test_demo_writes_a_figure_and_a_table(tmp_path):
    out = tmp_path / "demo.png"
    result = CliRunner().invoke(main, ["demo", "--steps", "300", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000
    for label in ["time-based", "step-based", "exponential", "cosine", "one-cycle", "WSD"]:
        assert label in result.output


def test_plot_several_specs(tmp_path):
    out = tmp_path / "p.png"
    result = CliRunner().invoke(
        main, ["plot", "cosine(0.1, total=100)", "one_cycle(0.1, total=100)", "--steps", "100",
               "--out", str(out), "--log"])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_show_prints_values_at_steps():
    result = CliRunner().invoke(main, ["show", "cosine(0.1, total=100)", "--at", "0,50,100"])
    assert result.exit_code == 0, result.output
    assert "0.05" in result.output and "0.1" in result.output


def test_bad_spec_is_one_clear_error():
    result = CliRunner().invoke(main, ["show", "cosine(0.1, total="])
    assert result.exit_code == 2
    assert "bad schedule" in result.output and "position" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(main, ["show", "cosine(0.1, total=10)", "--at", "a,b"])
    assert result.exit_code == 2 and "--at" in result.output


def test_python_dash_m_lrkit_runs_the_command():
    import os
    import subprocess
    import sys
    from pathlib import Path

    import lrkit
    src = str(Path(lrkit.__file__).resolve().parents[1])  # this checkout's, not another's
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "lrkit", "show", "cosine(0.1, total=100)",
                          "--at", "0,50,100"], capture_output=True, text=True, timeout=120,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "0.05" in out.stdout


def test_an_unwritable_figure_path_is_one_clear_error(tmp_path):
    import click
    import pytest

    from lrkit.cli import _save
    from lrkit.plot import new_axes

    (tmp_path / "a_file").write_text("")
    for args in (["plot", "cosine(0.1, total=100)"], ["demo", "--steps", "50"]):
        result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a_file" / "x.png")])
        assert result.exit_code == 2, result.output
        assert "is not a folder" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        out = tmp_path / "new" / "folders" / f"{args[0]}.png"  # made on the way
        result = CliRunner().invoke(main, [*args, "--out", str(out)])
        assert result.exit_code == 0 and out.exists(), result.output
    fig, _ = new_axes(1)  # a file put in the way between the check and the write
    (tmp_path / "later").write_text("")
    with pytest.raises(click.ClickException, match="cannot write the figure to"):
        _save(fig, str(tmp_path / "later" / "x.png"))


def test_steps_beyond_float64s_exact_range_are_a_usage_error():
    result = CliRunner().invoke(main, ["show", "cosine(0.1, total=100)", "--at",
                                       f"5,{10**20}"])
    assert result.exit_code == 2 and "--at steps must be from 0 to 2**53" in result.output
    result = CliRunner().invoke(main, ["show", "cosine(0.1, total=100)", "--steps",
                                       str(10**20)])
    assert result.exit_code == 2 and "--steps" in result.output


def test_a_long_budget_is_plotted_from_a_sample_of_its_steps(tmp_path):
    """A budget of 10**14 steps draws PLOT_POINTS evenly spread steps (every step would
    take hundreds of terabytes)."""
    import matplotlib

    matplotlib.use("Agg")
    from lrkit import schedules as S
    from lrkit.plot import PLOT_POINTS, new_axes, plot_schedules

    _, (ax,) = new_axes(1)
    plot_schedules([S.cosine(0.1, total=10**14)], 10**14, ax)
    x, y = ax.lines[0].get_data()
    assert len(x) == PLOT_POINTS and x[0] == 0 and x[-1] == 10**14 - 1
    assert y[0] == 0.1 and abs(y[-1]) < 1e-12
    _, (ax,) = new_axes(1)
    plot_schedules([S.cosine(0.1, total=1000)], 1000, ax)  # short budgets: every step
    assert list(ax.lines[0].get_xdata()) == list(range(1000))
    result = CliRunner().invoke(main, ["plot", "cosine(0.1, total=100)", "--steps",
                                       str(10**14), "--out", str(tmp_path / "long.png")])
    assert result.exit_code == 0, result.output


def test_output_paths_and_seeds_are_checked_before_a_command_runs(tmp_path):
    """A range test, a tuning run or an autopilot run must not end in a traceback after
    its work because the report's folder does not exist: every --out/--json/--save is
    checked first, as are --seed and the range test's lr bounds."""
    (tmp_path / "a_file").write_text("")
    missing = str(tmp_path / "a_file" / "report.html")
    for args in (["find", "quadratic", "--out", missing],
                 ["find", "quadratic", "--json", missing],
                 ["tune", "quadratic", "--out", missing],
                 ["fit", "quadratic", "--out", missing],
                 ["fit", "quadratic", "--save", missing],
                 ["plot", "cosine(0.1, total=10)", "--out", missing]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "is not a folder" in result.output and "Traceback" not in result.output
    for args in (["find", "quadratic", "--seed", "-1"],
                 ["find", "quadratic", "--seed", str(10**23)],
                 ["fit", "quadratic", "--seed", "-3"],
                 ["tune", "quadratic", "--seed", str(2**64)],
                 ["find", "quadratic", "--start", "nan"],
                 ["bench", "--tasks", "quadratic", "--steps", str(10**20)],
                 ["fit", "quadratic", "--steps", str(2**53 + 1)],
                 ["find", "quadratic", "--end", "inf"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Invalid value" in result.output


def test_find_writes_its_figure_and_json(tmp_path):
    import json

    out, js = tmp_path / "f.png", tmp_path / "new" / "f.json"
    result = CliRunner().invoke(main, ["find", "quadratic", "--steps", "20", "--out", str(out),
                                       "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and json.loads(js.read_text())["target"]
