"""Every lrkit optimizer with its reference and the argument combinations its tests cover
(test metadata: it lives with the tests, not in the package).

The pattern of torch's ``OptimizerInfo`` (torch/testing/_internal/common_optimizers.py):
one entry per optimizer drives one generic test suite (parity with the reference, fast
paths against the reference path, exact resume, non-finite gradients, bad arguments,
Scheduler). An entry names its reference by import path (``"torch.optim:Adam"``,
``"lion_pytorch:Lion"``, an author's package for the learning-rate-free methods) so
that reading the registry imports nothing.

Adding an optimizer (issue 4 and later):

1. write the class on ``LrkitOptimizer`` in its family's file: ``_init_state`` (torch's
   or the author's state keys), ``_reference_step`` (the readable spec), ``_explain``
   (its effective lr and direction), ``torch_name = None``, and its facts
   (``needs_closure``, ``lr_free``, ``recommended_lr``, ``recommended_family``,
   ``display_name``); a fast path is optional: ``_foreach`` with ``has_foreach = True``
   (see Lion) or a kernel in kernels.cpp with ``kernel``/``_kernel_args``;
2. ``register(OptimizerInfo(...))`` here: ``reference="prodigyopt:Prodigy"`` (any
   ``module:Class`` taking the same arguments), ``configs`` covering every option,
   ``unsupported`` for argument names the reference lacks, ``invalid`` and
   ``schedulable``, and ``tags`` for generic tests to select on (``"needs_closure"`` and
   ``"lr_free"`` are added from the class's facts).

Every test in tests/test_optim_*.py then covers it: parity, fast paths, exact resume,
state dicts, nonfinite modes, effective lr, bad arguments, Scheduler, torch.compile.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from typing import Any

REGISTRY: dict[str, OptimizerInfo] = {}


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer and how to test it.

    name: the class name in ``lrkit.optim``.
    reference: ``"module:Class"`` of the implementation it must equal (None: none).
    configs: keyword-argument combinations covering every option (lr included).
    space: candidate values per argument for random draws (combinations the class
        refuses are discarded).
    invalid: ``(kwargs, name)`` pairs: arguments that must raise ValueError naming ``name``.
    schedulable: param-group values a ``lrkit.Scheduler`` may drive (``beta1`` = betas[0]).
    unsupported: config keys the reference lacks (such configs skip the parity check).
    tags: free-form labels for generic tests ("shared_lr", ...); "needs_closure" and
        "lr_free" are added from the class's facts of the same names.
    reference_kwargs: what the reference is given besides each config in the tests (its
        single-tensor mode, the one lrkit's reference path mirrors).

    The parity tests' tolerance is not set here: tests/optim_helpers.parity_rtol derives
    it from the roundings a step takes, for any CPU.
    """

    name: str
    reference: str | None
    configs: tuple[dict[str, Any], ...]
    space: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    invalid: tuple[tuple[dict[str, Any], str], ...] = ()
    schedulable: tuple[str, ...] = ("lr",)
    steps: int = 100
    unsupported: tuple[str, ...] = ()
    tags: frozenset[str] = frozenset()
    reference_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        facts = {tag for tag in ("needs_closure", "lr_free") if getattr(self.cls, tag)}
        object.__setattr__(self, "tags", frozenset(self.tags) | facts)

    @property
    def cls(self) -> type:
        return getattr(importlib.import_module("lrkit.optim"), self.name)

    def reference_cls(self) -> type | None:
        if self.reference is None:
            return None
        module, _, attr = self.reference.partition(":")
        return getattr(importlib.import_module(module), attr)

    def impls(self) -> tuple[str, ...]:
        """The implementations this optimizer has besides "reference"."""
        cls = self.cls
        out = []
        if cls.kernel is not None:
            out.append("kernel")
        if cls.torch_name is not None or cls.has_foreach:
            out.append("foreach")
        if cls.torch_fused:
            out.append("fused")
        return tuple(out)

    def __repr__(self) -> str:
        return f"OptimizerInfo({self.name})"


def register(info: OptimizerInfo) -> OptimizerInfo:
    REGISTRY[info.name] = info
    return info


_LR = (1e-3, 1e-2, 0.1)
_BAD_LR = (({"lr": -0.1}, "lr"),)
_BAD_BETAS = (({"betas": (1.0, 0.999)}, "betas[0]"), ({"betas": (0.9, -0.1)}, "betas[1]"),
              ({"betas": (-0.5, 0.9)}, "betas[0]"))
