"""Every public entry point refuses bad arguments with a ValueError or TypeError naming them.

The entry points are discovered, not listed: every public class and function defined in
a public module of ``lrkit`` (``pkgutil.walk_packages``). Each needs a valid call here
(``VALID``; the registry's optimizers and ``S.REGISTRY``'s schedules get theirs
generated) or a reason to be left out (``EXEMPT``); a new public name without either
fails ``test_every_public_callable_is_covered``. Then, one argument at a time, the valid
value is replaced by invalid ones chosen from its kind:

* a number: NaN, a string, and (for an int) 1.5 must raise, naming the argument; -1, 0
  and inf may be accepted, or else must raise naming it;
* a bool (or an optional bool): a string must raise;
* a choice (str): another type must raise; an unknown word may be accepted (free text)
  or must raise naming it;
* a list or tuple of numbers: an element NaN or a string, or a string for the whole,
  must raise; one item more or none may be accepted, or must raise naming it;
* an array: a string must raise; one item less may be accepted, or raise naming it;
* anything else (a model, an optimizer, a schedule, a callable): ``object()`` must raise.

"Must raise" means ValueError or TypeError whose message contains the argument's name;
nothing else (no IndexError, ZeroDivisionError, AssertionError, RuntimeError) is allowed
in any case. Also here: corrupted Scheduler and Plateau state_dicts.
"""
from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import lrkit
from lrkit import schedules as S
from lrkit.finder import RULES
from optim_registry import REGISTRY
from resume_cases import SCHEDULES

torch.set_num_threads(1)

# -- discovery ----------------------------------------------------------------------


