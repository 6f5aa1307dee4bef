"""Where lrkit drops into torch code: the defects torch's own suites found (issue 15).

Sparse gradients, copies of optimizers, Adam/AdamW state_dicts, SGD's state layout,
Lion on complex parameters, lrkit Schedulers inside SequentialLR/ChainedScheduler, the
plateau with groups added later, the step-order warning, and warnings that point at the
user's line whatever the folders are called.
"""
from __future__ import annotations

import copy
import io
import pickle
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch.optim.lr_scheduler import ChainedScheduler, ExponentialLR, SequentialLR

import lrkit
from lrkit import schedules as S
from optim_helpers import batches, closure_for, loss_of, make_model, make_opt, param_groups
from optim_registry import REGISTRY

SRC = Path(lrkit.__file__).resolve().parents[1]


# -------------------------------------------------------------- warnings' origin
def test_warnings_point_at_the_users_line_in_a_folder_named_lrkit(tmp_path):
    """A checkout or script folder called ``lrkit`` (or ``torch``) is still the user's: the
    d-estimate warning names the script's line on the kernel and the reference path."""
    folder = tmp_path / "lrkit" / "torch"
    folder.mkdir(parents=True)
    script = folder / "train.py"
    script.write_text(textwrap.dedent("""
        import warnings, torch
        from lrkit.optim import Prodigy, DAdaptAdam, DAdaptSGD
        for cls in (Prodigy, DAdaptAdam, DAdaptSGD):
            for impl in ("kernel", "reference"):
                w = torch.nn.Parameter(torch.ones(5))
                opt = cls([w], d_stall_steps=3, impl=impl)
                with warnings.catch_warnings(record=True) as rec:
                    warnings.simplefilter("always")
                    for _ in range(4):
                        w.grad = torch.zeros(5)
                        opt.step()  # the line the warning must name
                print(cls.__name__, impl, [(r.filename, r.lineno) for r in rec])
    """))
    line = next(i for i, t in enumerate(script.read_text().splitlines(), 1) if "opt.step()" in t)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                         check=True, timeout=300).stdout
    rows = out.strip().splitlines()
    assert len(rows) == 6
    for row in rows:
        assert f"[('{script}', {line})]" in row, row


# -------------------------------------------------------------- sparse gradients
def _embedding_run(module, name, steps=4, **kwargs):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(12, 3, sparse=True)
    opt = getattr(module, name)(emb.parameters(), **kwargs)
    for i in range(steps):
        opt.zero_grad()
        (emb(torch.tensor([1, 2, 2, i % 5])) ** 2).sum().backward()
        opt.step()
    return emb.weight.detach(), opt


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", {"lr": 0.1}), ("SGD", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", {"lr": 0.1, "momentum": 0.5, "dampening": 0.5, "maximize": True}),
    ("Adagrad", {"lr": 0.1}), ("Adagrad", {"lr": 0.1, "lr_decay": 0.1, "eps": 1e-6}),
])
def test_sparse_gradients_update_the_touched_rows_as_torch(name, kwargs):
    ours, opt = _embedding_run(lrkit.optim, name, **kwargs)
    ref, ref_opt = _embedding_run(torch.optim, name, **kwargs)
    assert torch.equal(ours, ref)
    assert torch.equal(ours[6:], _embedding_run(torch.optim, name, steps=0, **kwargs)[0][6:])
    assert opt.state_dict()["state"].keys() == ref_opt.state_dict()["state"].keys()


@pytest.mark.parametrize("mode", ["skip", "zero"])
def test_sparse_gradients_with_nan_follow_nonfinite(mode):
    w = torch.nn.Parameter(torch.ones(4, 2))
    opt = lrkit.optim.SGD([w], lr=0.1, nonfinite=mode)
    w.grad = torch.sparse_coo_tensor([[0, 2]], torch.tensor([[1.0, float("nan")], [2.0, 2.0]]),
                                     (4, 2))
    opt.step()
    if mode == "skip":
        assert opt.skipped_steps == 1 and torch.equal(w, torch.ones(4, 2))
    else:
        torch.testing.assert_close(w.detach(), torch.tensor([[0.9, 1.0], [1.0, 1.0],
                                                             [0.8, 0.8], [1.0, 1.0]]))


