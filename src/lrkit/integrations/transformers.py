"""Hugging Face Transformers: ``Trainer(..., optimizers=(optimizer, scheduler))`` takes an
lrkit optimizer and ``lrkit.Scheduler`` as they are; ``schedule`` gives the lrkit schedule
equal to what ``transformers.get_scheduler(name, ...)`` builds, so a recipe written with
its names moves over unchanged. This module does not import transformers.
"""
from __future__ import annotations

from typing import Any

from lrkit import _checks as C
from lrkit import schedules as S

NAMES = ("constant", "constant_with_warmup", "linear", "cosine", "polynomial")


def schedule(name: str, lr: float, *, num_warmup_steps: int = 0,
             num_training_steps: int | None = None, **kwargs: Any) -> S.Schedule:
    """The lrkit schedule of ``transformers.get_scheduler(name, optimizer,
    num_warmup_steps, num_training_steps, scheduler_specific_kwargs=kwargs)`` for an
    optimizer at ``lr``: a linear warmup from 0 over ``num_warmup_steps``, then

    * ``"constant"`` / ``"constant_with_warmup"``: ``lr`` (``constant`` takes no warmup);
    * ``"linear"``: linear decay to 0 at ``num_training_steps``;
    * ``"cosine"``: half a cosine to 0 at ``num_training_steps`` (``num_cycles=0.5``),
      then 0 (transformers' formula climbs again past the end);
    * ``"polynomial"``: ``(lr - lr_end) (1 - progress) ** power + lr_end`` (``lr_end``
      1e-7, ``power`` 1.0 as in transformers), then ``lr_end``.
    """
    fn = "schedule()"
    name = C.choice(fn, "name", name, NAMES)
    lr = C.positive(fn, "lr", lr)
    warmup = C.nonnegative_int(fn, "num_warmup_steps", num_warmup_steps)
    allowed = {"polynomial": {"lr_end", "power"}, "cosine": {"num_cycles"}}.get(name, set())
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"{fn}: {name!r} takes no {', '.join(unknown)} (it takes "
                        f"{', '.join(sorted(allowed)) or 'no extra arguments'})")
    if name == "constant":
        if warmup:
            raise ValueError(f"{fn}: 'constant' has no warmup, got num_warmup_steps={warmup}; "
                             f"use 'constant_with_warmup'")
        return S.constant(lr)
    if name == "constant_with_warmup":
        body = S.constant(lr)
    else:
        if num_training_steps is None:
            raise ValueError(f"{fn}: {name!r} needs num_training_steps")
        total = C.integer(fn, "num_training_steps", num_training_steps, minimum=warmup + 1)
        decay = total - warmup
        if name == "linear":
            body = S.linear(lr, 0.0, decay)
        elif name == "cosine":
            cycles = C.positive(fn, "num_cycles", kwargs.get("num_cycles", 0.5))
            if cycles != 0.5:
                raise ValueError(f"{fn}: num_cycles other than 0.5 has no lrkit equal here, "
                                 f"got {cycles}")
            body = S.cosine(lr, total=decay)
        else:
            end = C.nonnegative(fn, "lr_end", kwargs.get("lr_end", 1e-7))
            if end >= lr:
                raise ValueError(f"{fn}: lr_end ({end}) must be below lr ({lr})")
            power = C.positive(fn, "power", kwargs.get("power", 1.0))
            body = S.polynomial(lr, total=decay, end=end, power=power)
    return S.warmup(body, steps=warmup) if warmup else body