def discover() -> dict[str, Any]:
    """``module.name`` -> object, for every public class and function defined in a public
    module of lrkit (aliases, as ``S.cosine`` of ``S.Cosine``, once)."""
    out: dict[str, Any] = {}
    seen: set[int] = set()
    for info in pkgutil.walk_packages(lrkit.__path__, "lrkit."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if not (inspect.isclass(obj) or callable(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            out[f"{module.__name__}.{name}"] = obj
    return out


PUBLIC = discover()

#: public names whose arguments are not checked here, and why
EXEMPT = {
    # (exceptions and warnings are left out by their type) plain records that lrkit
    # builds itself (results, events, explanations)
    **dict.fromkeys(["lrkit.guard.GuardEvent", "lrkit.optim.base.Explained",
                     "lrkit.finder.LRFinderResult", "lrkit.bench.train.Run",
                     "lrkit.targets.Target", "lrkit.bench.tasks.TaskInstance",
                     "lrkit.finder.GradientNoise"],
                    "a record of results that lrkit fills in, not an entry point"),
    "lrkit.bench.methods.autopilot_cell": "a Method runner: Method.cell calls it with the "
                                          "arguments it has checked",
    "lrkit.bench.methods.lbfgs_cell": "a Method runner: Method.cell calls it with the "
                                      "arguments it has checked",
    "lrkit.bench.methods.suggested_cell": "a Method runner: Method.cell calls it with the "
                                          "arguments it has checked",
    **dict.fromkeys(["lrkit.linesearch.LineSearchResult", "lrkit.optim.lbfgs.QuasiNewtonStep",
                     "lrkit.bench.tasks.FullBatch"],
                    "a record that lrkit fills in (a search's result, a step's explanation, "
                    "a built-in task's full batch), not an entry point"),
    "lrkit.linesearch.cubic_minimizer": "the interpolation step of strong_wolfe (numbers in, "
                                        "a number out, as torch's _cubic_interpolate)",
    "lrkit.schedules.base.Schedule": "the abstract base class (its subclasses are checked)",
    "lrkit.schedules.registry.StepCache": "an internal cache of the Scheduler that takes any "
        "schedule it is given (tested bit for bit in tests/test_scheduler_cache.py)",
    "lrkit.optim.base.LrkitOptimizer": "the abstract base class (its subclasses are checked)",
    **dict.fromkeys([f"lrkit.optim.base.{n}" for n in (
        "scalar", "step_tensor", "check_betas", "uniform", "value", "addcdiv_",
        "add_", "functional_lr")], "a building block for optimizer subclasses"),
    "lrkit.bench.tasks.register": "registers a built-in task (a Task, checked by type)",
    **{f"lrkit.bench.tasks.{n}": "a loss or metric of the built-in tasks: tensors in, "
       "tensors out, as torch.nn.functional" for n in (
           "rosenbrock", "mean_value", "accuracy_of", "next_char_loss")},
    **{f"lrkit.bench.finder_quality.{n}": "a step of the range-test quality protocol "
       "(benchmarks/), whose arguments the protocol fixes" for n in (
           "least_squares", "least_squares_sweep", "loss_form", "task_sweep",
           "trained_loss", "grid_losses", "within_band")},
    **dict.fromkeys([f"lrkit.bench.report.{n}" for n in (
        "Setting", "Entry", "TaskResult", "Arena")] + [
        "lrkit.bench.results.Row", "lrkit.bench.runner.Job", "lrkit.bench.runner.Plan",
        "lrkit.bench.runner.BenchResult", "lrkit.pilot.Probe", "lrkit.pilot.AutopilotReport",
        "lrkit.tuning.report.TuneResult"],
        "a record of results that lrkit fills in, not an entry point"),
    "lrkit.bench.methods.Method": "a record of the arena's methods (checked by type where "
                                  "bench and plan take one)",
    "lrkit.bench.methods.register": "registers a built-in method (a Method, checked by type)",
    "lrkit.bench.runner.Suite": "a record of the arena's suites (get_suite returns them)",
    **{f"lrkit.optim.{n}": "a step of an optimizer's global sums (the optimizer builds its "
       "arguments)" for n in ("dadapt.adam_d_sums", "dadapt.sgd_d_sums", "prodigy.d_sums")},
    **{f"lrkit.bench.report.{n}": "a step of the arena report, on the Arena and rows that "
       "summarize() builds from a results file" for n in (
           "loss_form", "summarize", "fmt", "leaderboard", "summary_table",
           "findings")},
    **{f"lrkit.bench.results.{n}": "reads or writes the results files that bench() keeps "
       "(records lrkit builds)" for n in (
           "downsample", "run_record", "run_key", "range_key", "ResultsFile", "results_path",
           "load_rows", "load_range_tests")},
    "lrkit.bench.results.profile": "a step of the arena report: rho(tau) of the ratios it "
                                   "computed",
    **{f"lrkit.bench.runner.{n}": "a step of bench(), on the Suite and Jobs it builds"
       for n in ("plan", "execute")},
    **{f"lrkit.bench.figures.{n}": "a figure of the arena report, from the Arena that "
       "summarize() builds"
       for n in ("plot_arena_summary", "plot_performance_profiles", "plot_task")},
    "lrkit.tuning.objective.Report": "the reporter tune() hands an objective (wraps "
                                     "Optuna's trial)",
    "lrkit.tuning.space.sample": "a step of tune(): draws from a space with Optuna's trial",
    "lrkit.tuning.storage.fail_dead_trials": "a step of tune() on the Optuna study it opened",
    **{f"lrkit.tuning.{n}": "a step of tune(), on the records it built from its checked "
       "arguments" for n in (
           "objective.Objective", "objective.ObjectiveSpec", "objective.resolve",
           "workers.StudySettings", "workers.run_worker", "workers.run_workers",
           "workers.LiveTable", "workers.fmt", "storage.Heartbeat")},
    "lrkit.tuning.storage.redact": "hides a password in a storage URL for display; "
                                   "open_storage checks the URL",
    "lrkit.plot.plot_trials": "a figure of the tuning report, from the Optuna study that "
                              "write_report() reads",
    **{f"lrkit.bench.{n}": "the data and reference optimum of the built-in tasks, which "
       "Task.prepare and the builders call with fixed arguments" for n in (
           "data.cached", "tasks.digits_optimum", "tasks.newton_softmax")},
}


#: how a message may name an argument other than by its Python name
ALIASES = {
    ("lrkit.targets.load_target", "text"): ("TARGET",),  # the command line's name for it
    ("lrkit.optim.names.optimizer_factory", "text"): ("optimizer",),
    ("lrkit.schedules.parse.parse", "text"): ("nonsense-xyz",),  # quotes the text, with a caret
}


def _model():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 1)


def _sgd(model=None):
    return torch.optim.SGD((model or _model()).parameters(), lr=0.1)


def _loop_step():
    model = _model()
    return (model, _sgd(model), lambda m, b: m(b).sum()), {
        "closure": False, "scaler": None, "autocast": torch.bfloat16,
        "device": torch.device("cpu"), "guard": None, "name": "train()"}


def _loop_step_object():
    from lrkit.loop import Step

    args, kwargs = _loop_step()
    return Step(*args, **kwargs)


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x.sum(1, keepdim=True)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]


def _curve():
    lrs = np.geomspace(1e-4, 1.0, 40)
    losses = 1.0 + (np.log10(lrs) + 2) ** 2 / 10
    return lrs, losses


def _find():
    model = _model()
    return ((model, _sgd(model), _loader(), torch.nn.functional.mse_loss),
            {"start": 1e-4, "end": 1.0, "steps": 8, "mode": "exp", "smooth": 0.9,
             "diverge": 4.0, "accumulate": 1})


_RESULT: list = []


def _result():
    if not _RESULT:
        args, kwargs = _find()
        _RESULT.append(lrkit.find_lr(*args, **kwargs))
    return _RESULT[0]


def _guard():
    model = _model()
    opt = _sgd(model)
    return ((model, opt, lrkit.Scheduler(opt, lr=0.1)),
            {"spike": 3.0, "window": 10, "backoff": 0.5, "max_retries": 2, "min_history": 3,
             "snapshot_every": 5, "spread": 3.0})


def _task_fields():
    import dataclasses

    from lrkit.bench.tasks import get_task
    task = get_task("quadratic")
    return (), {f.name: getattr(task, f.name) for f in dataclasses.fields(task)}


def _tmpdir() -> str:
    import tempfile
    return tempfile.mkdtemp(prefix="lrkit-bad-input-")


_CACHE: dict = {}


def _results() -> str:
    """A results directory of one tiny arena run (made once)."""
    if "results" not in _CACHE:
        from lrkit.bench.runner import bench
        out = _tmpdir()
        bench("quick", tasks=["rosenbrock"], methods=["sgd_constant"], seeds=1, workers=1,
              out=out, steps=4, report=False, progress=False, log=lambda line: None)
        _CACHE["results"] = out
    return _CACHE["results"]


def _figure():
    from lrkit.plot import new_axes
    return new_axes()[0]


def _autopilot():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return ((model, _loader(), torch.nn.functional.mse_loss),
            {"steps": 16, "optimizer": "sgd", "budget": 1.5, "seed": 0, "progress": False,
             "guard": True, "callbacks": (lambda step, lr, loss: None,)})


def _choose_lr():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    return ((model, _sgd(model), _loader(), torch.nn.functional.mse_loss),
            {"steps": 16, "budget": 1.5, "schedule": "cosine(1.0, total=16)",
             "val_fn": lambda m: 0.0})


def _autopilot_report():
    if "autopilot" not in _CACHE:
        args, kwargs = _autopilot()
        _CACHE["autopilot"] = lrkit.autopilot(*args, **kwargs)
    return _CACHE["autopilot"]


def _tune():
    from lrkit.tuning import LogUniform
    return ((lambda p: (math.log10(p["lr"]) + 2) ** 2,),
            {"space": {"lr": LogUniform(1e-4, 1.0)}, "trials": 2,
             "storage": f"journal:{_tmpdir()}/study.journal", "pruner": "none", "seed": 0,
             "range_test": False, "stale_after": 120.0, "progress": False})


def _tune_result():
    if "tune" not in _CACHE:
        args, kwargs = _tune()
        _CACHE["tune"] = lrkit.tune(*args, **kwargs)
    return _CACHE["tune"]


def _reestimate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    return ((model, [x for x, _ in _loader()]), {"num_batches": 2})


def _stream(g):
    while True:
        yield torch.randn(4, 2, generator=g)


VALID: dict[str, Callable[[], tuple[tuple, dict]]] = {
    "lrkit.scheduler.Scheduler": lambda: ((_sgd(),), {"lr": S.cosine(0.1, 10),
                                                      "plateau": lrkit.Plateau()}),
    "lrkit.scheduler.Plateau": lambda: ((), {
        "factor": 0.5, "patience": 2, "mode": "min", "threshold": 1e-4,
        "threshold_mode": "rel", "cooldown": 1, "min_lr": [0.0], "eps": 1e-8}),
    "lrkit.guard.DivergenceGuard": _guard,
    "lrkit.scheduler.scale_lr": lambda: ((_sgd(), 0.5), {"scheduler": None}),
    "lrkit.loop.batch_loss": lambda: ((torch.nn.functional.mse_loss,), {"fn": "train()"}),
    "lrkit.loop.endless": lambda: (([(torch.ones(1), torch.ones(1))],), {"fn": "train()"}),
    "lrkit.loop.held_indices": lambda: ((400, 4, 8), {"seed": 1}),
    "lrkit.loop.split_held": lambda: (([(torch.ones(1), torch.ones(1))] * 40, 4), {"seed": 1}),
    "lrkit.loop.has_modes": lambda: ((_sgd(),), {}),
    "lrkit.loop.averaged": lambda: ((_sgd(),), {}),
    "lrkit.loop.evaluating": lambda: ((_model(),), {}),
    "lrkit.loop.Step": _loop_step,
    "lrkit.loop.Loop": lambda: ((_loop_step_object(),), {
        "scheduler": None, "accumulate": 2, "nonfinite_errors": (FloatingPointError,),
        "losses": [], "lrs": []}),
    "lrkit.finder.find_lr": _find,
    "lrkit.finder.suggest": lambda: (_curve(), {"rule": "edge", "smooth": 0.9}),
    **{f"lrkit.finder.{n}": (lambda: ((*_curve(), _curve()[1]), {}))
       for n in RULES},  # every rule takes (lrs, losses, smoothed)
    "lrkit.finder.edge_of_progress": lambda: (_curve(), {}),
    "lrkit.finder.gradient_noise": lambda: (
        (*_curve(), *(np.linspace(1.0, 2.0, 40),) * 3), {"batch_size": 16}),
    "lrkit.finder.centred_smooth": lambda: ((_curve()[1], 3), {}),
    "lrkit.finder.zero_lag": lambda: ((_curve()[1],), {}),
    "lrkit.finder.ema": lambda: ((_curve()[1], 0.9), {}),
    "lrkit.plot.new_axes": lambda: ((), {"ncols": 2, "figsize": (4.0, 3.0)}),
    "lrkit.plot.plot_schedules": lambda: (([S.cosine(0.1, 10)], 10), {"labels": ["cos"]}),
    "lrkit.plot.plot_lr_finder": lambda: (
        (_result().lrs, _result().losses, _result().smoothed_losses),
        {"suggestions": _result().suggestions, "rule": _result().rule, "validation": False}),
    "lrkit.plot.save": None,  # set below: needs a figure and a path
    "lrkit.pages.render": lambda: (("arena.html",), {"sections": []}),
    "lrkit.schedules.parse.as_schedule": lambda: ((0.1,), {}),
    "lrkit.schedules.registry.from_config": lambda: ((S.cosine(0.1, 10).to_config(),), {}),
    "lrkit.schedules.parse.parse": lambda: (("cosine(0.1, 10)",), {}),
    "lrkit.targets.load_target": lambda: (("quadratic",), {"seed": 0}),
    "lrkit.optim.names.optimizer_factory": lambda: (("sgd(momentum=0.9)",), {}),
    "lrkit.adapters.keras.to_keras": lambda: ((S.cosine(0.1, 10),), {}),
    "lrkit.adapters.keras.KerasSchedule": lambda: ((S.cosine(0.1, 10),), {}),
    "lrkit.adapters.optax.to_optax": lambda: ((S.cosine(0.1, 10),), {}),
    "lrkit.adapters.optax.OptaxSchedule": lambda: ((S.cosine(0.1, 10),), {}),
    "lrkit.bench.tasks.get_task": lambda: (("quadratic",), {}),
    "lrkit.bench.tasks.Recipe": lambda: (("Adam", 1e-3), {"warmup": 0.05}),
    "lrkit.bench.tasks.Task": _task_fields,
    "lrkit.bench.tasks.Batches": lambda: ((_stream, 0), {}),
    "lrkit.bench.tasks.Objective": lambda: ((torch.zeros(2), lambda t, n: t.sum() + n), {}),
    "lrkit.bench.tasks.shuffled_epochs": lambda: ((8, torch.randn(16, 2)), {}),
    "lrkit.bench.tasks.ShuffledEpochs": lambda: ((8, torch.randn(16, 2)), {}),
    "lrkit.bench.tasks.ConvNet1d": lambda: ((), {"channels": 4, "classes": 3}),
    "lrkit.bench.tasks.CharGRU": lambda: ((), {"vocab": 10, "embed": 4, "hidden": 4}),
    "lrkit.bench.tasks.ShapesCNN": lambda: ((), {"width": 4, "classes": 3}),
    "lrkit.bench.tasks.CausalBlock": lambda: ((8, 2), {}),
    "lrkit.bench.tasks.TinyTransformer": lambda: ((), {"vocab": 10, "d": 8, "heads": 2,
                                                          "layers": 1, "context": 8}),
    "lrkit.bench.train.train": lambda: (
        ("quadratic", lambda p: torch.optim.SGD(p, lr=0.01)),
        {"seed": 0, "steps": 5, "callback": lambda step, loss: None,
         "on_eval": lambda step, metric: None, "on_end": lambda opt, run: None}),
    "lrkit.bench.methods.get_method": lambda: (("adam_cosine",), {}),
    "lrkit.bench.runner.get_suite": lambda: (("quick",), {}),
    "lrkit.bench.runner.bench": lambda: ((("quick",), {
        "tasks": ["rosenbrock"], "methods": ["sgd_constant"], "seeds": 1, "workers": 1,
        "out": _tmpdir(), "steps": 4, "report": False, "progress": False,
        "log": lambda line: None})),
    "lrkit.bench.write_report": lambda: ((_results(),), {"out": _tmpdir()}),
    "lrkit.bench.report.write_report": lambda: ((_results(),), {"out": _tmpdir()}),
    "lrkit.schedules.families.family": lambda: (("cosine", 0.1, 100), {"warmup": 0.05}),
    "lrkit.schedules.families.time_based_decay": lambda: ((100,), {"end": 0.01}),
    "lrkit.optim.dog.PolynomialDecayAverager": lambda: ((_model(),), {"gamma": 8.0}),
    "lrkit.optim.schedulefree.reestimate_batchnorm": _reestimate,
    "lrkit.pilot.autopilot": _autopilot,
    "lrkit.pilot.choose_lr": _choose_lr,
    "lrkit.integrations.lightning.RangeTest": lambda: ((), {
        "steps": 50, "start": 1e-6, "end": 1.0, "rule": "edge", "factor": 1.0}),
    "lrkit.integrations.lightning.Autopilot": lambda: ((), {
        "budget": 1.5, "schedule": "cosine(1.0, total=100)", "val_fn": lambda m: 0.0}),
    "lrkit.integrations.lightning.ScheduleFree": lambda: ((), {"save_averaged": True}),
    "lrkit.integrations.transformers.schedule": lambda: (("polynomial", 0.1), {
        "num_warmup_steps": 5, "num_training_steps": 50, "power": 2.0, "lr_end": 1e-4}),
    "lrkit.plot.save_png_bytes": lambda: ((_figure(),), {"dpi": 50}),
    "lrkit.bench.figures.method_style": lambda: (("adam_cosine",), {"family": "cosine"}),
    "lrkit.plot.plot_autopilot": lambda: ((_autopilot_report().to_dict(),), {}),
    "lrkit.plot.plot_horizon": lambda: (({"lengths": [10, 40], "optima": [0.1, 0.05],
                                          "beta": 0.5, "peak": 0.02, "predicted": 0.3,
                                          "realised": 0.31}, 200, _figure().axes[0]), {}),
    "lrkit.tuning.space.LogUniform": lambda: ((1e-4, 1.0), {}),
    "lrkit.tuning.space.Uniform": lambda: ((0.0, 1.0), {}),
    "lrkit.tuning.space.IntUniform": lambda: ((1, 10), {"log": False}),
    "lrkit.tuning.space.Categorical": lambda: ((["cosine", "wsd"],), {}),
    "lrkit.tuning.space.default_space": lambda: ((), {"lr_suggestion": 0.01,
                                                "families": ("constant", "cosine")}),
    "lrkit.tuning.space.schedule_of": lambda: (({"lr": 0.1, "schedule": "cosine",
                                           "warmup": 0.05}, 100), {}),
    "lrkit.tuning.storage.open_storage": lambda: ((f"journal:{_tmpdir()}/study.journal",),
                                          {"workers": 1}),
    "lrkit.tuning.driver.tune": _tune,
    "lrkit.tuning.report.write_report": lambda: ((_tune_result(),
                                                  f"{_tmpdir()}/report.html"), {}),
    "lrkit.bench.data.mnist1d": lambda: ((), {"num_samples": 100}),
}


def _save():
    import tempfile

    from lrkit.plot import new_axes
    fig, _ = new_axes()
    return (fig, tempfile.mkstemp(suffix=".png")[1]), {}


VALID["lrkit.plot.save"] = _save
# the line searches: a descent direction on a parabola
for _search in ("armijo", "strong_wolfe", "hager_zhang"):
    VALID[f"lrkit.linesearch.{_search}"] = lambda: (
        (lambda t: (t * t - t, 2 * t - 1), 0.0, -1.0, 1.0), {})

# every optimizer of the registry: its first config, on one parameter
for _info in REGISTRY.values():
    VALID[f"{_info.cls.__module__}.{_info.name}"] = (
        lambda info=_info: (([torch.nn.Parameter(torch.zeros(3))],),
                            {**info.configs[0], "nonfinite": "raise", "impl": "auto"}))
# every schedule family: the arguments of its instance in resume_cases
for _name, _s in SCHEDULES.items():
    _cls = S.REGISTRY[_name]
    VALID[f"{_cls.__module__}.{_cls.__name__}"] = lambda s=_s: ((), s.params)


def test_every_public_callable_is_covered():
    missing = [n for n, obj in PUBLIC.items() if n not in VALID and n not in EXEMPT
               and _parameters(obj)
               and not (inspect.isclass(obj) and issubclass(obj, BaseException))]
    assert not missing, f"give these a valid call in VALID or a reason in EXEMPT: {missing}"
    stale = [n for n in list(VALID) + list(EXEMPT) if n not in PUBLIC]
    assert not stale, f"no longer public: {stale}"


def _parameters(obj) -> list[inspect.Parameter]:
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


# -- probes ----------------------------------------------------------------------------
MUST, MAY = "must", "may"


def probes(value: Any, annotation: str) -> list[tuple[str, Any, str]]:
    """(label, invalid value, MUST raise | MAY be accepted)."""
    ann = str(annotation)
    if isinstance(value, bool) or (value is None and "bool" in ann):
        return [("text", "yes", MUST)]
    if value is None:
        return []
    if isinstance(value, (int, float)):
        out = [("nan", math.nan, MUST), ("negative", -1, MAY), ("zero", 0, MAY),
               ("inf", math.inf, MAY)]
        if "str" not in ann:  # (spec text is a valid schedule)
            out.append(("text", "0.1", MUST))
        if isinstance(value, int) and "float" not in ann:
            out.append(("fraction", 1.5, MUST))
        return out
    if isinstance(value, str):
        return [("not text", 3, MUST), ("unknown word", "nonsense-xyz", MAY)]
    if isinstance(value, (list, tuple)) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value) and value:
        return [("element nan", type(value)([math.nan, *value[1:]]), MUST),
                ("element text", type(value)(["x", *value[1:]]), MUST),
                ("text", "x", MUST), ("one more", type(value)([*value, value[-1]]), MAY),
                ("empty", type(value)(), MAY)]
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim == 1:
        return [("text", "x", MUST), ("one less", value[:-1], MAY)]
    return [("object", object(), MUST)]


