"""Seeded cells whose schedule did not change give identical numbers after the one
training loop (issue 13): arena cells (plain steps, closure, schedule-free, learning-rate
free, every arena family), the range test (with accumulation), the autopilot and a tuning
trial, against values recorded from main at 4cb7062 (``tests/loop_golden.py``)."""
from __future__ import annotations

import json
import math
import os

import pytest

import loop_golden as G

pytestmark = pytest.mark.usefixtures("one_thread")
RECORDED = json.loads(G.GOLDEN.read_text())
CI = bool(os.environ.get("CI"))  # CI (2 cores) replays the cells that take under a second


def same(a, b) -> bool:
    """Equal, bit for bit (NaN equals NaN), through lists and dicts."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


@pytest.mark.parametrize("spec", [c for c in G.CELLS if not (CI and c[1] == "mnist1d_mlp")],
                         ids=lambda c: "/".join(map(str, c)))
def test_arena_cell_is_identical(spec):
    got = json.loads(json.dumps(G.cell(*spec)))
    assert same(got, RECORDED["/".join(map(str, spec))])


DRIVERS = {"find_lr": G.finder, "autopilot/adam": lambda: G.autopilot("adam", 200),
           "autopilot/prodigy": lambda: G.autopilot("prodigy", 60),
           "tune/cosine": G.tune_trial, **G.EXTRA}


@pytest.mark.parametrize("key", [k for k in DRIVERS if not (
    CI and k in ("autopilot/adam", "autopilot/sgd/val_fn"))])
def test_driver_is_identical(key):
    assert same(json.loads(json.dumps(DRIVERS[key]())), RECORDED[key])
