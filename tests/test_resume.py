"""Exact resume in a new process, for every optimizer x every schedule family.

Each combination (tests/resume_cases.py: the registry's optimizers, schedule-free ones
saved in train and in eval mode, x every family of ``S.REGISTRY`` and the plateau, all
through ``lrkit.Scheduler``) trains N steps straight in this process, having saved model,
optimizer and scheduler with ``torch.save`` after K steps; one new process
(tests/resume_worker.py) loads every checkpoint into freshly built objects and trains
the N - K remaining steps. The final parameters must be bit for bit identical.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lrkit import schedules as S
from resume_cases import CASES, FAMILIES, SCHEDULES, K, N, build, checkpoint, params, train

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("resume")  # one worker runs the new process, once


def test_every_family_and_optimizer_is_combined():
    from optim_registry import REGISTRY
    assert set(SCHEDULES) == set(S.REGISTRY), "add the new family to resume_cases.SCHEDULES"
    assert {c.optimizer for c in CASES} == set(REGISTRY)
    assert {c.family for c in CASES} == set(FAMILIES)
    for name, s in SCHEDULES.items():  # each changes between K and N: resuming matters
        assert len({s(n) for n in range(K, N)}) > 1 or name == "constant", name


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("resume")
    straight = {}
    for i, case in enumerate(CASES):
        model, opt, sched = build(case)
        train(case, model, opt, sched, 0, K)
        if case.mode == "eval":
            opt.eval()
        torch.save(checkpoint(model, opt, sched), folder / f"{i}.pt")
        if case.mode == "eval":
            opt.train()
        train(case, model, opt, sched, K, N)
        straight[i] = params(model)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "resume_worker.py"),
                           str(folder)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return straight, torch.load(folder / "resumed.pt", weights_only=False)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c.id for c in CASES])
def test_resumed_in_a_new_process_equals_straight(runs, i):
    straight, resumed = runs
    init = params(build(CASES[i], seed=1)[0])
    assert any(not torch.equal(a, b) for a, b in zip(straight[i], init))
    for a, b in zip(straight[i], resumed[i]):
        assert torch.equal(a, b)
