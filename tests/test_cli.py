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
