"""Validate a state_dict before an lrkit optimizer loads any of it.

``torch.optim.Optimizer.load_state_dict`` checks only the number of param groups and of
parameters in each; it takes a state_dict of another algorithm, state tensors of the
wrong shape (which fail, or broadcast silently, steps later) or of the wrong type, and
NaN. ``check(opt, state_dict)`` refuses all of these with a ``ValueError`` or
``TypeError`` that names the group, the parameter and the key, before anything changes.

What a parameter's state must hold is learnt, not listed: one step of a throwaway
optimizer of the same class, built from the saved group's settings (which validates
them), on a tiny parameter of the same number of dimensions, dtype and device, gives the
state keys and how each tensor's shape follows the parameter's (Adafactor's row and
column factors included). A class whose state holds tensors not shaped like the
parameter (Prodigy's flattened, sliced ``s`` and ``p0``), or keys kept only in some modes
(schedule-free's ``y`` in eval mode), states their shapes in ``_state_shapes(group, p)``.
A torch.optim state_dict of the same algorithm has the same layout, so it loads; lrkit's
own state_dicts also name their class (``lrkit_optimizer``). The settings are checked by
the constructor and the class's group checks, and the running values a group keeps (the
d estimate, schedule-free's weight_sum...) must be finite.
"""
from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from lrkit import _checks as C

#: settings that choose an implementation, not the algorithm (not given to the probe)
IMPL_FLAGS = ("foreach", "fused", "capturable", "differentiable")


def check_top(fn: str, cls: type, sd: Any) -> tuple[int, Any, Any]:
    """The checks of a state_dict's top level that every lrkit optimizer shares: a mapping
    with ``state`` and ``param_groups``, saved by ``cls`` or its kin (``lrkit_optimizer``),
    a valid ``skipped_steps``; returns ``(skipped_steps, param_groups, state)``."""
    if not isinstance(sd, Mapping):
        raise TypeError(f"{fn}: state_dict must be a dict (from optimizer.state_dict()), got "
                        f"{type(sd).__name__}")
    missing = [k for k in ("state", "param_groups") if k not in sd]
    if missing:
        raise ValueError(f"{fn}: state_dict lacks {', '.join(map(repr, missing))}: not an "
                         f"optimizer state_dict (it has keys {sorted(map(str, sd))})")
    saved_by = sd.get("lrkit_optimizer")
    if saved_by is not None and saved_by not in _kin(cls):
        raise ValueError(f"{fn}: this state_dict was saved by lrkit.optim.{saved_by}, not by "
                         f"{cls.__name__}: another algorithm's state")
    skipped = sd.get("skipped_steps", 0)
    if isinstance(skipped, bool) or not isinstance(skipped, numbers.Integral) or skipped < 0:
        raise ValueError(f"{fn}: skipped_steps must be a non-negative integer, got {skipped!r}")
    groups, state = sd["param_groups"], sd["state"]
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
        raise TypeError(f"{fn}: param_groups must be a list of dicts, got {groups!r:.80}")
    if not isinstance(state, Mapping):
        raise TypeError(f"{fn}: state must be a dict, got {type(state).__name__}")
    return skipped, groups, state


