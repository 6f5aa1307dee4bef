"""Time one optimizer step: every lrkit optimizer against its reference in the reference's
fastest mode on this machine, in one process.

    python benchmarks/optim_step.py            # full: median of 15 steps after 3 warm-up
    python benchmarks/optim_step.py --quick    # median of 9 steps after 2 warm-up
    python benchmarks/optim_step.py --std-sqrt # kernels with std::sqrt instead of torch's

Cases: (a) 10M float32 parameters in 100 tensors of 400x250, (b) 1M in 1000 tensors of
40x25. Gradients are fixed random tensors (no backward pass is timed). Each lrkit
optimizer runs as a user gets it: impl="auto", nonfinite="raise" (so every step includes
the pass over the gradients that looks for NaN/Inf); the "check" column is that pass
alone, and the "zero" columns the same optimizer with nonfinite="zero", which needs no
separate pass (the kernel zeroes NaN/Inf entries as it reads them). The reference is the
torch.optim namesake with fused=True where torch has a fused CPU kernel, else
foreach=True, whichever is faster; for Lion, lion-pytorch (the only mode it has).
Effective GB/s counts the minimal bytes each algorithm must move per parameter (e.g. 28
for Adam: read p, g, m, v; write p, m, v); "copy" is a plain copy of as many float32
values in one tensor (8 bytes per element: read and write), the ceiling.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
if "--std-sqrt" in sys.argv:
    os.environ["LRKIT_KERNEL_SQRT"] = "std"

from lrkit.optim import REGISTRY, _kernel  # noqa: E402

# minimal bytes per float32 parameter for the benchmarked configuration
BYTES = {"SGD": 20, "Adagrad": 20, "Adadelta": 28, "RMSprop": 20, "Adam": 28, "AdamW": 28,
         "NAdam": 28, "RAdam": 28, "Adamax": 28, "Lion": 20, "Adafactor": 12}
CONFIG = {"SGD": {"lr": 1e-3, "momentum": 0.9}}  # the others: their defaults
CASES = {"a": (100, (400, 250)), "b": (1000, (40, 25))}


def tensors(count, shape, seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(shape, generator=g)) for _ in range(count)]
    for p in params:
        p.grad = torch.randn(shape, generator=g) * 1e-2
    return params


def timed(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def copy_time(n, warmup, reps):
    """A plain copy of n float32 values (one tensor; foreach_copy_ over many small tensors
    is far slower on CPU, so it would be no ceiling)."""
    src, dst = torch.randn(n), torch.empty(n)
    return statistics.median(timed(lambda: dst.copy_(src), warmup, reps))


def reference_step(info, count, shape):
    """The reference's fastest mode here: (label, step function)."""
    cls = info.reference_cls()
    cfg = CONFIG.get(info.name, {})
    modes = [("lion-pytorch", {})] if info.name == "Lion" else (
        [("fused", {"fused": True}), ("foreach", {"foreach": True})]
        if info.cls.torch_fused else [("foreach", {"foreach": True})])
    best = None
    for label, kw in modes:
        opt = cls(tensors(count, shape, 1), **cfg, **kw)
        t = statistics.median(timed(opt.step, 2, 5))
        if best is None or t < best[0]:
            best = (t, label, opt)
        else:
            del opt
        gc.collect()
    return best[1], best[2].step


def bench(names, case, warmup, reps):
    count, shape = CASES[case]
    n = count * shape[0] * shape[1]
    copy = copy_time(n, warmup, reps)
    rows = []
    adam_gbs = None
    for name in names:
        info = REGISTRY[name]
        ours = info.cls(tensors(count, shape, 1), **CONFIG.get(name, {}))
        grads = [p.grad for g in ours.param_groups for p in g["params"]]
        label, theirs = reference_step(info, count, shape)
        t_ours, t_ref, t_zero = [], [], []
        for _ in range(warmup):
            ours.step()
            theirs()
        for _ in range(reps):  # interleaved, so drifting machine load hits all alike
            t_ours += timed(ours.step, 0, 1)
            t_ref += timed(theirs, 0, 1)
            ours.nonfinite = "zero"  # no separate pass: the kernel zeroes NaN/Inf as it reads
            t_zero += timed(ours.step, 0, 1)
            ours.nonfinite = "raise"
        params = [p for g in ours.param_groups for p in g["params"]]
        batches = _kernel.split(params, grads)[0] if _kernel.available() else []
        check = statistics.median(timed(  # the pass as the step makes it
            lambda b=batches, g=grads: _kernel.first_nonfinite_in(b) if b
            else _kernel.first_nonfinite(g), 1, reps))
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        gbs = BYTES[name] * n / mo / 1e9
        ref_gbs = BYTES[name] * n / mr / 1e9
        if name == "Adam":
            adam_gbs = ref_gbs
        mz = statistics.median(t_zero)
        rows.append((name, label, n / mo / 1e6, gbs, n / mr / 1e6, ref_gbs, mr / mo,
                     check * 1e3, check / mo, n / mz / 1e6, mr / mz))
        del ours, theirs, grads, params, batches
        gc.collect()
    return n, copy, rows, adam_gbs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="median of 9 steps, 2 warm-up")
    ap.add_argument("--only", nargs="*", help="optimizer names (default: all)")
    ap.add_argument("--case", choices=["a", "b", "both"], default="both")
    ap.add_argument("--std-sqrt", action="store_true",
                    help="kernels take std::sqrt (correctly rounded) instead of torch's")
    args = ap.parse_args(argv)
    warmup, reps = (2, 9) if args.quick else (3, 15)
    names = args.only or list(REGISTRY)
    for name in names:  # build the kernels outside the timings
        if REGISTRY[name].cls.kernel:
            _kernel.library(REGISTRY[name].cls.kernel)
    sqrt = "torch's sqrt" if _kernel.TORCH_SQRT else "std::sqrt"
    print(f"# {datetime.date.today()}  {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, kernel {'on' if _kernel.available() else 'OFF'} "
          f"({sqrt}); median of {reps} steps; load average {os.getloadavg()[0]:.2f}")
    for case in (["a", "b"] if args.case == "both" else [args.case]):
        n, copy, rows, adam_gbs = bench(names, case, warmup, reps)
        count, shape = CASES[case]
        print(f"\n## case ({case}): {n / 1e6:g}M float32 params in {count} tensors of "
              f"{shape[0]}x{shape[1]}; copy ceiling {8 * n / copy / 1e9:.1f} GB/s")
        print("| optimizer | reference mode | lrkit Mparam/s | lrkit GB/s | ref Mparam/s | "
              "ref GB/s | lrkit / ref | check ms | check / step | zero: Mparam/s | "
              "zero / ref |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, label, mo, gbs, mr, rgbs, ratio, check, frac, mz, rz in rows:
            print(f"| {name} | {label} | {mo:.0f} | {gbs:.1f} | {mr:.0f} | {rgbs:.1f} | "
                  f"{ratio:.2f}x | {check:.2f} | {frac:.0%} | {mz:.0f} | {rz:.2f}x |")
        if adam_gbs:
            worst = min(r[3] for r in rows)
            print(f"\ntorch Adam ({next(r[1] for r in rows if r[0] == 'Adam')}) reaches "
                  f"{adam_gbs:.1f} GB/s; slowest lrkit optimizer {worst:.1f} GB/s "
                  f"({worst / adam_gbs:.2f}x of it)")
    print(f"\n# load average at the end {os.getloadavg()[0]:.2f}")
    return 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    raise SystemExit(main())