@pytest.mark.parametrize("name", sorted(n for n in REGISTRY
                                         if not REGISTRY[n].cls.supports_sparse))
def test_other_optimizers_refuse_sparse_gradients_naming_those_that_take_them(name):
    emb = torch.nn.Embedding(4, 2, sparse=True)
    opt = REGISTRY[name].cls(emb.parameters())
    with pytest.raises(RuntimeError, match=f"{name} does not support sparse.*SGD and Adagrad"):
        opt.step(_closure(opt, [emb], lambda m: m(torch.tensor([1])).sum()))


def _closure(opt, modules, loss_fn):
    def fn():
        opt.zero_grad()
        loss = sum(loss_fn(m) for m in modules)
        if torch.is_grad_enabled():
            loss.backward()
        return loss
    return fn


# -------------------------------------------------------------- copies
def _trained(info):
    model, data = make_model(), batches()
    cfg = info.configs[-1]
    opt = make_opt(info.cls, param_groups(model, cfg, True, info.cls), **cfg,
                   nonfinite="skip", impl="reference" if "kernel" not in info.impls()
                   else "kernel")
    for batch in data[:3]:
        opt.step(closure_for(opt, model, batch))
    opt.skipped_steps = 2  # as after two skipped steps
    return opt, model


def _saved_and_loaded(opt):
    buf = io.BytesIO()
    torch.save(opt, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_a_copy_of_any_optimizer_steps_as_the_original(name, how):
    info = REGISTRY[name]
    opt, _ = _trained(info)
    twin = {"deepcopy": copy.deepcopy, "pickle": lambda o: pickle.loads(pickle.dumps(o)),
            "torch.save": _saved_and_loaded}[how](opt)
    assert (twin.impl, twin.nonfinite, twin.skipped_steps) == (opt.impl, "skip", 2)
    params = [p for g in opt.param_groups for p in g["params"]]
    copies = [p for g in twin.param_groups for p in g["params"]]
    assert all(p is not q and torch.equal(p, q) for p, q in zip(params, copies))
    for k in range(2):
        for o, ps in ((opt, params), (twin, copies)):
            o.step(_closure(o, ps, lambda p, k=k: torch.sin(p * (k + 2)).sum()))
    assert all(torch.equal(p, q) for p, q in zip(params, copies))
    assert twin.skipped_steps == opt.skipped_steps


# -------------------------------------------------------------- Adam / AdamW
def _one_step(opt, w):
    w.grad = torch.tensor([0.5])
    opt.step()
    return w.detach().clone()


def test_adamw_loading_an_adam_state_dict_stays_adamw_as_torch():
    src_w = torch.nn.Parameter(torch.tensor([1.0]))
    src = torch.optim.Adam([src_w], lr=0.1, weight_decay=0.5)
    _one_step(src, src_w)
    sd = src.state_dict()
    results = []
    for cls in (torch.optim.AdamW, lrkit.optim.AdamW):
        w = torch.nn.Parameter(src_w.detach().clone())
        opt = cls([w], lr=0.1, weight_decay=0.5)
        opt.load_state_dict(copy.deepcopy(sd))
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
        results.append(_one_step(opt, w))
    assert torch.equal(*results)


def test_adam_loads_an_adamw_state_dict_as_torch():
    for make in (torch.optim.AdamW, lrkit.optim.AdamW):
        results = []
        for cls in (torch.optim.Adam, lrkit.optim.Adam):
            src_w = torch.nn.Parameter(torch.tensor([1.0]))
            src = make([src_w], lr=0.1, weight_decay=0.5)
            _one_step(src, src_w)
            w = torch.nn.Parameter(src_w.detach().clone())
            opt = cls([w], lr=0.1)
            opt.load_state_dict(src.state_dict())
            results.append(_one_step(opt, w))
        assert torch.equal(*results)


def test_loading_another_algorithms_state_dict_still_fails():
    w = torch.nn.Parameter(torch.ones(2))
    sd = lrkit.optim.NAdam([w]).state_dict()
    with pytest.raises(ValueError, match="saved by lrkit.optim.NAdam"):
        lrkit.optim.Adam([w]).load_state_dict(sd)


# -------------------------------------------------------------- SGD's state
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_state_dict_holds_what_torchs_holds(momentum):
    dicts = []
    for cls in (torch.optim.SGD, lrkit.optim.SGD):
        for impl in ({} if cls is torch.optim.SGD else {"impl": "kernel"}, {"foreach": False}):
            w = torch.nn.Parameter(torch.ones(3))
            opt = cls([w], lr=0.1, momentum=momentum, **impl)
            w.grad = torch.ones(3)
            opt.step()
            dicts.append({k: sorted(v) for k, v in opt.state_dict()["state"].items()})
    assert all(d == dicts[0] for d in dicts), dicts


# -------------------------------------------------------------- Lion, complex
@pytest.mark.parametrize("impl", ["reference", "foreach", "kernel", "auto"])
def test_lion_steps_complex_parameters_by_sgn_as_lion_pytorch(impl):
    lion_pytorch = pytest.importorskip("lion_pytorch")
    out = []
    for make in (lambda ps: lion_pytorch.Lion(ps, lr=0.1, weight_decay=0.1),
                 lambda ps: lrkit.optim.Lion(ps, lr=0.1, weight_decay=0.1, impl=impl)):
        w = torch.nn.Parameter(torch.tensor([1 + 1j, -2 + 0.5j, 0.3 - 1j]))
        opt = make([w])
        for k in range(3):
            w.grad = torch.tensor([3 + 4j, -1 + 0j, 0.5j]) * (k - 1.5)
            opt.step()
        out.append(w.detach())
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-6)
    w = torch.nn.Parameter(torch.tensor([1 + 1j]))
    opt = lrkit.optim.Lion([w], lr=0.1, impl=impl)
    w.grad = torch.tensor([3 + 4j])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([0.94 + 0.92j]))


