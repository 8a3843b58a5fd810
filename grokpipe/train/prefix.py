"""Shared-prefix planning: which leading positions of an ensemble's sequences to compute once
per distinct prefix rather than once per row (see `Transformer.forward_prefixed`).

The choice is made from the data alone, by counting: for each prefix length P the step costs
about U_P·P positions for the table (U_P distinct prefixes) plus B·(T − P) for the batch, against
B·T without sharing. Binary-operation sequences `x ∘ y =` share `x ∘` (p distinct values), so
P = 2 wins there; data without repeated prefixes keeps the plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from grokpipe.tasks.base import stack_padded


@dataclass(frozen=True)
class PrefixPlan:
    length: int  # P: leading positions taken from the table
    table: np.ndarray  # [E, U, P] distinct prefixes per member (padded by repeating row 0)
    row_prefix: np.ndarray  # [E, N] which table row each dataset row starts with


def prefix_plan(inputs: np.ndarray, length: int) -> PrefixPlan:
    """The plan that takes the first `length` positions of inputs [E, N, T] from a table of
    each member's distinct prefixes."""
    per_member = [np.unique(rows[:, :length], axis=0, return_inverse=True) for rows in inputs]
    tables = [table for table, _ in per_member]
    index = np.stack([inverse.reshape(-1) for _, inverse in per_member])
    return PrefixPlan(length, stack_padded(tables), index)


def plan_prefix(inputs: np.ndarray, batch: int) -> PrefixPlan | None:
    """inputs [E, N, T] token ids of every member's dataset; None when sharing saves nothing."""
    T = inputs.shape[2]
    best_cost, best = batch * T, None
    for length in range(1, T):
        plan = prefix_plan(inputs, length)
        cost = plan.table.shape[1] * length + batch * (T - length)
        if cost < best_cost:
            best_cost, best = cost, plan
    return best
