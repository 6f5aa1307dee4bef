"""Build and call lrkit's multi-tensor C++ kernels (``kernels.cpp``) through ctypes.

The source is compiled with the system C++ compiler (``$CXX``, else g++/c++/clang++; no
torch headers), one library per algorithm on its first use (2-4 seconds each, once per
machine), into ``$LRKIT_CACHE_DIR`` (default ``~/.cache/lrkit``), keyed by a hash of the
source, the flags and the CPU. ``LRKIT_KERNEL_MARCH`` picks the target (default ``native``,
this CPU; e.g. ``x86-64-v2`` or ``armv8-a`` for a baseline build, part of the cache key).
Without a compiler, or with ``LRKIT_NO_KERNEL=1``, ``available()`` is
False and the optimizers run their reference path on CPU (torch's own CPU default):
slower, same results.

A step of a kept plan (:class:`GroupPlan`: the split, pointer tables and state columns of
a param group, kept while nothing they were built from changes) checks and reads its
gradients, state tensors and version counters through ``_native`` where that extension
could be built, else through the Python code below that it mirrors.
"""
from __future__ import annotations

import ctypes
import functools
import math
import operator
import os
import platform
import re
import subprocess
import threading
import warnings
from array import array
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from lrkit.errors import user_stacklevel
from lrkit.optim import _native
from lrkit.optim._build import compiled, compiler

_SRC = Path(__file__).with_name("kernels.cpp")
_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
          "-std=c++17", "-shared", "-fPIC"]
_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_CHECK_CODES = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
_lock = threading.RLock()
TORCH_SQRT = False  # LRKIT_KERNEL_SQRT=torch: square roots as torch's CPU Tensor.sqrt

# flag bits, as in kernels.cpp
F_MAXIMIZE, F_ZERO, F_DECOUPLED, F_AMSGRAD = 1, 2, 4, 8
F_NESTEROV, F_CENTERED, F_MOMENTUM, F_WD = 16, 32, 64, 128
F_ACC, F_UPD, F_FIRST, F_GSQ, F_FORWARD = 256, 512, 1024, 2048, 4096


