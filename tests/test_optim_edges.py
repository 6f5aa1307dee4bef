"""Parameters at the edges of what a step sees: empty and 0-dim tensors, channels_last and
transposed layouts, float32 beside float64 and bfloat16 in one group, a gradient missing
at one step. Every optimizer's default path (kernels where they apply) gives what its
readable reference gives, or both raise the same error."""
from __future__ import annotations

import pytest
import torch

from optim_helpers import INFOS


def _params(kind: str, gen: torch.Generator) -> list[torch.Tensor]:
    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    return {
        "empty": lambda: [randn(0, 5), randn(7), randn(0), randn(3, 0), randn(2, 3, 0)],
        "scalar": lambda: [randn(()), randn(3, 4)],
        "channels_last": lambda: [randn(2, 3, 4, 5).to(memory_format=torch.channels_last)],
        "transposed": lambda: [randn(6, 4).t(), randn(5)],
        "mixed_dtypes": lambda: [randn(5, 3), randn(4, dtype=torch.float64)],
        "bfloat16": lambda: [randn(8, 3).bfloat16(), randn(3)],
        "missing_grad": lambda: [randn(5, 3), randn(4)],
    }[kind]()


def _run(info, kind: str, impl: str):
    gen = torch.Generator().manual_seed(0)
    ps = [p.requires_grad_() for p in _params(kind, gen)]
    try:
        opt = info.cls(ps, **info.configs[-1], impl=impl)
        for step in range(3):
            for j, p in enumerate(ps):
                g = torch.randn(p.shape, generator=gen, dtype=p.dtype)
                if kind == "transposed" and p.dim() == 2:
                    g = g.t().contiguous().t()  # the parameter's layout
                if kind == "channels_last":
                    g = g.contiguous(memory_format=torch.channels_last)
                p.grad = None if kind == "missing_grad" and (j, step) == (1, 1) else g
            opt.step()
    except Exception as exc:  # noqa: BLE001 (compared between the paths below)
        return type(exc)
    return [p.detach().clone() for p in ps] + [
        opt.state[p]["step"].clone() for p in ps
        if isinstance(opt.state.get(p, {}).get("step"), torch.Tensor)]


KINDS = ["empty", "scalar", "channels_last", "transposed", "mixed_dtypes", "bfloat16",
         "missing_grad"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("info", [i for i in INFOS if "needs_closure" not in i.tags],
                         ids=lambda i: i.name)
def test_the_default_path_equals_the_reference_at_the_edges(info, kind):
    auto, ref = _run(info, kind, "auto"), _run(info, kind, "reference")
    if isinstance(ref, type) or isinstance(auto, type):
        assert auto == ref, f"auto: {auto}, reference: {ref}"
        return
    assert len(auto) == len(ref)
    for a, r in zip(auto, ref):
        assert a.dtype == r.dtype and a.shape == r.shape and a.stride() == r.stride()
        # the learning-rate-free ones and Adafactor sum in double on the kernel path
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("impl", ["auto", "reference", "foreach", "kernel"])
def test_adafactor_with_only_empty_parameters_counts_their_steps(impl):
    """torch's Adafactor divides 0 by 0 on an empty parameter; lrkit's counts its step."""
    from lrkit.optim import Adafactor
    ps = [torch.zeros(0, 5, requires_grad=True), torch.zeros(0, requires_grad=True)]
    opt = Adafactor(ps, impl=impl)
    for _ in range(2):
        for p in ps:
            p.grad = torch.zeros_like(p)
        opt.step()
    assert [opt.state[p]["step"].item() for p in ps] == [2.0, 2.0]


@pytest.mark.parametrize("info", [i for i in INFOS if i.cls.kernel is not None],
                         ids=lambda i: i.name)
@pytest.mark.parametrize("bad", ["short", "float64"])
def test_a_state_tensor_replaced_by_one_the_kernel_cannot_take_is_refused(info, bad):
    """The kernels read and write state through raw pointers: a state tensor set by hand
    with fewer entries (or another dtype) than the step needs is refused with a
    ValueError naming it; before, the kernel ran past its end (a segfault, a corrupted
    heap or silently wrong memory)."""
    from lrkit.optim import _kernel
    if _kernel.library(info.cls.kernel) is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, 48))
    opt = info.cls([w], **info.configs[0], impl="kernel")
    closure = None
    if "needs_closure" in info.tags:
        def closure():
            opt.zero_grad()
            loss = (w ** 2).sum()
            loss.backward()
            return loss
    for _ in range(2):
        w.grad = torch.randn_like(w)
        opt.step(closure)
    st = opt.state[w]
    key = next((k for k, v in st.items() if isinstance(v, torch.Tensor) and v.numel() > 1),
               None)
    if key is None:
        pytest.skip("no state tensor in this configuration")
    st[key] = torch.zeros(3) if bad == "short" else st[key].double()
    w.grad = torch.randn_like(w)
    with pytest.raises(ValueError, match=rf"state\['{key}'\].*was it replaced by hand"):
        opt.step(closure)