_BAD_EPS = (({"eps": 0.0}, "eps"), ({"eps": -1e-8}, "eps"))
_BAD_WD = (({"weight_decay": -0.1}, "weight_decay"),)

register(OptimizerInfo(
    "SGD", "torch.optim:SGD",
    configs=({"lr": 0.05}, {"lr": 0.05, "momentum": 0.9},
             {"lr": 0.05, "momentum": 0.9, "nesterov": True},
             {"lr": 0.05, "momentum": 0.9, "dampening": 0.5, "weight_decay": 0.05},
             {"lr": 0.05, "weight_decay": 0.1},
             {"lr": 0.02, "momentum": 0.5, "nesterov": True, "weight_decay": 0.01,
              "maximize": True}),
    space={"lr": _LR, "momentum": (0.0, 0.5, 0.9), "dampening": (0.0, 0.1),
           "weight_decay": (0.0, 0.01), "nesterov": (False, True), "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_WD + (({"momentum": -0.9}, "momentum"),
                                 ({"nesterov": True}, "nesterov")),
    schedulable=("lr", "momentum", "weight_decay", "dampening"),
))
register(OptimizerInfo(
    "Adagrad", "torch.optim:Adagrad",
    configs=({"lr": 0.1}, {"lr": 0.1, "lr_decay": 0.01},
             {"lr": 0.1, "weight_decay": 0.1, "initial_accumulator_value": 0.1},
             {"lr": 0.05, "eps": 1e-6, "maximize": True}),
    space={"lr": _LR, "lr_decay": (0.0, 0.01), "weight_decay": (0.0, 0.01),
           "initial_accumulator_value": (0.0, 0.1), "eps": (1e-10, 1e-6),
           "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_EPS + _BAD_WD + (({"lr_decay": -1.0}, "lr_decay"),
                                             ({"initial_accumulator_value": -1.0},
                                              "initial_accumulator_value")),
    schedulable=("lr", "weight_decay", "eps"),
))
register(OptimizerInfo(
    "Adadelta", "torch.optim:Adadelta",
    configs=({}, {"lr": 0.5, "rho": 0.5, "weight_decay": 0.1},
             {"lr": 0.5, "eps": 1e-4, "maximize": True}),
    space={"lr": (0.1, 1.0), "rho": (0.5, 0.9, 0.99), "eps": (1e-6, 1e-4),
           "weight_decay": (0.0, 0.01), "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_EPS + _BAD_WD + (({"rho": 1.5}, "rho"),),
    schedulable=("lr", "rho", "weight_decay"),
))
register(OptimizerInfo(
    "RMSprop", "torch.optim:RMSprop",
    configs=({"lr": 1e-3}, {"lr": 1e-3, "centered": True}, {"lr": 1e-3, "momentum": 0.9},
             {"lr": 1e-3, "centered": True, "momentum": 0.5, "weight_decay": 0.1},
             {"lr": 1e-3, "alpha": 0.9, "eps": 1e-6, "maximize": True},
             {"lr": 1e-3, "weight_decay": 0.1}),
    space={"lr": (1e-4, 1e-3, 1e-2), "alpha": (0.9, 0.99), "eps": (1e-8, 1e-6),
           "weight_decay": (0.0, 0.01), "momentum": (0.0, 0.9), "centered": (False, True),
           "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_EPS + _BAD_WD + (({"alpha": -0.1}, "alpha"),
                                             ({"momentum": -0.5}, "momentum")),
    schedulable=("lr", "momentum", "alpha", "weight_decay"),
))
_ADAM_SPACE = {"lr": _LR, "betas": ((0.9, 0.999), (0.5, 0.9), (0.0, 0.99)),
               "eps": (1e-8, 1e-6), "weight_decay": (0.0, 0.01), "maximize": (False, True)}
_ADAM_BAD = _BAD_LR + _BAD_BETAS + _BAD_EPS + _BAD_WD
register(OptimizerInfo(
    "Adam", "torch.optim:Adam",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "amsgrad": True}, {"lr": 1e-2, "weight_decay": 0.1},
             {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
             {"lr": 1e-2, "amsgrad": True, "maximize": True},
             {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-6}),
    space={**_ADAM_SPACE, "amsgrad": (False, True), "decoupled_weight_decay": (False, True)},
    invalid=_ADAM_BAD, schedulable=("lr", "beta1", "beta2", "weight_decay", "eps"),
))
register(OptimizerInfo(
    "AdamW", "torch.optim:AdamW",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "amsgrad": True}, {"lr": 1e-2, "weight_decay": 0.0},
             {"lr": 1e-2, "weight_decay": 0.1, "maximize": True}),
    space={**_ADAM_SPACE, "amsgrad": (False, True)},
    invalid=_ADAM_BAD, schedulable=("lr", "beta1", "beta2", "weight_decay", "eps"),
))
register(OptimizerInfo(
    "NAdam", "torch.optim:NAdam",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1},
             {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
             {"lr": 1e-2, "momentum_decay": 0.01, "maximize": True}),
    space={**_ADAM_SPACE, "momentum_decay": (4e-3, 0.01),
           "decoupled_weight_decay": (False, True)},
    invalid=_ADAM_BAD + (({"momentum_decay": -1.0}, "momentum_decay"),),
    schedulable=("lr", "beta1", "beta2", "weight_decay", "momentum_decay"),
))
register(OptimizerInfo(
    "RAdam", "torch.optim:RAdam",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1},
             {"lr": 1e-2, "weight_decay": 0.1, "decoupled_weight_decay": True},
             {"lr": 1e-2, "betas": (0.9, 0.9), "maximize": True}),
    space={**_ADAM_SPACE, "decoupled_weight_decay": (False, True)},
    invalid=_ADAM_BAD, schedulable=("lr", "beta1", "beta2", "weight_decay"),
))
register(OptimizerInfo(
    "Adamax", "torch.optim:Adamax",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1},
             {"lr": 1e-2, "betas": (0.5, 0.9), "eps": 1e-6, "maximize": True}),
    space=_ADAM_SPACE, invalid=_ADAM_BAD,
    schedulable=("lr", "beta1", "beta2", "weight_decay"),
))
register(OptimizerInfo(
    "Lion", "lion_pytorch:Lion",
    configs=({"lr": 1e-3}, {"lr": 1e-3, "weight_decay": 0.1},
             {"lr": 1e-3, "betas": (0.95, 0.98)}, {"lr": 1e-3, "maximize": True}),
    space={"lr": (1e-4, 1e-3), "betas": ((0.9, 0.99), (0.95, 0.98)),
           "weight_decay": (0.0, 0.1), "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_BETAS + _BAD_WD,
    schedulable=("lr", "beta1", "beta2", "weight_decay"),
    unsupported=("maximize",),
))
register(OptimizerInfo(
    "Adafactor", "torch.optim:Adafactor",
    configs=({"lr": 1e-2}, {"lr": 1e-2, "weight_decay": 0.1},
             {"lr": 1e-2, "beta2_decay": -0.5, "d": 2.0},
             {"lr": 1e-2, "eps": (1e-30, 1e-3), "maximize": True}),
    space={"lr": (1e-3, 1e-2), "beta2_decay": (-0.8, -0.5), "d": (1.0, 2.0),
           "weight_decay": (0.0, 0.01), "maximize": (False, True)},
    invalid=_BAD_LR + _BAD_WD + (({"eps": (None, 0.0)}, "eps[1]"),
                                 ({"beta2_decay": 0.5}, "beta2_decay"), ({"d": 0.5}, "d")),
    schedulable=("lr", "weight_decay", "d"),
))

# -- learning-rate-free, schedule-free, line search (issue 4) ----------------------------
# Their references are the authors' packages. The configs use multipliers (lr) at which
# the 100 test steps on the small model are well conditioned: at the packages' default
# lr=1.0 there, Prodigy and D-Adaptation train so unstably that one ulp changed in one
# initial weight moves the package's own result by 4e-3 (Prodigy) and 0.4 (DAdaptAdam)
# relative, so no implementation that rounds its sums differently could agree to 1e-5;
# the reference paths still equal the packages bit for bit there (tests/test_lrfree.py).
# Tags: "lr_free" and "needs_closure" (step(closure) only) from the class's facts;
# "shared_lr" (param groups share one d: a group's lr is the common value or 0);
# "schedule_free" (train()/eval()); "eager_step" (the step reads its sums on the host:
# torch.compile runs it eagerly).
_EAGER = frozenset({"eager_step"})
_BAD_D0 = (({"d0": 0.0}, "d0"), ({"growth_rate": 0.5}, "growth_rate"))
register(OptimizerInfo(
    "Prodigy", "prodigyopt:Prodigy",
    configs=({"lr": 0.3}, {"lr": 0.3, "weight_decay": 0.1},
             {"lr": 0.3, "weight_decay": 0.1, "decouple": False},
             {"lr": 0.1, "betas": (0.0, 0.99), "beta3": 0.9},
             {"lr": 0.3, "use_bias_correction": True, "safeguard_warmup": True},
             {"lr": 0.3, "d0": 1e-4, "d_coef": 0.5, "growth_rate": 1.05, "eps": 1e-6},
             {"lr": 0.3, "slice_p": 3}),
    space={"lr": (0.1, 0.3), "betas": ((0.9, 0.999), (0.0, 0.99), (0.5, 0.9)),
           "beta3": (None, 0.9), "weight_decay": (0.0, 0.1), "decouple": (False, True),
           "use_bias_correction": (False, True), "safeguard_warmup": (False, True),
           "d0": (1e-6, 1e-4), "d_coef": (0.5, 1.0), "growth_rate": (math.inf, 1.05),
           "slice_p": (1, 3)},
    invalid=_BAD_LR + _BAD_BETAS + _BAD_EPS + _BAD_WD + _BAD_D0 + (
        ({"lr": 0.0}, "lr"), ({"d_coef": 0.0}, "d_coef"), ({"slice_p": 0}, "slice_p"),
        ({"beta3": 1.5}, "beta3")),
    tags=_EAGER | {"shared_lr"},
))
register(OptimizerInfo(
    "DAdaptAdam", "dadaptation:DAdaptAdam",
    configs=({"lr": 0.1}, {"lr": 0.1, "weight_decay": 0.1},
             {"lr": 0.1, "weight_decay": 0.1, "decouple": True},
             {"lr": 0.1, "use_bias_correction": True, "betas": (0.5, 0.9)},
             {"lr": 0.1, "d0": 1e-4, "growth_rate": 1.05, "eps": 1e-6, "log_every": 10}),
    space={"lr": (0.05, 0.1), "betas": ((0.9, 0.999), (0.5, 0.9)), "eps": (1e-8, 1e-6),
           "weight_decay": (0.0, 0.1), "decouple": (False, True),
           "use_bias_correction": (False, True), "d0": (1e-6, 1e-4),
           "growth_rate": (math.inf, 1.05)},
    invalid=_BAD_LR + _BAD_BETAS + _BAD_EPS + _BAD_WD + _BAD_D0 + (
        ({"log_every": -1}, "log_every"),),
    tags=_EAGER | {"shared_lr"},
))
register(OptimizerInfo(
    "DAdaptSGD", "dadaptation:DAdaptSGD",
    configs=({"lr": 0.5}, {"lr": 0.5, "momentum": 0.9},
             {"lr": 0.5, "momentum": 0.5, "weight_decay": 0.1},
             {"lr": 0.5, "d0": 1e-4, "growth_rate": 1.05, "log_every": 10}),
    space={"lr": (0.3, 0.5), "momentum": (0.0, 0.5, 0.9), "weight_decay": (0.0, 0.1),
           "d0": (1e-6, 1e-4), "growth_rate": (math.inf, 1.05)},
    invalid=_BAD_LR + _BAD_WD + _BAD_D0 + (({"momentum": 1.0}, "momentum"),),
    tags=_EAGER | {"shared_lr"},
))
_DOG = dict(
    configs=({}, {"weight_decay": 0.01}, {"init_eta": 1e-3},
             {"lr": 0.5, "eps": 1e-4, "reps_rel": 1e-4}),
    space={"lr": (0.5, 1.0), "reps_rel": (1e-6, 1e-4), "weight_decay": (0.0, 0.01),
           "eps": (1e-8, 1e-4), "init_eta": (None, 1e-3)},
    invalid=_BAD_LR + _BAD_WD + (({"lr": 0.0}, "lr"), ({"eps": -1.0}, "eps"),
                                 ({"init_eta": 0.0}, "init_eta")),
    tags=_EAGER,
)
register(OptimizerInfo("DoG", "dog:DoG", **_DOG))
register(OptimizerInfo("LDoG", "dog:LDoG", **_DOG))
_SF = (({"warmup_steps": -1}, "warmup_steps"), ({"r": -1.0}, "r"),
       ({"weight_lr_power": -1.0}, "weight_lr_power"))
register(OptimizerInfo(
    "ScheduleFreeAdamW", "schedulefree:AdamWScheduleFree",
    configs=({"lr": 0.01}, {"lr": 0.01, "weight_decay": 0.1, "warmup_steps": 10},
             {"lr": 0.01, "r": 1.0, "weight_lr_power": 0.0, "betas": (0.5, 0.99),
              "eps": 1e-6}),
    space={"lr": (1e-3, 1e-2), "betas": ((0.9, 0.999), (0.5, 0.99)), "eps": (1e-8, 1e-6),
           "weight_decay": (0.0, 0.1), "warmup_steps": (0, 10), "r": (0.0, 1.0),
           "weight_lr_power": (0.0, 2.0)},
    invalid=_BAD_LR + _BAD_BETAS + _BAD_EPS + _BAD_WD + _SF,
    schedulable=("lr", "weight_decay"), tags=_EAGER | {"schedule_free"},
    reference_kwargs={"foreach": False},
))
register(OptimizerInfo(
    "ScheduleFreeSGD", "schedulefree:SGDScheduleFree",
    configs=({"lr": 0.1}, {"lr": 0.1, "momentum": 0.5, "weight_decay": 0.1,
                           "warmup_steps": 10},
             {"lr": 0.1, "r": 1.0, "weight_lr_power": 0.0}),
    space={"lr": (0.05, 0.1), "momentum": (0.5, 0.9), "weight_decay": (0.0, 0.1),
           "warmup_steps": (0, 10), "r": (0.0, 1.0), "weight_lr_power": (0.0, 2.0)},
    invalid=_BAD_LR + _BAD_WD + _SF + (({"momentum": 0.0}, "momentum"),),
    schedulable=("lr", "momentum", "weight_decay"), tags=_EAGER | {"schedule_free"},
    reference_kwargs={"foreach": False},
))
register(OptimizerInfo(
    "SLS", None,
    configs=({"init_lr": 1.0},
             {"init_lr": 3.0, "c": 0.2, "beta": 0.5, "gamma": 4.0, "reset": "keep",
              "batches_per_epoch": 4},
             {"init_lr": 1.0, "reset": "init", "max_backtracks": 5}),
    space={"init_lr": (0.1, 1.0, 10.0), "c": (0.1, 0.5), "beta": (0.5, 0.9),
           "gamma": (1.0, 2.0), "reset": ("increase", "keep", "init"),
           "batches_per_epoch": (1, 10)},
    invalid=(({"init_lr": -0.1}, "init_lr"), ({"c": 1.0}, "c"), ({"beta": 0.0}, "beta"),
             ({"gamma": 0.5}, "gamma"), ({"max_backtracks": -1}, "max_backtracks"),
             ({"reset": "never"}, "reset"), ({"batches_per_epoch": 0}, "batches_per_epoch")),
    schedulable=(), tags=_EAGER,
))
# -- quasi-Newton (issue 18): L-BFGS with lrkit's line searches; torch's LBFGS is the
# reference (its samples in torch's optim_db: default, lr, tensor lr, tolerance_grad,
# strong_wolfe). One param group ("single_group"); each step runs up to max_iter
# iterations ("inner_iterations": explain() describes the last one), so fewer steps; its
# lr is the line search's first guess, not a schedule's (schedulable=()); it needs every
# parameter on every rank ("replicated_only": DDP, not ZeroRedundancyOptimizer). Armijo
# and Hager-Zhang (torch has neither) are checked in tests/test_lbfgs.py and
# tests/test_linesearch.py.
register(OptimizerInfo(
    "LBFGS", "torch.optim:LBFGS",
    configs=({"max_iter": 4}, {"lr": 0.01, "max_iter": 4},
             {"tolerance_grad": 1e-6, "max_iter": 4, "history_size": 3},
             {"line_search_fn": "strong_wolfe", "max_iter": 4},
             {"line_search_fn": "strong_wolfe", "max_iter": 6, "max_eval": 7, "lr": 0.5,
              "history_size": 2}),
    space={"lr": (0.1, 0.5, 1.0), "max_iter": (1, 4), "history_size": (2, 10),
           "line_search_fn": (None, "strong_wolfe"), "tolerance_grad": (1e-7, 1e-5)},
    invalid=(({"lr": -0.1}, "lr"), ({"max_iter": 0}, "max_iter"), ({"max_eval": 0}, "max_eval"),
             ({"tolerance_grad": -1.0}, "tolerance_grad"),
             ({"tolerance_change": -1.0}, "tolerance_change"),
             ({"history_size": 0}, "history_size"), ({"line_search_fn": "wolfe"},
                                                      "line_search_fn")),
    schedulable=(), steps=10,
    tags=frozenset({"needs_closure", "single_group", "inner_iterations", "eager_step",
                    "replicated_only"}),
))