def _cases():
    out = []
    for qual, make in VALID.items():
        if qual not in PUBLIC:
            continue
        obj = PUBLIC[qual]
        args, kwargs = make()
        bound = inspect.signature(obj).bind(*args, **kwargs)
        bound.apply_defaults()
        for par in _parameters(obj):
            if par.name in bound.arguments and not par.name.startswith("_") and probes(
                    bound.arguments[par.name], par.annotation):
                out.append(pytest.param(qual, par.name,
                                        id=f"{qual.removeprefix('lrkit.')}-{par.name}"))
    return out


@pytest.fixture(autouse=True)
def _in_a_scratch_directory(tmp_path, monkeypatch):
    """Calls a probe accepts may write (bench's ``out``, a report's path): never into the
    working tree."""
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("qual,name", _cases())
def test_invalid_argument_is_refused_naming_it(qual, name):
    obj = PUBLIC[qual]
    par = inspect.signature(obj).parameters[name]
    args, kwargs = VALID[qual]()
    valid = inspect.signature(obj).bind(*args, **kwargs)
    valid.apply_defaults()
    problems = []
    for label, bad, kind in probes(valid.arguments[name], par.annotation):
        args, kwargs = VALID[qual]()  # fresh objects for each call
        bound = inspect.signature(obj).bind(*args, **kwargs)
        bound.arguments[name] = bad
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj(*bound.args, **bound.kwargs)
        except (ValueError, TypeError) as exc:
            names = (name, *ALIASES.get((qual, name), ()))
            if not any(n in str(exc) for n in names):
                problems.append(f"{label} {bad!r}: the message does not name it: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - the point of the test
            problems.append(f"{label} {bad!r}: {type(exc).__name__}: {exc}")
            continue
        if kind == MUST:
            problems.append(f"{label} {bad!r} was accepted")
    assert not problems, f"{qual}({name}=...):\n" + "\n".join(problems)


# -- state_dicts of the Scheduler and the Plateau ------------------------------------------
def _scheduler():
    opt = _sgd()
    sched = lrkit.Scheduler(opt, lr=S.cosine(0.1, 10), plateau=lrkit.Plateau(patience=0))
    for _ in range(3):
        sched.step(1.0)
    return opt, sched


def _corrupt(sd):
    import copy

    def m(fn):
        out = copy.deepcopy(sd)
        fn(out)
        return out

    yield "not a dict", [1, 2], "must be a dict"
    for key in ("last_epoch", "schedules", "plateau", "plateau_scales", "lr_multiplier"):
        yield f"no {key}", m(lambda d, key=key: d.pop(key)), key
    yield "last_epoch < 0", m(lambda d: d.__setitem__("last_epoch", -3)), "last_epoch"
    yield "last_epoch text", m(lambda d: d.__setitem__("last_epoch", "3")), "last_epoch"
    yield "schedules list", m(lambda d: d.__setitem__("schedules", [1])), "schedules"
    yield "bad config", m(lambda d: d["schedules"]["lr"].__setitem__("total", -1)), "total"
    yield "unknown family", m(lambda d: d["schedules"]["lr"].__setitem__("name", "zz")), "zz"
    yield "unknown key", m(lambda d: d["schedules"].__setitem__("zeta", 0.1)), "zeta"
    yield "scales length", m(lambda d: d["plateau_scales"].append(1.0)), "plateau_scales"
    yield "scale nan", m(lambda d: d["plateau_scales"].__setitem__(0, math.nan)), \
        "plateau_scales[0]"
    yield "multiplier 0", m(lambda d: d.__setitem__("lr_multiplier", 0.0)), "lr_multiplier"
    yield "base_lrs text", m(lambda d: d.__setitem__("base_lrs", "x")), "base_lrs"
    yield "plateau list", m(lambda d: d.__setitem__("plateau", [1])), "state must be a dict"
    yield "plateau factor", m(lambda d: d["plateau"]["config"].__setitem__("factor", 2.0)), \
        "factor"
    yield "plateau config key", m(lambda d: d["plateau"]["config"].__setitem__("x", 1)), "x"
    yield "plateau num_bad", m(lambda d: d["plateau"].__setitem__("num_bad", -1)), "num_bad"
    yield "plateau best", m(lambda d: d["plateau"].__setitem__("best", "low")), "best"


_SD = _scheduler()[1].state_dict()


@pytest.mark.parametrize("what,bad,word", list(_corrupt(_SD)),
                         ids=[w for w, _, _ in _corrupt(_SD)])
def test_corrupted_scheduler_state_dict_raises_and_changes_nothing(what, bad, word):
    opt, sched = _scheduler()
    before = (sched.state_dict(), [dict(g) for g in opt.param_groups],
              sched.plateau.state_dict())
    with pytest.raises((ValueError, TypeError)) as exc:
        sched.load_state_dict(bad)
    assert word in str(exc.value)
    assert str(exc.value).startswith(("Scheduler.load_state_dict(): ",
                                      "Plateau.load_state_dict(): ")), str(exc.value)
    after = (sched.state_dict(), [dict(g) for g in opt.param_groups],
             sched.plateau.state_dict())
    assert after == before
