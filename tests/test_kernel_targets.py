"""The kernels built for a second, baseline target pass the parity tests too.

``-march=native`` lets the compiler vectorise and fuse (FMA) as this CPU allows, so two
CPUs round differently; ``LRKIT_KERNEL_MARCH`` builds for another target (part of the
cache key). Here a baseline build (x86-64-v2: SSE4.2, no AVX, no FMA; armv8-a on arm64)
runs, in a subprocess, the parity checks of three algorithms (elementwise with fused
multiply-adds: Adam; sums over all entries: Prodigy, DoG) against their references and
its kernel against the reference path, within the tolerance both builds must meet.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrkit
from lrkit.optim import _kernel
from optim_helpers import parity_rtol, rel_err, run
from optim_registry import REGISTRY

BASELINE = {"x86_64": "x86-64-v2", "AMD64": "x86-64-v2", "aarch64": "armv8-a",
            "arm64": "armv8-a"}.get(platform.machine())
NAMES = ("Adam", "Prodigy", "DoG")
TESTS = Path(__file__).parent

SCRIPT = """
import json, sys
from lrkit.optim import _kernel
from test_kernel_targets import _errors
out = {"march": _kernel.march(), "mirrors_aten": _kernel.mirrors_aten(),
       "library": str(_kernel._build("adam"))}
out.update({name: _errors(name) for name in sys.argv[1:]})
print(json.dumps(out))
"""


def _errors(name: str) -> list[float]:
    """Relative errors of the kernel path: against the reference package after its 100
    steps, and against lrkit's reference path after 30 (float32, two param groups)."""
    info = REGISTRY[name]
    cfg = info.configs[0]
    ours = run(info.cls, cfg, torch.float32, True, info.steps, impl="kernel")
    ref = run(info.reference_cls(), cfg, torch.float32, True, info.steps)
    path = run(info.cls, cfg, torch.float32, True, 30, impl="reference")
    fast = run(info.cls, cfg, torch.float32, True, 30, impl="kernel")
    return [rel_err(ours, ref), rel_err(fast, path)]


@pytest.mark.skipif(BASELINE is None, reason=f"no baseline target for {platform.machine()}")
def test_parity_holds_with_the_kernels_built_for_a_baseline_target():
    if not _kernel.available():
        pytest.skip("no C++ compiler: the kernels are not built")
    for name in NAMES:
        pytest.importorskip(REGISTRY[name].reference.partition(":")[0])
    env = {**os.environ, "LRKIT_KERNEL_MARCH": BASELINE,
           "PYTHONPATH": os.pathsep.join([str(Path(lrkit.__file__).parents[1]), str(TESTS)])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, *NAMES], env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    baseline = json.loads(proc.stdout.strip().splitlines()[-1])
    assert baseline["march"] == BASELINE
    assert baseline["library"] != str(_kernel._build("adam"))  # its own build
    assert not baseline["mirrors_aten"]  # no FMA there: rounding apart, not bit-exact
    for name in NAMES:
        info = REGISTRY[name]
        native = _errors(name)
        for build, (parity, path) in (("native", native), (BASELINE, baseline[name])):
            assert parity <= parity_rtol(info, torch.float32, info.steps), (name, build)
            assert path <= parity_rtol(info, torch.float32, 30), (name, build)


def test_a_bad_target_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv("LRKIT_KERNEL_MARCH", "native; rm -rf /")
    with pytest.raises(ValueError, match="LRKIT_KERNEL_MARCH must name a compiler target"):
        _kernel.march()
    monkeypatch.setenv("LRKIT_KERNEL_MARCH", "")
    assert _kernel.march() == "native"


@pytest.mark.parametrize("gcc", [True, False])
def test_gcc_builds_take_more_alias_checks(monkeypatch, gcc):
    """With GCC the kernels are built allowing more runtime alias checks (Prodigy's and
    DAdaptAdam's main loops stay scalar under GCC's default); another compiler gets no
    GCC-only flag."""
    seen = []
    assert isinstance(_kernel.is_gcc(), bool)
    monkeypatch.setattr(_kernel, "is_gcc", lambda: gcc)
    monkeypatch.setattr(_kernel, "compiler", lambda: "c++")
    monkeypatch.setattr(_kernel, "compiled", lambda src, name, suffix, args, key: seen.append(
        args) or Path("x.so"))
    _kernel._build("adam")
    flag = f"--param=vect-max-version-for-alias-checks={_kernel._ALIAS_CHECKS}"
    assert (flag in seen[0]) is gcc
