"""Hypothesis strategies: a random valid instance of every schedule in the registry."""
from __future__ import annotations

from hypothesis import strategies as st

from lrkit import schedules as S

lrs = st.floats(1e-5, 1.0)
small_totals = st.integers(1, 300)
fractions = st.floats(0.05, 0.95)


@st.composite
def wsd(draw):
    total = draw(st.integers(2, 300))
    decay = draw(st.floats(0.0, 1.0))
    max_warmup = total - round(decay * total)
    return S.wsd(draw(lrs), total, warmup=draw(st.integers(0, max_warmup)), decay=decay,
                 end=draw(st.floats(0, 1e-5)), shape=draw(st.sampled_from(["linear", "cosine",
                                                                          "sqrt"])))


@st.composite
def one_cycle(draw):
    total = draw(st.integers(10, 400))
    three = draw(st.booleans())
    hi = 0.45 if three else 0.95
    pct = draw(st.floats(1.5 / total + 1e-6, hi)) if 1.5 / total < hi else 0.4
    return S.one_cycle(draw(lrs), total, pct_start=pct,
                       anneal=draw(st.sampled_from(["cos", "linear"])),
                       div=draw(st.floats(1.5, 100)), final_div=draw(st.floats(1.5, 1e4)),
                       three_phase=three)


@st.composite
def cyclic(draw):
    low = draw(st.floats(1e-5, 0.1))
    up = draw(st.integers(1, 50))
    return S.cyclic(low, low + draw(st.floats(0.0, 1.0)), up,
                    down=draw(st.none() | st.integers(1, 50)),
                    mode=draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
                    gamma=draw(st.floats(0.9, 1.0)))


@st.composite
def piecewise(draw):
    bounds = sorted(set(draw(st.lists(st.integers(1, 300), max_size=5))))
    values = draw(st.lists(st.floats(0, 1), min_size=len(bounds) + 1, max_size=len(bounds) + 1))
    return S.piecewise(bounds, values)


@st.composite
def multistep(draw):
    milestones = sorted(draw(st.lists(st.integers(1, 300), max_size=5)))
    return S.multistep(draw(lrs), milestones, gamma=draw(st.floats(0.05, 1.0)))


BASE = {
    "time_based": st.builds(S.time_based, lrs, st.floats(0, 0.1)),
    "step_based": st.builds(S.step_based, lrs, st.floats(0.05, 1.0), st.integers(1, 50)),
    "exponential": st.builds(S.exponential, lrs, st.floats(0, 0.05)),
    "constant": st.builds(S.constant, lrs),
    "linear": st.builds(S.linear, lrs, lrs, small_totals),
    "step": st.builds(S.step, lrs, st.integers(1, 50), st.floats(0.05, 1.0)),
    "multistep": multistep(),
    "inverse_time": st.builds(S.inverse_time, lrs, st.floats(0, 2), st.integers(1, 50),
                              st.booleans()),
    "exponential_decay": st.builds(S.exponential_decay, lrs, st.floats(0.05, 1.0),
                                   st.integers(1, 50), st.booleans()),
    "polynomial": st.builds(S.polynomial, lrs, small_totals, st.floats(0, 1e-5),
                            st.floats(0.1, 4.0)),
    "cosine": st.builds(S.cosine, lrs, small_totals, st.floats(0, 1e-5)),
    "cosine_restarts": st.builds(S.cosine_restarts, lrs, st.integers(1, 40), st.integers(1, 3),
                                 st.floats(0, 1e-5)),
    "cyclic": cyclic(),
    "one_cycle": one_cycle(),
    "piecewise": piecewise(),
    "inverse_sqrt": st.builds(S.inverse_sqrt, lrs, st.integers(1, 100)),
    "wsd": wsd(),
}
base_schedules = st.one_of(*BASE.values())

COMBINATORS = {
    "warmup": st.builds(S.warmup, base_schedules, st.integers(0, 50), st.floats(0, 1e-3)),
    "join": st.builds(
        lambda a, b, k: S.join([a, b], [k]), base_schedules, base_schedules,
        st.integers(0, 200)),
    "product": st.builds(lambda a, c: a * c, base_schedules, st.floats(0.1, 2.0)),
    "clip": st.builds(lambda a, lo, w: S.clip(a, lo, lo + w), base_schedules,
                      st.floats(0, 1e-3), st.floats(0, 1.0)),
}
ALL = {**BASE, **COMBINATORS}
any_schedule = st.one_of(*ALL.values())