# -------------------------------------------------------------- schedulers in torch's
def _sequential(opt):
    a = lrkit.Scheduler(opt, lr=S.linear(0.01, 0.1, total=3))
    b = lrkit.Scheduler(opt, lr=S.cosine(0.1, total=5))
    return SequentialLR(opt, [a, b], milestones=[3])


@pytest.mark.parametrize("save_at", [0, 1, 2, 3, 5])
def test_sequential_lr_of_schedulers_resumes_from_any_step(save_at):
    def new():
        w = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=1.0)
        return opt, _sequential(opt)

    opt, seq = new()
    lrs = []
    for _ in range(8):
        opt.step()
        seq.step()
        lrs.append(opt.param_groups[0]["lr"])
    expected = [S.linear(0.01, 0.1, total=3)(n) for n in (1, 2)] + [
        S.cosine(0.1, total=5)(n) for n in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-12)

    opt, seq = new()
    for _ in range(save_at):
        opt.step()
        seq.step()
    saved = copy.deepcopy(seq.state_dict())
    opt2, seq2 = new()
    seq2.load_state_dict(saved)
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    resumed = []
    for _ in range(8 - save_at):
        opt2.step()
        seq2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert resumed == pytest.approx(lrs[save_at:], rel=1e-12)


def test_sequential_lr_of_schedulers_does_not_warn():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0)
    seq = _sequential(opt)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(8):
            opt.step()
            seq.step()


def test_two_schedulers_stepping_one_optimizer_warn_once():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.9)
    a = lrkit.Scheduler(opt, lr=0.5)
    b = lrkit.Scheduler(opt, lr=0.25)
    c = lrkit.Scheduler(opt, momentum=0.5)  # another value: no clash
    with pytest.warns(UserWarning, match="another lrkit Scheduler also steps lr") as rec:
        for _ in range(3):
            opt.step()
            for s in (a, b, c):
                s.step()
    assert len(rec) == 2 and rec[0].filename == __file__  # a's and b's, once each


