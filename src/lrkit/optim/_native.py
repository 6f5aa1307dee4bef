"""Build and load ``native.cpp``: the per-step bookkeeping of a kept kernel plan (the
gradients' addresses, the identity of the state tensors, the version counters) read in
C++ rather than one Python call per tensor.

Unlike the kernels (``kernels.cpp``, plain C through ctypes), this is a Python extension
module compiled against the installed torch's headers and the interpreter's (about 10
seconds, once per machine, torch and Python version), into the kernels' cache directory
(``lrkit.optim._build.cache_dir()``). It changes no value: each function answers what
the Python code it replaces answers, or says it cannot, and the caller then runs that
code. Where it cannot be built (no compiler, no ``Python.h``), or with
``LRKIT_NO_NATIVE=1`` (or ``LRKIT_NO_KERNEL=1``), ``module()`` is None and the optimizers
take the Python path: same results, about 0.3-0.5 us more per tensor and step.
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import platform
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Any

import torch

from lrkit.optim._build import compiled, compiler

_SRC = Path(__file__).with_name("native.cpp")
_NAME = "lrkit_native"
_state: dict[str, Any] = {}
_lock = threading.Lock()


def _flags() -> list[str] | None:
    """The compiler's flags, or None where a header it needs is missing."""
    from torch.utils import cpp_extension

    py_include = sysconfig.get_paths().get("include") or ""
    if not (Path(py_include) / "Python.h").exists():
        return None
    torch_lib = str(Path(torch.__file__).parent / "lib")
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return ["-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{py_include}", *(f"-I{p}" for p in cpp_extension.include_paths()),
            f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}",
            "-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]


def _build() -> Path | None:
    flags = _flags()
    if compiler() is None or flags is None:
        return None
    return compiled(_SRC, _NAME, sysconfig.get_config_var("EXT_SUFFIX") or ".so",
                    ["{src}", "-o", "{out}", *flags],
                    [platform.machine(), sys.version, torch.__version__,
                     str(getattr(torch.version, "git_version", "")), torch.__file__],
                    timeout=600)


def _load(path: Path) -> Any:
    loader = importlib.machinery.ExtensionFileLoader(_NAME, str(path))
    spec = importlib.util.spec_from_file_location(_NAME, str(path), loader=loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def module() -> Any:
    """The loaded extension (functions ``gather``, ``still``, ``states``, ``bump``), built on first
    use; None where it cannot be built or is switched off. ``error()`` says why a build
    failed."""
    if "mod" in _state:
        return _state["mod"]
    with _lock:
        if "mod" in _state:
            return _state["mod"]
        mod = None
        off = any(os.environ.get(v, "") not in ("", "0")
                  for v in ("LRKIT_NO_NATIVE", "LRKIT_NO_KERNEL"))
        if not off:
            try:
                path = _build()
                mod = _load(path) if path is not None else None
                if path is None:
                    _state["error"] = "no C++ compiler or no Python.h"
            except (OSError, ImportError, subprocess.SubprocessError) as exc:
                _state["error"] = str(getattr(exc, "stderr", "") or exc)[-2000:]
        _state["mod"] = mod
        return mod


def error() -> str | None:
    """Why the extension could not be built or loaded (None if it was, or was not tried)."""
    return _state.get("error")