def check(opt: Any, sd: Any) -> int:
    """Raise if ``sd`` cannot be loaded into ``opt`` unchanged in meaning; returns the
    saved ``skipped_steps`` (0 when absent)."""
    cls = type(opt)
    fn = f"{cls.__name__}.load_state_dict()"
    skipped, groups, state = check_top(fn, cls, sd)
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"{fn}: the state_dict has {len(groups)} param group(s), this "
                         f"optimizer {len(opt.param_groups)}")
    ids: dict[Any, tuple[int, int]] = {}
    for i, (saved, ours) in enumerate(zip(groups, opt.param_groups)):
        params = saved.get("params")
        if not isinstance(params, (list, tuple)):
            raise ValueError(f"{fn}: param group {i} lacks its 'params' list")
        if len(params) != len(ours["params"]):
            raise ValueError(f"{fn}: param group {i} of the state_dict has {len(params)} "
                             f"parameter(s), this optimizer's {len(ours['params'])}")
        for j, k in enumerate(params):
            if k in ids:
                raise ValueError(f"{fn}: parameter id {k!r} appears twice in param_groups")
            ids[k] = (i, j)
    unknown = [k for k in state if k not in ids]
    if unknown:
        raise ValueError(f"{fn}: state holds parameter id(s) {unknown[:5]} that no param "
                         "group lists")
    for i, (saved, ours) in enumerate(zip(groups, opt.param_groups)):
        _check_group(opt, fn, i, saved, ours)
        probes: dict[Any, dict[str, Any] | None] = {}
        for j, (k, p) in enumerate(zip(saved["params"], ours["params"])):
            if k not in state:
                continue
            where = _name(ours, i, j)
            st = state[k]
            if not isinstance(st, Mapping):
                raise TypeError(f"{fn}: the state of {where} must be a dict, got "
                                f"{type(st).__name__}")
            if not st:
                continue
            key = (p.dim(), p.dtype, p.device)
            if key not in probes:
                probes[key] = _probe(opt, fn, i, saved, p)
            _check_state(fn, where, p, st, probes[key], opt._state_shapes(saved, p))
    return int(skipped)


def _kin(cls: type) -> set[str]:
    """Names of the classes whose state_dicts ``cls`` loads: its bases and its subclasses
    (Adam loads AdamW's, whose groups say decoupled_weight_decay=True, as torch's Adam)."""
    out, todo = {c.__name__ for c in cls.__mro__}, [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            out.add(sub.__name__)
            todo.append(sub)
    return out


def _name(group: Mapping, i: int, j: int) -> str:
    names = group.get("param_names")
    p = group["params"][j]
    return (repr(names[j]) if names else
            f"param_groups[{i}]['params'][{j}] (shape {tuple(p.shape)})")


def _check_group(opt: Any, fn: str, i: int, saved: Mapping, ours: Mapping) -> None:
    """A saved param group: the settings this class keeps, valid, and its running values
    (numbers the step keeps in the group: d, weight_sum, step_size...) finite."""
    sig = inspect.signature(type(opt).__init__).parameters
    for key in ours:
        if key in ("params", "param_names") or key in saved or key not in sig:
            continue
        if sig[key].default is None or sig[key].default is False:  # a switch a newer
            continue                                                 # version added
        raise ValueError(f"{fn}: param group {i} of the state_dict lacks {key!r} (it has "
                         f"{sorted(k for k in saved if k != 'params')}): another algorithm's "
                         "state_dict, or a corrupted one")
    if "lr" in saved:
        try:
            check_lr(fn, saved["lr"])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{fn}: param group {i}: {_strip(exc, fn)}") from None
    _check_settings(opt, fn, i, saved)
    _check_running_values(opt, fn, i, saved)


def _settings(cls: type, saved: Mapping) -> dict[str, Any]:
    """The saved group's constructor arguments (not the lr, which a group may set to 0,
    nor the switches that choose an implementation), on the reference path."""
    sig = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in saved.items()
              if k in sig and k not in ("params", "lr", *IMPL_FLAGS)}
    if "impl" in sig:
        kwargs["impl"] = "reference"
    return kwargs


def _throwaway(cls: type, settings: dict[str, Any]) -> None:
    """The constructor's checks of ``settings``: an optimizer of one tiny parameter."""
    cls([torch.nn.Parameter(torch.zeros(2))], **settings)


def _check_settings(opt: Any, fn: str, i: int, saved: Mapping) -> None:
    """The constructor's checks on the saved settings (a throwaway optimizer of one tiny
    parameter), then the checks of the options a param group sets itself."""
    cls = type(opt)
    try:
        _throwaway(cls, _settings(cls, saved))
        cls._validated(f"{fn}: param group {i}",
                       {k: v for k, v in saved.items() if k not in ("params", "param_names")},
                       group=True)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: param group {i} holds invalid settings: "
                        f"{_strip(exc, fn)}") from None


