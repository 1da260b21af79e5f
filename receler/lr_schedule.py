"""The learning rate of every update: an optional linear warm-up, then constant, cosine or linear decay.

The rate of update ``u`` (counted from 1) depends on ``u`` alone, so a resumed run continues the schedule
exactly where the interrupted one was, with nothing to save. Unlike the usual ``LambdaLR`` convention, no
update runs at a rate of 0: the warm-up's first update already runs at ``1/W`` of the rate, and the decay
ends one step short of 0 (a zero-rate update would cost a full update and change nothing).
"""

import math

LR_SCHEDULERS = ("constant", "cosine", "linear")


def lr_factor(kind: str, update: int, total: int, warmup: int = 0) -> float:
    """The share of the base learning rate at update ``update`` (1-based) of a run of ``total`` updates.

    Warm-up (``update <= warmup``): ``update / warmup``. After it, with the decay's progress
    ``p = (update - warmup - 1) / (total - warmup)`` in ``[0, 1)``: constant ``1``, linear ``1 - p``,
    cosine ``(1 + cos(pi p)) / 2``.
    """
    if kind not in LR_SCHEDULERS:
        raise ValueError(f"unknown learning rate schedule {kind!r}; choose one of {', '.join(LR_SCHEDULERS)}")
    if warmup > 0 and update <= warmup:
        return update / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (update - warmup - 1) / max(1, total - warmup)))
    if kind == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizer, base_lr: float, kind: str, update: int, total: int, warmup: int = 0) -> float:
    """Set every parameter group of ``optimizer`` to the rate of ``update``; returns it."""
    lr = base_lr * lr_factor(kind, update, total, warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