class _Args(ctypes.Structure):
    _fields_ = [("n", ctypes.c_int64)] + [
        (name, ctypes.c_void_p) for name in ("p", "g", "s1", "s2", "s3", "sc1", "sc2",
                                             "size", "first")] + [
        ("hp", ctypes.c_double * 12), ("flags", ctypes.c_int64),
        ("nthreads", ctypes.c_int32), ("sc_f64", ctypes.c_int32),
        ("rows", ctypes.c_void_p), ("cols", ctypes.c_void_p), ("s4", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("tv", ctypes.c_void_p), ("ival", ctypes.c_int64),
        ("gbound", ctypes.c_double)]


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def march() -> str:
    """The ``-march`` target of the kernels: ``$LRKIT_KERNEL_MARCH`` or ``native``."""
    value = os.environ.get("LRKIT_KERNEL_MARCH", "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
        raise ValueError(f"LRKIT_KERNEL_MARCH must name a compiler target such as native or "
                         f"x86-64-v2, got {value!r}")
    return value


#: runtime alias checks GCC may emit to vectorise a loop (its default, 10, leaves the main
#: loops of Prodigy and DAdaptAdam, which read and write five or six arrays, scalar)
_ALIAS_CHECKS = 40


def is_gcc() -> bool:
    """Whether ``compiler()`` is GCC (whose ``--param`` names the flags above)."""
    return _is_gcc(compiler() or "c++")


@functools.cache
def _is_gcc(cxx: str) -> bool:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in out and "clang" not in out.lower()


def _build(algo: str) -> Path | None:
    """The library of one algorithm ("check": only the non-finite check), built once."""
    if compiler() is None:
        return None
    flags = [*_FLAGS, f"-march={march()}", f"-DLRK_ONLY_{algo}"]
    if is_gcc():  # loops over many arrays (Prodigy, DAdaptAdam) need more alias checks
        flags.append(f"--param=vect-max-version-for-alias-checks={_ALIAS_CHECKS}")
    return compiled(_SRC, f"lrkit_{algo}", ".so", [*flags, "{src}", "-o", "{out}"],
                    [platform.machine(), _cpu_id()])


_libs: dict[str, Any] = {}


def library(algo: str = "check") -> Any:
    """The loaded library of one algorithm's kernels (default: the check every library
    has), built on first use; None where there is no compiler or LRKIT_NO_KERNEL=1."""
    if algo in _libs:
        return _libs[algo]
    with _lock:
        if algo in _libs:
            return _libs[algo]
        lib = None
        if os.environ.get("LRKIT_NO_KERNEL", "") in ("", "0") and (
                algo == "check" or library("check") is not None):
            try:
                path = _build(algo)
                if path is not None:
                    lib = ctypes.CDLL(str(path))
                    if os.environ.get("LRKIT_KERNEL_SQRT", "std") == "torch":
                        _match_torch_sqrt(lib)
                    lib.lrk_first_nonfinite.restype = ctypes.c_int64
                    lib.lrk_first_nonfinite.argtypes = [
                        ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_int32, ctypes.c_int32]
            except (OSError, subprocess.SubprocessError) as exc:
                detail = getattr(exc, "stderr", "") or exc
                warnings.warn(f"lrkit: could not build the optimizer kernels ({detail}); "
                              "the optimizers run their reference path", RuntimeWarning,
                              stacklevel=user_stacklevel())
                lib = None
        _libs[algo] = lib
        return lib


def _match_torch_sqrt(lib: Any) -> None:
    """With ``LRKIT_KERNEL_SQRT=torch``: hand the kernels the square root torch's CPU
    ``Tensor.sqrt`` uses (MKL's vsSqrt/vdSqrt inside libtorch on x86 builds) if it
    reproduces ``torch.sqrt`` exactly, so the kernels equal torch's single-tensor
    optimizers bit for bit on x86-64 with FMA. By default the kernels take the correctly
    rounded ``std::sqrt`` (vsqrtps: 1.3-1.5x faster where the step is compute-bound, see
    benchmarks/README.md), which keeps them within the contract of every fast path: each
    operation within 1 ulp of torch's single-tensor result (tests/test_optim_contract.py)."""
    path = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        torch_lib = ctypes.CDLL(str(path))
        vs, vd = torch_lib.vsSqrt, torch_lib.vdSqrt
    except (OSError, AttributeError):
        return
    x = torch.rand(4099, generator=torch.Generator().manual_seed(0)) * 3
    for fn, t in ((vs, x), (vd, x.double())):
        out = torch.empty_like(t)
        fn(ctypes.c_int(t.numel()), ctypes.c_void_p(t.data_ptr()),
           ctypes.c_void_p(out.data_ptr()))
        if not torch.equal(out, t.sqrt()):
            return
    lib.lrk_set_sqrt(ctypes.cast(vs, ctypes.c_void_p), ctypes.cast(vd, ctypes.c_void_p))
    global TORCH_SQRT
    TORCH_SQRT = True


def available() -> bool:
    return library() is not None


def mirrors_aten() -> bool:
    """Whether the kernels compute as ATen's x86 CPU kernels do, operation by operation
    (bit-exact with torch's single-tensor optimizers): an x86-64 build whose target has
    FMA (``-march=native`` on any AVX2/AVX-512 CPU; not ``x86-64-v2``), with torch's
    square root, while ATen runs its AVX2/AVX-512 kernels (not with
    ``ATEN_CPU_CAPABILITY=default``). Elsewhere they differ by rounding (within 1 ulp per
    operation)."""
    lib = library()
    return (lib is not None and TORCH_SQRT and platform.machine() in ("x86_64", "AMD64")
            and bool(lib.lrk_has_fma())
            and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def _ptrs(tensors: list[Tensor | None]) -> array:
    return array("Q", [0 if t is None else t.data_ptr() for t in tensors])


def _addr(a: array) -> int:
    return a.buffer_info()[0]


def bound(dtype: torch.dtype, power: int = 1) -> float:
    """The magnitude from which a gradient entry is unusable: ``2^(maxexp / power)``, where
    ``2^maxexp`` is the first power of two above the dtype's largest value. With power 1
    that is the dtype's infinity (NaN and Inf only); with power 2 (algorithms keeping the
    squared gradient), the entries whose square overflows (float32: 2^64, about 1.8e19);
    with 4 (Adafactor's products of row and column means) those whose fourth power does.
    """
    if dtype.is_complex:
        dtype = torch.empty((), dtype=dtype).real.dtype
    if not dtype.is_floating_point:
        return math.inf
    maxexp = math.frexp(torch.finfo(dtype).max)[1]
    return math.inf if power == 1 else math.ldexp(1.0, maxexp // power)


def first_nonfinite(grads: list[Tensor], power: int = 1) -> int:
    """Index of the first gradient holding NaN, Inf or an entry at or above
    ``bound(dtype, power)``, or -1: one pass over all of them (a sparse gradient's
    stored values)."""
    grads = [g._values() if g.is_sparse else g for g in grads]
    lib = library() if not torch.compiler.is_compiling() else None
    if lib is not None and all(g.device.type == "cpu" and g.dtype in _CHECK_CODES
                               and g.layout == torch.strided and g.is_contiguous()
                               and type(g) in _PLAIN for g in grads):
        ptrs, sizes = _ptrs(grads), array("q", [g.numel() for g in grads])
        codes = array("i", [_CHECK_CODES[g.dtype] for g in grads])
        return int(lib.lrk_first_nonfinite(len(grads), _addr(ptrs), _addr(sizes),
                                           _addr(codes), torch.get_num_threads(), power))
    found = [idx[int(bad.nonzero()[0, 0])] for idx, bad in nonfinite_flags(grads, power)
             if bool(bad.any())]
    return min(found) if found else -1


def nonfinite_flags(grads: list[Tensor], power: int = 1) -> list[tuple[list[int], Tensor]]:
    """Per (device, dtype) of the gradients: their indices and a bool tensor flagging
    those that hold NaN, Inf or an entry at or above ``bound(dtype, power)`` (torch ops
    only, no sync with the host: torch.compile traces it without a graph break)."""
    out = []
    by_key: dict[Any, list[int]] = {}
    for i, g in enumerate(grads):
        if g.numel():  # an empty one holds nothing (and has no infinity norm)
            by_key.setdefault((g.device, g.dtype), []).append(i)
    for idx in by_key.values():
        group = [grads[i] for i in idx]
        limit = bound(group[0].dtype, power)
        if group[0].is_complex():
            group = [torch.view_as_real(g) for g in group]
        norms = torch._foreach_norm(group, float("inf"))
        out.append((idx, ~(torch.stack(norms) < limit)))  # in their dtype; NaN compares False
    return out


_PLAIN = (Tensor, torch.nn.Parameter)
_GRAD = operator.attrgetter("grad")
_DTYPE = operator.attrgetter("dtype")
_data_ptr, _numel, _contiguous = Tensor.data_ptr, Tensor.numel, Tensor.is_contiguous
_shape = operator.attrgetter("shape")


class Memo:
    """What one kernel batch keeps from step to step (see :class:`GroupPlan`): the state
    dicts of its parameters as the last step found them, and per kernel configuration
    the state columns and their pointer tables (:class:`Columns`)."""

    __slots__ = ("sts", "nstate", "empty", "at", "cols", "hooked")

    def __init__(self) -> None:
        self.sts: list | None = None
        self.nstate, self.empty = -1, False
        self.at = -1  # where the batch's parameters start among the state's keys
        self.cols: dict[Any, Columns] = {}
        self.hooked: list[int] | None = None  # indices of parameters with a grad hook


class Columns:
    """The state tensors one kernel configuration reads (``_kernel_args``' keys) and the
    arrays of their addresses, valid while every state dict still holds those tensors."""

    __slots__ = ("keys", "tensors", "arrays", "sc", "sc_f64", "ok", "first", "shape",
                 "native")


class Batch:
    """Tensors of one dtype that one kernel call updates, with their gradient pointers.

    ``params``, ``sizes``, ``pp`` (the parameters' addresses) and ``memo`` are kept
    across steps by a :class:`GroupPlan`; ``grads`` and ``gp`` are this step's."""

    __slots__ = ("dtype", "params", "grads", "gp", "sizes", "pp", "shapes", "memo")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.params, self.grads, self.memo = dtype, [], [], None

    def seal(self) -> Batch:
        self.gp = array("Q", map(_data_ptr, self.grads))
        self.sizes = array("q", map(_numel, self.params))
        self.pp = array("Q", map(_data_ptr, self.params))
        self.shapes = list(map(_shape, self.params))
        return self

    def with_grads(self, grads: list[Tensor]) -> Batch | None:
        """This step's batch: the same parameters with ``grads``, or None where a
        parameter has moved (``p.data = ...``, ``.to()``), a gradient is not one the
        kernel takes (not contiguous, sparse, or sharing memory with its parameter), or a
        gradient or parameter has another number of entries, dtype, shape or layout at
        the same address (``p.grad.data = ...`` and ``p.data = p.data.t()`` pass torch's
        own checks). A storage shrunk in place under an unchanged address is seen only by
        the native check (``_native``'s ``gather``)."""
        dt = self.dtype
        if not (all(map(_contiguous, grads))
                and array("Q", map(_data_ptr, self.params)) == self.pp
                and array("q", map(_numel, grads)) == self.sizes
                and all(g.dtype is dt for g in grads)
                and all(p.dtype is dt for p in self.params)
                and all(map(_contiguous, self.params))
                and list(map(_shape, self.params)) == self.shapes):
            return None
        gp = array("Q", map(_data_ptr, grads))
        g, p = np.frombuffer(gp, np.uint64), np.frombuffer(self.pp, np.uint64)
        nbytes = np.frombuffer(self.sizes, np.int64).astype(np.uint64) * np.uint64(dt.itemsize)
        if ((g < p + nbytes) & (p < g + nbytes)).any():
            return None  # a gradient in its parameter's memory (``p.grad = p.detach()``)
        return self.for_step(grads, gp)

    def for_step(self, grads: list[Tensor], gp: array) -> Batch:
        """This batch with this step's gradients and their addresses."""
        b = Batch.__new__(Batch)
        b.dtype, b.params, b.grads, b.sizes, b.pp, b.shapes, b.memo = (
            self.dtype, self.params, grads, self.sizes, self.pp, self.shapes, self.memo)
        b.gp = gp
        return b


def split(params: list[Tensor], grads: list[Tensor]) -> tuple[list[Batch], list, list]:
    """Per-dtype batches the kernel can update (dense contiguous CPU float32/float64,
    plain tensors, gradients of the parameter's dtype and size), and the other
    (params, grads). Parameters whose memory overlaps another's, or a gradient's (views
    of one tensor passed as two parameters, ``a.grad = b.detach()``), go to the others:
    the kernel updates its tensors in an order of its own, through pointers it assumes
    apart, where torch's single-tensor step goes through the list in order."""
    batches: dict[torch.dtype, Batch] = {}
    rest_p, rest_g = [], []
    f32, f64 = torch.float32, torch.float64
    fit = [(p.dtype is f32 or p.dtype is f64) and p.is_cpu and type(p) in _PLAIN
           and g.layout == torch.strided and g.dtype is p.dtype and p.is_contiguous()
           and g.is_contiguous() and g.numel() == p.numel()
           for p, g in zip(params, grads)]
    shared = _overlapping(params, grads) if any(fit) else set()
    for p, g, ok in zip(params, grads, fit):
        dt = p.dtype
        if ok and id(p) not in shared:
            b = batches.get(dt)
            if b is None:
                b = batches[dt] = Batch(dt)
            b.params.append(p)
            b.grads.append(g)
        else:
            rest_p.append(p)
            rest_g.append(g)
    return [b.seal() for b in batches.values()], rest_p, rest_g


def _extent(t: Tensor) -> tuple[int, int] | None:
    """The bytes a dense CPU tensor's entries lie in, [first, past the last); None for an
    empty, sparse or non-CPU one (torch's strides are never negative)."""
    if t.layout != torch.strided or not t.is_cpu or t.numel() == 0:
        return None
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


def _overlapping(params: list[Tensor], grads: list[Tensor]) -> set[int]:
    """The ids of the parameters whose memory overlaps another parameter's or any of the
    gradients' (gradients may share memory among themselves: they are read), whether or
    not the kernel takes them."""
    spans = []  # (start, end, parameter's id or None for a gradient)
    for p, g in zip(params, grads):
        for t, pid in ((p, id(p)), (g, None)):
            ext = _extent(t)
            if ext is not None:
                spans.append((*ext, pid))
    spans.sort(key=operator.itemgetter(0))
    out: set[int] = set()
    open_p: list[tuple[int, int]] = []  # (end, id) of the parameters still open
    open_g = 0  # the furthest end of the gradients so far
    for start, end, pid in spans:
        open_p = [(e, i) for e, i in open_p if e > start]
        if pid is None:
            out.update(i for _, i in open_p)
            open_g = max(open_g, end)
        else:
            if open_p or open_g > start:
                out.add(pid)
                out.update(i for _, i in open_p)
            open_p.append((end, pid))
    return out


class GroupPlan:
    """One param group's :func:`split`, kept from step to step so that a step's cost
    hardly grows with the number of tensors: the kernel batches with their pointer
    tables and state columns (:class:`Memo`).

    A step reuses it only if everything it was built from still holds: the same group
    dict and state dict of the optimizer (``load_state_dict`` and ``add_param_group``
    replace them), the same parameter objects in the group's list, the same ones with a
    gradient (frozen, unfrozen, unused parameters), each parameter at the same address
    with the same size, dtype and layout (``p.data = ...``, ``.to(dtype or device)``),
    and each gradient of the parameter's dtype and size, contiguous and dense (its
    address is read again every step: backward allocates new gradients). The state
    columns are checked against the state dicts each step: the same tensor objects, each
    at the address and with the number of entries its pointer table was built with (a
    state tensor replaced in its dict, or changed in place by ``.data = ...``,
    ``.set_()`` or ``.resize_()``, makes the columns be built and checked again).
    Otherwise the group is split again."""

    __slots__ = ("group", "state", "params", "none", "batches", "rest", "pick", "native")

    def __init__(self, group: dict, state: dict, params: list, none: list,
                 batches: list[Batch], rest: list[Tensor]) -> None:
        self.group, self.state, self.params, self.none = group, state, list(params), none
        self.batches, self.rest = batches, rest
        where = {id(p): j for j, p in enumerate(params)}
        # per batch, then the rest: a function picking their gradients from the group's
        self.pick = [_picker([where[id(p)] for p in b.params]) for b in batches]
        self.pick.append(_picker([where[id(p)] for p in rest]))
        for b in batches:
            b.memo = Memo()
        # one batch and nothing else: a step can check and read it in one native call
        self.native = bytes(none) if len(batches) == 1 and not rest else None

    def reuse(self, group: dict, state: dict, params: list, grads: list,
              none: list) -> tuple[list[Batch], list, list] | None:
        """This step's (kernel batches, other params, their grads), or None."""
        if not (group is self.group and state is self.state and none == self.none
                and len(params) == len(self.params)
                and all(map(operator.is_, params, self.params))):
            return None
        out = []
        for b, pick in zip(self.batches, self.pick):
            nb = b.with_grads(pick(grads))
            if nb is None:
                return None
            out.append(nb)
        return out, self.rest, self.pick[-1](grads)


def kept_batches(plans: dict, key: Any, group: dict, state: dict,
                 params: list) -> tuple[list[Batch], list, list] | None:
    """What :func:`plan_group` returns for a kept plan of one kernel batch, checked and
    read in one call of the native extension (``_native``: the same checks as
    :meth:`GroupPlan.reuse`, without a Python call per tensor); None where there is no
    such plan, no extension, or anything changed (the caller then runs
    :func:`plan_group`, which splits the group again if need be)."""
    plan = plans.get(key)
    if plan is None or plan.native is None or group is not plan.group \
            or state is not plan.state:
        return None
    nat = _native.module()
    if nat is None:
        return None
    b = plan.batches[0]
    gp = array("Q", bytes(8 * len(b.params)))
    grads = nat.gather(params, plan.params, plan.native, b.pp, b.sizes, gp, b.dtype.itemsize,
                       b.shapes)
    if grads is None:
        return None
    return [b.for_step(grads, gp)], [], []


def _picker(idx: list[int]) -> Any:
    """A function returning the list of the items at ``idx`` of a sequence."""
    if not idx:
        return lambda seq: []
    get = operator.itemgetter(*idx)
    if len(idx) == 1:
        return lambda seq: [get(seq)]
    if idx == list(range(len(idx))):
        n = len(idx)
        return lambda seq: seq[:n] if len(seq) > n else seq
    return lambda seq: list(get(seq))


def plan_group(plans: dict, key: Any, group: dict, state: dict, params: list,
               grads: list) -> tuple[list[Batch], list, list]:
    """:func:`split` of the parameters of ``group`` with a gradient (``grads``: each
    parameter's, None for none), reusing the plan kept under ``key`` in ``plans`` where
    it still holds (:class:`GroupPlan`)."""
    none = list(map(operator.is_, grads, repeat(None)))
    plan = plans.get(key)
    if plan is not None:
        out = plan.reuse(group, state, params, grads, none)
        if out is not None:
            return out
    ps = [p for p, n in zip(params, none) if not n]
    gs = [g for g, n in zip(grads, none) if not n]
    batches, rest_p, rest_g = split(ps, gs)
    plans[key] = GroupPlan(group, state, params, none, batches, rest_p)
    now = [b.for_step(b.grads, b.gp) for b in batches]
    for b in batches:  # the plan keeps no gradient: backward's next ones reuse the memory
        b.grads, b.gp = [], None
    return now, rest_p, rest_g


def memo_states(opt: Any, group: dict, b: Batch) -> None:
    """Create the state of the batch's parameters that have none (as the step template
    does), unless the memo shows every state dict as it was after the last step.

    Where the batch's parameters are consecutive keys of the state (states are made in the
    group's order: ``Memo.at``), the native extension confirms that by position, without
    hashing a parameter (a tensor's ``__hash__`` is a Python function)."""
    state, m = opt.state, b.memo
    if m is not None and m.sts is not None and m.nstate == len(state):
        if m.empty and not state:
            return
        if _kept_states(state, m, b.params):
            return
        nat = _native.module() if not m.empty and m.at >= 0 else None
        sts = list(map(state.get, b.params))
        if all(map(operator.is_, sts, m.sts)) and (m.empty or all(sts)):
            if nat is not None:  # the state's order changed (an entry popped and put back)
                m.at = _offset(state, b.params)
            return
    opt._init_missing(group, b.params)
    if m is not None:
        m.sts = list(map(state.get, b.params))
        m.nstate, m.empty = len(state), not any(m.sts)
        m.at = _offset(state, b.params)


def states_exist(opt: Any, b: Batch) -> bool:
    """Whether every parameter of the batch has its state: read from the memo (the
    native extension confirms the state dicts by position, without hashing a parameter)
    where it holds, else by looking each parameter up."""
    state, m = opt.state, b.memo
    if m is not None and m.sts is not None and m.nstate == len(state) and _kept_states(
            state, m, b.params):
        return True
    return all(map(state.get, b.params))


def _kept_states(state: dict, m: Memo, params: list) -> bool:
    """Whether ``state`` holds the memo's (non-empty) state dicts of ``params``, confirmed
    natively by position (no parameter hashed); False where that cannot be read so."""
    nat = _native.module() if not m.empty and m.at >= 0 else None
    return nat is not None and nat.states(state, m.at, params, m.sts)


def _offset(state: dict, params: list) -> int:
    """Where ``params`` stand as consecutive keys of ``state``, or -1."""
    if not params:
        return -1
    first = params[0]
    keys = list(state)
    at = next((i for i, k in enumerate(keys) if k is first), -1)
    if at < 0 or len(keys) < at + len(params) or not all(
            map(operator.is_, keys[at:at + len(params)], params)):
        return -1
    return at


def first_nonfinite_in(batches: list[Batch], power: int = 1) -> tuple[Batch, int] | None:
    """The first gradient holding NaN or Inf (or, with ``power`` > 1, an entry at or above
    ``bound(dtype, power)``) over all batches, in one pass, or None."""
    if not batches:
        return None
    ptrs, sizes, codes = array("Q"), array("q"), array("i")
    for b in batches:
        ptrs += b.gp
        sizes += b.sizes
        codes += array("i", [_CHECK_CODES[b.dtype]]) * len(b.params)
    k = int(library().lrk_first_nonfinite(len(ptrs), _addr(ptrs), _addr(sizes), _addr(codes),
                                          torch.get_num_threads(), power))
    if k < 0:
        return None
    for b in batches:
        if k < len(b.params):
            return b, k
        k -= len(b.params)
    return None


def _common_args(opt: Any, batch: Batch, hp: list[float], flags: int,
                 first: list[int] | None) -> tuple[_Args, tuple]:
    """The fields every kernel call sets (tensors, sizes, hyperparameters, flags with
    ``nonfinite="zero"``, the gradient bound, threads); returns them and the arrays they
    point into, which must stay alive until the call."""
    if opt.nonfinite == "zero":
        flags |= F_ZERO
    args = _Args()
    args.n = len(batch.params)
    pp = batch.pp
    firsts = array("b", first) if first is not None else None
    args.p, args.g, args.size = _addr(pp), _addr(batch.gp), _addr(batch.sizes)
    args.first = _addr(firsts) if firsts is not None else None
    for i, v in enumerate(hp):
        args.hp[i] = float(v)
    args.flags = flags
    args.gbound = bound(batch.dtype, opt.grad_power)
    args.nthreads = torch.get_num_threads()
    return args, (pp, firsts)


def _invoke(opt: Any, batch: Batch, args: _Args, keep: tuple) -> None:
    """Run ``opt.kernel``'s entry point for the batch's dtype; ``keep`` (the arrays the
    fields point into) is held until it returns."""
    getattr(library(opt.kernel), f"lrk_{opt.kernel}_{_DTYPES[batch.dtype]}")(
        ctypes.byref(args))
    del keep


def _column(sts: list[dict], k: Any) -> list[Tensor | None]:
    """Each state dict's tensor under ``k`` (a tuple: the first of those names it has)."""
    if isinstance(k, str):
        return list(map(dict.get, sts, repeat(k)))
    return [st[name] if (name := next((x for x in k if x in st), None)) else None
            for st in sts]


def _columns(opt: Any, group: dict[str, Any], batch: Batch, keys: Any, scal: Any) -> Columns:
    """The state columns of one kernel call, built (after ``_kernel_prepare``)."""
    state = opt.state
    ps = batch.params
    c = Columns()
    c.keys = (keys, scal)
    # no entry for a parameter without state (SGD without momentum), as torch
    sts = [state[p] for p in ps] if any(keys) or any(scal) else []
    sc = [_column(sts, k) if k else None for k in scal]
    c.ok, c.first, c.shape = True, None, None
    c.tensors = [(k, col) for k, col in zip(scal, sc) if col is not None]
    if sc[0] is not None:
        dtypes = {t.dtype for col in sc if col is not None for t in col}
        if len(dtypes) > 1 or not dtypes <= {torch.float32, torch.float64} or not all(
                t.is_cpu for col in sc if col is not None for t in col):
            c.ok = False
            c.native = _table(c.tensors, len(sts))
            return c
    c.first = opt._kernel_prepare(group, ps)
    cols = []
    for k in keys:
        col = _column(sts, k) if k else None
        if col is not None:
            for i, t in enumerate(col):
                if t is not None and not t.is_contiguous():  # loaded in another layout
                    for name in ((k,) if isinstance(k, str) else k):
                        if sts[i].get(name) is t:
                            col[i] = sts[i][name] = t.contiguous()
        cols.append(col)
    c.tensors = [(k, col) for k, col in zip(keys, cols) if col is not None] + [
        (k, col) for k, col in zip(scal, sc) if col is not None]
    check_columns(opt, group, batch, sts, c.tensors,
                  tuple(k for k, col in zip(scal, sc) if col is not None))
    c.arrays = [_ptrs(col) if col is not None else None for col in cols]
    c.sc = [_ptrs(col) if col is not None else None for col in sc]
    c.sc_f64 = int(sc[0] is not None and sc[0][0].dtype == torch.float64)
    c.shape = None
    c.native = _table(c.tensors, len(sts))
    if opt.kernel == "adafactor":  # the matrix shape of each tensor (rows 0: a vector)
        c.shape = (array("q", [p.shape[-2] if p.dim() > 1 else 0 for p in ps]),
                   array("q", [p.shape[-1] if p.dim() > 1 else 0 for p in ps]))
    return c


def check_columns(opt: Any, group: dict, batch: Batch, sts: list[dict],
                  named: list[tuple[Any, list]], scalar: tuple = ()) -> None:
    """Refuse, before a kernel reads or writes through their pointers, state tensors of
    another size or dtype than the kernel expects for each parameter (a tensor set by
    hand: the kernel would run past its end). ``named``: (state name, or a tuple of
    alternatives, and its column); names in ``scalar`` hold one entry (``step``)."""
    fn = f"{type(opt).__name__}.step()"
    for key, col in named:
        for i, (p, t) in enumerate(zip(batch.params, col)):
            if t is None:
                continue
            name = key if isinstance(key, str) else next(
                (k for k in key if sts[i].get(k) is t), key[0])
            if key in scalar:
                ok, need = t.numel() == 1, "1 entry"
            elif (shapes := opt._kernel_shapes(group, p, name)) is not None:
                ok = tuple(t.shape) in map(tuple, shapes) and t.dtype == p.dtype
                need = f"shape {' or '.join(str(tuple(x)) for x in shapes)}, {p.dtype}"
            else:  # as torch's own steps, which broadcast one into the other
                ok = t.shape == p.shape and t.dtype == p.dtype
                need = f"shape {tuple(p.shape)}, {p.dtype}"
            if ok and t.device == p.device and not _held(t):
                raise ValueError(
                    f"{fn}: state[{name!r}] of a parameter of shape {tuple(p.shape)} has a "
                    f"storage of {t.untyped_storage().nbytes()} bytes, too small for its "
                    f"{t.numel()} entries (was its storage resized by hand?)")
            if not ok or t.device != p.device:
                raise ValueError(
                    f"{fn}: state[{name!r}] of a parameter of shape {tuple(p.shape)} holds "
                    f"{t.numel()} {t.dtype} entries (shape {tuple(t.shape)}) on {t.device}; "
                    f"the step needs {need} on {p.device} (was it replaced by hand?)")


def _still(c: Columns, sts: list[dict], keys: Any, scal: Any) -> bool:
    """Whether the state dicts still hold the tensors ``c`` was built from."""
    if c.keys != (keys, scal) or None in sts:  # a state dict gone (a restored snapshot)
        return False
    return _holds(sts, c.tensors, c.native)


def _table(named: list[tuple[Any, list]], n: int) -> tuple[tuple | None, list, array]:
    """What :func:`_holds` checks the state dicts against: the names of ``named`` (pairs
    of a state name, or a tuple of alternatives, and its column of tensors, one per state
    dict; None where a name is neither: the native ``still`` reads only those), the
    tensors dict by dict (dict i, name k at ``i * len(named) + k``), and their
    :func:`_marks`."""
    rows = [col[i] for i in range(n) for _, col in named]
    names = tuple(name for name, _ in named)
    if not all(type(name) is str or (type(name) is tuple and all(
            type(x) is str for x in name)) for name in names):
        names = None
    return names, rows, _marks(rows)


def _marks(tensors: list[Tensor | None]) -> array:
    """Each tensor's address and ``numel * 16 + itemsize`` (0, 0 for None): a tensor
    object can change its storage or dtype in place (``.data = ...``, ``.set_()``,
    ``.resize_()``), and the kernel's pointer tables must then be built (and checked)
    again."""
    out = array("Q")
    for t in tensors:
        out.extend((t.data_ptr(), t.numel() * 16 + t.element_size()) if t is not None
                   else (0, 0))
    return out


def _held(t: Tensor) -> bool:
    """Whether ``t`` is a floating-point tensor whose storage holds all its entries (a
    storage can be shrunk in place: ``t.untyped_storage().resize_(...)``)."""
    return t.is_floating_point() and t.untyped_storage().nbytes() >= (
        t.storage_offset() + t.numel()) * t.element_size()


def _holds(sts: list[dict], named: list[tuple[Any, list]], table: tuple) -> bool:
    """Whether the state dicts ``sts`` still hold each column of ``named``, each tensor at
    its address and size (``table``, :func:`_table`'s; natively where it can be read so)."""
    names, rows, marks = table
    if names is not None and type(sts) is list and (nat := _native.module()) is not None:
        return nat.still(sts, names, rows, marks)
    return all(len(col) == len(sts) and all(map(operator.is_, _column(sts, name), col))
               for name, col in named) and _marks(rows) == marks and all(
        _held(t) for t in rows if t is not None)


def launch(opt: Any, group: dict[str, Any], batch: Batch) -> bool:
    """One kernel call updating every tensor of ``batch`` (state already initialised).
    False, changing nothing, where the kernel cannot read the 0-dim state (step...): it
    takes CPU float32 or float64, all alike. The state columns and their pointer tables
    are kept in the batch's memo (a :class:`GroupPlan`'s) while the state dicts hold the
    same tensors."""
    keys, scal, hp, flags = opt._kernel_args(group)
    m = batch.memo
    spec = (tuple(keys), tuple(scal))
    c = m.cols.get(spec) if m is not None else None
    if c is not None and not (m.sts is not None and _still(c, m.sts, *spec)):
        c = None
    if c is None:
        c = _columns(opt, group, batch, keys, scal)
        if m is not None:
            m.cols = {spec: c}
            m.sts = list(map(opt.state.get, batch.params))
            m.nstate, m.empty = len(opt.state), not any(m.sts)
    elif c.ok and c.first is not None and any(c.first):  # buffers made by the last step: now kept
        c.first = opt._kernel_prepare(group, batch.params)
    if not c.ok:
        return False
    args, keep = _common_args(opt, batch, hp, flags, c.first)
    args.s1, args.s2, args.s3 = (_addr(a) if a is not None else None for a in c.arrays)
    args.sc1, args.sc2 = (_addr(a) if a is not None else None for a in c.sc)
    if c.shape is not None:
        args.rows, args.cols = _addr(c.shape[0]), _addr(c.shape[1])
    args.sc_f64 = c.sc_f64
    _invoke(opt, batch, args, (keep, c))
    # it wrote through data pointers: tell autograd about the parameters, as torch's
    # in-place ops would (the state never takes part in a graph)
    bump_versions(batch.params)
    return True


def bump_versions(params: list[Tensor]) -> None:
    """``increment_version`` of each tensor (in one native call where there is one)."""
    nat = _native.module()
    if nat is not None and type(params) is list:
        nat.bump(params)
    else:
        increment_version(params)


class StateColumns:
    """The state tensors of a batch under some names, with their pointer arrays (see
    :func:`state_columns`); ``derived`` is the caller's, rebuilt with the columns."""

    __slots__ = ("sts", "names", "tensors", "arrays", "derived", "named", "native")


def state_columns(opt: Any, batch: Batch, names: tuple, group: dict) -> StateColumns:
    """The state tensors of ``batch``'s parameters under each of ``names`` (a column of
    Nones for a name that is None; a tensor without that entry is None) and their
    pointer arrays, for :func:`call`. Kept in the batch's memo (a :class:`GroupPlan`'s)
    while the state dicts are those the memo holds and hold the same tensors, each at its
    address and size (:func:`_holds`): a step of the learning-rate-free optimizers then
    hashes no tensor."""
    m = batch.memo
    sts = m.sts if m is not None and m.sts is not None else None
    key = ("state_columns", names)
    c = m.cols.get(key) if sts is not None else None
    if c is not None and c.sts is sts and _holds(sts, c.named, c.native):
        return c
    if sts is None:
        sts = list(map(opt.state.get, batch.params))
    c = StateColumns()
    c.sts, c.names, c.derived = sts, names, None
    c.tensors = [None if name is None else _column(sts, name) for name in names]
    c.arrays = [None if col is None else _ptrs(col) for col in c.tensors]
    c.named = [(name, col) for name, col in zip(names, c.tensors) if col is not None]
    check_columns(opt, group, batch, sts, c.named)
    c.native = _table(c.named, len(sts))
    if m is not None and m.sts is sts:
        m.cols[key] = c
    return c


def call(opt: Any, batch: Batch, states: list[list[Tensor | None] | None], hp: list[float],
         flags: int, *, nout: int = 0, first: list[int] | None = None,
         values: list[float] | None = None, ival: int = 1,
         writes_params: bool = False) -> list[float]:
    """One pass of a learning-rate-free kernel over ``batch`` (``opt.kernel``'s library):
    ``states`` are up to four per-tensor state columns (s1..s4: lists of tensors, their
    pointer arrays, or a :class:`StateColumns`), ``values`` one double per
    tensor (tv), ``first`` one flag per tensor. Returns the ``nout`` per-tensor sums the
    pass computes, tensor by tensor (a flat list of ``nout * len(batch.params)``)."""
    args, keep = _common_args(opt, batch, hp, flags, first)
    if isinstance(states, StateColumns):
        states = states.arrays
    cols = [c if c is None or isinstance(c, array) else _ptrs(c) for c in states]
    cols += [None] * (4 - len(cols))
    args.s1, args.s2, args.s3, args.s4 = (_addr(c) if c is not None else None for c in cols)
    tv = array("d", values) if values is not None else None
    args.tv = _addr(tv) if tv is not None else None
    out = array("d", bytes(8 * len(batch.params) * nout)) if nout else None
    args.out = _addr(out) if out is not None else None
    args.ival = ival
    _invoke(opt, batch, args, keep)
    if writes_params:
        bump_versions(batch.params)
    return out.tolist() if out is not None else []