def test_chained_scheduler_of_schedulers_warns():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0)
    chain = ChainedScheduler([lrkit.Scheduler(opt, lr=0.5), lrkit.Scheduler(opt, lr=0.1)])
    with pytest.warns(UserWarning, match="ChainedScheduler"):
        for _ in range(2):
            opt.step()
            chain.step()


def test_chained_scheduler_with_one_scheduler_and_a_torch_one_does_not_warn():
    w = torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=1.0, momentum=0.9)
    chain = ChainedScheduler([lrkit.Scheduler(opt, momentum=S.linear(0.9, 0.5, total=4)),
                              ExponentialLR(opt, gamma=0.5)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(3):
            opt.step()
            chain.step()
    assert opt.param_groups[0]["lr"] == 0.125
    assert opt.param_groups[0]["momentum"] == pytest.approx(S.linear(0.9, 0.5, total=4)(3))


def test_step_before_optimizer_step_warns_as_torch():
    for make in (lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda n: 1.0),
                 lambda o: lrkit.Scheduler(o, lr=S.cosine(0.1, total=10))):
        w = torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=0.1)
        sched = make(opt)
        with pytest.warns(UserWarning, match="before `?optimizer.step\\(\\)"):
            sched.step()
    w = torch.nn.Parameter(torch.ones(1))
    opt = lrkit.optim.Adam([w], lr=0.1)
    sched = lrkit.Scheduler(opt, lr=S.cosine(0.1, total=10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        w.grad = torch.ones(1)
        opt.step()
        sched.step()
    assert pickle.loads(pickle.dumps(opt)).impl == "auto"  # the step wrapper is not copied


# -------------------------------------------------------------- plateau, added groups
def test_plateau_takes_param_groups_added_later_as_torch():
    out = []
    for make in (lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.1),
                 lambda o: lrkit.Scheduler(o, plateau=lrkit.Plateau(patience=0, factor=0.1))):
        w, v = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
        opt = torch.optim.SGD([w], lr=0.5)
        sched = make(opt)
        opt.step()
        sched.step(1.0)
        opt.add_param_group({"params": [v], "lr": 0.05})
        opt.step()
        sched.step(1.0)
        out.append([g["lr"] for g in opt.param_groups])
    assert out[1] == pytest.approx(out[0]) and out[1] == pytest.approx([0.05, 0.005])


def test_plateau_min_lr_list_must_match_the_param_groups():
    w, v = torch.nn.Parameter(torch.ones(1)), torch.nn.Parameter(torch.ones(1))
    opt = torch.optim.SGD([w], lr=0.5)
    with pytest.raises(ValueError, match="min_lr has 2 values, the optimizer 1 param groups"):
        lrkit.Scheduler(opt, plateau=lrkit.Plateau(min_lr=[0.1, 0.2]))
    sched = lrkit.Scheduler(opt, plateau=lrkit.Plateau(min_lr=[0.1], patience=0))
    opt.add_param_group({"params": [v], "lr": 0.05})
    with pytest.raises(ValueError, match="min_lr has 1 values, the optimizer now 2"):
        sched.step(1.0)


# -------------------------------------------------------------- a closure's loss
@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_step_with_a_closure_returns_its_loss(name):
    info = REGISTRY[name]
    model, data = make_model(), batches()
    opt = make_opt(info.cls, model.parameters(), **info.configs[0])
    loss = opt.step(closure_for(opt, model, data[0]))
    assert torch.is_tensor(loss)
    with torch.no_grad():
        before = loss_of(make_model(), data[0])
    assert float(loss) == pytest.approx(float(before), rel=1e-6)


def test_loading_a_state_dict_keeps_the_optimizers_own_settings():
    w = torch.nn.Parameter(torch.ones(3))
    src = lrkit.optim.Adam([w], nonfinite="skip", impl="kernel")
    opt = lrkit.optim.Adam([w], nonfinite="zero", impl="reference")
    opt.load_state_dict(src.state_dict())
    assert (opt.impl, opt.nonfinite) == ("reference", "zero")
