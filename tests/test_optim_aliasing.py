"""Parameters and gradients that share memory, a parameter listed twice, a parameter
given another layout at its address: the default path (kernels where they apply) steps
as the readable reference does (torch's single-tensor order), or refuses as clearly.

The kernels update their tensors in an order of their own through pointers they assume
apart; before, overlapping views passed as two parameters, a gradient aliasing a
parameter, or ``p.data = p.data.as_strided(...)`` at the same address gave a third
answer (entries updated from the wrong gradient), and SGD's kernel read a momentum
buffer before it was filled when a group listed one parameter twice."""
from __future__ import annotations

import pytest
import torch

from optim_helpers import INFOS

STEPPED = [i for i in INFOS if "needs_closure" not in i.tags]


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_()


def _views(base: torch.Tensor, spans: list[tuple[int, int]]) -> list[torch.Tensor]:
    return [_leaf(base[a:b]) for a, b in spans]


# name -> (make the parameters and the tensors to compare, set this step's gradients)
def _overlapping():
    base = torch.randn(10, generator=torch.Generator().manual_seed(0))
    return _views(base, [(0, 6), (4, 10)]), [base]


def _identical():
    base = torch.randn(6, generator=torch.Generator().manual_seed(0))
    return _views(base, [(0, 6), (0, 6)]), [base]


def _apart():
    base = torch.randn(12, generator=torch.Generator().manual_seed(0))
    return _views(base, [(0, 6), (6, 12)]), [base]


def _strided_first():
    """A view the kernel does not take (not contiguous) first, one it takes second."""
    base = torch.randn(12, generator=torch.Generator().manual_seed(0))
    return [_leaf(base[::2]), _leaf(base[0:6])], [base]


def _random_grads(ps, step):
    gen = torch.Generator().manual_seed(100 + step)
    for p in ps:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)


def _grad_is_own_param(ps, step):
    for p in ps:
        p.grad = p.detach()


def _grad_is_other_param(ps, step):
    ps[0].grad, ps[1].grad = ps[1].detach(), ps[0].detach()


def _grad_spans_both(ps, step):
    base = ps[0].detach()
    ps[0].grad = base.as_strided((6,), (1,), 3)  # entries 3..8 of the shared storage
    ps[1].grad = torch.randn(6, generator=torch.Generator().manual_seed(step))


CASES = {
    "overlapping_views": (_overlapping, _random_grads),
    "identical_views": (_identical, _random_grads),
    "views_apart": (_apart, _random_grads),
    "overlapping_a_view_the_kernel_leaves": (_strided_first, _random_grads),
    "grad_is_own_param": (_apart, _grad_is_own_param),
    "grad_is_other_param": (_apart, _grad_is_other_param),
    "grad_spans_both_params": (_apart, _grad_spans_both),
}


def _run(info, case: str, impl: str):
    make, grads = CASES[case]
    ps, out = make()
    try:
        opt = info.cls(ps, **info.configs[-1], impl=impl)
        for step in range(3):
            grads(ps, step)
            opt.step()
    except (RuntimeError, TypeError, ValueError) as exc:
        return type(exc)
    return [t.clone() for t in out]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("info", STEPPED, ids=lambda i: i.name)
def test_memory_shared_between_parameters_and_gradients_steps_as_the_reference(
        info, case, kept_plans):
    auto, ref = _run(info, case, "auto"), _run(info, case, "reference")
    if isinstance(ref, type) or isinstance(auto, type):
        assert auto == ref, f"auto: {auto}, reference: {ref}"
        return
    for a, r in zip(auto, ref):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-6)


def test_overlapping_parameters_step_in_torchs_order():
    """torch's single-tensor SGD goes through the list in order: the second view sees
    the first one's update of their shared entries (weight decay reads them). lrkit's
    default path now does too (its kernel walked the tensors backwards)."""
    from lrkit.optim import SGD
    results = []
    for cls in (torch.optim.SGD, SGD):
        base = torch.arange(10.0)
        ps = _views(base, [(0, 6), (4, 10)])
        kwargs = {"foreach": False} if cls is torch.optim.SGD else {}
        opt = cls(ps, lr=0.1, weight_decay=1.0, **kwargs)
        for step in range(3):
            for j, p in enumerate(ps):
                p.grad = torch.full_like(p, float(10 * j + step + 1))
            opt.step()
        results.append(base)
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)


LAYOUTS = {
    "as_strided": lambda p: p.data.as_strided(p.shape, (1, p.shape[0])),
    "transposed": lambda p: p.data.t(),
    "reshaped": lambda p: p.data.reshape(p.shape[1], p.shape[0]),
}


