"""`lrkit find` and the TARGET loader: the happy paths, and one clear line for every
user error."""
from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch
from click.testing import CliRunner

import lrkit
from lrkit.cli import main
from lrkit.targets import TargetError, load_target, optimizer_factory

GOOD = """
import torch

def setup():
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.ones(4, 1)
    data = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(data, batch_size=32, shuffle=True)
    return torch.nn.Linear(4, 1), loader, torch.nn.functional.mse_loss

def two():
    return torch.nn.Linear(4, 1), []

def not_a_model():
    return "model", [], len

def dict_batches():
    return torch.nn.Linear(4, 1), [{"x": torch.ones(2, 4)}], len

def broken():
    raise RuntimeError("no data here")

NOT_CALLABLE = 3
"""


@pytest.fixture
def target_module(tmp_path, monkeypatch):
    (tmp_path / "mytargets.py").write_text(textwrap.dedent(GOOD))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield "mytargets"
    sys.modules.pop("mytargets", None)


def test_find_on_a_user_target_writes_plot_and_json(target_module, tmp_path):
    out, js = tmp_path / "f.png", tmp_path / "r.json"
    result = CliRunner().invoke(main, ["find", f"{target_module}:setup", "--optimizer",
                                       "sgd(momentum=0.9)", "--steps", "60", "--end", "1",
                                       "--out", str(out), "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "Suggested learning rates" in result.output and "suggestion" in result.output
    for rule in ("steep", "valley", "minimum"):
        assert rule in result.output
    assert out.stat().st_size > 10_000
    data = json.loads(js.read_text())
    assert data["target"] == "mytargets:setup" and data["settings"]["optimizer"] == "SGD"
    assert len(data["lrs"]) <= 60 and data["suggestion"] == data["suggestions"][data["rule"]]
    assert len(data["grad_sq"]) == len(data["lrs"])
    if data["noise"] is not None:  # the measured gradient noise is printed and saved
        assert "gradient noise" in result.output and data["noise"]["pairs"] >= 3


def test_find_on_a_built_in_task(tmp_path):
    result = CliRunner().invoke(main, ["find", "rosenbrock", "--optimizer", "adam",
                                       "--steps", "50", "--out", str(tmp_path / "f.png")])
    assert result.exit_code == 0, result.output
    assert "range test on rosenbrock" in result.output or "rosenbrock" in result.output


def test_a_task_s_first_build_says_what_it_computes(tmp_path, monkeypatch):
    """digits_softmax's first build on a machine computes its optimum: the command line
    says so before the wait, and a second run reads it from the cache, silently."""
    from lrkit.bench import tasks as T

    monkeypatch.setenv("LRKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(T, "newton_softmax", lambda x, y, l2: torch.ones(650, dtype=x.dtype))
    T.digits_optimum.cache_clear()
    try:
        outputs = [CliRunner().invoke(main, ["find", "digits_softmax", "--steps", "5", "--out",
                                             str(tmp_path / "f.png")]) for _ in range(2)]
    finally:
        T.digits_optimum.cache_clear()
    assert all(r.exit_code == 0 for r in outputs), outputs[0].output
    assert ("preparing task digits_softmax: computing its exact optimum by Newton's method"
            in outputs[0].output)
    assert str(tmp_path / "cache") in outputs[0].output
    assert "preparing" not in outputs[1].output


@pytest.mark.parametrize("target, message", [
    ("nosuchpkg.mod:setup", "Error: cannot import 'nosuchpkg.mod' for TARGET "
                            "'nosuchpkg.mod:setup': ModuleNotFoundError"),
    ("mytargets:nothing", "Error: module 'mytargets' has no 'nothing'"),
    ("mytargets:NOT_CALLABLE", "must name a function, got a int"),
    ("mytargets:two", "must return (model, loader, loss_fn), got a tuple of length 2"),
    ("mytargets:not_a_model", "model must be a torch.nn.Module, got a str"),
    ("mytargets:dict_batches", "its loader must yield (inputs, targets) pairs, the first "
                               "batch is a dict"),
    ("mytargets:broken", "TARGET 'mytargets:broken' raised RuntimeError: no data here"),
    ("mnist", "TARGET 'mnist' is neither 'package.module:function' nor a built-in task"),
    (":f", "must be 'package.module:function'"),
])
def test_bad_targets_exit_non_zero_with_one_line(target_module, target, message):
    result = CliRunner().invoke(main, ["find", target])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, code, message", [
    (["--optimizer", "nadamw"], 1, "optimizer 'nadamw' is neither in lrkit.optim nor"),
    (["--optimizer", "sgd(momentum=x)"], 1, "arguments must be literal values"),
    (["--optimizer", "sgd(bogus=1)"], 1, "optimizer 'sgd(bogus=1)':"),
    (["--start", "1", "--end", "0.1"], 2, "--end must be greater than --start"),
    (["--start", "0"], 2, "--start"),
    (["--steps", "1"], 2, "--steps"),
])
def test_bad_options_exit_non_zero(target_module, args, code, message):
    result = CliRunner().invoke(main, ["find", f"{target_module}:setup", *args])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_load_target_and_optimizer_factory(target_module):
    t = load_target("mytargets:setup")
    assert isinstance(t.model, torch.nn.Linear) and t.name == "mytargets:setup"
    t = load_target("quadratic", seed=3)
    assert t.name == "quadratic" and callable(t.loss_fn)
    make = optimizer_factory("AdamW(betas=(0.8, 0.9))")
    opt = make(torch.nn.Linear(2, 1).parameters(), lr=0.5)
    assert isinstance(opt, lrkit.optim.AdamW)  # lrkit's, where lrkit has the algorithm
    assert isinstance(optimizer_factory("asgd")(torch.nn.Linear(2, 1).parameters()),
                      torch.optim.ASGD)  # torch's otherwise
    assert opt.param_groups[0]["betas"] == (0.8, 0.9) and opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(TargetError, match="got 3"):
        optimizer_factory(3)
    with pytest.raises(TargetError, match="got ''"):
        load_target("")