def check_added_group(opt: Any, group: Mapping) -> None:
    """The values a param group sets itself (``add_param_group``, or a group of the
    constructor's list), checked as the constructor checks its arguments (a throwaway
    optimizer of one tiny parameter with them) before the group is added: torch checks
    none, and a NaN or negative eps, lr or decay went silently into the weights."""
    cls = type(opt)
    fn = f"{cls.__name__}.add_param_group()"
    own = {k: v for k, v in group.items()
           if k not in ("params", "param_names") and k in opt.defaults
           and v is not opt.defaults[k]}
    if not own:
        return
    try:
        if "lr" in own:
            check_lr(fn, own["lr"])
        settings = _settings(cls, {**opt.defaults, **own})
        if any(k in own for k in settings):
            try:
                _throwaway(cls, settings)
            except (TypeError, ValueError):
                # a rule tying several arguments together (SGD: nesterov needs momentum)
                # may refuse the mix of the optimizer's options and the group's, where the
                # step runs it as torch does (a group with momentum=0 beside nesterov=True
                # skips the buffer): refused only if the group's own values, beside the
                # constructor's defaults, are refused too
                _throwaway(cls, _settings(cls, own))
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: param group {len(opt.param_groups)}: {_strip(exc, fn)}") \
            from None


def _check_running_values(opt: Any, fn: str, i: int, saved: Mapping) -> None:
    """Numbers a group holds besides the constructor's arguments (what the step keeps
    there: the d estimate, schedule-free's weight_sum, the line search's step size...)
    must be finite."""
    sig = inspect.signature(type(opt).__init__).parameters
    for key, v in saved.items():
        if key in sig or key in ("params", "param_names") or isinstance(v, bool):
            continue
        bad = (isinstance(v, numbers.Real) and not math.isfinite(v)) or (
            isinstance(v, Tensor) and v.is_floating_point()
            and not bool(torch.isfinite(v.detach()).all()))
        if bad:
            raise ValueError(f"{fn}: param group {i} holds {key}={v!r}; the step keeps a "
                             "finite number there (a corrupted state_dict, or one saved "
                             "after the optimizer state overflowed)")


def _strip(exc: Exception, fn: str) -> str:
    text = str(exc)
    head = text.split(": ", 1)
    return head[1] if len(head) == 2 and head[0].endswith(")") else text


def _probe(opt: Any, fn: str, i: int, saved: Mapping, p: Tensor) -> dict[str, Any] | None:
    """The state layout after one step of a throwaway optimizer with the saved settings
    on a tiny parameter like ``p``: key -> None (not a tensor), or a shape pattern whose
    ``None`` entries follow the parameter's size (``()`` for a 0-dim tensor)."""
    cls = type(opt)
    kwargs = _settings(cls, saved)
    shape = tuple(range(2, 2 + p.dim()))
    dtype = p.dtype
    device = p.device
    try:
        dummy = torch.nn.Parameter(torch.randn(shape, dtype=dtype, device=device))
    except (RuntimeError, TypeError):
        return None
    try:
        probe = cls([dummy], **kwargs)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{fn}: param group {i} holds invalid settings: "
                        f"{_strip(exc, fn)}") from None
    _local(probe)

    def closure() -> Tensor:
        probe.zero_grad()
        with torch.enable_grad():
            loss = (dummy.abs() ** 2).sum().real + 1.0
            loss.backward()
        return loss

    try:
        probe.step(closure)
    except Exception:  # noqa: BLE001 - the probe cannot run here: check types only
        return None
    out: dict[str, Any] = {}
    for k, v in probe.state[dummy].items():
        if not isinstance(v, Tensor):
            out[k] = None
        elif v.dim() == 0:
            out[k] = ()
        elif v.dim() != len(shape):
            out[k] = "any"
        else:
            out[k] = tuple(None if n == m else n for n, m in zip(v.shape, shape))
    return out


def _local(probe: Any) -> None:
    """Keep the probe's step to this process: no collective (the ranks of a ZeRO run load
    different parameters, so they probe different numbers of times)."""
    probe.agree_across_ranks = False
    if getattr(probe, "sharded", False) is not False:
        probe.sharded = False


