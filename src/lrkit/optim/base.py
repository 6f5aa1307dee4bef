"""``LrkitOptimizer``: the step template every lrkit optimizer shares.

A subclass states its algorithm twice: once as a readable single-tensor reference
(``_init_state`` + ``_reference_step``, the spec) and once through a fast path (lrkit's
multi-tensor C kernel, or torch's own foreach/fused functional where the algorithm is
identical). The base class owns everything around the arithmetic:

* ``step(closure)``: the closure under ``torch.enable_grad()``, then the check of the
  gradients for non-finite values (``nonfinite=``), then the update;
* ``impl=``: which implementation runs ("auto", "reference", "foreach", "fused",
  "kernel"), with torch's ``foreach=``/``fused=`` switches mapped onto it;
* ``effective_lr()``, ``explain()`` and ``lr_stats()``: the per-parameter learning rate
  the last step applied, recomputed on demand from the state (no per-step cost);
* ``state_dict()`` in torch's layout (plus ``skipped_steps``).
"""
from __future__ import annotations

import functools
import inspect
import math
import operator
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from lrkit import _checks as C
from lrkit.errors import NonFiniteGradientError
from lrkit.optim import _distributed, _gradwatch, _kernel, _state_check
from lrkit.optim._state_check import check_lr  # noqa: F401 (subclasses use base.check_lr)

NONFINITE_MODES = ("raise", "skip", "zero")
IMPLS = ("auto", "reference", "foreach", "fused", "kernel")
_NOT_HYPERPARAMS = ("params", "param_names")
_GRAD = operator.attrgetter("grad")


class Explained(NamedTuple):
    """What the last step did to one parameter: ``update = -eta * direction - decay``.

    ``eta`` is the elementwise step-size multiplier (``effective_lr``), ``direction`` the
    tensor it multiplied (the gradient, a momentum buffer, ...: see each optimizer's
    docstring), ``decay`` the decoupled weight decay term (zero when there is none) and
    ``update`` the change of the parameter, ``p_after - p_before``.
    """

    eta: Tensor
    direction: Tensor
    decay: Tensor | float
    update: Tensor


def scalar(x: float | Tensor) -> float | Tensor:
    """A hyperparameter as the arithmetic uses it: 0-dim tensors are read as their value,
    except while torch.compile traces (then they stay tensors, so changing one in place
    never recompiles)."""
    if isinstance(x, Tensor) and not torch.compiler.is_compiling():
        return x.item()
    return x


def step_tensor(group: dict[str, Any], p: Tensor) -> Tensor:
    """A fresh ``step`` counter where torch keeps it (CPU, unless capturable or fused)."""
    if group.get("capturable") or group.get("fused"):
        return torch.zeros((), dtype=torch.float32, device=p.device)
    dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    return torch.tensor(0.0, dtype=dtype)


# -- argument checks shared by the optimizers ---------------------------------------
def check_betas(fn: str, betas: Any, names=("betas[0]", "betas[1]")) -> tuple:
    items = C.sequence(fn, "betas", betas)
    if len(items) != 2:
        raise ValueError(f"{fn}: betas must be a pair (beta1, beta2), got {betas!r}")
    for name, b in zip(names, items):
        if isinstance(b, Tensor) and b.numel() != 1:
            raise ValueError(f"{fn}: {name} must be a number or a one-element tensor, got a "
                             f"tensor of shape {tuple(b.shape)}")
        C.in_range(fn, name, b.detach().reshape(()).cpu() if isinstance(b, Tensor) else b,
                   0.0, 1.0, high_open=True)
    return tuple(items)


def _check_params(opt: Any, group: dict[str, Any]) -> None:
    """Refuse, before the group is added, a param group listing one parameter twice, or
    complex parameters where the class takes none (``supports_complex``). torch warns
    about the first ("this will cause an error in the future") and steps such a parameter
    once per entry; which state each entry sees then depends on the implementation
    (torch's single-tensor and foreach paths already differ), and a kernel could read a
    state buffer before it is filled. The group's ``params`` (any iterable) becomes a
    list, as torch makes it."""
    params = group.get("params")
    if isinstance(params, Tensor) or isinstance(params, set) or not isinstance(
            params, Iterable):
        return  # torch's own checks say what is wrong
    params = group["params"] = list(params)
    fn = f"{type(opt).__name__}.add_param_group()"
    seen: dict[int, int] = {}
    for j, x in enumerate(params):
        t = x[1] if isinstance(x, tuple) and len(x) == 2 else x  # (name, tensor) pairs
        i = seen.setdefault(id(t), j)
        if i != j:
            raise ValueError(
                f"{fn}: param group {len(opt.param_groups)} lists the same parameter twice "
                f"(entries {i} and {j}); list each parameter once (torch warns that this "
                "will be an error)")
        if not opt.supports_complex and isinstance(t, Tensor) and t.is_complex():
            raise TypeError(
                f"{fn}: complex parameters are not supported (nor by the authors' package); "
                "keep such a weight as a real tensor of shape (..., 2) and take "
                "torch.view_as_complex of it in the model")


