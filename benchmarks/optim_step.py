"""Time one optimizer step: every lrkit optimizer against its reference in the reference's
fastest mode on this machine, in one process; the learning-rate-free and schedule-free ones
against their authors' packages.

    python benchmarks/optim_step.py              # full: median of 15 steps after 3 warm-up
    python benchmarks/optim_step.py --quick      # median of 9 steps after 2 warm-up
    python benchmarks/optim_step.py --torch-sqrt # kernels with torch's (MKL's) square root
    python benchmarks/optim_step.py --case c d   # the training step, the Scheduler
    python benchmarks/optim_step.py --case e     # where the NaN/Inf check runs
    python benchmarks/optim_step.py --case c --steady-heap  # (c) without page faults

Cases: (a) 10M float32 parameters in 100 tensors of 400x250, (b) 1M in 1000 tensors of
40x25: the step alone, gradients are fixed random tensors (no backward pass is timed).
(c) a whole training step (zero_grad, forward, backward, step) of a 10.5M-parameter MLP,
lrkit's Adam at its defaults against torch's fused Adam. (d) ``lrkit.Scheduler.step()``
per call on 10 param groups, each schedule family (5% warmup) against torch's closest
scheduler (without warmup). (e) the NaN/Inf check of case (c)'s gradients, as the
post-accumulate-grad hooks run it while backward produces each large gradient
(``lrkit.optim._gradwatch``), against one pass over all of them after backward. Each lrkit
optimizer runs as a user gets it: impl="auto", nonfinite="raise" (so every step includes
the pass over the gradients that looks for NaN/Inf); the "check" column is that pass
alone, and the "zero" columns the same optimizer with nonfinite="zero", which needs no
separate pass (the kernel zeroes NaN/Inf entries as it reads them). The reference is the
torch.optim namesake with fused=True where torch has a fused CPU kernel, else
foreach=True, whichever is faster; for Lion, lion-pytorch (the only mode it has); for
Prodigy, DAdaptAdam/DAdaptSGD, DoG/LDoG and the schedule-free pair the authors' packages
(prodigyopt, dadaptation, dog-optimizer, schedulefree with foreach=True or False, whichever
is faster), at their default arguments. SLS is not timed (a step is a line search: its
cost is the closure's forward passes).
Effective GB/s counts the minimal bytes each algorithm must move per parameter (e.g. 28
for Adam: read p, g, m, v; write p, m, v; see BYTES); "copy" is a plain copy of as many
float32 values in one tensor (8 bytes per element: read and write), the ceiling; "/ Adam"
is the effective GB/s over torch's fused Adam's in the same run.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import gc
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test registry
if "--torch-sqrt" in sys.argv:
    os.environ["LRKIT_KERNEL_SQRT"] = "torch"

from lrkit import Scheduler  # noqa: E402
from lrkit.optim import _kernel  # noqa: E402
from lrkit.schedules import FAMILIES, family  # noqa: E402
from optim_registry import REGISTRY  # noqa: E402

# minimal bytes per float32 parameter for the benchmarked configuration. The
# learning-rate-free ones need sums over every parameter before the update: Prodigy's
# update needs the new d, so it reads p, m, v again (pass 1: read g, p, p0, s, m, v, write
# s, m, v; pass 2: read p, m, v, write p: 52); DoG's needs the new step size (read p, x0,
# g; then read p, g, write p: 24); D-Adaptation's update needs only the old d: one pass
# (DAdaptAdam: read g, p, s, m, v, write p, s, m, v: 36; DAdaptSGD: read g, p, s, x0,
# write p, s: 24). Schedule-free: read g, y, z (, v), write y, z (, v).
BYTES = {"SGD": 20, "Adagrad": 20, "Adadelta": 28, "RMSprop": 20, "Adam": 28, "AdamW": 28,
         "NAdam": 28, "RAdam": 28, "Adamax": 28, "Lion": 20, "Adafactor": 12,
         "Prodigy": 52, "DAdaptAdam": 36, "DAdaptSGD": 24, "DoG": 24, "LDoG": 24,
         "ScheduleFreeAdamW": 28, "ScheduleFreeSGD": 20}
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
    package = info.reference.partition(":")[0]
    if not package.startswith("torch"):
        modes = [(f"{package} foreach", {"foreach": True}), (package, {"foreach": False})] \
            if "schedule_free" in info.tags else [(package, {})]
    else:
        modes = [("fused", {"fused": True}), ("foreach", {"foreach": True})] \
            if info.cls.torch_fused else [("foreach", {"foreach": True})]
    if info.name == "Lion":
        modes = [("lion-pytorch", {})]
    best = None
    for label, kw in modes:
        opt = cls(tensors(count, shape, 1), **cfg, **kw)
        if "schedule_free" in info.tags:
            opt.train()  # schedulefree's optimizers start in eval mode
        t = statistics.median(timed(opt.step, 2, 5))
        if best is None or t < best[0]:
            best = (t, label, opt)
        else:
            del opt
        gc.collect()
    return best[1], best[2].step


def adam_fused_gbs(count, shape, n, warmup, reps):
    """torch's fused Adam, the yardstick of effective GB/s."""
    opt = torch.optim.Adam(tensors(count, shape, 1), fused=True)
    t = statistics.median(timed(opt.step, warmup, reps))
    return BYTES["Adam"] * n / t / 1e9


