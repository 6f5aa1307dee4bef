"""The non-finite check of ``nonfinite="raise"``/``"skip"`` in backward's hooks, opt-in
(``LRKIT_CHECK_IN_BACKWARD=1``).

A step must know, before it changes anything, whether a gradient holds NaN or Inf. Read
after backward, 10M float32 gradients are 40 MB, a pass of its own over memory (8-10%
of a 10M-parameter MLP's training step, measured). The idea: each large gradient is
checked as backward produces it, meant to find it still in the cache: a
``register_post_accumulate_grad_hook`` on the parameter runs lrkit's check on that one
tensor and records the verdict with the tensor's identity and version counter. At the
step a verdict counts only if ``p.grad`` is still that tensor at that version: a
gradient written another way (set by hand, clipped or unscaled in place after backward,
accumulated without a hook) bumps the counter or is another tensor, and goes through the
pass as before. Writes that bypass the version counter (``p.grad.data``, ``ctypes``) are
not seen: such a gradient is trusted as it was when backward produced it.

**Why it is not the default.** It did not pay where measured, and the pass is stricter.
On a 2-core Intel Xeon (AVX-512, 2 MiB of L2 per core), ``benchmarks/optim_step.py --case
c`` on 2026-12-03: backward took 1.3-2.8 ms longer with the hooks and the step 1.4-1.9 ms
less; the whole step was 0.88-0.97x torch's fused Adam with them (mean 0.92x) and
0.87-1.03x without (mean 0.94x), in nine runs. An MLP of 10.5M parameters in 40 matrices
of 512 x 512 (1 MiB gradients, which fit that L2) showed the same, as did one in 10 of
1024 x 1024 (4 MiB): the hooks did not find the gradients any cheaper to read, and each
costs a Python call. And a gradient written after backward through ``.data`` (which has a
version counter of its own) escapes the hooks' verdict, not the pass. On a CPU where they
pay, ``LRKIT_CHECK_IN_BACKWARD=1`` (read when an optimizer adds a param group) turns them
on; ``nonfinite="zero"`` needs neither hooks nor pass.

Small tensors are not watched: a Python hook costs a few microseconds, more than reading
a small gradient again (the pass over 1000 tensors of 1000 entries takes 0.1 ms). Nor are
gradients in a multi-process run (DDP writes the averaged gradient after the hooks, and
not always through the version counter) or while torch.compile traces.
"""
from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch import Tensor

#: parameters with fewer entries are checked by the pass (a hook costs more than re-reading)
MIN_NUMEL = 1 << 16

_watches: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class GradWatch:
    """The hooks of one optimizer and the verdicts they recorded."""

    def __init__(self, opt: Any) -> None:
        self.opt = weakref.ref(opt)
        self.handles: dict[int, Any] = {}  # id(param) -> hook handle
        self.verdicts: dict[int, tuple] = {}  # id(param) -> (grad ref, version, bad)
        weakref.finalize(opt, GradWatch.close, self.handles)

    @staticmethod
    def close(handles: dict[int, Any]) -> None:
        for h in handles.values():
            h.remove()
        handles.clear()

    def watch(self, params: list[Tensor]) -> None:
        """Hook the large parameters not hooked yet."""
        for p in params:
            if p.numel() >= MIN_NUMEL and id(p) not in self.handles:
                self.handles[id(p)] = p.register_post_accumulate_grad_hook(self._hook)

    def _hook(self, p: Tensor) -> None:
        from lrkit.optim import _kernel

        opt = self.opt()
        g = p.grad
        if (opt is None or opt.nonfinite == "zero" or g is None or not _checkable(g)
                or _distributed()):
            self.verdicts.pop(id(p), None)
            return
        bad = _kernel.first_nonfinite([g], opt.grad_power) >= 0
        self.verdicts[id(p)] = (weakref.ref(g), g._version, bad)

    def verdict(self, p: Tensor, g: Tensor) -> bool | None:
        """True/False where the hook checked exactly this gradient, else None."""
        rec = self.verdicts.get(id(p))
        if rec is None or rec[0]() is not g or rec[1] != g._version:
            return None
        return rec[2]


def _checkable(g: Tensor) -> bool:
    return (g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64)
            and g.layout == torch.strided and g.is_contiguous())


def enabled() -> bool:
    """Whether ``LRKIT_CHECK_IN_BACKWARD`` asks for the hooks ("1"; off by default)."""
    value = os.environ.get("LRKIT_CHECK_IN_BACKWARD", "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"LRKIT_CHECK_IN_BACKWARD must be 1 (check large gradients in "
                         f"backward's hooks) or 0/unset (one pass at the step), got {value!r}")
    return value == "1"


def hook(opt: Any, params: list[Tensor]) -> None:
    """Watch the large parameters of ``params`` (``add_param_group`` calls it where
    ``enabled()``)."""
    big = [p for p in params if isinstance(p, Tensor) and p.numel() >= MIN_NUMEL
           and p.requires_grad and type(p) in (Tensor, torch.nn.Parameter)]
    if big:
        watch = _watches.get(opt)
        if watch is None:
            watch = _watches[opt] = GradWatch(opt)
        watch.watch(big)


def of(opt: Any) -> GradWatch | None:
    """The optimizer's watch, or None where the step must make the pass for every
    gradient (no large parameter, a multi-process run, torch.compile tracing)."""
    watch = _watches.get(opt)
    if watch is None or torch.compiler.is_compiling() or _distributed():
        return None
    return watch
