"""Build and call lrkit's multi-tensor C++ kernels (``kernels.cpp``) through ctypes.

The source is compiled with the system C++ compiler (``$CXX``, else g++/c++/clang++; no
torch headers), one library per algorithm on its first use (2-4 seconds each, once per
machine), into ``$LRKIT_CACHE_DIR`` (default ``~/.cache/lrkit``), keyed by a hash of the
source, the flags and the CPU. ``LRKIT_KERNEL_MARCH`` picks the target (default ``native``,
this CPU; e.g. ``x86-64-v2`` or ``armv8-a`` for a baseline build, part of the cache key).
Without a compiler, or with ``LRKIT_NO_KERNEL=1``, ``available()`` is
False and the optimizers run their reference path on CPU (torch's own CPU default):
slower, same results.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
import warnings
from array import array
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

from lrkit.errors import user_stacklevel

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


def cache_dir() -> Path:
    root = os.environ.get("LRKIT_CACHE_DIR")
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lrkit"


def _cpu_id() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CXX") or next(
        (c for c in ("g++", "c++", "clang++") if shutil.which(c)), None)


def march() -> str:
    """The ``-march`` target of the kernels: ``$LRKIT_KERNEL_MARCH`` or ``native``."""
    value = os.environ.get("LRKIT_KERNEL_MARCH", "").strip() or "native"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", value):
        raise ValueError(f"LRKIT_KERNEL_MARCH must name a compiler target such as native or "
                         f"x86-64-v2, got {value!r}")
    return value


def _build(algo: str) -> Path | None:
    """The library of one algorithm ("check": only the non-finite check), built once."""
    compiler = _compiler()
    if compiler is None:
        return None
    flags = [*_FLAGS, f"-march={march()}", f"-DLRK_ONLY_{algo}"]
    key = hashlib.sha256("\0".join(
        [_SRC.read_text(), " ".join(flags), compiler, platform.machine(), _cpu_id()]
    ).encode()).hexdigest()[:16]
    out = cache_dir() / f"lrkit_{algo}_{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *flags, str(_SRC), "-o", tmp], check=True,
                       capture_output=True, text=True, timeout=300)
        os.replace(tmp, out)  # atomic: concurrent builds (pytest -n) are harmless
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


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


class Batch:
    """Tensors of one dtype that one kernel call updates, with their gradient pointers."""

    __slots__ = ("dtype", "params", "grads", "gp", "sizes")

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype, self.params, self.grads = dtype, [], []

    def seal(self) -> Batch:
        self.gp = _ptrs(self.grads)
        self.sizes = array("q", [p.numel() for p in self.params])
        return self


def split(params: list[Tensor], grads: list[Tensor]) -> tuple[list[Batch], list, list]:
    """Per-dtype batches the kernel can update (dense contiguous CPU float32/float64,
    plain tensors), and the other (params, grads)."""
    batches: dict[torch.dtype, Batch] = {}
    rest_p, rest_g = [], []
    f32, f64 = torch.float32, torch.float64
    for p, g in zip(params, grads):
        dt = p.dtype
        if ((dt is f32 or dt is f64) and p.is_cpu and type(p) in _PLAIN
                and g.layout == torch.strided and p.is_contiguous() and g.is_contiguous()):
            b = batches.get(dt)
            if b is None:
                b = batches[dt] = Batch(dt)
            b.params.append(p)
            b.grads.append(g)
        else:
            rest_p.append(p)
            rest_g.append(g)
    return [b.seal() for b in batches.values()], rest_p, rest_g


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
    pp = _ptrs(batch.params)
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


def launch(opt: Any, group: dict[str, Any], batch: Batch) -> bool:
    """One kernel call updating every tensor of ``batch`` (state already initialised).
    False, changing nothing, where the kernel cannot read the 0-dim state (step...): it
    takes CPU float32 or float64, all alike."""
    state = opt.state
    keys, scal, hp, flags = opt._kernel_args(group)
    # no entry for a parameter without state (SGD without momentum), as torch
    sts = [state[p] for p in batch.params] if any(keys) or any(scal) else []
    sc = [[st[k] for st in sts] if k else None for k in scal]
    if sc[0] is not None:
        dtypes = {t.dtype for col in sc if col is not None for t in col}
        if len(dtypes) > 1 or not dtypes <= {torch.float32, torch.float64} or not all(
                t.is_cpu for col in sc if col is not None for t in col):
            return False
    ps = batch.params
    first = opt._kernel_prepare(group, ps)
    cols = []
    for k in keys:
        if k is None:
            cols.append(None)
            continue
        col = []
        for st in sts:
            name = k if isinstance(k, str) else next((x for x in k if x in st), None)
            t = st[name] if name else None
            if t is not None and not t.is_contiguous():  # loaded in another layout
                t = st[name] = t.contiguous()
            col.append(t)
        cols.append(_ptrs(col))
    args, keep = _common_args(opt, batch, hp, flags, first)
    scp = [_ptrs(x) if x is not None else None for x in sc]
    args.s1, args.s2, args.s3 = (_addr(c) if c is not None else None for c in cols)
    args.sc1, args.sc2 = (_addr(c) if c is not None else None for c in scp)
    if opt.kernel == "adafactor":  # the matrix shape of each tensor (rows 0: a vector)
        nrows = array("q", [p.shape[-2] if p.dim() > 1 else 0 for p in ps])
        ncols = array("q", [p.shape[-1] if p.dim() > 1 else 0 for p in ps])
        args.rows, args.cols = _addr(nrows), _addr(ncols)
    args.sc_f64 = int(sc[0] is not None and sc[0][0].dtype == torch.float64)
    _invoke(opt, batch, args, keep)
    # it wrote through data pointers: tell autograd about the parameters, as torch's
    # in-place ops would (the state never takes part in a graph)
    increment_version(ps)
    return True


def call(opt: Any, batch: Batch, states: list[list[Tensor | None] | None], hp: list[float],
         flags: int, *, nout: int = 0, first: list[int] | None = None,
         values: list[float] | None = None, ival: int = 1,
         writes_params: bool = False) -> list[float]:
    """One pass of a learning-rate-free kernel over ``batch`` (``opt.kernel``'s library):
    ``states`` are up to four per-tensor state columns (s1..s4), ``values`` one double per
    tensor (tv), ``first`` one flag per tensor. Returns the ``nout`` per-tensor sums the
    pass computes, tensor by tensor (a flat list of ``nout * len(batch.params)``)."""
    args, keep = _common_args(opt, batch, hp, flags, first)
    cols = [_ptrs(c) if c is not None else None for c in states]
    cols += [None] * (4 - len(cols))
    args.s1, args.s2, args.s3, args.s4 = (_addr(c) if c is not None else None for c in cols)
    tv = array("d", values) if values is not None else None
    args.tv = _addr(tv) if tv is not None else None
    out = array("d", bytes(8 * len(batch.params) * nout)) if nout else None
    args.out = _addr(out) if out is not None else None
    args.ival = ival
    _invoke(opt, batch, args, keep)
    if writes_params:
        increment_version(batch.params)
    return out.tolist() if out is not None else []
