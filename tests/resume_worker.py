"""A new process resuming every checkpoint of tests/test_resume.py.

``python tests/resume_worker.py DIR`` (PYTHONPATH=src:tests): for each case ``i`` of
``resume_cases.CASES`` it builds fresh objects, loads ``DIR/{i}.pt`` (written with
``torch.save``), switches a schedule-free optimizer saved in eval mode back to training,
trains steps K..N and saves the final parameters of every case to ``DIR/resumed.pt``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from resume_cases import CASES, K, N, build, params, train  # noqa: E402


def main(folder: Path) -> None:
    out = {}
    for i, case in enumerate(CASES):
        saved = torch.load(folder / f"{i}.pt", weights_only=False)
        model, opt, sched = build(case, seed=1)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        if case.mode == "eval":
            opt.train()
        train(case, model, opt, sched, K, N)
        out[i] = params(model)
    torch.save(out, folder / "resumed.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