class LrkitOptimizer(torch.optim.Optimizer):
    """Base class of lrkit's optimizers (a ``torch.optim.Optimizer``).

    Keyword arguments every subclass accepts besides its torch namesake's:

    ``nonfinite="raise" | "skip" | "zero"``: what a step does when a gradient holds NaN
    or Inf. "raise" raises :class:`lrkit.NonFiniteGradientError` naming the parameter
    before anything changes; "skip" leaves parameters and state untouched and counts the
    step in ``skipped_steps`` (saved in ``state_dict``); "zero" treats the non-finite
    entries as zero. The gradients are checked by one pass at the step ("zero" needs
    none: lrkit's kernel zeroes such entries as it reads them), so no NaN/Inf from a
    gradient ever reaches the state. With ``LRKIT_CHECK_IN_BACKWARD=1`` large gradients
    are checked as backward produces them instead (a post-accumulate-grad hook:
    ``lrkit.optim._gradwatch``, which says why it is not the default); a gradient changed
    after backward through ``.data`` then escapes the check. Under
    ``torch.compile`` "raise" and "zero" stay in the graph ("raise" then raises a
    RuntimeError from ``torch._assert_async``, before anything changes, without naming
    the parameter); "skip" breaks it, once per step:
    whether the step changes anything at all is data-dependent, and dynamo has no branch
    that takes it in the graph (``torch.cond`` refuses branches that update their inputs
    in place, as every optimizer step does); staying in the graph would mean computing
    every update out of place and selecting old or new values with ``torch.where``, a
    second copy of the parameters and state each step, and a tensor skip counter. The
    compiled step with its break skips exactly as the eager one
    (tests/test_optim_compile.py). An entry whose
    square (``grad_power``: Adafactor's fourth power) would overflow counts as non-finite
    too. In a multi-process run the ranks agree before raising or skipping (one
    all-reduce per step; ``agree_across_ranks = False`` turns it off).

    DTensor parameters (FSDP2 ``fully_shard``): the step runs on each rank's local shard
    where the class declares ``dtensor`` (see ``lrkit.optim._distributed``); otherwise it
    raises NotImplementedError.

    ``impl="auto" | "reference" | "foreach" | "fused" | "kernel"``: "reference" is the
    readable single-tensor implementation (the spec every other path is tested against);
    "kernel" is lrkit's multi-tensor C++ kernel for dense CPU float32/float64 tensors
    (compiled on first use; tensors it cannot take go to "foreach"); "foreach" and
    "fused" are torch's own multi-tensor and fused kernels where torch has the same
    algorithm. "auto" picks the kernel for CPU float32/float64, the reference for other
    CPU tensors (bfloat16...: torch's own CPU default, so results match it bit for bit),
    and on CUDA torch's fused kernel where torch has one, else foreach.

    torch's switches map onto ``impl``: ``fused=True`` is "fused", ``foreach=True``
    "foreach", ``foreach=False`` "reference"; ``differentiable=True`` and
    ``capturable=True`` run torch's own functional with those flags. While torch.compile
    traces a step the reference path runs, with tensor hyperparameters kept as tensors
    (so a Scheduler changing a tensor lr in place never recompiles).
    """

    # -- facts about the algorithm, read by the autopilot, the arena and the tests --------
    #: ``step`` needs a closure that re-evaluates the loss (a line search): every driver
    #: (the range test, the autopilot, the arena) then calls ``opt.step(closure)``
    needs_closure: ClassVar[bool] = False
    #: learning-rate-free: the optimizer estimates its own step size, ``lr`` only scales
    #: that estimate, so with a ``recommended_lr`` no range test or search of lr applies
    lr_free: ClassVar[bool] = False
    #: state kept as a 0-dim float tensor (torch's ``step``): a number or an integer
    #: tensor loaded there becomes one
    _scalar_state: ClassVar[tuple[str, ...]] = ("step",)
    #: the lr its authors recommend (None: search it; for an lr-free optimizer, its
    #: multiplier of the estimated step size)
    recommended_lr: ClassVar[float | None] = None
    #: the schedule family (``lrkit.schedules.family``) its authors recommend with it
    #: (None: the caller's default)
    recommended_family: ClassVar[str | None] = None
    #: how reports and plots name it (default: the class name)
    display_name: ClassVar[str] = ""
    #: other names it answers to in optimizer texts (``"schedulefree"``), lower case
    aliases: ClassVar[tuple[str, ...]] = ()

    # -- its implementations -----------------------------------------------------------
    #: the torch.optim class of the same algorithm (its functional runs foreach/fused)
    torch_name: ClassVar[str | None] = None
    #: the class has a multi-tensor path of its own, ``_foreach(group, params, grads)``
    #: (classes with a ``torch_name`` use torch's instead)
    has_foreach: ClassVar[bool] = False
    #: torch has a fused kernel for this algorithm
    torch_fused: ClassVar[bool] = False
    #: lrkit kernel name (``None``: no C kernel)
    kernel: ClassVar[str | None] = None
    #: the kernel runs the reference's elementwise operations in its order: each within
    #: 1 ulp of torch's (std::sqrt against MKL's; bit for bit with LRKIT_KERNEL_SQRT=torch
    #: on x86-64 with FMA); False: it also sums over all entries, in another order
    kernel_exact: ClassVar[bool] = True
    #: the highest power of the gradient the state holds: 1 (SGD, Lion), 2 (a squared
    #: gradient: Adam...), 4 (Adafactor's products of row and column means of squares).
    #: A gradient entry whose power overflows its dtype counts as non-finite.
    grad_power: ClassVar[int] = 1
    #: how a step treats DTensor parameters (FSDP2): "elementwise" (every implementation
    #: runs on each rank's local shard: exact), "reference" (the reference path runs on the
    #: local shards and sums its reductions across ranks with ``shard_sum``), or None (not
    #: supported: the step raises NotImplementedError)
    dtensor: ClassVar[str | None] = None
    #: set True by whoever writes each group's lr as a base rate times the group's
    #: ``lr_scale`` (``lrkit.Scheduler`` with an lr schedule, ``find_lr``, the autopilot).
    #: The optimizer itself steps at ``group["lr"]``: a group holding an ``lr_scale``
    #: while nothing applies it makes the first step warn once (``LrScaleWarning``).
    lr_scale_applied: bool = False
    #: in a multi-process run, agree with the other ranks before raising or skipping on a
    #: non-finite gradient (one all-reduce per step); set False on an optimizer that only
    #: some ranks step, which would otherwise wait for the others forever
    agree_across_ranks: bool = True
    #: sparse gradients (``nn.Embedding(sparse=True)``) are taken, as torch's namesake
    #: takes them (its single-tensor functional runs them); else a step raises
    supports_sparse: ClassVar[bool] = False
    #: complex parameters are taken (False: refused when their group is added)
    supports_complex: ClassVar[bool] = True
    #: complex parameters reach ``_reference_step`` as real views (``view_as_real``: each
    #: of the real and imaginary parts is an entry, as torch's optimizers treat them);
    #: False hands them over complex (Lion's ``sgn``)
    complex_as_real: ClassVar[bool] = True
    #: attributes a copy (deepcopy, pickle, torch.save) leaves out: caches rebuilt on use
    _transient: ClassVar[tuple[str, ...]] = ()
    _has_dtensor = False
    _shards: ClassVar[dict[int, Any]] = {}  # set per step while DTensors are swapped

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("display_name"):
            cls.display_name = cls.__name__

    def __init__(self, params: Any, defaults: dict[str, Any], *, nonfinite: str = "raise",
                 impl: str = "auto") -> None:
        fn = f"{type(self).__name__}()"
        self.nonfinite = C.choice(fn, "nonfinite", nonfinite, NONFINITE_MODES)
        impl = C.choice(fn, "impl", impl, IMPLS)
        if isinstance(params, Tensor) or not isinstance(params, Iterable):
            raise TypeError(f"{fn}: params must be an iterable of tensors, of (name, tensor) "
                            f"pairs or of param-group dicts, got {type(params).__name__}")
        _check_switches(fn, type(self), defaults)
        foreach, fused = defaults.get("foreach"), defaults.get("fused")
        if fused and foreach:
            raise ValueError(f"{fn}: fused=True and foreach=True cannot be used together")
        if fused and defaults.get("differentiable"):
            raise ValueError(f"{fn}: fused=True does not support differentiable=True")
        if fused:
            impl = "fused"
        elif foreach:
            impl = "foreach"
        elif foreach is False and impl == "auto":
            impl = "reference"
        if impl == "fused" and not self.torch_fused:
            raise ValueError(f"{fn}: impl must be one of 'auto', 'reference', 'foreach', "
                             f"'kernel' ({type(self).__name__} has no fused torch kernel), "
                             "got 'fused'")
        if impl in ("foreach", "fused") and self.torch_name is None and not self.has_foreach:
            impl = "reference"
        self.impl = impl
        defaults.setdefault("differentiable", False)  # as torch's __setstate__ adds it
        self.skipped_steps = 0
        self._last: dict[int, dict[str, Any]] = {}
        super().__init__(params, defaults)
        self.register_step_pre_hook(_warn_unapplied_lr_scale)

    # -- what a subclass provides ---------------------------------------------------
    def _init_state(self, group: dict[str, Any], p: Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def _reference_step(self, group: dict[str, Any], p: Tensor, grad: Tensor,
                        state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _functional(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                    **flags: Any) -> None:
        """torch's functional of the same algorithm on these lists (foreach/fused...)."""
        raise NotImplementedError

    def _kernel_args(self, group: dict[str, Any]) -> tuple[list[str], list[float], int]:
        """State keys the kernel reads, its float hyperparameters, its integer flags."""
        raise NotImplementedError

    def _kernel_prepare(self, group: dict[str, Any], params: list[Tensor]) -> list[int] | None:
        """Create state the kernel needs; per tensor, 1 where a buffer starts from the grad."""
        return None

    def _explain(self, hp: dict[str, Any], p: Tensor, state: dict[str, Any]) -> Explained:
        raise NotImplementedError

    @classmethod
    def _validated(cls, fn: str, values: dict[str, Any], group: bool = False) -> dict[str, Any]:
        """The options a param group sets itself, checked (``group=True``: as
        ``add_param_group`` checks them) and in canonical form: name -> value. Raises
        ValueError/TypeError naming the option. Default: none checked beyond the
        constructor's arguments."""
        return {}

    def _state_shapes(self, group: dict[str, Any], p: Tensor) -> dict[str, tuple]:
        """The state tensors of ``p`` that are not shaped like it, for ``load_state_dict``'s
        checks (``lrkit.optim._state_check``): key -> the shapes it may have.

        ``group`` is the saved param group, its settings already validated. A listed key
        must hold a floating-point tensor of one of those shapes; one that a probe step
        does not create (a key kept only in some modes) is optional. The shapes of the
        other keys are learnt from the probe step. Default: none.
        """
        return {}

    def _kernel_shapes(self, group: dict[str, Any], p: Tensor, key: str) -> tuple | None:
        """The exact shapes state ``key`` of ``p`` may have for the kernel, or None where it
        holds one entry per entry of ``p`` (in any layout). The kernel reads and writes
        through raw pointers: a state tensor of another size (set by hand) is refused
        before it runs (``_kernel.check_columns``). Default: ``_state_shapes``' listing."""
        return self._state_shapes(group, p).get(key)

    def _reference(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> None:
        state = self.state[p] if p in self.state else {}
        if not torch.is_complex(p) or not self.complex_as_real:
            self._reference_step(group, p, grad, state)
            if state and p not in self.state:
                self.state[p] = state
            return
        real = {k: torch.view_as_real(v) if torch.is_tensor(v) and torch.is_complex(v) else v
                for k, v in state.items()}
        self._reference_step(group, torch.view_as_real(p), torch.view_as_real(grad), real)
        for k, v in real.items():
            if k not in state:
                state[k] = torch.view_as_complex(v) if torch.is_tensor(v) and v.dim() else v
        if state and p not in self.state:
            self.state[p] = state

    # -- the step template ----------------------------------------------------------
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        """One update; ``closure`` (re-evaluating the loss) runs with gradients enabled.

        The update runs without autograd, except with ``differentiable=True`` (as torch).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self.nonfinite == "raise" and self._traced_check():
            # before the no-grad block: an error raised inside a compiled graph would leave
            # that block's grad mode switched on the caller (torch 2.13's dynamo)
            self._assert_finite()
        with torch.set_grad_enabled(bool(self.defaults.get("differentiable"))):
            if self._has_dtensor:
                self._dtensor_step()
            else:
                self._step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's ``add_param_group``, after checking the values the group sets itself
        as the constructor checks its arguments (``_state_check.check_added_group``)."""
        check_in_backward = _gradwatch.enabled()  # a bad value raises before the group
        if isinstance(param_group, dict):
            _state_check.check_added_group(self, param_group)
            _check_params(self, param_group)
        super().add_param_group(param_group)
        params = self.param_groups[-1]["params"]
        if any(_distributed.is_dtensor(p) for p in params):
            self._has_dtensor = True
        elif check_in_backward:  # check large gradients in backward's hooks
            _gradwatch.hook(self, params)

    def _dtensor_step(self) -> None:
        """The step on each rank's local shards (see ``lrkit.optim._distributed``)."""
        self._check_dtensor_supported()
        with _distributed.LocalShards(self) as shards:
            self._shards = shards
            try:
                self._step()
            finally:
                self._shards = {}

    def _check_dtensor_supported(self) -> None:
        """Raise NotImplementedError, on every rank alike and before any collective, where
        the parameters include DTensors and the class has no DTensor step."""
        if self._has_dtensor and self.dtensor is None:
            raise NotImplementedError(
                f"{type(self).__name__}.step(): DTensor parameters (FSDP2 fully_shard) are "
                f"not supported by {type(self).__name__}; use it with DDP or "
                "ZeroRedundancyOptimizer (see the documentation, docs/distributed.md)")

    def _step(self) -> None:
        plans = self._prepare()
        if plans is None:
            return
        for _, group, batches, params, grads in plans:
            for b in batches:
                if not _kernel.launch(self, group, b):
                    params, grads = params + b.params, grads + b.grads
            if params:
                self._update(group, params, grads)

    def _prepare(self) -> list | None:
        """What a step updates, screened for non-finite gradients, with state initialised.

        Returns one ``(index, group, kernel batches, other params, their grads)`` per
        param group with gradients, or None when the step is skipped (counted). Records
        the hyperparameters the step uses (for ``explain()``). The split of each group
        into kernel batches is kept from step to step while it holds
        (``_kernel.GroupPlan``), so that the step's own cost hardly grows with the number
        of tensors.
        """
        kernel = self._kernel_on() and not (self._shards and self.dtensor == "reference")
        kept = self._kplans if not self._shards else {}  # local shards: new each step
        state = self.state
        plans = []  # (index, group, kernel batches, other params, their grads)
        sparse = False
        for i, group in enumerate(self.param_groups):
            params = group["params"]
            if kernel and not (group.get("differentiable") or group.get("capturable")):
                same = _kernel.kept_batches(kept, i, group, state, params)
                if same is not None:  # read in one native call
                    plans.append((i, group, *same))
                    continue
                grads = list(map(_GRAD, params))
                batches, rest, rest_g = _kernel.plan_group(kept, i, group, state,
                                                           params, grads)
                if any(g.is_sparse for g in rest_g):  # the whole group as torch's
                    kept.pop(i, None)
                    rest = [p for p, g in zip(params, grads) if g is not None]
                    batches, rest_g = [], [p.grad for p in rest]
            else:  # (torch.compile traces this: no map over attrgetter)
                rest = [p for p in params if p.grad is not None]
                batches, rest_g = [], [p.grad for p in rest]
            if batches or rest:
                plans.append((i, group, batches, rest, rest_g))
                sparse = sparse or any(g.is_sparse for g in rest_g)
        if sparse and not self.supports_sparse:
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients (of lrkit's "
                "optimizers SGD and Adagrad take them, as torch's do, and LBFGS densifies "
                "them as torch's LBFGS does)")
        plans = self._screen(plans)
        if plans is None:
            self.skipped_steps += 1
            return None
        for i, group, batches, params, _ in plans:
            for b in batches:
                _kernel.memo_states(self, group, b)
            self._init_missing(group, params)
            self._last[i] = {k: (v.detach().clone() if isinstance(v, Tensor) else v)
                             for k, v in group.items() if k not in _NOT_HYPERPARAMS}
        return plans

    def _init_missing(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Initialise the state of the parameters that have none yet."""
        state = self.state
        for p in params:
            if not state.get(p):
                init = self._init_state(group, p)
                if init:  # no entry where there is no state (SGD without momentum)
                    state[p].update(init)

    @property
    def _kplans(self) -> dict:
        """The kept split of each param group (``_kernel.GroupPlan``), by group index; not
        copied (deepcopy, pickle), dropped by ``load_state_dict``."""
        plans = self.__dict__.get("_kernel_plans")
        if plans is None:
            plans = self.__dict__["_kernel_plans"] = {}
        return plans

    def _kernel_on(self) -> bool:
        return (self.impl in ("auto", "kernel") and self.kernel is not None
                and not torch.compiler.is_compiling()
                and _kernel.library(self.kernel) is not None)

    def _screen(self, plans: list) -> list | None:
        """Find non-finite gradients in one pass; raise, skip (None) or zero them.

        Non-finite here also means an entry whose ``grad_power``-th power overflows (its
        square, for Adam and kin), which would put Inf, then NaN, into the state. In a
        multi-process run the decision to raise or skip is agreed by every rank."""
        power = self.grad_power
        self.__dict__.pop("_fused_check", None)
        if self._traced_check():
            if self.nonfinite == "raise":  # step() asserted in the graph
                return plans
            return [(i, group, batches, params, [_bounded(g, power) for g in grads])
                    for i, group, batches, params, grads in plans]
        if self.nonfinite == "zero":  # the kernel zeroes them as it reads; the rest here
            rest = [g for plan in plans for g in plan[4]]
            if not rest or _kernel.first_nonfinite(rest, power) < 0:
                return plans
            return [(i, group, batches, params, [_bounded(g, power) for g in grads])
                    for i, group, batches, params, grads in plans]
        batches = [b for plan in plans for b in plan[2]]
        fused = self._checked_by_first_pass(plans)
        if fused:
            batches = [b for b in batches if not any(b is f for f in fused)]
        bad, batches = _checked_by_hooks(self, batches)
        found = _kernel.first_nonfinite_in(batches, power) if bad is None else None
        if found is not None:
            bad = found[0].params[found[1]]
        elif bad is None:
            rest = [(p, g) for plan in plans for p, g in zip(plan[3], plan[4])]
            k = _kernel.first_nonfinite([g for _, g in rest], power) if rest else -1
            if k >= 0:
                bad = rest[k][0]
        device = plans[0][4][0].device if plans and plans[0][4] else None
        if not (_distributed.any_rank(bad is not None, device) if self.agree_across_ranks
                else bad is not None):
            if fused:  # for the step's first pass, with what explain() reads now
                self.__dict__["_fused_check"] = (fused, dict(self._last))
            return plans
        if self.nonfinite == "skip":
            return None
        self._raise_nonfinite(bad)

    def _checked_by_first_pass(self, plans: list) -> list:
        """The kernel batches whose non-finite check the step's own first pass makes (a
        subclass whose first pass only reads, before anything is written, and sees every
        gradient entry: DoG's norms); ``_screen`` leaves them out of its pass. None here.
        Such a subclass, finding a non-finite gradient, calls ``_nonfinite_after_prepare``.
        """
        return []

    def _nonfinite_after_prepare(self, bad: Tensor, last: dict) -> None:
        """A non-finite gradient found after ``_prepare`` (by a first pass that only
        reads): restore what ``_prepare`` recorded for ``explain()`` (``last``, as it was
        before), then skip (counted) or raise as ``_screen`` does. ``_prepare`` initialises
        no state on that path (``_checked_by_first_pass`` asks for all of it to exist)."""
        self._last.clear()
        self._last.update(last)
        if self.nonfinite == "skip":
            self.skipped_steps += 1
            return
        self._raise_nonfinite(bad)

    def _raise_nonfinite(self, bad: Tensor | None) -> None:
        """Raise the error that names the parameter whose gradient is non-finite (None:
        another process's)."""
        power = self.grad_power
        what = "a parameter on another process"
        for i, group in enumerate(self.param_groups):
            for j, q in enumerate(group["params"]):
                if q is bad:
                    names = group.get("param_names")
                    shard = self._shards.get(id(q))
                    shape = tuple(q.shape if shard is None else shard.shape)
                    what = (repr(names[j]) if names else
                            f"param_groups[{i}]['params'][{j}] of shape {shape}")
                    if shard is not None:
                        what += " (in this process's shard)"
        big = ""
        if power > 1:
            dtype = bad.dtype if bad is not None else torch.float32
            big = (f" or an entry so large that its {'square' if power == 2 else 'fourth power'}"
                   f" overflows (|g| >= {_kernel.bound(dtype, power):.3g} in {dtype})")
        raise NonFiniteGradientError(
            f"{type(self).__name__}.step(): the gradient of {what} holds NaN or Inf{big}; "
            "nothing was changed (pass nonfinite='skip' to skip such steps or "
            "nonfinite='zero' to treat those entries as zero)")

    def _traced_check(self) -> bool:
        """Whether the NaN/Inf check runs inside torch.compile's graph (no graph break):
        "zero" replaces the entries in the graph; "raise" asserts in the graph
        (``torch._assert_async``) before the update, a RuntimeError naming no parameter
        (the names would need the flags on the host). "skip" needs the host's answer and
        breaks the graph (see the class docstring), as does a multi-process run (the ranks
        agree on the host)."""
        return torch.compiler.is_compiling() and self.nonfinite != "skip" and not (
            self.agree_across_ranks and _distributed.world_size() > 1)

    def _assert_finite(self) -> None:
        grads = [p.grad for group in self.param_groups for p in group["params"]
                 if p.grad is not None]
        for _, bad in _kernel.nonfinite_flags(grads, self.grad_power):
            torch._assert_async(~bad.any(), f"{type(self).__name__}.step(): a gradient "
                                "holds NaN or Inf (or an entry whose power overflows); "
                                "nothing was changed")

    def _update(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]) -> None:
        """Every implementation but the kernel (the step template runs that)."""
        impl = self.impl
        if torch.compiler.is_compiling() or (self._shards and self.dtensor == "reference"):
            impl = "reference"
        elif group.get("differentiable") or group.get("capturable"):
            impl = "torch"
        elif impl == "kernel":
            impl = "foreach"
        if impl == "auto":  # as torch: single-tensor on CPU, fused or foreach elsewhere
            impl = "reference"
            if all(not p.is_cpu for p in params):
                impl = "fused" if self.torch_fused and all(
                    p.device.type == "cuda" for p in params) else "foreach"
        if self.supports_sparse and any(g.is_sparse for g in grads):
            impl = "torch"  # torch's single-tensor functional, which takes sparse gradients
        if impl == "reference" or (impl in ("foreach", "fused", "torch")
                                   and self.torch_name is None
                                   and not self.has_foreach):
            for p, g in zip(params, grads):
                self._reference(group, p, g)
        elif impl == "torch":
            self._functional(group, params, grads, foreach=False,
                             differentiable=bool(group.get("differentiable")),
                             capturable=bool(group.get("capturable")))
        elif self.torch_name is None:
            self._foreach(group, params, grads)  # type: ignore[attr-defined]
        elif impl == "fused":
            self._functional(group, params, grads, fused=True)
        else:
            self._functional(group, params, grads, foreach=True)

    # -- the learning rate the last step applied --------------------------------------
    def explain(self, param: Tensor) -> Explained:
        """What the last step did to ``param``: ``eta``, ``direction``, ``decay``, ``update``.

        Recomputed from the state after the step and the hyperparameters that step used;
        algorithms whose state does not hold the direction (SGD without momentum,
        Adagrad, Adadelta, RMSprop without momentum, Lion, Adafactor) read the last
        gradient from ``param.grad``, so call it after ``step()`` and before
        ``zero_grad()``. Exact up to rounding.
        """
        for i, group in enumerate(self.param_groups):
            if any(q is param for q in group["params"]):
                state = self.state.get(param) or {}
                # a parameter the group's steps skipped (frozen, unused: no gradient)
                # has no state, or the state Adagrad makes at construction (step 0);
                # SGD without momentum keeps none and reads param.grad
                if (not state and (i not in self._last or param.grad is None)) or (
                        "step" in state and _as_number(state["step"]) == 0):
                    break
                hp = self._last.get(i) or {k: v for k, v in group.items()
                                           if k not in _NOT_HYPERPARAMS}
                hp = {k: _as_number(v) for k, v in hp.items()}
                return self._explain(hp, param, state)
        raise ValueError(f"{type(self).__name__}.explain(): this parameter has not been "
                         "updated by a step of this optimizer yet")

    def _grad(self, p: Tensor, hp: dict[str, Any]) -> Tensor:
        if p.grad is None:
            raise ValueError(f"{type(self).__name__}: effective_lr()/explain() need the "
                             "last gradient (p.grad) for this algorithm; call it after "
                             "step() and before zero_grad()")
        g = p.grad.detach()
        return -g if hp.get("maximize") else g

    def effective_lr(self, param: Tensor | None = None) -> Any:
        """The elementwise step-size multiplier the last step applied.

        For one parameter, a tensor shaped like it (``eta`` of :meth:`explain`); without
        an argument, one list per param group with a tensor (or ``None`` for parameters
        not stepped yet) per parameter. Adam: ``lr / (1 - beta1^t) / (sqrt(v_hat) + eps)``
        on the first moment; SGD: ``lr``; each class documents its own.
        """
        if param is not None:
            return self.explain(param).eta
        out = []
        for group in self.param_groups:
            row = []
            for p in group["params"]:
                try:
                    row.append(self.explain(p).eta)
                except ValueError:
                    row.append(None)
            out.append(row)
        return out

    def lr_stats(self) -> list[dict[str, float]]:
        """Per param group: min, median and max of the effective lr over all elements, and
        ``update_ratio`` = ||update|| / ||w|| of the last step (norms over the group).

        Nothing is kept per step beyond the hyperparameters the last step used (a few
        numbers per group); the figures are recomputed from the optimizer state on call:
        one pass over the group's parameters and an exact median (about 0.2 s for 10M
        parameters on two cores; skipped where the effective lr is one number, as SGD's).
        """
        out = []
        for group in self.param_groups:
            etas, upd2, w2 = [], 0.0, 0.0
            for p in group["params"]:
                try:
                    e = self.explain(p)
                except ValueError:
                    continue
                etas.append(e.eta)
                upd2 += float(torch.linalg.vector_norm(e.update)) ** 2
                w2 += float(torch.linalg.vector_norm(p.detach())) ** 2
            if not etas:
                out.append({"min": math.nan, "median": math.nan, "max": math.nan,
                            "update_ratio": math.nan})
                continue
            if all(t.stride() == (0,) * t.dim() for t in etas):  # one number per tensor
                flat = torch.stack([t.reshape(-1)[0] if t.numel() else
                                    torch.tensor(math.nan, dtype=t.dtype) for t in etas])
            else:
                flat = torch.cat([t.reshape(-1) for t in etas])
            out.append({"min": float(flat.min()), "median": float(flat.median()),
                        "max": float(flat.max()),
                        "update_ratio": math.sqrt(upd2) / math.sqrt(w2) if w2 > 0
                        else math.inf if upd2 > 0 else 0.0})
        return out

    # -- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """torch's state_dict, plus ``skipped_steps`` and ``lrkit_optimizer`` (the class
        name, so that loading it into another algorithm fails clearly)."""
        sd = super().state_dict()
        sd["skipped_steps"] = self.skipped_steps
        sd["lrkit_optimizer"] = type(self).__name__
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load_state_dict (a torch.optim state_dict of the same algorithm loads),
        after checking everything first: another algorithm's state, missing keys, wrong
        shapes or types, invalid settings or NaN raise ``ValueError``/``TypeError`` and
        leave the optimizer unchanged (see ``lrkit.optim._state_check``)."""
        skipped = _state_check.check(self, state_dict)
        state_dict = {k: v for k, v in state_dict.items()
                      if k not in ("skipped_steps", "lrkit_optimizer")}
        super().load_state_dict(state_dict)
        self.skipped_steps = skipped
        self._last = {}

    def __getstate__(self) -> dict[str, Any]:
        """What a copy keeps (``copy.deepcopy``, pickle, ``torch.save(opt)``): torch's
        (defaults, state, param_groups) and lrkit's own settings and counters (``impl``,
        ``nonfinite``, ``skipped_steps``, a subclass's), not the hooks (as torch)."""
        state = super().__getstate__()
        for k, v in self.__dict__.items():
            if not (k.startswith("_optimizer_") or k in _TORCH_RUNTIME
                    or k in self._transient or k in ("_kernel_plans", "_fused_check")):
                state.setdefault(k, v)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.pop("_kernel_plans", None)  # the groups and state are new
        # torch's load_state_dict comes here too (state and param_groups only); a copy
        # pickled before lrkit kept its own settings lacks them
        for k, v in (("nonfinite", "raise"), ("impl", "auto"), ("skipped_steps", 0),
                     ("_last", {})):
            if k not in self.__dict__:
                setattr(self, k, v)
        defaults = getattr(self, "defaults", {})
        for group in self.param_groups:
            for k, v in defaults.items():
                group.setdefault(k, v)
            for p in group["params"]:
                s = self.state.get(p)
                if not s:
                    continue
                # numbers (older torch saved them so), integer tensors, and 16-bit floats
                # (which stop counting at 256 steps): the float tensor the step keeps
                for key in self._scalar_state:
                    v = s.get(key)
                    if v is not None and not (torch.is_tensor(v) and v.dtype in _COUNTERS):
                        s[key] = step_tensor(group, p).fill_(float(v))

    def __repr__(self) -> str:
        text = super().__repr__()
        return text[:-1] + f"    nonfinite: {self.nonfinite}\n    impl: {self.impl}\n)"


#: the dtypes a loaded 0-dim counter (``_scalar_state``) is kept in
_COUNTERS = (torch.float32, torch.float64)

# left out of copies, as torch leaves them: what torch's __setstate__ recreates, and the
# step wrapper (a closure) with the flag that schedulers attach
_TORCH_RUNTIME = ("_zero_grad_profile_name", "step", "_opt_called")


@functools.cache
def _switches(cls: type) -> dict[str, bool]:
    """The constructor's switches: name -> whether None is allowed (foreach=None...)."""
    out = {}
    for name, par in inspect.signature(cls.__init__).parameters.items():
        if isinstance(par.default, bool):
            out[name] = False
        elif par.default is None and name in ("foreach", "fused"):
            out[name] = True
    return out


def _check_switches(fn: str, cls: type, defaults: dict[str, Any]) -> None:
    """True/False switches (amsgrad, maximize, foreach...) must be bools: torch takes any
    truthy value, so ``amsgrad="no"`` would silently turn it on."""
    for name, none_ok in _switches(cls).items():
        if name in defaults:
            v = defaults[name]
            if not (isinstance(v, bool) or (none_ok and v is None)):
                raise TypeError(f"{fn}: {name} must be True or False"
                                f"{' (or None)' if none_ok else ''}, got {v!r}")


def _checked_by_hooks(opt: LrkitOptimizer, batches: list) -> tuple[Tensor | None, list]:
    """(a parameter whose gradient the backward hooks found non-finite or None, the
    batches of gradients they did not check: those the pass must read)."""
    watch = _gradwatch.of(opt) if batches else None
    if watch is None:
        return None, batches
    rest = []
    for b in batches:
        m = b.memo
        if m is None or m.hooked is None:  # the parameters with a hook (kept in the memo)
            hooked = [j for j, p in enumerate(b.params) if id(p) in watch.handles]
            if m is not None:
                m.hooked = hooked
        else:
            hooked = m.hooked
        checked = set()
        for j in hooked:
            verdict = watch.verdict(b.params[j], b.grads[j])
            if verdict:
                return b.params[j], batches
            if verdict is False:
                checked.add(j)
        if not checked:
            rest.append(b)
            continue
        left = _kernel.Batch(b.dtype)
        for j, (p, g) in enumerate(zip(b.params, b.grads)):
            if j not in checked:
                left.params.append(p)
                left.grads.append(g)
        if left.params:
            rest.append(left.seal())
    return None, rest


def _bounded(g: Tensor, power: int = 1) -> Tensor:
    """``g`` with NaN/Inf entries (and those at or above ``_kernel.bound``) as zeros (a
    copy, only where there are any)."""
    if g.is_sparse:
        g = g.coalesce()
        values = _bounded(g.values(), power)
        return g if values is g.values() else torch.sparse_coo_tensor(
            g.indices(), values, g.shape, is_coalesced=True)
    limit = _kernel.bound(g.dtype, power)
    ok = (torch.view_as_real(g).abs() < limit).all(-1) if g.is_complex() else g.abs() < limit
    zero = torch.zeros((), dtype=g.dtype, device=g.device)
    if torch.compiler.is_compiling():  # no host sync inside a graph
        return torch.where(ok, g, zero)
    return g if bool(ok.all()) else torch.where(ok, g, zero)


class LrScaleWarning(UserWarning):
    """A param group's ``lr_scale`` is not applied: nothing writes ``lr * lr_scale``."""


def _warn_unapplied_lr_scale(opt: LrkitOptimizer, args: Any, kwargs: Any) -> None:
    """Step pre-hook: warn once when a group holds an ``lr_scale`` nothing applies."""
    if opt.lr_scale_applied or getattr(opt, "_lr_scale_warned", False):
        return
    scaled = {i: g["lr_scale"] for i, g in enumerate(opt.param_groups)
              if g.get("lr_scale", 1.0) != 1.0}
    if scaled:
        opt._lr_scale_warned = True
        groups = ", ".join(f"group {i}: lr_scale={v}" for i, v in scaled.items())
        warnings.warn(
            f"{type(opt).__name__}.step(): {groups} is not applied: the optimizer steps at "
            "each group's lr, and lr_scale is read by lrkit.Scheduler (lr = schedule(step) "
            "* lr_scale), find_lr and the autopilot. Attach a Scheduler, e.g. "
            "lrkit.Scheduler(opt, lr=base_lr) for a constant rate, or set each group's lr "
            "yourself", LrScaleWarning, stacklevel=3)


def _as_number(v: Any) -> Any:
    if isinstance(v, Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, tuple):
        return tuple(_as_number(x) for x in v)
    return v


def uniform(value: float, like: Tensor) -> Tensor:
    """``value`` broadcast to ``like``'s shape without allocating (stride 0)."""
    return torch.tensor(value, dtype=like.dtype, device=like.device).expand_as(like)


def value(x: float | Tensor) -> float | Tensor:
    """A 0-dim state tensor (step, mu_product) as a Python number, except while compiling."""
    return x if torch.compiler.is_compiling() else x.item()


def addcdiv_(p: Tensor, a: Tensor, b: Tensor, v: float | Tensor) -> None:
    """``p += v * a / b`` as torch's ``addcdiv_``; a tensor ``v`` (while compiling) too."""
    if isinstance(v, Tensor):
        p.add_((a / b) * v)
    else:
        p.addcdiv_(a, b, value=v)


def add_(p: Tensor, a: Tensor, alpha: float | Tensor) -> None:
    """``p += alpha * a`` as torch's ``add_``; a tensor ``alpha`` (while compiling) too."""
    if isinstance(alpha, Tensor):
        p.add_(a * alpha)
    else:
        p.add_(a, alpha=alpha)


def functional_lr(group: dict[str, Any], flags: dict[str, Any]) -> float | Tensor:
    """The lr handed to torch's functional: a tensor only where torch takes one."""
    if flags.get("capturable") or flags.get("differentiable") or flags.get("fused"):
        return group["lr"]
    return scalar(group["lr"])
