"""Optimisers over stacked ensemble parameters, with per-member hyperparameters.

Every parameter is [E, ...]; learning rate, weight decay and the per-layer update gates are
per-member tensors, so members with different hyperparameters share one set of kernels. Updates
are done in place on preallocated state so the whole step can be captured in a CUDA graph.

The update is written with `torch._foreach_*` ops over the list of parameters: the compiled step
traces a handful of list ops instead of some twenty ops per parameter (the per-parameter loop
was a third of dynamo's trace of the train step), and inductor lowers each list op into
horizontally fused kernels.

The gates implement per-layer schedules (freezing, rate limiting) for any family: a gated-off
member leaves the parameter and its optimiser state untouched on that step, as if the layer had
not been in the optimiser; Adam's bias correction counts only the steps the layer took. Gates
are 0 or 1 and enter as exact coefficients: on a gated-on step the arithmetic is the ungated
update's (x * 1.0 is x), on a gated-off step every state is multiplied by 1 and added 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from grokpipe.models.base import member_view

Tensor = torch.Tensor


@dataclass
class OptimState:
    """Optimiser state, preallocated on the device: per parameter its slots ("m", "v", "buf",
    "ema"), and `count` [E, n_params], the steps each member's parameter has taken."""

    slots: dict[str, dict[str, Tensor]]
    count: Tensor

    def tensors(self) -> dict[str, Tensor]:
        out = {f"{p}.{k}": t for p, d in self.slots.items() for k, t in d.items()}
        out["count"] = self.count
        return out


def init_state(params: dict[str, Tensor], optimizer: str, momentum: float, grokfast: bool):
    slots = {}
    for name, p in params.items():
        s = {}
        if optimizer == "adamw":
            s["m"] = torch.zeros_like(p)
            s["v"] = torch.zeros_like(p)
        elif momentum > 0:
            s["buf"] = torch.zeros_like(p)
        if grokfast:
            s["ema"] = torch.zeros_like(p)
        slots[name] = s
    first = next(iter(params.values()))
    count = torch.zeros(first.shape[0], len(params), device=first.device)
    return OptimState(slots, count)


@dataclass(frozen=True)
class Hyper:
    """Hyperparameters shared by every member of an ensemble (baked into the compiled step)."""

    betas: tuple[float, float]
    eps: float
    momentum: float
    warmup_steps: int
    grokfast_alpha: float | None
    grokfast_lamb: float


class PerParam:
    """Per-member coefficients broadcast against each parameter.

    A coefficient is [E] when every parameter shares one schedule (`uniform`: the usual case,
    one view per parameter rank) or [E, n_params] with a column per parameter."""

    def __init__(self, params: list[Tensor], uniform: bool):
        self.ranks = [p.dim() for p in params]
        self.uniform = uniform

    def __call__(self, coef: Tensor) -> list[Tensor]:
        if self.uniform:
            views = {r: member_view(coef, r) for r in set(self.ranks)}
            return [views[r] for r in self.ranks]
        return [member_view(coef[:, i], r) for i, r in enumerate(self.ranks)]


def _gated(gate: Tensor, on, off: float) -> Tensor:
    """`on` where the gate is open, `off` where it is shut (per member, per parameter)."""
    return torch.where(gate > 0, on, off)


def adamw_update(P, G, S, count, lr, wd, gate, each: PerParam, h: Hyper) -> None:
    """Decoupled weight decay Adam (torch.optim.AdamW semantics), gated per member."""
    b1, b2 = h.betas
    M, V = [s["m"] for s in S], [s["v"] for s in S]
    torch._foreach_mul_(M, each(_gated(gate, b1, 1.0)))
    torch._foreach_add_(M, torch._foreach_mul(G, each(_gated(gate, 1 - b1, 0.0))))
    torch._foreach_mul_(V, each(_gated(gate, b2, 1.0)))
    c2G = torch._foreach_mul(G, each(_gated(gate, 1 - b2, 0.0)))
    torch._foreach_add_(V, torch._foreach_mul(c2G, G))
    c = torch.clamp(count, min=1.0)
    denom = torch._foreach_div(V, each(1 - b2**c))
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, h.eps)
    step = torch._foreach_div(M, each(1 - b1**c))
    torch._foreach_mul_(step, each(lr * gate))
    torch._foreach_div_(step, denom)
    torch._foreach_mul_(P, each(_gated(gate, 1 - lr * wd, 1.0)))
    torch._foreach_sub_(P, step)


def sgd_update(P, G, S, count, lr, wd, gate, each: PerParam, h: Hyper) -> None:
    """torch.optim.SGD semantics: L2 weight decay added to the gradient, optional momentum."""
    D = torch._foreach_add(G, torch._foreach_mul(P, each(wd)))
    if h.momentum > 0:
        B = [s["buf"] for s in S]
        torch._foreach_mul_(B, each(_gated(gate, h.momentum, 1.0)))
        torch._foreach_add_(B, torch._foreach_mul(D, each(gate)))
        D = B
    torch._foreach_sub_(P, torch._foreach_mul(D, each(lr * gate)))


UPDATES: dict[str, Callable] = {"adamw": adamw_update, "sgd": sgd_update}


def apply_updates(
    optimizer: str,
    params: dict[str, Tensor],
    grads: dict[str, Tensor],
    state: OptimState,
    lr: Tensor,
    wd: Tensor,
    gates: Tensor,
    t: Tensor,
    h: Hyper,
) -> None:
    """One optimiser step at (1-based) step t, for every parameter, in place.

    `gates` is [E] (one schedule for every parameter) or [E, n_params] (a column per parameter,
    in the order of `params`); lr and wd are [E]."""
    names = list(params)
    P, G = [params[n] for n in names], [grads[n] for n in names]
    S = [state.slots[n] for n in names]
    uniform = gates.dim() == 1
    each = PerParam(P, uniform)
    if h.warmup_steps > 0:
        lr = lr * torch.clamp(t.to(lr.dtype) / h.warmup_steps, max=1.0)
    if not uniform:
        lr, wd = lr.unsqueeze(1).expand_as(gates), wd.unsqueeze(1).expand_as(gates)
    state.count.add_(gates if not uniform else gates.unsqueeze(1))
    # the schedule is shared, so every column of `count` holds the same number
    count = state.count if not uniform else state.count[:, 0]
    if h.grokfast_alpha is not None:
        # As in Grokfast's `gradfilter_ema`, the filter starts from the first gradient a
        # member's parameter takes (not from zero, which would damp the first ~1/(1-α) steps'
        # amplification): at that update the EMA's decay is 0 and the gradient's weight 1.
        later = count > 1
        decay = torch.where(later, h.grokfast_alpha, 0.0)
        ema = [s["ema"] for s in S]
        torch._foreach_mul_(ema, each(_gated(gates, decay, 1.0)))
        torch._foreach_add_(ema, torch._foreach_mul(G, each(_gated(gates, 1 - decay, 0.0))))
        G = torch._foreach_add(G, torch._foreach_mul(ema, h.grokfast_lamb))
    UPDATES[optimizer](P, G, S, count, lr, wd, gates, each, h)
