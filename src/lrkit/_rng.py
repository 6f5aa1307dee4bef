"""Snapshots of the global random number generators, restored bit for bit.

``with preserved_rng(): ...`` leaves torch's CPU (and, when initialised, CUDA) generators,
numpy's legacy global ``RandomState`` and Python's ``random`` exactly as it found them,
whatever happens inside. Used wherever lrkit must run code that draws random numbers
(a range test, building a benchmark task) without disturbing the caller's stream.
"""
from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class RNGState:
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    numpy: Any
    python: Any


def capture_rng() -> RNGState:
    """The state of every global generator; CUDA only when already initialised."""
    cuda = None
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = torch.cuda.get_rng_state_all()
    numpy_state = np.random.get_state()  # noqa: NPY002 (the legacy global state is the point)
    return RNGState(torch.get_rng_state(), cuda, numpy_state, random.getstate())


def restore_rng(state: RNGState) -> None:
    torch.set_rng_state(state.torch_cpu)
    if state.torch_cuda is not None:
        torch.cuda.set_rng_state_all(state.torch_cuda)
    np.random.set_state(state.numpy)  # noqa: NPY002
    random.setstate(state.python)


@contextmanager
def preserved_rng() -> Iterator[RNGState]:
    state = capture_rng()
    try:
        yield state
    finally:
        restore_rng(state)