@pytest.mark.parametrize("how", list(LAYOUTS))
@pytest.mark.parametrize("info", STEPPED, ids=lambda i: i.name)
def test_a_parameter_given_another_layout_at_its_address(info, how, kept_plans):
    """``p.data = p.data.as_strided(...)`` (or ``.t()``, ``.reshape()``) keeps the
    address, the number of entries and the dtype: a kept kernel plan took it as the
    contiguous tensor it was built for and moved the wrong entries. Now the step does
    what the reference does: the same update, or an error (a state of the old shape:
    lrkit's clear ValueError where the reference has torch's broadcasting error)."""
    def run(impl):
        gen = torch.Generator().manual_seed(0)
        ps = [_leaf(torch.randn(3, 4, generator=gen)), _leaf(torch.randn(5, generator=gen))]
        try:
            opt = info.cls(ps, **info.configs[-1], impl=impl)
            for step in range(4):
                if step == 2:
                    ps[0].data = LAYOUTS[how](ps[0])
                for p in ps:
                    p.grad = torch.randn(p.shape, generator=gen)
                opt.step()
        except (RuntimeError, ValueError) as exc:
            return exc
        return [p.detach().clone() for p in ps]
    auto, ref = run("auto"), run("reference")
    if isinstance(ref, Exception) or isinstance(auto, Exception):
        assert isinstance(auto, Exception) and isinstance(ref, Exception), (auto, ref)
        if isinstance(auto, ValueError):
            assert "shape" in str(auto) and "state[" in str(auto)
        return
    for a, r in zip(auto, ref):
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_a_group_listing_a_parameter_twice_is_refused(info):
    """torch warns ("this will cause an error in the future") and steps such a parameter
    once per entry, with results that differ between its own implementations; lrkit's
    kernels read a state buffer before it was filled. Refused, in the constructor and in
    add_param_group, with the optimizer unchanged."""
    a, b = _leaf(torch.randn(4)), _leaf(torch.randn(3))
    with pytest.raises(ValueError, match=r"lists the same parameter twice \(entries 0 and 2\)"):
        info.cls([a, b, a], **info.configs[0])
    with pytest.raises(ValueError, match="lists the same parameter twice"):
        info.cls([("w", a), ("w2", a)], **info.configs[0])
    if "needs_closure" in info.tags:  # L-BFGS takes one group
        return
    opt = info.cls([a], **info.configs[0])
    with pytest.raises(ValueError, match=r"param group 1 lists the same parameter twice"):
        opt.add_param_group({"params": iter([b, b])})
    assert len(opt.param_groups) == 1
    opt.add_param_group({"params": iter([b])})  # a generator is taken once, as torch takes it
    assert opt.param_groups[1]["params"] == [b]


@pytest.mark.parametrize("info", [i for i in STEPPED if i.cls.kernel is not None],
                         ids=lambda i: i.name)
def test_a_parameter_appended_twice_by_hand_steps_as_the_reference(info, kept_plans):
    """A group's list edited by hand after the check: the kernel leaves such a parameter
    to the reference path (SGD's read its momentum buffer before filling it: values
    like 3e22)."""
    def run(impl):
        gen = torch.Generator().manual_seed(0)
        a, b = _leaf(torch.randn(4, generator=gen)), _leaf(torch.randn(3, generator=gen))
        opt = info.cls([a, b], **info.configs[-1], impl=impl)
        opt.param_groups[0]["params"].append(a)
        for _ in range(3):
            for p in (a, b):
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        return [a.detach().clone(), b.detach().clone()]
    for x, y in zip(run("auto"), run("reference")):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x.double(), y.double(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_complex_parameters_are_refused_where_the_algorithm_has_no_complex_form(info):
    """Prodigy's and D-Adaptation's estimates are sums of real products: a complex
    parameter raised float()'s TypeError at the step (the authors' packages fail too).
    Now its group is refused when added; the others take complex parameters as torch's
    optimizers do (real and imaginary parts as entries)."""
    p = _leaf(torch.randn(3, dtype=torch.complex64))
    if info.cls.supports_complex:
        info.cls([p], **info.configs[0])
        return
    with pytest.raises(TypeError, match="complex parameters are not supported"):
        info.cls([p], **info.configs[0])
    opt = info.cls([_leaf(torch.randn(3))], **info.configs[0])
    with pytest.raises(TypeError, match="complex parameters are not supported"):
        opt.add_param_group({"params": [p]})
    assert len(opt.param_groups) == 1


def test_empty_gradients_beside_ones_the_native_check_cannot_read():
    """The check's torch fallback (complex, non-contiguous bfloat16, or no kernel
    library) took the infinity norm of every gradient, which torch refuses for an empty
    one: an Adam step over an empty complex parameter raised RuntimeError."""
    from lrkit.optim import Adam, _kernel
    flags = _kernel.nonfinite_flags([torch.zeros(0), torch.tensor([1.0, float("nan")]),
                                     torch.zeros(0, dtype=torch.complex64)])
    assert [(idx, bad.tolist()) for idx, bad in flags] == [([1], [True])]
    results = []
    for cls in (torch.optim.Adam, Adam):
        e = _leaf(torch.zeros(0, dtype=torch.complex64))
        w = _leaf(torch.zeros(3, 2, dtype=torch.bfloat16))
        e.grad = torch.zeros(0, dtype=torch.complex64)
        w.grad = torch.ones(2, 3, dtype=torch.bfloat16).t()  # not contiguous
        cls([e, w], lr=0.1).step()
        results.append(w.detach())
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
