"""Loss functions and accuracy, one registry entry each, per example and per member.

Multiclass outputs are logits [E, B, C] with integer targets [E, B]; binary outputs (parity) are
one score [E, B] with targets ±1. Each loss returns [E, B], so the engine can weight examples by
per-member masks (minibatch slots, training sets) before summing.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def _one_hot(targets: Tensor, n: int, like: Tensor) -> Tensor:
    return F.one_hot(targets, n).to(like.dtype)


def cross_entropy(out: Tensor, y: Tensor) -> Tensor:
    if out.dim() == y.dim():  # binary: logistic loss on a ±1 target
        return F.softplus(-y * out)
    return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").reshape(y.shape)


def mse(out: Tensor, y: Tensor) -> Tensor:
    """Mean squared error against the one-hot target (seed 004's option); (f − y)² if binary."""
    if out.dim() == y.dim():
        return (out - y) ** 2
    return ((out - _one_hot(y, out.shape[-1], out)) ** 2).mean(-1)


def hinge(out: Tensor, y: Tensor) -> Tensor:
    """max(0, 1 − y·f) for binary outputs; the multi-class margin loss otherwise."""
    if out.dim() == y.dim():
        return F.relu(1 - y * out)
    correct = out.gather(-1, y.unsqueeze(-1))
    margins = F.relu(1 - correct + out) * (1 - _one_hot(y, out.shape[-1], out))
    return margins.sum(-1) / out.shape[-1]


LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "cross_entropy": cross_entropy,
    "mse": mse,
    "hinge": hinge,
}


def correct(out: Tensor, y: Tensor) -> Tensor:
    """1.0 where the prediction is right: argmax class, or the sign of a binary score."""
    if out.dim() == y.dim():
        return ((out > 0) == (y > 0)).to(out.dtype)
    return (out.argmax(-1) == y).to(out.dtype)
