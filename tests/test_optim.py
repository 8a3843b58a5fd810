"""The ensemble optimisers against torch.optim, member by member, with gates shut and open."""

from __future__ import annotations

import pytest
import torch

from grokpipe.train.optim import Hyper, apply_updates, init_state

E = 3
SHAPES = {"w": (4, 5), "b": (5,), "u": (2, 3, 4)}
LR = [1e-2, 3e-3, 1e-3]
WD = [1.0, 0.1, 0.0]


def hyper(momentum=0.0, warmup=0, grokfast=None):
    alpha, lamb = grokfast if grokfast else (None, 0.0)
    return Hyper((0.9, 0.98), 1e-8, momentum, warmup, alpha, lamb)


def stacked():
    gen = torch.Generator().manual_seed(0)
    return {n: torch.randn(E, *s, generator=gen) for n, s in SHAPES.items()}


def grads_for(step):
    gen = torch.Generator().manual_seed(100 + step)
    return {n: torch.randn(E, *s, generator=gen) for n, s in SHAPES.items()}


def reference(optimizer, member, open_steps, n_steps, momentum=0.0, grokfast=None):
    """Member `member` trained alone by torch.optim, stepping only on `open_steps[name]`;
    with `grokfast = (alpha, lamb)`, each gradient first goes through Grokfast's
    `gradfilter_ema` as its authors wrote it (the EMA starts at the parameter's first
    gradient)."""
    ema = {}
    params = {n: t[member].clone().requires_grad_(True) for n, t in stacked().items()}
    opts = {}
    for n, p in params.items():
        if optimizer == "adamw":
            opts[n] = torch.optim.AdamW(
                [p], lr=LR[member], betas=(0.9, 0.98), eps=1e-8, weight_decay=WD[member]
            )
        else:
            opts[n] = torch.optim.SGD(
                [p], lr=LR[member], momentum=momentum, weight_decay=WD[member]
            )
    for step in range(n_steps):
        g = grads_for(step)
        for n, p in params.items():
            if step in open_steps[n]:
                p.grad = g[n][member].clone()
                if grokfast:
                    alpha, lamb = grokfast
                    ema.setdefault(n, p.grad.clone())
                    ema[n] = ema[n] * alpha + p.grad * (1 - alpha)
                    p.grad = p.grad + ema[n] * lamb
                opts[n].step()
    return {n: p.detach() for n, p in params.items()}


def engine(optimizer, gates_at, n_steps, momentum=0.0, grokfast=None):
    params = stacked()
    state = init_state(params, optimizer, momentum, grokfast=grokfast is not None)
    lr, wd = torch.tensor(LR), torch.tensor(WD)
    for step in range(n_steps):
        t = torch.tensor(step + 1)
        apply_updates(
            optimizer,
            params,
            grads_for(step),
            state,
            lr,
            wd,
            gates_at(step),
            t,
            hyper(momentum, grokfast=grokfast),
        )
    return params


@pytest.mark.parametrize("optimizer,momentum", [("adamw", 0.0), ("sgd", 0.0), ("sgd", 0.9)])
def test_every_member_matches_torch_optim(optimizer, momentum):
    out = engine(optimizer, lambda step: torch.ones(E), 6, momentum)
    for i in range(E):
        ref = reference(optimizer, i, {n: range(6) for n in SHAPES}, 6, momentum)
        for n in SHAPES:
            torch.testing.assert_close(out[n][i], ref[n], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer,momentum", [("adamw", 0.0), ("sgd", 0.9)])
def test_shut_gates_skip_the_step_per_member_and_parameter(optimizer, momentum):
    # member 1's "b" steps only on even steps, member 2's "w" is frozen; the rest step always
    def gates_at(step):
        g = torch.ones(E, len(SHAPES))
        g[1, 1] = float(step % 2 == 0)
        g[2, 0] = 0.0
        return g

    out = engine(optimizer, gates_at, 7, momentum)
    for i in range(E):
        opens = {n: range(7) for n in SHAPES}
        if i == 1:
            opens["b"] = range(0, 7, 2)
        if i == 2:
            opens["w"] = range(0)
        ref = reference(optimizer, i, opens, 7, momentum)
        for n in SHAPES:
            torch.testing.assert_close(out[n][i], ref[n], rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(out["w"][2], stacked()["w"][2], rtol=0, atol=0)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_grokfast_filter_matches_the_authors_gradfilter_ema(optimizer):
    # member 1's "b" takes its first gradient only at step 3, so its EMA must start there
    def gates_at(step):
        g = torch.ones(E, len(SHAPES))
        g[1, 1] = float(step >= 3)
        return g

    grokfast = (0.8, 2.0)
    out = engine(optimizer, gates_at, 8, grokfast=grokfast)
    for i in range(E):
        opens = {n: range(8) for n in SHAPES}
        if i == 1:
            opens["b"] = range(3, 8)
        ref = reference(optimizer, i, opens, 8, grokfast=grokfast)
        for n in SHAPES:
            torch.testing.assert_close(out[n][i], ref[n], rtol=1e-6, atol=1e-6)