def _check_state(fn: str, where: str, p: Tensor, st: Mapping, layout: dict | None,
                 shapes: Mapping[str, tuple]) -> None:
    """One parameter's saved state against the probe's ``layout`` and the class's
    ``shapes`` (``LrkitOptimizer._state_shapes``: keys not shaped like the parameter)."""
    if layout is not None:
        _check_keys(fn, where, st, layout, shapes)
    for k, v in st.items():
        if isinstance(v, Tensor) and v.is_meta:
            raise ValueError(f"{fn}: state[{k!r}] of {where} is a meta tensor, which holds no "
                             "values (a state_dict of an optimizer built on the meta device)")
        if k in shapes:
            _check_shape_in(fn, where, k, v, shapes[k])
            continue
        want = None if layout is None else layout.get(k)
        if want is None or want == "any":
            if isinstance(v, Tensor):
                _finite(fn, where, k, v)
        elif want == ():
            _check_scalar(fn, where, k, v)
        else:
            expected = tuple(p.shape[d] if n is None else n for d, n in enumerate(want))
            _check_shape_in(fn, where, k, v, (expected,))


def _check_keys(fn: str, where: str, st: Mapping, layout: dict, shapes: Mapping) -> None:
    """Every key the probe step created is there, and nothing else but the optional keys
    the class declares in ``shapes``."""
    lacks = [k for k in layout if k not in st]
    if lacks:
        raise ValueError(f"{fn}: the state of {where} lacks {', '.join(map(repr, lacks))} "
                         f"(it has {sorted(map(str, st))}): another algorithm's "
                         "state_dict, or a corrupted one")
    extra = [k for k, v in st.items() if k not in layout and k not in shapes and v is not None]
    if extra:
        raise ValueError(f"{fn}: the state of {where} holds {', '.join(map(repr, extra))}, "
                         f"which {fn.split('.')[0]} does not keep (it keeps "
                         f"{sorted({*layout, *shapes})}): another algorithm's state_dict")


def _check_scalar(fn: str, where: str, k: str, v: Any) -> None:
    """A finite number or a finite one-element tensor."""
    if isinstance(v, numbers.Real) and not isinstance(v, bool):
        if not math.isfinite(v):
            raise ValueError(f"{fn}: state[{k!r}] of {where} is {v!r}")
        return
    if not isinstance(v, Tensor) or v.numel() != 1:
        raise TypeError(f"{fn}: state[{k!r}] of {where} must be a number or a "
                        f"one-element tensor, got {_what(v)}")
    if v.is_complex() or v.dtype == torch.bool:
        raise TypeError(f"{fn}: state[{k!r}] of {where} must be a real number, got a "
                        f"{v.dtype} tensor")
    _finite(fn, where, k, v)


def _check_shape_in(fn: str, where: str, k: str, v: Any, allowed: tuple) -> None:
    """A finite floating-point tensor of one of the ``allowed`` shapes."""
    if not isinstance(v, Tensor):
        raise TypeError(f"{fn}: state[{k!r}] of {where} must be a tensor, got {_what(v)}")
    if tuple(v.shape) not in allowed:
        need = " or ".join(str(tuple(s)) for s in allowed)
        raise ValueError(f"{fn}: state[{k!r}] of {where} has shape {tuple(v.shape)}, "
                         f"the parameter needs {need}")
    if not (v.is_floating_point() or v.is_complex()):
        raise TypeError(f"{fn}: state[{k!r}] of {where} must be a floating-point tensor, "
                        f"got {v.dtype}")
    _finite(fn, where, k, v)


def _what(v: Any) -> str:
    if isinstance(v, Tensor):
        return f"a tensor of shape {tuple(v.shape)}"
    return f"{type(v).__name__} {v!r:.40}"


def _finite(fn: str, where: str, k: str, v: Tensor) -> None:
    from lrkit.optim._distributed import is_dtensor
    local = v.to_local() if is_dtensor(v) else v
    if (local.is_floating_point() or local.is_complex()) and bool(torch.isnan(local).any()):
        raise ValueError(f"{fn}: state[{k!r}] of {where} holds NaN")


def check_lr(fn: str, lr: Any) -> float | Tensor:
    """A learning rate: a non-negative number or a 1-element tensor."""
    if isinstance(lr, Tensor):
        if lr.numel() != 1:
            raise ValueError(f"{fn}: lr must be a number or a 1-element tensor, got a tensor "
                             f"of shape {tuple(lr.shape)}")
        C.nonnegative(fn, "lr", lr.detach().reshape(()).cpu())
        return lr
    return C.nonnegative(fn, "lr", lr)
