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


def _distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`np.unique(rows, axis=0, return_inverse=True)` for token rows [N, P], ~100x faster:
    each row becomes one integer, its first token the most significant digit, so that sorting
    the integers sorts the rows as `np.unique` does (row-wise unique sorts a structured view,
    ~10 ms per member of a mod-97 table: seconds for a large ensemble, again at each
    compaction)."""
    base = int(rows.max()) + 1 if rows.size else 1
    if rows.min(initial=0) < 0 or base ** rows.shape[1] >= 2**62:
        return np.unique(rows, axis=0, return_inverse=True)
    keys = np.zeros(rows.shape[0], np.int64)
    for column in rows.T.astype(np.int64):
        keys = keys * base + column
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return rows[first], inverse


def prefix_plan(inputs: np.ndarray, length: int) -> PrefixPlan:
    """The plan that takes the first `length` positions of inputs [E, N, T] from a table of
    each member's distinct prefixes."""
    per_member = [_distinct_rows(rows[:, :length]) for rows in inputs]
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
