"""Every optimizer of the registry against its reference (torch.optim or the author's
package), 100 steps on a small real model: parameters within what the two
implementations' rounding can do (``parity_rtol``: operations per step, sums over the
entries), on any CPU and with the kernels built for any target."""
from __future__ import annotations

import pytest
import torch

from optim_helpers import CASES, INFOS, case_id, parity_rtol, rel_err, run


def _skip_unsupported(info, cfg):
    if info.reference is None or any(k in cfg for k in info.unsupported):
        pytest.skip(f"{info.reference} has no {info.unsupported}")
    pytest.importorskip(info.reference.partition(":")[0])


@pytest.mark.parametrize("groups", [False, True], ids=["one_group", "two_groups"])
@pytest.mark.parametrize("info,cfg", CASES, ids=[f"{i.name}-{case_id(c)}" for i, c in CASES])
def test_float32_matches_reference(info, cfg, groups):
    _skip_unsupported(info, cfg)
    ours = run(info.cls, cfg, torch.float32, groups, info.steps)
    ref = run(info.reference_cls(), cfg, torch.float32, groups, info.steps)
    assert rel_err(ours, ref) <= parity_rtol(info, torch.float32, info.steps)


EDGE = [(i, c) for i in INFOS for c in (i.configs[0], i.configs[-1])]


@pytest.mark.parametrize("info,cfg", EDGE, ids=[f"{i.name}-{case_id(c)}" for i, c in EDGE])
def test_float64_matches_reference(info, cfg):
    _skip_unsupported(info, cfg)
    ours = run(info.cls, cfg, torch.float64, True, info.steps)
    ref = run(info.reference_cls(), cfg, torch.float64, True, info.steps)
    assert rel_err(ours, ref) <= parity_rtol(info, torch.float64, info.steps)


@pytest.mark.parametrize("info,cfg", EDGE, ids=[f"{i.name}-{case_id(c)}" for i, c in EDGE])
def test_bfloat16_matches_reference_bit_for_bit(info, cfg):
    """bfloat16 runs the reference path, the same operations in the same order as torch's
    (CPU) single-tensor implementation: equal bit for bit, 100 steps."""
    _skip_unsupported(info, cfg)
    ours = run(info.cls, cfg, torch.bfloat16, True, info.steps)
    ref = run(info.reference_cls(), cfg, torch.bfloat16, True, info.steps)
    assert all(torch.equal(a, b) for a, b in zip(ours, ref))
