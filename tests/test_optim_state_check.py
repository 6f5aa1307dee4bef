"""A corrupted or mismatched state_dict raises a clear error and changes nothing.

For every registry optimizer, corruptions of a real state_dict (generated from its
structure: every state key removed, every state tensor reshaped, retyped or given a NaN,
settings made invalid, groups and ids mangled) and every other optimizer's state_dict
must raise ValueError or TypeError naming what is wrong, and leave the parameters, the
state and the param groups bit for bit as they were.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from optim_helpers import INFOS, batches, make_model, param_groups, same_state, train


def trained(info, cfg=None, seed=0):
    cfg = info.configs[-1] if cfg is None else cfg
    model = make_model(seed=seed)
    opt = info.cls(param_groups(model, cfg, True, info.cls), **cfg)
    train(opt, model, batches(), 3, closure="needs_closure" in info.tags)
    return model, opt


def frozen(opt):
    return (copy.deepcopy(opt.state_dict()), [p.detach().clone() for g in opt.param_groups
                                              for p in g["params"]],
            [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def assert_unchanged(opt, before):
    sd, params, groups = before
    assert same_state(opt.state_dict(), sd)
    now = [p.detach() for g in opt.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(now, params))
    assert same_state({i: {k: v for k, v in g.items() if k != "params"}
                       for i, g in enumerate(opt.param_groups)}, dict(enumerate(groups)))


def corruptions(sd):
    """(what, corrupted copy, words the message must contain)."""
    def mutate(fn):
        out = copy.deepcopy(sd)
        fn(out)
        return out

    yield "not a dict", list(sd.items()), ["must be a dict"]
    yield "no state", {k: v for k, v in sd.items() if k != "state"}, ["'state'"]
    yield "no groups", {k: v for k, v in sd.items() if k != "param_groups"}, ["'param_groups'"]
    yield "a group less", mutate(lambda d: d["param_groups"].pop()), ["param group"]
    yield "a param less", mutate(lambda d: d["param_groups"][0]["params"].pop()), \
        ["param group 0", "parameter(s)"]
    yield "unknown id", mutate(lambda d: d["state"].__setitem__(999, {})), ["999"]
    yield "skipped", mutate(lambda d: d.__setitem__("skipped_steps", -1)), ["skipped_steps"]
    yield "lr < 0", mutate(lambda d: d["param_groups"][-1].__setitem__("lr", -1.0)), ["lr"]
    yield "lr text", mutate(lambda d: d["param_groups"][-1].__setitem__("lr", "0.1")), ["lr"]
    yield "lr nan", mutate(lambda d: d["param_groups"][0].__setitem__("lr", math.nan)), ["lr"]
    group = sd["param_groups"][0]
    for key, v in group.items():
        if isinstance(v, tuple) and key != "params":  # betas, eps pairs: wrong length
            yield f"{key} too long", mutate(
                lambda d, key=key, v=v: d["param_groups"][0].__setitem__(key, (*v, v[-1]))), [key]
        if isinstance(v, float) and key != "lr" and not key.startswith(("d", "initial")):
            yield f"{key} nan", mutate(
                lambda d, key=key: d["param_groups"][0].__setitem__(key, math.nan)), [key]
    # the first parameter with state (SLS keeps none per parameter: its search is in
    # the param groups, and the per-parameter corruptions below reduce to a foreign key)
    index, state = next(((k, s) for k, s in sd["state"].items() if s),
                        (sd["param_groups"][0]["params"][0], {}))
    yield "state not a dict", mutate(lambda d: d["state"].__setitem__(index, [1, 2])), \
        ["must be a dict"]
    for key, v in state.items():
        if len(state) > 1:  # (an empty state is a parameter not stepped yet)
            yield f"no {key}", mutate(lambda d, key=key: d["state"][index].pop(key)), \
                [key, "lacks"]
        if not isinstance(v, torch.Tensor):
            continue
        yield f"{key} text", mutate(
            lambda d, key=key: d["state"][index].__setitem__(key, "zeros")), [key, "str"]
        yield f"{key} meta", mutate(
            lambda d, key=key, v=v: d["state"][index].__setitem__(key, v.to("meta"))), \
            [key, "meta"]
        if key in ("step", "mu_product"):
            yield f"{key} complex", mutate(
                lambda d, key=key, v=v: d["state"][index].__setitem__(
                    key, v.to(torch.complex64))), [key, "real"]
        if v.dim() > 0:
            yield f"{key} shape", mutate(
                lambda d, key=key, v=v: d["state"][index].__setitem__(
                    key, torch.zeros(*v.shape[:-1], v.shape[-1] + 1))), [key, "shape"]
            yield f"{key} flat", mutate(
                lambda d, key=key, v=v: d["state"][index].__setitem__(
                    key, v.reshape(-1)[:-1])), \
                [key, "shape"]
        if v.is_floating_point():
            bad = v.clone()
            bad.view(-1)[0] = math.nan
            yield f"{key} nan", mutate(
                lambda d, key=key, bad=bad: d["state"][index].__setitem__(key, bad)), \
                [key, "NaN"]
    # (SGD without momentum keeps no entry at all, as torch's)
    yield "foreign key", mutate(lambda d: d["state"].setdefault(index, {}).__setitem__(
        "foreign_buffer", torch.zeros(3))), ["foreign_buffer"]


CASES = [(info, what, bad, words) for info in INFOS
         for what, bad, words in corruptions(trained(info)[1].state_dict())]


@pytest.mark.parametrize("info,what,bad,words", CASES,
                         ids=[f"{i.name}-{w}" for i, w, _, _ in CASES])
def test_corrupted_state_dict_raises_and_changes_nothing(info, what, bad, words):
    _, opt = trained(info, seed=3)
    before = frozen(opt)
    with pytest.raises((ValueError, TypeError)) as exc:
        opt.load_state_dict(bad)
    message = str(exc.value)
    assert message.startswith(f"{info.name}.load_state_dict(): "), message
    for word in words:
        assert word in message, message
    assert_unchanged(opt, before)


PAIRS = [(a, b) for a in INFOS for b in INFOS if a is not b]


@pytest.mark.parametrize("ours,theirs", PAIRS, ids=[f"{a.name}<-{b.name}" for a, b in PAIRS])
def test_another_algorithms_state_dict_is_refused(ours, theirs):
    """lrkit's state_dicts name their class (a subclass takes its base class's and the
    base its subclass's, as torch's AdamW and Adam take each other's); without that name
    (as torch's), the layout decides: refused unless the state and the settings fit this
    algorithm."""
    _, opt = trained(ours, seed=3)
    before = frozen(opt)
    sd = trained(theirs)[1].state_dict()
    if not (issubclass(ours.cls, theirs.cls) or issubclass(theirs.cls, ours.cls)):
        with pytest.raises(ValueError, match=f"saved by lrkit.optim.{theirs.name}"):
            opt.load_state_dict(sd)
        assert_unchanged(opt, before)
    del sd["lrkit_optimizer"]
    ours_sd = opt.state_dict()
    same_layout = all(set(a) == set(b) for a, b in zip(ours_sd["state"].values(),
                                                        sd["state"].values()))
    try:
        opt.load_state_dict(sd)
    except (ValueError, TypeError) as exc:
        assert str(exc).startswith(f"{ours.name}.load_state_dict(): ")
        assert_unchanged(opt, before)
    else:
        assert same_layout, f"{theirs.name}'s state loaded into {ours.name}"


@pytest.mark.parametrize("info", INFOS, ids=[i.name for i in INFOS])
def test_every_config_round_trips_through_the_checks(info):
    """No false alarm: every registry config's own state_dict loads."""
    for cfg in info.configs:
        _, opt = trained(info, cfg)
        sd = opt.state_dict()
        model2 = make_model(seed=2)
        again = info.cls(param_groups(model2, cfg, True, info.cls), **cfg)
        again.load_state_dict(copy.deepcopy(sd))
        assert same_state(again.state_dict(), sd)


def test_a_torch_state_dict_of_another_algorithm_is_refused():
    import lrkit
    model = make_model()
    theirs = torch.optim.RMSprop(model.parameters(), lr=0.01, momentum=0.9)
    train(theirs, model, batches(), 2)
    ours = lrkit.optim.Adagrad(make_model().parameters())
    with pytest.raises(ValueError, match="lacks 'lr_decay'|lacks 'sum'"):
        ours.load_state_dict(theirs.state_dict())


SCALAR_INFOS = [i for i in INFOS if isinstance(next(
    (st for st in trained(i)[1].state_dict()["state"].values() if st), {}).get("step"),
    torch.Tensor)]


@pytest.mark.parametrize("info", SCALAR_INFOS, ids=[i.name for i in SCALAR_INFOS])
@pytest.mark.parametrize("form", ["number", "integer tensor", "bfloat16 tensor"])
def test_scalar_state_saved_as_numbers_loads_as_the_tensors_it_stands_for(info, form):
    """Older torch versions saved ``step`` (and NAdam's ``mu_product``) as Python numbers,
    and a hand-made state_dict may hold an integer tensor: they load as the float tensors
    the step keeps, and training goes on exactly as from the state_dict as saved."""
    model, opt = trained(info)
    sd = copy.deepcopy(opt.state_dict())
    converted = copy.deepcopy(sd)
    changed = 0
    for st in converted["state"].values():
        for key in ("step", "mu_product"):
            v = st.get(key)
            if isinstance(v, torch.Tensor) and v.dim() == 0:
                if form == "number":
                    st[key] = int(v) if key == "step" else float(v)
                elif key == "step" and form == "integer tensor":
                    st[key] = v.to(torch.int64)
                elif key == "step":
                    st[key] = v.to(torch.bfloat16)
                else:
                    continue
                changed += 1
    assert changed
    outs = []
    for state_dict in (sd, converted):
        again_model = make_model(seed=5)
        again = info.cls(param_groups(again_model, info.configs[-1], True, info.cls),
                         **info.configs[-1])
        again.load_state_dict(copy.deepcopy(state_dict))
        for st in again.state.values():
            for key in ("step", "mu_product"):
                if key in st:
                    assert isinstance(st[key], torch.Tensor)
                    assert st[key].dtype in (torch.float32, torch.float64)
        train(again, again_model, batches(), 2, closure="needs_closure" in info.tags)
        outs.append([p.detach().clone() for p in again_model.parameters()])
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