def _stepped_kernel_optimizer(info, shapes):
    """An optimizer of ``info`` on the kernel path over parameters of ``shapes``, after
    two steps (a closure for those that need one), and that closure."""
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
    opt = info.cls(ws, **info.configs[0], impl="kernel")
    closure = None
    if "needs_closure" in info.tags:
        def closure():
            opt.zero_grad()
            loss = sum((w ** 2).sum() for w in ws)
            loss.backward()
            return loss
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):
        for w in ws:
            w.grad = torch.randn(w.shape, generator=gen)
        opt.step(closure)
    return opt, ws, closure


_IN_PLACE = {
    "data=short": lambda t: setattr(t, "data", torch.zeros(3, dtype=t.dtype)),
    "set_short": lambda t: t.set_(torch.zeros(3, dtype=t.dtype)),
    "resize_short": lambda t: t.resize_(3),
    "resize_long": lambda t: t.resize_(t.numel() * 4),
    "data=float64": lambda t: setattr(t, "data", t.double()),
    "storage_shrunk": lambda t: t.untyped_storage().resize_(t.untyped_storage().nbytes() // 2),
    "same_storage_bfloat16": lambda t: setattr(t, "data", torch.empty(
        0, dtype=torch.bfloat16).set_(t.untyped_storage(), 0, t.shape)),
}


@pytest.mark.parametrize("info", [i for i in INFOS if i.cls.kernel is not None],
                         ids=lambda i: i.name)
@pytest.mark.parametrize("how", list(_IN_PLACE))
def test_a_state_tensor_changed_in_place_is_refused(info, how, kept_plans):
    """The same state tensor object given another storage in place (``.data = ...``,
    ``.set_()``, ``.resize_()``): a kept kernel plan checks each state tensor's address
    and size, not only its identity, so the step refuses it as it refuses a replaced one;
    before, the kernel wrote through the old pointer (freed memory: a segfault or a
    corrupted heap) or past the new tensor's end."""
    from lrkit.optim import _kernel
    if _kernel.library(info.cls.kernel) is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    opt, ws, closure = _stepped_kernel_optimizer(info, [(16, 12), (64, 48), (40,)])
    st = opt.state[ws[1]]
    key = next((k for k, v in st.items() if isinstance(v, torch.Tensor) and v.numel() > 1),
               None)
    if key is None:
        pytest.skip("no state tensor in this configuration")
    _IN_PLACE[how](st[key])
    for w in ws:
        w.grad = torch.randn_like(w)
    with pytest.raises(ValueError, match=rf"state\['{key}'\].*by hand"):
        opt.step(closure)


@pytest.mark.parametrize("info", [i for i in INFOS if i.cls.kernel is not None],
                         ids=lambda i: i.name)
def test_a_gradient_given_another_dtype_in_place_is_not_read_as_the_kernels(info,
                                                                          kept_plans):
    """``p.grad.data = bfloat16 tensor`` passes torch's own checks; a kept plan used to
    read it as float32 (twice its bytes: out of bounds). Now the step leaves it to
    torch's path: that refuses it (as torch's Adam does) or steps with the bfloat16
    values, as a twin stepped with the same values in float32 (to bfloat16 rounding)."""
    from lrkit.optim import _kernel
    if _kernel.library(info.cls.kernel) is None or "needs_closure" in info.tags:
        pytest.skip("no kernel step of a set gradient")
    shapes = [(16, 12), (64, 48)]
    opt, ws, _ = _stepped_kernel_optimizer(info, shapes)
    twin, twin_ws, _ = _stepped_kernel_optimizer(info, shapes)
    before = [w.detach().clone() for w in ws]
    gen = torch.Generator().manual_seed(3)
    for w, tw in zip(ws, twin_ws):
        tw.grad = torch.randn(w.shape, generator=gen).bfloat16().float()
        w.grad = tw.grad.clone()
    ws[1].grad.data = twin_ws[1].grad.bfloat16()
    try:
        opt.step()
    except (RuntimeError, TypeError, ValueError):  # torch's own error (AdamW's decay
        torch.testing.assert_close(ws[1], before[1], rtol=1e-2, atol=1e-3)  # came first)
        return
    twin.step()
    for w, tw in zip(ws, twin_ws):
        torch.testing.assert_close(w, tw, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("info", [i for i in INFOS if i.cls.kernel is not None],
                         ids=lambda i: i.name)
@pytest.mark.parametrize("how", ["data=clone", "storage_grown"])
def test_a_state_tensor_given_new_storage_of_its_size_is_the_one_updated(info, how,
                                                                          kept_plans):
    """``state[p][key].data = copy``, or its storage grown in place (reallocated, the
    values copied): the new memory is taken, and the step updates it exactly as it would
    have updated the old one (the kernel used to keep writing to the old storage, freed
    by then)."""
    from lrkit.optim import _kernel
    if _kernel.library(info.cls.kernel) is None:
        pytest.skip("no C++ compiler: the kernel is not built")
    shapes = [(16, 12), (64, 48), (40,)]
    opt, ws, closure = _stepped_kernel_optimizer(info, shapes)
    twin, twin_ws, twin_closure = _stepped_kernel_optimizer(info, shapes)
    keys = [k for k, v in opt.state[ws[1]].items()
            if isinstance(v, torch.Tensor) and v.numel() > 1]
    if not keys:
        pytest.skip("no state tensor in this configuration")
    swapped = {}
    for k in keys:
        t = opt.state[ws[1]][k]
        old_ptr = t.data_ptr()
        if how == "data=clone":
            t.data = t.clone()
        else:
            t.untyped_storage().resize_(t.untyped_storage().nbytes() * 2)
        swapped[k] = t.data_ptr()
        assert swapped[k] != old_ptr
    gen = torch.Generator().manual_seed(2)
    for _ in range(2):
        for w, tw in zip(ws, twin_ws):
            tw.grad = torch.randn(w.shape, generator=gen)
            w.grad = tw.grad.clone()
        opt.step(closure)
        twin.step(twin_closure)
    for w, tw in zip(ws, twin_ws):
        torch.testing.assert_close(w, tw, rtol=0, atol=0)
    for k in keys:
        assert opt.state[ws[1]][k].data_ptr() == swapped[k]
        torch.testing.assert_close(opt.state[ws[1]][k], twin.state[twin_ws[1]][k],
                                   rtol=0, atol=0)


def test_prodigy_p0_of_one_entry_is_not_taken_for_a_zero_dim_one():
    """Prodigy's p0 is the sliced parameter, or 0-dim (a parameter that was all zeros):
    a tensor of shape (1,) is neither, and the kernel would read past its end."""
    from lrkit.optim import Prodigy
    w = torch.nn.Parameter(torch.randn(1000))
    opt = Prodigy([w])
    w.grad = torch.randn_like(w)
    opt.step()
    opt.state[w]["p0"] = torch.zeros(1)
    w.grad = torch.randn_like(w)
    with pytest.raises(ValueError, match=r"state\['p0'\].*shape \(1000,\) or \(\)"):
        opt.step()
