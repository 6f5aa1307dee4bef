"""Every fast path (lrkit's kernel, torch's foreach and fused) equals the reference path."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lrkit.optim import _kernel
from optim_helpers import CASES, INFOS, case_id, parity_rtol, rel_err, run

PATHS = [(i, c, impl) for i, c in CASES for impl in i.impls()]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("info,cfg,impl", PATHS,
                         ids=[f"{i.name}-{case_id(c)}-{m}" for i, c, m in PATHS])
def test_fast_path_equals_reference(info, cfg, impl, dtype):
    if impl == "kernel" and not _kernel.available():
        pytest.skip("no C++ compiler: the kernel is not built")
    ref = run(info.cls, cfg, dtype, True, 30, impl="reference")
    fast = run(info.cls, cfg, dtype, True, 30, impl=impl)
    # The kernel mirrors ATen's x86 CPU arithmetic operation by operation (FMA where
    # ATen's vectorised kernels use it, MKL's square root): there it is bit-exact.
    if impl == "kernel" and _kernel.mirrors_aten() and info.cls.kernel_exact:
        assert all(torch.equal(a, b) for a, b in zip(fast, ref))
    else:  # other targets, torch's own foreach/fused kernels: rounding apart
        assert rel_err(fast, ref) <= parity_rtol(info, dtype, 30)


@st.composite
def drawn(draw):
    info = draw(st.sampled_from([i for i in INFOS if i.impls()]))
    cfg = {k: draw(st.sampled_from(v)) for k, v in info.space.items() if draw(st.booleans())}
    try:
        info.cls([torch.nn.Parameter(torch.zeros(1))], **cfg)
    except ValueError:
        cfg = {}
    return info, cfg, draw(st.sampled_from(info.impls()))


@given(drawn())
@settings(max_examples=40)
def test_random_arguments_fast_equals_reference(case):
    info, cfg, impl = case
    if impl == "kernel" and not _kernel.available():
        return
    ref = run(info.cls, cfg, torch.float64, False, 8, impl="reference")
    fast = run(info.cls, cfg, torch.float64, False, 8, impl=impl)
    assert rel_err(fast, ref) <= 1e-12


def test_kernel_takes_large_and_many_tensors_across_threads():
    """Chunking (16384), blocks (512) and threads never change a bit."""
    if not _kernel.available():
        pytest.skip("no C++ compiler")
    torch.manual_seed(0)
    shapes = [(40001,), (3, 17000), (7,), (1,)] + [(5, 3)] * 50
    threads = torch.get_num_threads()
    try:
        for name in ("Adam", "Adadelta", "SGD", "Lion"):
            info = next(i for i in INFOS if i.name == name)
            out = {}
            for impl, nt in (("reference", 1), ("kernel", 1), ("kernel", 2)):
                torch.set_num_threads(nt)
                ps = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator()
                                                     .manual_seed(k))) for k, s in
                      enumerate(shapes)]
                opt = info.cls(ps, **info.configs[-1], impl=impl)
                for s in range(3):
                    for p in ps:
                        p.grad = torch.sin(3 * p.detach() + s)
                    opt.step()
                out[impl, nt] = ps
            for key in (("kernel", 1), ("kernel", 2)):
                same = all(torch.equal(a, b) for a, b in zip(out[key], out["reference", 1]))
                assert same or not _kernel.mirrors_aten(), (name, key)
                assert rel_err(out[key], out["reference", 1]) <= 1e-6
    finally:
        torch.set_num_threads(threads)


def test_kernel_falls_back_per_tensor():
    """Tensors the kernel cannot take (bfloat16, non-contiguous) run the other path in
    the same step."""
    if not _kernel.available():
        pytest.skip("no C++ compiler")
    base = torch.randn(6, 4)
    ps = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(base.t()),
          torch.nn.Parameter(torch.randn(3).bfloat16())]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    a = INFOS[4].cls(ps, lr=0.1, impl="kernel")
    b = INFOS[4].cls(qs, lr=0.1, impl="reference")
    for _ in range(3):
        for p, q in zip(ps, qs):
            p.grad = torch.ones_like(p)
            q.grad = torch.ones_like(q)
        a.step()
        b.step()
    assert all(torch.equal(p, q) for p, q in zip(ps, qs))


@pytest.mark.parametrize("name", ["Adam", "NAdam", "Adagrad"])
def test_kernel_reads_float64_step_counters(name):
    """With float64 as the default dtype torch keeps ``step`` (and NAdam's mu_product) in
    float64; the kernel reads them as such."""
    info = next(i for i in INFOS if i.name == name)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        ref = run(info.cls, info.configs[-1], torch.float64, False, 10, impl="reference")
        fast = run(info.cls, info.configs[-1], torch.float64, False, 10, impl="auto")
    finally:
        torch.set_default_dtype(old)
    assert rel_err(fast, ref) <= 1e-12


def test_kernel_bumps_version_counters_like_inplace_ops():
    """Autograd still notices that a step changed a tensor saved for backward."""
    info = next(i for i in INFOS if i.name == "Adam")
    for impl in ("reference", "kernel"):
        w = torch.nn.Parameter(torch.randn(5))
        opt = info.cls([w], lr=0.1, impl=impl)
        loss = (w * w).sum()  # saves w for backward
        w.grad = torch.ones(5)
        before = w._version
        opt.step()
        assert w._version > before
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
