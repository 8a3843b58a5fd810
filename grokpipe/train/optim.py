"""Optimisers over stacked ensemble parameters, with per-member hyperparameters.

Every parameter is [E, ...]; learning rate, weight decay and the per-layer update gate are [E]
tensors, so members with different hyperparameters share one set of kernels. Updates are done in
place on preallocated state so the whole step can be captured in a CUDA graph.

The gate implements per-layer schedules (freezing, rate limiting) for any family: a gated-off
member leaves the parameter and its optimiser state untouched on that step, as if the layer had
not been in the optimiser; Adam's bias correction counts only the steps the layer took.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grokpipe.models.base import member_view

Tensor = torch.Tensor


@dataclass
class OptimState:
    """Per-parameter optimiser state, all tensors preallocated on the device."""

    slots: dict[str, dict[str, Tensor]]  # param name -> {"m": .., "v": .., "count": [E], ...}

    def tensors(self) -> dict[str, Tensor]:
        return {f"{p}.{k}": t for p, d in self.slots.items() for k, t in d.items()}


def init_state(params: dict[str, Tensor], optimizer: str, momentum: float, grokfast: bool):
    slots = {}
    for name, p in params.items():
        s = {"count": torch.zeros(p.shape[0], device=p.device)}
        if optimizer == "adamw":
            s["m"] = torch.zeros_like(p)
            s["v"] = torch.zeros_like(p)
        elif momentum > 0:
            s["buf"] = torch.zeros_like(p)
        if grokfast:
            s["ema"] = torch.zeros_like(p)
        slots[name] = s
    return OptimState(slots)


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters shared by every member of an ensemble (baked into the compiled step)."""

    betas: tuple[float, float]
    eps: float
    momentum: float
    warmup_steps: int
    grokfast_alpha: float | None
    grokfast_lamb: float


def _where(gate: Tensor, new: Tensor, old: Tensor) -> Tensor:
    return torch.where(member_view(gate, new.dim()) > 0, new, old)


def adamw_update(p, g, s, lr, wd, gate, h: Hyper):
    """Decoupled weight decay Adam (torch.optim.AdamW semantics)."""
    b1, b2 = h.betas
    count = s["count"] + gate
    m = b1 * s["m"] + (1 - b1) * g
    v = b2 * s["v"] + (1 - b2) * g * g
    c = torch.clamp(count, min=1.0)
    bc1 = member_view(1 - b1**c, p.dim())
    bc2 = member_view(1 - b2**c, p.dim())
    lr_ = member_view(lr, p.dim())
    new = p * (1 - lr_ * member_view(wd, p.dim()))
    new = new - lr_ * (m / bc1) / ((v / bc2).sqrt() + h.eps)
    p.copy_(_where(gate, new, p))
    s["m"].copy_(_where(gate, m, s["m"]))
    s["v"].copy_(_where(gate, v, s["v"]))
    s["count"].copy_(count)


def sgd_update(p, g, s, lr, wd, gate, h: Hyper):
    """torch.optim.SGD semantics: L2 weight decay added to the gradient, optional momentum."""
    d = g + member_view(wd, p.dim()) * p
    if h.momentum > 0:
        buf = h.momentum * s["buf"] + d
        s["buf"].copy_(_where(gate, buf, s["buf"]))
        d = buf
    new = p - member_view(lr, p.dim()) * d
    p.copy_(_where(gate, new, p))
    s["count"].copy_(s["count"] + gate)


UPDATES: dict[str, Callable] = {"adamw": adamw_update, "sgd": sgd_update}


def apply_updates(
    optimizer: str,
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    state: OptimState,
    lr: Tensor,
    wd: Tensor,
    gates: dict[str, Tensor],
    t: Tensor,
    h: Hyper,
) -> None:
    """One optimiser step at (1-based) step t, for every parameter, in place."""
    update = UPDATES[optimizer]
    if h.warmup_steps > 0:
        lr = lr * torch.clamp(t.to(lr.dtype) / h.warmup_steps, max=1.0)
    for name, p in params.items():
        g = grads[name]
        s = state.slots[name]
        gate = gates[name]
        if h.grokfast_alpha is not None:
            a = h.grokfast_alpha
            ema = a * s["ema"] + (1 - a) * g
            s["ema"].copy_(_where(gate, ema, s["ema"]))
            g = g + h.grokfast_lamb * ema
        update(p, g, s, lr, wd, gate, h)