def bench(names, case, warmup, reps):
    count, shape = CASES[case]
    n = count * shape[0] * shape[1]
    copy = copy_time(n, warmup, reps)
    rows = []
    adam_gbs = None if "Adam" in names else adam_fused_gbs(count, shape, n, warmup, reps)
    adam_label = "fused"
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
            adam_gbs, adam_label = ref_gbs, label
        mz = statistics.median(t_zero)
        rows.append((name, label, n / mo / 1e6, gbs, n / mr / 1e6, ref_gbs, mr / mo,
                     check * 1e3, check / mo, n / mz / 1e6, mr / mz))
        del ours, theirs, grads, params, batches
        gc.collect()
    return n, copy, rows, adam_gbs, adam_label


def mlp(seed):
    torch.manual_seed(seed)
    dims = (1536, 2048, 2048, 1536, 10)
    layers = []
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(dims) - 2 else [])
    return torch.nn.Sequential(*layers)


def training_step(warmup, reps, steady=False):
    """(c): lrkit's Adam at its defaults (NaN/Inf check included) against torch's fused Adam
    and against lrkit with nonfinite="zero", whole steps, interleaved. Forward + backward
    and the step are timed apart: at the defaults the check is a pass of its own inside
    the step; with ``LRKIT_CHECK_IN_BACKWARD=1`` the large gradients are checked in
    backward's hooks (``lrkit.optim._gradwatch``), and its cost moves to the first."""
    x = torch.randn(32, 1536, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))

    def adam(check_in_backward):
        """lrkit's Adam built with LRKIT_CHECK_IN_BACKWARD set so (whatever the shell's)."""
        def make(ps):
            before = os.environ.get("LRKIT_CHECK_IN_BACKWARD")
            os.environ["LRKIT_CHECK_IN_BACKWARD"] = check_in_backward
            try:
                return REGISTRY["Adam"].cls(ps)
            finally:
                if before is None:
                    del os.environ["LRKIT_CHECK_IN_BACKWARD"]
                else:
                    os.environ["LRKIT_CHECK_IN_BACKWARD"] = before
        return make

    runs = {}
    for label, make in (("lrkit Adam (defaults)", adam("0")),
                        ("lrkit Adam, check in backward's hooks", adam("1")),
                        ("lrkit Adam nonfinite='zero'",
                         lambda ps: REGISTRY["Adam"].cls(ps, nonfinite="zero")),
                        ("torch Adam fused", lambda ps: torch.optim.Adam(ps, fused=True))):
        model = mlp(0)
        opt = make(model.parameters())

        def step(model=model, opt=opt):
            t0 = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            t1 = time.perf_counter()
            opt.step()
            return t1 - t0, time.perf_counter() - t1
        runs[label] = step
    n = sum(p.numel() for p in mlp(0).parameters())
    times = {k: [] for k in runs}
    faults = {k: 0 for k in runs}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    for _ in range(reps):
        for k, fn in runs.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            times[k].append(fn())
            faults[k] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    ref = statistics.median(a + b for a, b in times["torch Adam fused"])
    print(f"\n## case (c): a training step of a {n / 1e6:.1f}M-parameter MLP (batch 32), "
          f"forward + backward + step{'; heap kept (--steady-heap)' if steady else ''}")
    print("| optimizer | ms per step | forward + backward ms | step ms | steps/s "
          "| / torch fused | page faults per step |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for k, ts in times.items():
        m = statistics.median(a + b for a, b in ts)
        fb = statistics.median(a for a, _ in ts)
        st = statistics.median(b for _, b in ts)
        print(f"| {k} | {m * 1e3:.2f} | {fb * 1e3:.2f} | {st * 1e3:.2f} | {1 / m:.0f} "
              f"| {ref / m:.2f}x | {faults[k] / reps:.0f} |")


def steady_heap() -> bool:
    """glibc only: keep freed memory in the heap (no trimming, no mmap per allocation),
    so that backward's fresh gradient buffers do not page-fault (4 KiB each, zeroed by
    the kernel). Whether they do otherwise depends on the process's allocation history,
    not on the optimizer: 200 to 9,700 faults per step of case (c) were seen in one
    session for the same configuration (2-10 ms of a 20 ms step)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 1 << 30)
                    and libc.mallopt(m_mmap_threshold, 1 << 30))
    except (OSError, AttributeError):
        return False


def check_placement(warmup, reps):
    """(e): the NaN/Inf check of a training step's gradients, in hooks during backward
    (each large gradient as it is produced) against one pass after backward."""
    from lrkit.optim import _gradwatch

    x = torch.randn(32, 1536, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (32,), generator=torch.Generator().manual_seed(1))
    model = mlp(0)
    in_hooks: list[float] = []

    def hook(p):
        t = time.perf_counter()
        _kernel.first_nonfinite([p.grad])
        in_hooks.append(time.perf_counter() - t)
    big = [p for p in model.parameters() if p.numel() >= _gradwatch.MIN_NUMEL]
    handles = [p.register_post_accumulate_grad_hook(hook) for p in big]
    per_step, after = [], []
    for k in range(warmup + reps):
        in_hooks.clear()
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        grads = [p.grad for p in model.parameters()]
        t = time.perf_counter()
        _kernel.first_nonfinite(grads)
        if k >= warmup:
            after.append(time.perf_counter() - t)
            per_step.append(sum(in_hooks))
    for h in handles:
        h.remove()
    n = sum(p.numel() for p in model.parameters())
    print(f"\n## case (e): the NaN/Inf check of case (c)'s {n / 1e6:.1f}M gradients "
          f"({len(big)} tensors hooked)")
    print("| where | ms per step | GB/s read |")
    print("|---|---:|---:|")
    for label, ts in (("hooks, during backward", per_step), ("one pass after backward",
                                                             after)):
        m = statistics.median(ts)
        print(f"| {label} | {m * 1e3:.2f} | {4 * n / m / 1e9:.1f} |")


T_SCHED = 10**6
TORCH_SCHED = {  # the closest torch scheduler to each family (no warmup: the cheaper one)
    "constant": ("ConstantLR", lambda o: torch.optim.lr_scheduler.ConstantLR(o, 1.0, 0)),
    "cosine": ("CosineAnnealingLR",
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_SCHED)),
    "linear": ("LinearLR", lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.0, T_SCHED)),
    "one_cycle": ("OneCycleLR (momentum too)", lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, 0.1, total_steps=T_SCHED)),
    "wsd": ("LambdaLR", lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda n: 1.0 if n < 0.8 * T_SCHED else (T_SCHED - n) / (0.2 * T_SCHED))),
    "step_based": ("StepLR", lambda o: torch.optim.lr_scheduler.StepLR(o, T_SCHED // 4, 0.5)),
    "exponential": ("ExponentialLR",
                    lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.999995)),
    "time_based": ("LambdaLR", lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda n: 1 / (1 + 1e-4 * n))),
    "inverse_sqrt": ("LambdaLR", lambda o: torch.optim.lr_scheduler.LambdaLR(
        o, lambda n: (1000 / max(n, 1000)) ** 0.5)),
}


def scheduler_step(reps):
    """(d): Scheduler.step() per call, 10 param groups, blocks of 200 calls interleaved."""
    import warnings

    def groups():
        ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(10)]
        return torch.optim.SGD([{"params": [p]} for p in ps], lr=0.1, momentum=0.9)

    def block(fn, k=200):
        t = time.perf_counter()
        for _ in range(k):
            fn()
        return (time.perf_counter() - t) / k

    print("\n## case (d): Scheduler.step() per call, 10 param groups "
          f"(median of {reps} blocks of 200 calls, interleaved)")
    print("| family (5% warmup) | torch scheduler | lrkit us | torch us | lrkit / torch |")
    print("|---|---|---:|---:|---:|")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "lr_scheduler.step() before optimizer.step()"
        for name in FAMILIES:
            extra = {"momentum": family("one_cycle", 0.95, T_SCHED, 0.05)} \
                if name == "one_cycle" else {}
            ours = Scheduler(groups(), lr=family(name, 0.1, T_SCHED, 0.05), **extra)
            label, make = TORCH_SCHED[name]
            theirs = make(groups())
            a, b = [], []
            for _ in range(reps):
                a.append(block(ours.step))
                b.append(block(theirs.step))
            ma, mb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
            print(f"| {name} | {label} | {ma:.1f} | {mb:.1f} | {ma / mb:.2f}x |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="median of 9 steps, 2 warm-up")
    ap.add_argument("--only", nargs="*", help="optimizer names (default: all)")
    ap.add_argument("--case", nargs="*", choices=["a", "b", "c", "d", "e", "both"],
                    default=["a", "b", "c", "d"])
    ap.add_argument("--torch-sqrt", action="store_true",
                    help="kernels take torch's (MKL's) square root: bit for bit torch's "
                    "single-tensor results, slower")
    ap.add_argument("--steady-heap", action="store_true",
                    help="case (c) with glibc's heap trimming off (see steady_heap): the "
                    "optimizers compared without the page faults of fresh gradients")
    args = ap.parse_args(argv)
    warmup, reps = (2, 9) if args.quick else (3, 15)
    cases = ["a", "b"] if args.case == ["both"] else args.case
    names = args.only or [n for n, i in REGISTRY.items() if "needs_closure" not in i.tags]
    for name in names:  # build the kernels outside the timings
        if REGISTRY[name].cls.kernel:
            _kernel.library(REGISTRY[name].cls.kernel)
    sqrt = "torch's sqrt" if _kernel.TORCH_SQRT else "std::sqrt"
    print(f"# {datetime.date.today()}  {cpu_name()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, kernel {'on' if _kernel.available() else 'OFF'} "
          f"({sqrt}); median of {reps} steps; load average {os.getloadavg()[0]:.2f}")
    for case in [c for c in cases if c in CASES]:
        n, copy, rows, adam_gbs, adam_label = bench(names, case, warmup, reps)
        count, shape = CASES[case]
        print(f"\n## case ({case}): {n / 1e6:g}M float32 params in {count} tensors of "
              f"{shape[0]}x{shape[1]}; copy ceiling {8 * n / copy / 1e9:.1f} GB/s")
        print("| optimizer | reference mode | lrkit Mparam/s | lrkit GB/s | / Adam | "
              "ref Mparam/s | ref GB/s | lrkit / ref | check ms | check / step | "
              "zero: Mparam/s | zero / ref |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name, label, mo, gbs, mr, rgbs, ratio, check, frac, mz, rz in rows:
            print(f"| {name} | {label} | {mo:.0f} | {gbs:.1f} | {gbs / adam_gbs:.2f}x | "
                  f"{mr:.0f} | {rgbs:.1f} | {ratio:.2f}x | {check:.2f} | {frac:.0%} | "
                  f"{mz:.0f} | {rz:.2f}x |")
        worst = min(rows, key=lambda r: r[3])
        print(f"\ntorch Adam ({adam_label}) reaches {adam_gbs:.1f} GB/s; slowest lrkit optimizer "
              f"{worst[0]} {worst[3]:.1f} GB/s ({worst[3] / adam_gbs:.2f}x of it)")
    if "c" in cases:
        training_step(warmup, reps, steady=args.steady_heap and steady_heap())
    if "d" in cases:
        scheduler_step(reps)
    if "e" in cases:
        check_placement(warmup, reps)
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
